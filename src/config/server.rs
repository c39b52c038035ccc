//! `[server]`, `[origin]` and `[cache]`: the listeners, the upstream and the cache's sizes, each with its defaults.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use http::{HeaderName, Uri, header};
use serde::Deserialize;

use super::{
    MAX_COUNT, Problems, parse_duration, parse_header_names, parse_positive_duration, parse_size,
};
use crate::cache::policy::{CDN_CACHE_CONTROL, SIDECACHE_CACHE_CONTROL};

// [server]

/// Default client-facing listen address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
/// Default admin listen address: loopback, so probes and metrics stay private.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
/// Default time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default cap on concurrent client connections, so a flood queues in the
/// kernel's backlog instead of exhausting memory.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default bound on a request head (request line and header fields; h2: the
/// header list), so one connection cannot pin more than this in buffers.
/// Real heads are a few KiB; 64 KiB leaves room for large cookies.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// Smallest and largest `server.max_header_size`: below 1 KiB ordinary
/// requests fail; above 16 MiB it no longer bounds anything.
const HEADER_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;
/// Default most header fields in a request: hyper's own default, which it
/// parses into a stack array (any other value costs a heap allocation per
/// request).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Largest `server.max_headers`: hyper allocates room for that many fields
/// for every request.
const MAX_HEADERS_LIMIT: usize = 1000;
/// Default time a new connection gets to send its first complete request
/// head: any real client sends it in one go; a slowloris client trickling
/// it is dropped.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an HTTP/1 connection may wait for its next request head.
/// Longer than the 60 s idle timeout of common callers' pools (AWS ALB,
/// ingress-nginx upstream keep-alive), so this side is not the one to close
/// a connection the caller is about to reuse.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default most concurrent streams on one h2 connection (RFC 9113 §6.5.2
/// suggests no fewer than 100).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_grace: Option<String>,
    shutdown_delay: Option<String>,
    max_connections: Option<usize>,
    workers: Option<usize>,
    max_header_size: Option<String>,
    max_headers: Option<usize>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    h2_max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where clients connect (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Where probes and metrics are served.
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long to keep serving, not ready, after a shutdown signal and
    /// before draining: for pods whose app and proxy stop together.
    pub shutdown_delay: Duration,
    /// Concurrent client connections; further accepts wait.
    pub max_connections: usize,
    /// Threads serving clients, each with its own single-threaded runtime
    /// and its own listener on `listen` (`SO_REUSEPORT`): a request stays
    /// on one thread, with no work stealing or cross-thread wake-ups.
    pub workers: usize,
    /// What one client connection may send before it is answered, and how
    /// long it may take.
    pub client: ClientLimits,
}

/// Bounds on what a client sends before its request is served: they keep
/// a slow or hostile client from holding buffers and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Bytes of one request head: request line and header fields (h2: the
    /// header list, which counts 32 more bytes per field); past it, 431.
    pub max_header_size: usize,
    /// Header fields in one request; past it, 431.
    pub max_headers: usize,
    /// Time from accepting a connection to its first complete request head;
    /// past it the connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// Time a connection may have no request under way (HTTP/1: waiting
    /// for the next request head, the head included; h2: no open stream);
    /// past it the connection is closed. h2 connections are also pinged
    /// this often and closed when a ping goes unanswered.
    pub idle_timeout: Duration,
    /// Streams one h2 connection may have open at once; the client is told
    /// (SETTINGS) and a stream beyond it is refused (`REFUSED_STREAM`).
    pub h2_max_concurrent_streams: u32,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
        }
    }
}

impl RawServer {
    pub(super) fn validate(self, p: &mut Problems) -> ServerConfig {
        let server = ServerConfig {
            listen: p.parse(
                "server.listen",
                self.listen.as_deref(),
                DEFAULT_LISTEN,
                parse_addr,
            ),
            admin_listen: p.parse(
                "server.admin_listen",
                self.admin_listen.as_deref(),
                DEFAULT_ADMIN_LISTEN,
                parse_addr,
            ),
            shutdown_grace: p.parse(
                "server.shutdown_grace",
                self.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
                parse_duration,
            ),
            shutdown_delay: p.parse(
                "server.shutdown_delay",
                self.shutdown_delay.as_deref(),
                Duration::ZERO,
                parse_duration,
            ),
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            workers: self.workers.unwrap_or_else(default_workers),
            client: ClientLimits {
                max_header_size: p.parse(
                    "server.max_header_size",
                    self.max_header_size.as_deref(),
                    DEFAULT_MAX_HEADER_SIZE,
                    parse_header_size,
                ),
                max_headers: self.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
                header_read_timeout: p.parse(
                    "server.header_read_timeout",
                    self.header_read_timeout.as_deref(),
                    DEFAULT_HEADER_READ_TIMEOUT,
                    parse_positive_duration,
                ),
                idle_timeout: p.parse(
                    "server.idle_timeout",
                    self.idle_timeout.as_deref(),
                    DEFAULT_IDLE_TIMEOUT,
                    parse_positive_duration,
                ),
                h2_max_concurrent_streams: self
                    .h2_max_concurrent_streams
                    .unwrap_or(DEFAULT_H2_MAX_CONCURRENT_STREAMS),
            },
        };
        if server.max_connections == 0 {
            p.push("server.max_connections", "must be at least 1");
        } else if server.max_connections > MAX_COUNT {
            p.push(
                "server.max_connections",
                format!("must be at most {MAX_COUNT}"),
            );
        }
        if !(1..=MAX_WORKERS).contains(&server.workers) {
            p.push(
                "server.workers",
                format!("must be between 1 and {MAX_WORKERS}"),
            );
        }
        let client = &server.client;
        if !(1..=MAX_HEADERS_LIMIT).contains(&client.max_headers) {
            p.push(
                "server.max_headers",
                format!("must be between 1 and {MAX_HEADERS_LIMIT}"),
            );
        }
        // hyper waits for the next head with one timer (idle and head
        // together), so the first head cannot be given longer than that.
        if client.header_read_timeout > client.idle_timeout {
            p.push(
                "server.header_read_timeout",
                format!(
                    "longer than server.idle_timeout ({:?}), which bounds every request head",
                    client.idle_timeout
                ),
            );
        }
        if client.h2_max_concurrent_streams == 0 {
            p.push("server.h2_max_concurrent_streams", "must be at least 1");
        }
        // Port 0 asks for any free port, so two of them do not collide.
        if server.listen == server.admin_listen && server.listen.port() != 0 {
            p.push(
                "server.admin_listen",
                format!("same address as server.listen ({})", server.listen),
            );
        }
        server
    }
}

fn parse_header_size(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    usize::try_from(size)
        .ok()
        .filter(|size| HEADER_SIZE_RANGE.contains(size))
        .ok_or_else(|| "must be between 1KiB and 16MiB".into())
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("invalid address {text:?}; use IP:PORT, e.g. \"0.0.0.0:8080\""))
}

// [origin]

/// Default deadline for the TCP connect to the origin.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline for the origin's response head.
pub const DEFAULT_ORIGIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawOrigin {
    url: Option<String>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginConfig {
    /// Scheme and authority of the origin; request paths are appended.
    pub url: Uri,
    pub connect_timeout: Duration,
    /// Deadline for the response head; the body may stream for longer.
    pub timeout: Duration,
}

impl RawOrigin {
    pub(super) fn validate(self, p: &mut Problems) -> OriginConfig {
        let url = match self.url.as_deref() {
            None => {
                p.push(
                    "origin.url",
                    "missing; the origin to proxy to, e.g. \"http://127.0.0.1:3000\"",
                );
                Uri::default()
            }
            Some(text) => match parse_origin_url(text) {
                Ok(url) => url,
                Err(message) => {
                    p.push("origin.url", message);
                    Uri::default()
                }
            },
        };
        OriginConfig {
            url,
            connect_timeout: p.parse(
                "origin.connect_timeout",
                self.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
                parse_positive_duration,
            ),
            timeout: p.parse(
                "origin.timeout",
                self.timeout.as_deref(),
                DEFAULT_ORIGIN_TIMEOUT,
                parse_positive_duration,
            ),
        }
    }
}

fn parse_origin_url(text: &str) -> Result<Uri, String> {
    let url: Uri = text
        .parse()
        .map_err(|_| format!("invalid URL {text:?}; use e.g. \"http://127.0.0.1:3000\""))?;
    if url.scheme_str() != Some("http") {
        return Err(format!("{text:?}: only http:// origins are supported"));
    }
    if url.authority().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(format!(
            "{text:?}: a path or query is not supported; the request's own path is sent"
        ));
    }
    Ok(url)
}

/// Most worker threads: far more than any pod's cores.
const MAX_WORKERS: usize = 256;

/// One worker per core the process may use.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

// [cache] and [cache.memory]

/// Default key namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default largest body that is stored; larger ones are streamed only.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 8 * 1024 * 1024;
/// Default time entries are kept once stale, for revalidation.
pub const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(600);
/// Default targeted cache-control fields (RFC 9213), the most specific
/// first: the one for sidecache alone, then the one for every CDN.
pub const DEFAULT_TARGETED_FIELDS: [&str; 2] = [SIDECACHE_CACHE_CONTROL, CDN_CACHE_CONTROL];
/// Default byte budget of the in-memory tier.
pub const DEFAULT_MEMORY_CAPACITY: u64 = 256 * 1024 * 1024;
/// Largest storable object: the in-memory tier weighs entries in `u32`.
const MAX_OBJECT_SIZE_LIMIT: u64 = u32::MAX as u64 / 2;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCache {
    namespace: Option<String>,
    max_object_size: Option<String>,
    keep_stale: Option<String>,
    host: Option<String>,
    targeted_fields: Option<Vec<String>>,
    tag_headers: Option<Vec<String>>,
    expose_tags: Option<bool>,
    #[serde(default)]
    memory: RawMemory,
}

#[derive(Debug, Default, Deserialize)]
struct RawMemory {
    capacity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Part of every key: changing it starts with an empty cache.
    pub namespace: String,
    /// Bodies larger than this are streamed to the client but never stored.
    pub max_object_size: u64,
    /// How long an entry is kept once stale: to be revalidated with a
    /// conditional request instead of fetched again, or served stale where a
    /// request allows it.
    pub keep_stale: Duration,
    /// The one host cacheable requests are keyed under and sent upstream
    /// with (lowercased, without `:80`), so a fleet shares entries however
    /// its pods are addressed; `None` keys by the request's own host.
    pub host: Option<String>,
    /// Fields whose directives override `Cache-Control` and `Expires` for
    /// this cache (RFC 9213): the first one present and valid counts.
    pub targeted_fields: Vec<HeaderName>,
    /// Response fields whose values tag a stored response for purging by
    /// tag ([`crate::cache::tags`]); `[]` turns tagging off.
    pub tag_headers: Vec<HeaderName>,
    /// Whether clients see the tag fields; they are removed by default,
    /// since tags name the origin's internals.
    pub expose_tags: bool,
    pub memory: MemoryConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Byte budget of the in-process tier (bodies, headers and keys and
    /// their bookkeeping); zero
    /// turns the tier off (every lookup goes to L2).
    pub capacity: u64,
}

impl RawCache {
    /// `with_redis`: a `[redis]` tier is configured, which can hold objects
    /// the memory tier cannot.
    pub(super) fn validate(self, with_redis: bool, p: &mut Problems) -> CacheConfig {
        let namespace = self.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        if namespace.is_empty() {
            p.push("cache.namespace", "must not be empty");
        }
        let cache = CacheConfig {
            namespace,
            max_object_size: p.parse(
                "cache.max_object_size",
                self.max_object_size.as_deref(),
                DEFAULT_MAX_OBJECT_SIZE,
                parse_size,
            ),
            keep_stale: p.parse(
                "cache.keep_stale",
                self.keep_stale.as_deref(),
                DEFAULT_KEEP_STALE,
                parse_duration,
            ),
            host: self.host.and_then(|host| match canonical_host(&host) {
                Some(host) => Some(host),
                None => {
                    p.push(
                        "cache.host",
                        format!("{host:?} is not a host[:port]; e.g. \"shop.example.com\""),
                    );
                    None
                }
            }),
            targeted_fields: targeted_fields(self.targeted_fields, p),
            tag_headers: tag_headers(self.tag_headers, p),
            expose_tags: self.expose_tags.unwrap_or(false),
            memory: MemoryConfig {
                capacity: p.parse(
                    "cache.memory.capacity",
                    self.memory.capacity.as_deref(),
                    DEFAULT_MEMORY_CAPACITY,
                    parse_size,
                ),
            },
        };
        if cache.max_object_size > MAX_OBJECT_SIZE_LIMIT {
            p.push(
                "cache.max_object_size",
                format!("must be at most {MAX_OBJECT_SIZE_LIMIT} bytes"),
            );
        } else if cache.memory.capacity > 0
            && cache.max_object_size > cache.memory.capacity
            && !with_redis
        {
            p.push(
                "cache.max_object_size",
                format!(
                    "larger than cache.memory.capacity ({} bytes) and no [redis] is configured, so nothing that size could be kept",
                    cache.memory.capacity
                ),
            );
        }
        cache
    }
}

/// `host` as an authority: a DNS name or an IP address, and a port
/// (1-65535) only if one is written; lowercased and without the default
/// port, the form keys use. `None` for anything else.
fn canonical_host(host: &str) -> Option<String> {
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority.host();
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(ip) => ip.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            name.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
    };
    // Anything after the host must be a whole, non-zero port.
    let has_port = authority.as_str().len() > name.len();
    let port_ok = !has_port || authority.port_u16().is_some_and(|port| port > 0);
    if !name_ok || !port_ok {
        return None;
    }
    let host = authority.as_str().to_ascii_lowercase();
    Some(host.strip_suffix(":80").map_or(host.clone(), str::to_owned))
}

/// `cache.targeted_fields`: header names, each once, and not `Cache-Control`,
/// the field they override.
fn targeted_fields(names: Option<Vec<String>>, p: &mut Problems) -> Vec<HeaderName> {
    const KEY: &str = "cache.targeted_fields";
    let Some(names) = names else {
        return DEFAULT_TARGETED_FIELDS
            .map(HeaderName::from_static)
            .to_vec();
    };
    let fields = parse_header_names(p, KEY, &names);
    for (index, field) in fields.iter().enumerate() {
        if field == header::CACHE_CONTROL {
            p.push(
                KEY,
                "Cache-Control is the field targeted fields override; list only fields like \"CDN-Cache-Control\"",
            );
        } else if fields[..index].contains(field) {
            p.push(KEY, format!("{:?} is listed twice", field.as_str()));
        }
    }
    fields
}

/// Fields HTTP caching reads or a client needs: clients never see the tag
/// fields unless `cache.expose_tags`, so none of these may be one.
const NOT_TAG_HEADERS: [HeaderName; 9] = [
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::VARY,
    header::DATE,
    header::AGE,
    header::LOCATION,
    header::SET_COOKIE,
];

/// `cache.tag_headers`: header names, each once, none that HTTP caching
/// or the client needs (they are removed from responses).
fn tag_headers(names: Option<Vec<String>>, p: &mut Problems) -> Vec<HeaderName> {
    const KEY: &str = "cache.tag_headers";
    let Some(names) = names else {
        return crate::cache::tags::DEFAULT_TAG_HEADERS
            .map(HeaderName::from_static)
            .to_vec();
    };
    let fields = parse_header_names(p, KEY, &names);
    for (index, field) in fields.iter().enumerate() {
        if NOT_TAG_HEADERS.contains(field) || field.as_str().starts_with("content-") {
            p.push(
                KEY,
                format!(
                    "{:?} is a field HTTP needs, and tag fields are removed from responses; use a field of its own like \"Surrogate-Key\"",
                    field.as_str()
                ),
            );
        } else if fields[..index].contains(field) {
            p.push(KEY, format!("{:?} is listed twice", field.as_str()));
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{MINIMAL, config, errors, with_minimal};

    #[test]
    fn defaults_fill_everything_but_the_origin() {
        let config = config(MINIMAL).unwrap();
        assert_eq!(config.cache.host, None);
        for (written, canonical) in [
            ("Shop.Example.com:80", "shop.example.com"),
            ("shop.example.com:8443", "shop.example.com:8443"),
            ("10.0.0.7", "10.0.0.7"),
            ("[::1]:8080", "[::1]:8080"),
        ] {
            assert_eq!(
                canonical_host(written).as_deref(),
                Some(canonical),
                "{written}"
            );
        }
        assert_eq!(config.server.listen, DEFAULT_LISTEN);
        assert_eq!(config.server.admin_listen, DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.server.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert_eq!(config.server.client, ClientLimits::default());
        assert_eq!(config.server.client.max_header_size, 64 * 1024);
        assert_eq!(config.server.client.max_headers, 100);
        assert_eq!(
            config.server.client.header_read_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(config.server.client.idle_timeout, Duration::from_secs(75));
        assert_eq!(config.server.client.h2_max_concurrent_streams, 100);
        assert_eq!(config.origin.timeout, DEFAULT_ORIGIN_TIMEOUT);
        assert_eq!(config.origin.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.cache.namespace, "default");
        assert_eq!(config.cache.max_object_size, 8 * 1024 * 1024);
        assert_eq!(config.cache.memory.capacity, 256 * 1024 * 1024);
        assert_eq!(
            config.cache.targeted_fields,
            ["sidecache-cache-control", "cdn-cache-control"]
        );
        assert_eq!(config.cache.tag_headers, ["surrogate-key", "cache-tag"]);
        assert!(!config.cache.expose_tags);
        assert!(config.routes.is_empty());
    }

    #[test]
    fn origin_validation_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "",
                "origin.url: missing; the origin to proxy to, e.g. \"http://127.0.0.1:3000\"",
            ),
            (
                "[origin]\nurl = \"ftp://x\"",
                "origin.url: \"ftp://x\": only http:// origins are supported",
            ),
            (
                "[origin]\nurl = \"http://\"",
                "origin.url: invalid URL \"http://\"; use e.g. \"http://127.0.0.1:3000\"",
            ),
            (
                "[origin]\nurl = \"http://a:1/api\"",
                "origin.url: \"http://a:1/api\": a path or query is not supported; the request's own path is sent",
            ),
            (
                "[origin]\nurl = \"http://a:1\"\ntimeout = \"0s\"",
                "origin.timeout: must be greater than zero",
            ),
            (
                "[origin]\nurl = \"http://a:1\"\nconnect_timeout = \"2 parsecs\"",
                "origin.connect_timeout: invalid duration \"2 parsecs\" (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); use e.g. \"250ms\", \"30s\", \"5m\"",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(errors(text), vec![expected.to_string()], "for {text:?}");
        }
    }

    #[test]
    fn objects_larger_than_the_memory_tier_are_for_redis_to_hold() {
        let text = format!(
            "{MINIMAL}[cache]\nmax_object_size = \"2MiB\"\n[cache.memory]\ncapacity = \"1MiB\"\n[redis]\nnodes = [\"127.0.0.1:7000\"]\n"
        );
        let config = config(&text).unwrap();
        assert_eq!(config.cache.max_object_size, 2 * 1024 * 1024);
        assert_eq!(config.cache.memory.capacity, 1024 * 1024);
    }

    #[test]
    fn server_and_cache_validation_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "[server]\nlisten = \"localhost\"",
                "server.listen: invalid address \"localhost\"; use IP:PORT, e.g. \"0.0.0.0:8080\"",
            ),
            (
                "[server]\nadmin_listen = \"1.2.3.4\"",
                "server.admin_listen: invalid address \"1.2.3.4\"; use IP:PORT, e.g. \"0.0.0.0:8080\"",
            ),
            (
                "[server]\nlisten = \"127.0.0.1:80\"\nadmin_listen = \"127.0.0.1:80\"",
                "server.admin_listen: same address as server.listen (127.0.0.1:80)",
            ),
            (
                "[server]\nshutdown_grace = \"soon\"",
                "server.shutdown_grace: invalid duration \"soon\" (expected number at 0); use e.g. \"250ms\", \"30s\", \"5m\"",
            ),
            (
                "[server]\nmax_connections = 0",
                "server.max_connections: must be at least 1",
            ),
            (
                // The fuzz target config builds the connection semaphore
                // from it; tokio panics past 2^61 permits.
                "[server]\nmax_connections = 4611686018427387904",
                "server.max_connections: must be at most 1073741824",
            ),
            (
                "[server]\nworkers = 0",
                "server.workers: must be between 1 and 256",
            ),
            (
                "[server]\nmax_header_size = \"512\"",
                "server.max_header_size: must be between 1KiB and 16MiB",
            ),
            (
                "[server]\nmax_header_size = \"1GiB\"",
                "server.max_header_size: must be between 1KiB and 16MiB",
            ),
            (
                "[server]\nmax_header_size = \"big\"",
                "server.max_header_size: invalid size \"big\"; use e.g. \"512KiB\", \"8MiB\", \"1GiB\"",
            ),
            (
                "[server]\nmax_headers = 0",
                "server.max_headers: must be between 1 and 1000",
            ),
            (
                "[server]\nmax_headers = 5000",
                "server.max_headers: must be between 1 and 1000",
            ),
            (
                "[server]\nheader_read_timeout = \"0s\"",
                "server.header_read_timeout: must be greater than zero",
            ),
            (
                "[server]\nidle_timeout = \"0s\"",
                "server.idle_timeout: must be greater than zero",
            ),
            (
                "[server]\nheader_read_timeout = \"2m\"",
                "server.header_read_timeout: longer than server.idle_timeout (75s), which bounds every request head",
            ),
            (
                "[server]\nh2_max_concurrent_streams = 0",
                "server.h2_max_concurrent_streams: must be at least 1",
            ),
            (
                "[cache]\nnamespace = \"\"",
                "cache.namespace: must not be empty",
            ),
            (
                "[cache]\nmax_object_size = \"lots\"",
                "cache.max_object_size: invalid size \"lots\"; use e.g. \"512KiB\", \"8MiB\", \"1GiB\"",
            ),
            (
                "[cache]\nmax_object_size = \"4GiB\"",
                "cache.max_object_size: must be at most 2147483647 bytes",
            ),
            (
                "[cache]\nmax_object_size = \"2MiB\"\n[cache.memory]\ncapacity = \"1MiB\"",
                "cache.max_object_size: larger than cache.memory.capacity (1048576 bytes) and no [redis] is configured, so nothing that size could be kept",
            ),
            (
                "[cache]\nhost = \"https://shop.example.com/\"",
                "cache.host: \"https://shop.example.com/\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"user@shop.example.com\"",
                "cache.host: \"user@shop.example.com\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"\"",
                "cache.host: \"\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"shop:abc\"",
                "cache.host: \"shop:abc\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"shop:99999\"",
                "cache.host: \"shop:99999\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"shop:\"",
                "cache.host: \"shop:\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"shop:0\"",
                "cache.host: \"shop:0\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"*\"",
                "cache.host: \"*\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"-\"",
                "cache.host: \"-\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"shop example\"",
                "cache.host: \"shop example\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"shop/x\"",
                "cache.host: \"shop/x\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\nhost = \"[::zz]\"",
                "cache.host: \"[::zz]\" is not a host[:port]; e.g. \"shop.example.com\"",
            ),
            (
                "[cache]\ntargeted_fields = [\"CDN Cache Control\"]",
                "cache.targeted_fields: invalid header name \"CDN Cache Control\"",
            ),
            (
                "[cache]\ntargeted_fields = [\"Cache-Control\"]",
                "cache.targeted_fields: Cache-Control is the field targeted fields override; list only fields like \"CDN-Cache-Control\"",
            ),
            (
                "[cache]\ntargeted_fields = [\"X-CC\", \"x-cc\"]",
                "cache.targeted_fields: \"x-cc\" is listed twice",
            ),
            (
                "[cache]\ntag_headers = [\"Surrogate Key\"]",
                "cache.tag_headers: invalid header name \"Surrogate Key\"",
            ),
            (
                "[cache]\ntag_headers = [\"Vary\"]",
                "cache.tag_headers: \"vary\" is a field HTTP needs, and tag fields are removed from responses; use a field of its own like \"Surrogate-Key\"",
            ),
            (
                "[cache]\ntag_headers = [\"Content-Type\"]",
                "cache.tag_headers: \"content-type\" is a field HTTP needs, and tag fields are removed from responses; use a field of its own like \"Surrogate-Key\"",
            ),
            (
                "[cache]\ntag_headers = [\"X-Tags\", \"x-tags\"]",
                "cache.tag_headers: \"x-tags\" is listed twice",
            ),
            (
                "[cache]\nexpose_tags = \"yes\"",
                "cache.expose_tags: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "[cache.memory]\ncapacity = \"-1\"",
                "cache.memory.capacity: invalid size \"-1\"; use e.g. \"512KiB\", \"8MiB\", \"1GiB\"",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                with_minimal(text),
                vec![expected.to_string()],
                "for {text:?}"
            );
        }
    }
}
