//! `proxy.toml`: raw TOML structs, then one validation pass into a typed [`Config`].
//!
//! Validation collects every problem instead of stopping at the first, and
//! each message names the key it is about (`routes[1].ttl: ...`), so a user
//! fixes a file in one go.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use http::{HeaderName, Method, Uri};
use serde::Deserialize;

use crate::route::{Route, RouteTable};

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
/// Default deadline for the TCP connect to the origin.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline for the origin's response head.
pub const DEFAULT_ORIGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default key namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default largest body that is stored; larger ones are streamed only.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 8 * 1024 * 1024;
/// Default time a collapsed request waits for the fetch it joined.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time entries are kept once stale, for revalidation.
pub const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(600);
/// Default byte budget of the in-memory tier.
pub const DEFAULT_MEMORY_CAPACITY: u64 = 256 * 1024 * 1024;
/// Largest storable object: the in-memory tier weighs entries in `u32`.
const MAX_OBJECT_SIZE_LIMIT: u64 = u32::MAX as u64 / 2;

/// Default deadline for every Redis call: a miss costs at most this much.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);
/// Default deadline for connecting to a Redis node.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of L2 writes waiting to be sent; beyond it writes are dropped.
pub const DEFAULT_REDIS_WRITE_QUEUE: usize = 1024;

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub origin: OriginConfig,
    pub cache: CacheConfig,
    /// The shared L2 tier; `None` runs with the memory tier only.
    pub redis: Option<RedisConfig>,
    pub routes: RouteTable,
}

/// The shared Redis tier (L2).
#[derive(Debug)]
pub struct RedisConfig {
    /// Servers, credentials and TLS, as fred takes them.
    pub client: fred::prelude::Config,
    /// Deadline for every cache call; past it the call is a miss.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// L2 writes waiting to be sent, off the response path.
    pub write_queue: usize,
}

#[derive(Debug)]
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
}

#[derive(Debug)]
pub struct OriginConfig {
    /// Scheme and authority of the origin; request paths are appended.
    pub url: Uri,
    pub connect_timeout: Duration,
    /// Deadline for the response head; the body may stream for longer.
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct CacheConfig {
    /// Part of every key: changing it starts with an empty cache.
    pub namespace: String,
    /// Bodies larger than this are streamed to the client but never stored.
    pub max_object_size: u64,
    /// How long an entry is kept once stale: to be revalidated with a
    /// conditional request instead of fetched again, or served stale where a
    /// request allows it.
    pub keep_stale: Duration,
    pub memory: MemoryConfig,
}

#[derive(Debug)]
pub struct MemoryConfig {
    /// Byte budget of the in-process tier (bodies, headers and keys); zero
    /// turns the tier off (every lookup goes to L2).
    pub capacity: u64,
}

/// One problem in a config file, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `routes[1].ttl`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    /// Every problem found, one per key.
    pub fn errors(&self) -> Vec<String> {
        match self {
            LoadError::Read { .. } => vec![self.to_string()],
            LoadError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates config text.
    pub fn from_toml(text: &str) -> Result<Config, LoadError> {
        let (raw, mut errors) = parse(text).map_err(LoadError::Invalid)?;
        match raw.validate() {
            Ok(config) if errors.is_empty() => Ok(config),
            Ok(_) => Err(LoadError::Invalid(errors)),
            Err(invalid) => {
                errors.extend(invalid);
                Err(LoadError::Invalid(errors))
            }
        }
    }
}

// Raw structs: every field optional so that validation, not serde, decides
// defaults and can name a missing key. Unknown keys are collected with
// `serde_ignored` rather than `deny_unknown_fields`, which stops at the first
// one and reports it without its path.

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    origin: Option<RawOrigin>,
    #[serde(default)]
    cache: RawCache,
    redis: Option<RawRedis>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRedis {
    url: Option<String>,
    mode: Option<String>,
    nodes: Option<Vec<String>>,
    service_name: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    tls: Option<bool>,
    command_timeout: Option<String>,
    connect_timeout: Option<String>,
    write_queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_grace: Option<String>,
    shutdown_delay: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct RawOrigin {
    url: Option<String>,
    connect_timeout: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCache {
    namespace: Option<String>,
    max_object_size: Option<String>,
    keep_stale: Option<String>,
    #[serde(default)]
    memory: RawMemory,
}

#[derive(Debug, Default, Deserialize)]
struct RawMemory {
    capacity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRoute {
    name: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
    ttl: Option<String>,
    cache: Option<bool>,
    cache_status: Option<Vec<u16>>,
    heuristic_freshness: Option<bool>,
    range_fill: Option<bool>,
    coalesce: Option<bool>,
    lock_timeout: Option<String>,
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
    #[serde(default)]
    key_headers: Vec<String>,
    #[serde(default)]
    forward_headers: Vec<String>,
}

/// TOML text to raw structs plus the unknown keys found on the way; syntax
/// and type errors stop parsing.
fn parse(text: &str) -> Result<(RawConfig, Vec<ConfigError>), Vec<ConfigError>> {
    let document = toml::Deserializer::parse(text).map_err(|e| {
        vec![ConfigError {
            key: "toml".into(),
            message: e.to_string().trim_end().to_owned(),
        }]
    })?;
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| {
        unknown.push(ConfigError {
            key: key_path(&path),
            message: "unknown key".into(),
        })
    };
    let ignoring = serde_ignored::Deserializer::new(document, &mut record_unknown);
    let raw = serde_path_to_error::deserialize(ignoring).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().trim_end().to_owned();
        vec![ConfigError { key, message }]
    });
    match raw {
        Ok(raw) => Ok((raw, unknown)),
        Err(mut errors) => {
            errors.extend(unknown);
            Err(errors)
        }
    }
}

/// `routes[1].tll` from serde_ignored's path, whose own Display writes `routes.1.tll`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => match key_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

/// Collects errors while validating, so every problem is reported at once.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Parses an optional value, recording an error under `key` on failure.
    fn parse<T>(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T
    where
        T: Clone,
    {
        match raw.map(parse) {
            None => default,
            Some(Ok(value)) => value,
            Some(Err(message)) => {
                self.push(key, message);
                default
            }
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); use e.g. \"250ms\", \"30s\", \"5m\"")
    })
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("invalid size {text:?}; use e.g. \"512KiB\", \"8MiB\", \"1GiB\""))
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("invalid address {text:?}; use IP:PORT, e.g. \"0.0.0.0:8080\""))
}

/// Compiles a route path pattern: `*` matches within one segment, `**` across.
pub(crate) fn compile_path(pattern: &str) -> Result<GlobMatcher, String> {
    if !pattern.starts_with('/') {
        return Err(format!("{pattern:?} must start with \"/\""));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|e| format!("invalid pattern {pattern:?}: {}", e.kind()))
}

fn parse_header_names(problems: &mut Problems, key: &str, names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(|name| match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                problems.push(key, format!("invalid header name {name:?}"));
                None
            }
        })
        .collect()
}

impl RawConfig {
    fn validate(self) -> Result<Config, Vec<ConfigError>> {
        let mut problems = Problems::default();
        let p = &mut problems;

        let server = ServerConfig {
            listen: p.parse(
                "server.listen",
                self.server.listen.as_deref(),
                DEFAULT_LISTEN,
                parse_addr,
            ),
            admin_listen: p.parse(
                "server.admin_listen",
                self.server.admin_listen.as_deref(),
                DEFAULT_ADMIN_LISTEN,
                parse_addr,
            ),
            shutdown_grace: p.parse(
                "server.shutdown_grace",
                self.server.shutdown_grace.as_deref(),
                DEFAULT_SHUTDOWN_GRACE,
                parse_duration,
            ),
            shutdown_delay: p.parse(
                "server.shutdown_delay",
                self.server.shutdown_delay.as_deref(),
                Duration::ZERO,
                parse_duration,
            ),
            max_connections: self
                .server
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        };
        if server.max_connections == 0 {
            p.push("server.max_connections", "must be at least 1");
        }
        if server.listen == server.admin_listen && server.listen.port() != 0 {
            p.push(
                "server.admin_listen",
                format!("same address as server.listen ({})", server.listen),
            );
        }

        let origin = self.origin.unwrap_or_default();
        let url = match origin.url.as_deref() {
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
        let origin = OriginConfig {
            url,
            connect_timeout: p.parse(
                "origin.connect_timeout",
                origin.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
                parse_positive_duration,
            ),
            timeout: p.parse(
                "origin.timeout",
                origin.timeout.as_deref(),
                DEFAULT_ORIGIN_TIMEOUT,
                parse_positive_duration,
            ),
        };

        let namespace = self
            .cache
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        if namespace.is_empty() {
            p.push("cache.namespace", "must not be empty");
        }
        let cache = CacheConfig {
            namespace,
            max_object_size: p.parse(
                "cache.max_object_size",
                self.cache.max_object_size.as_deref(),
                DEFAULT_MAX_OBJECT_SIZE,
                parse_size,
            ),
            keep_stale: p.parse(
                "cache.keep_stale",
                self.cache.keep_stale.as_deref(),
                DEFAULT_KEEP_STALE,
                parse_duration,
            ),
            memory: MemoryConfig {
                capacity: p.parse(
                    "cache.memory.capacity",
                    self.cache.memory.capacity.as_deref(),
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
        } else if cache.memory.capacity > 0 && cache.max_object_size > cache.memory.capacity {
            p.push(
                "cache.max_object_size",
                format!(
                    "larger than cache.memory.capacity ({} bytes), so nothing that size could be kept",
                    cache.memory.capacity
                ),
            );
        }

        let redis = self.redis.map(|raw| raw.validate(p));

        let mut routes = Vec::with_capacity(self.routes.len());
        for (index, raw) in self.routes.into_iter().enumerate() {
            if let Some(route) = raw.validate(index, &routes, p) {
                routes.push(route);
            }
        }

        for (index, route) in routes.iter().enumerate() {
            for (field, window) in [
                ("stale_while_revalidate", route.stale_while_revalidate),
                ("stale_if_error", route.stale_if_error),
            ] {
                if window > cache.keep_stale {
                    p.push(
                        format!("routes[{index}].{field}"),
                        format!(
                            "longer than cache.keep_stale ({}); stale entries are kept only that long",
                            humantime::format_duration(cache.keep_stale)
                        ),
                    );
                }
            }
        }

        if problems.0.is_empty() {
            Ok(Config {
                server,
                origin,
                cache,
                redis: redis.flatten(),
                routes: RouteTable::new(routes),
            })
        } else {
            Err(problems.0)
        }
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be greater than zero".into()),
        duration => Ok(duration),
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

/// URL schemes fred understands (`rediss` is TLS).
const REDIS_URL_SCHEMES: [&str; 5] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
];

/// `host:port` of a Redis node.
fn parse_node(text: &str) -> Result<(String, u16), String> {
    text.rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .map(|(host, port)| {
            (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
            )
        })
        .ok_or_else(|| format!("invalid node {text:?}; use HOST:PORT, e.g. \"10.0.0.1:6379\""))
}

impl RawRedis {
    fn validate(self, p: &mut Problems) -> Option<RedisConfig> {
        use fred::prelude::{Config as ClientConfig, ServerConfig as Servers};
        let errors_before = p.0.len();
        let mut client = match (&self.url, self.mode.as_deref()) {
            (Some(url), None)
                if self.nodes.is_none()
                    && !REDIS_URL_SCHEMES.iter().any(|s| url.starts_with(s)) =>
            {
                p.push(
                    "redis.url",
                    format!(
                        "{url:?}: use redis://, rediss://, redis-cluster:// or redis-sentinel://"
                    ),
                );
                ClientConfig::default()
            }
            (Some(url), None) if self.nodes.is_none() => match ClientConfig::from_url(url) {
                Ok(client) => client,
                Err(e) => {
                    p.push("redis.url", format!("invalid Redis URL: {}", e.details()));
                    ClientConfig::default()
                }
            },
            (Some(_), _) => {
                p.push("redis.url", "give either url, or mode and nodes, not both");
                ClientConfig::default()
            }
            (None, mode) => {
                let nodes: Vec<(String, u16)> = match &self.nodes {
                    None => {
                        p.push(
                            "redis.nodes",
                            "missing; e.g. [\"10.0.0.1:6379\"] (or give redis.url)",
                        );
                        vec![]
                    }
                    Some(nodes) if nodes.is_empty() => {
                        p.push("redis.nodes", "must not be empty");
                        vec![]
                    }
                    Some(nodes) => nodes
                        .iter()
                        .filter_map(|node| {
                            parse_node(node).map_err(|e| p.push("redis.nodes", e)).ok()
                        })
                        .collect(),
                };
                let server = match mode.unwrap_or("cluster") {
                    "cluster" => Servers::new_clustered(nodes),
                    "standalone" => match nodes.as_slice() {
                        [(host, port)] => Servers::new_centralized(host.clone(), *port),
                        _ => {
                            if !nodes.is_empty() {
                                p.push("redis.nodes", "standalone mode takes exactly one node");
                            }
                            Servers::default()
                        }
                    },
                    "sentinel" => match &self.service_name {
                        Some(name) => Servers::new_sentinel(nodes, name.clone()),
                        None => {
                            p.push(
                                "redis.service_name",
                                "missing; sentinel mode needs the monitored master's name",
                            );
                            Servers::default()
                        }
                    },
                    other => {
                        p.push(
                            "redis.mode",
                            format!("unknown mode {other:?}; use \"cluster\", \"standalone\" or \"sentinel\""),
                        );
                        Servers::default()
                    }
                };
                ClientConfig {
                    server,
                    ..ClientConfig::default()
                }
            }
        };
        // Seeds are not the only way in: when they are down, reconnect through
        // the nodes of the last known routing table.
        if let Servers::Clustered { policy, .. } = &mut client.server {
            *policy = fred::types::config::ClusterDiscoveryPolicy::UseCache;
        }
        if self.service_name.is_some() && self.mode.as_deref() != Some("sentinel") {
            p.push("redis.service_name", "only used with mode = \"sentinel\"");
        }
        if let Some(username) = self.username {
            client.username = Some(username);
        }
        if let Some(var) = self.password_env {
            match std::env::var(&var) {
                Ok(password) => client.password = Some(password),
                Err(_) => p.push(
                    "redis.password_env",
                    format!("environment variable {var} is not set"),
                ),
            }
        }
        if self.tls == Some(true) {
            match fred::prelude::TlsConnector::default_rustls() {
                Ok(connector) => client.tls = Some(connector.into()),
                Err(e) => p.push("redis.tls", format!("cannot set up TLS: {}", e.details())),
            }
        }
        let command_timeout = p.parse(
            "redis.command_timeout",
            self.command_timeout.as_deref(),
            DEFAULT_REDIS_COMMAND_TIMEOUT,
            parse_positive_duration,
        );
        let connect_timeout = p.parse(
            "redis.connect_timeout",
            self.connect_timeout.as_deref(),
            DEFAULT_REDIS_CONNECT_TIMEOUT,
            parse_positive_duration,
        );
        let write_queue = self.write_queue.unwrap_or(DEFAULT_REDIS_WRITE_QUEUE);
        if write_queue == 0 {
            p.push("redis.write_queue", "must be at least 1");
        }
        (p.0.len() == errors_before).then_some(RedisConfig {
            client,
            command_timeout,
            connect_timeout,
            write_queue,
        })
    }
}

/// Methods whose responses this version can store.
const CACHEABLE_METHODS: [Method; 2] = [Method::GET, Method::HEAD];

impl RawRoute {
    fn validate(self, index: usize, earlier: &[Route], p: &mut Problems) -> Option<Route> {
        let key = |field: &str| format!("routes[{index}].{field}");
        let (path, matcher) = match self.path {
            None => {
                p.push(key("path"), "missing; e.g. \"/users/*\"");
                (String::new(), None)
            }
            Some(path) => match compile_path(&path) {
                Ok(matcher) => (path, Some(matcher)),
                Err(message) => {
                    p.push(key("path"), message);
                    (path, None)
                }
            },
        };
        let methods = match self.methods {
            None => CACHEABLE_METHODS.to_vec(),
            Some(names) if names.is_empty() => {
                p.push(key("methods"), "must not be empty");
                vec![]
            }
            Some(names) => names
                .iter()
                .filter_map(|name| {
                    let method = Method::from_bytes(name.as_bytes())
                        .ok()
                        .filter(|m| CACHEABLE_METHODS.contains(m));
                    if method.is_none() {
                        p.push(
                            key("methods"),
                            format!("{name:?} cannot be cached; use \"GET\" and/or \"HEAD\""),
                        );
                    }
                    method
                })
                .collect(),
        };
        let ttl = p.parse(
            &key("ttl"),
            self.ttl.as_deref(),
            Duration::ZERO,
            parse_duration,
        );
        let name = self.name.unwrap_or_else(|| path.clone());
        if name.is_empty() && !path.is_empty() {
            p.push(key("name"), "must not be empty");
        } else if let Some(other) = earlier.iter().position(|r| r.name == name) {
            p.push(
                key("name"),
                format!("{name:?} is already the name of routes[{other}]; names label metrics and must be unique"),
            );
        }
        let statuses = match self.cache_status {
            None => crate::cache::policy::DEFAULT_CACHE_STATUSES.to_vec(),
            Some(list) if list.is_empty() => {
                p.push(
                    key("cache_status"),
                    "must not be empty; use cache = false to store nothing",
                );
                vec![]
            }
            Some(list) => {
                for status in &list {
                    match status {
                        206 => p.push(
                            key("cache_status"),
                            "206 cannot be listed: partial responses are never stored as complete",
                        ),
                        200..=599 => {}
                        other => p.push(
                            key("cache_status"),
                            format!("{other} is not a final status (200-599)"),
                        ),
                    }
                }
                list
            }
        };
        let lock_timeout = p.parse(
            &key("lock_timeout"),
            self.lock_timeout.as_deref(),
            DEFAULT_LOCK_TIMEOUT,
            parse_positive_duration,
        );
        let stale_while_revalidate = p.parse(
            &key("stale_while_revalidate"),
            self.stale_while_revalidate.as_deref(),
            Duration::ZERO,
            parse_duration,
        );
        let stale_if_error = p.parse(
            &key("stale_if_error"),
            self.stale_if_error.as_deref(),
            Duration::ZERO,
            parse_duration,
        );
        let key_headers = parse_header_names(p, &key("key_headers"), &self.key_headers);
        let forward_headers = parse_header_names(p, &key("forward_headers"), &self.forward_headers);
        Some(Route {
            name,
            path,
            matcher: matcher?,
            methods,
            ttl,
            cache: self.cache.unwrap_or(true),
            statuses,
            heuristic_freshness: self.heuristic_freshness.unwrap_or(false),
            range_fill: self.range_fill.unwrap_or(false),
            coalesce: self.coalesce.unwrap_or(true),
            lock_timeout,
            stale_while_revalidate,
            stale_if_error,
            key_headers,
            forward_headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[origin]\nurl = \"http://127.0.0.1:3000\"\n";

    fn errors(text: &str) -> Vec<String> {
        Config::from_toml(text).unwrap_err().errors()
    }

    fn with_minimal(extra: &str) -> Vec<String> {
        errors(&format!("{MINIMAL}{extra}"))
    }

    #[test]
    fn defaults_fill_everything_but_the_origin() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.server.listen, DEFAULT_LISTEN);
        assert_eq!(config.server.admin_listen, DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.server.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert_eq!(config.origin.timeout, DEFAULT_ORIGIN_TIMEOUT);
        assert_eq!(config.origin.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.cache.namespace, "default");
        assert_eq!(config.cache.max_object_size, 8 * 1024 * 1024);
        assert_eq!(config.cache.memory.capacity, 256 * 1024 * 1024);
        assert!(config.routes.is_empty());
    }

    #[test]
    fn route_values_are_parsed() {
        let config = Config::from_toml(&format!(
            "{MINIMAL}[[routes]]\npath = \"/users/*\"\nmethods = [\"GET\"]\nttl = \"1m 30s\"\n\
             key_headers = [\"Accept-Language\"]\n[[routes]]\nname = \"rest\"\npath = \"/**\"\ncache = false\n"
        ))
        .unwrap();
        let routes: Vec<_> = config.routes.iter().collect();
        assert_eq!(routes[0].name, "/users/*");
        assert_eq!(routes[0].methods, vec![Method::GET]);
        assert_eq!(routes[0].ttl, Duration::from_secs(90));
        assert_eq!(
            routes[0].key_headers,
            vec![HeaderName::from_static("accept-language")]
        );
        assert!(routes[0].cache);
        assert_eq!(routes[1].name, "rest");
        assert_eq!(routes[1].methods, vec![Method::GET, Method::HEAD]);
        assert!(!routes[1].cache);
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("8MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("512 KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("100"), Ok(100));
    }

    #[test]
    fn unknown_keys_are_all_named_with_their_path() {
        assert_eq!(
            with_minimal(
                "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/b\"\ntll = \"1s\"\n[sever]\nlisten = \"x\"\n"
            ),
            vec!["routes[1].tll: unknown key", "sever: unknown key"]
        );
        assert_eq!(
            with_minimal("[cache.memory]\ncapacty = \"1MiB\"\n"),
            vec!["cache.memory.capacty: unknown key"]
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            with_minimal("[[routes]]\npath = \"/a\"\nttl = 60\n"),
            vec!["routes[0].ttl: invalid type: integer `60`, expected a string"]
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let errors = errors("[origin\nurl = 1");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("toml: "), "{errors:?}");
        assert!(errors[0].contains("line 1"), "{errors:?}");
    }

    #[test]
    fn every_validation_rule_has_its_message() {
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
                "cache.max_object_size: larger than cache.memory.capacity (1048576 bytes), so nothing that size could be kept",
            ),
            (
                "[cache.memory]\ncapacity = \"-1\"",
                "cache.memory.capacity: invalid size \"-1\"; use e.g. \"512KiB\", \"8MiB\", \"1GiB\"",
            ),
            (
                "[[routes]]\nttl = \"1s\"",
                "routes[0].path: missing; e.g. \"/users/*\"",
            ),
            (
                "[[routes]]\npath = \"users\"",
                "routes[0].path: \"users\" must start with \"/\"",
            ),
            (
                "[[routes]]\npath = \"/a/[b\"",
                "routes[0].path: invalid pattern \"/a/[b\": unclosed character class; missing ']'",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = []",
                "routes[0].methods: must not be empty",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = [\"POST\"]",
                "routes[0].methods: \"POST\" cannot be cached; use \"GET\" and/or \"HEAD\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nttl = \"1 fortnight\"",
                "routes[0].ttl: invalid duration \"1 fortnight\" (unknown time unit \"fortnight\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); use e.g. \"250ms\", \"30s\", \"5m\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/a\"",
                "routes[1].name: \"/a\" is already the name of routes[0]; names label metrics and must be unique",
            ),
            (
                "[[routes]]\npath = \"/a\"\nname = \"\"",
                "routes[0].name: must not be empty",
            ),
            (
                "[[routes]]\npath = \"/a\"\nstale_if_error = \"1h\"",
                "routes[0].stale_if_error: longer than cache.keep_stale (10m); stale entries are kept only that long",
            ),
            (
                "[[routes]]\npath = \"/a\"\nlock_timeout = \"0s\"",
                "routes[0].lock_timeout: must be greater than zero",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncache_status = []",
                "routes[0].cache_status: must not be empty; use cache = false to store nothing",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncache_status = [200, 206]",
                "routes[0].cache_status: 206 cannot be listed: partial responses are never stored as complete",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncache_status = [200, 100]",
                "routes[0].cache_status: 100 is not a final status (200-599)",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_headers = [\"bad header\"]",
                "routes[0].key_headers: invalid header name \"bad header\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nforward_headers = [\"x:y\"]",
                "routes[0].forward_headers: invalid header name \"x:y\"",
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

    #[test]
    fn redis_section_is_optional_and_parsed() {
        use fred::prelude::ServerConfig as Servers;
        assert!(Config::from_toml(MINIMAL).unwrap().redis.is_none());
        let config = Config::from_toml(&format!(
            "{MINIMAL}[redis]\nnodes = [\"10.0.0.1:6379\", \"redis-1:6380\"]\ncommand_timeout = \"20ms\"\n"
        ))
        .unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(redis.command_timeout, Duration::from_millis(20));
        assert_eq!(redis.connect_timeout, DEFAULT_REDIS_CONNECT_TIMEOUT);
        assert_eq!(redis.write_queue, DEFAULT_REDIS_WRITE_QUEUE);
        let Servers::Clustered { hosts, .. } = redis.client.server else {
            panic!("cluster")
        };
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].port, 6380);

        let standalone = |extra: &str| {
            Config::from_toml(&format!(
                "{MINIMAL}[redis]\nmode = \"standalone\"\nnodes = [\"127.0.0.1:7000\"]\n{extra}"
            ))
        };
        assert!(matches!(
            standalone("").unwrap().redis.unwrap().client.server,
            Servers::Centralized { .. }
        ));
        let url = Config::from_toml(&format!(
            "{MINIMAL}[redis]\nurl = \"redis-cluster://a:7000?node=b:7001\"\n"
        ))
        .unwrap();
        assert!(matches!(
            url.redis.unwrap().client.server,
            Servers::Clustered { .. }
        ));
    }

    #[test]
    fn redis_validation_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "[redis]\n",
                "redis.nodes: missing; e.g. [\"10.0.0.1:6379\"] (or give redis.url)",
            ),
            ("[redis]\nnodes = []", "redis.nodes: must not be empty"),
            (
                "[redis]\nnodes = [\"redis\"]",
                "redis.nodes: invalid node \"redis\"; use HOST:PORT, e.g. \"10.0.0.1:6379\"",
            ),
            (
                "[redis]\nmode = \"ring\"\nnodes = [\"a:1\"]",
                "redis.mode: unknown mode \"ring\"; use \"cluster\", \"standalone\" or \"sentinel\"",
            ),
            (
                "[redis]\nmode = \"standalone\"\nnodes = [\"a:1\", \"b:2\"]",
                "redis.nodes: standalone mode takes exactly one node",
            ),
            (
                "[redis]\nmode = \"sentinel\"\nnodes = [\"a:1\"]",
                "redis.service_name: missing; sentinel mode needs the monitored master's name",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\nservice_name = \"m\"",
                "redis.service_name: only used with mode = \"sentinel\"",
            ),
            (
                "[redis]\nurl = \"redis://a:1\"\nnodes = [\"a:1\"]",
                "redis.url: give either url, or mode and nodes, not both",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\npassword_env = \"SIDECACHE_TEST_SURELY_UNSET\"",
                "redis.password_env: environment variable SIDECACHE_TEST_SURELY_UNSET is not set",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\ncommand_timeout = \"0ms\"",
                "redis.command_timeout: must be greater than zero",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\nwrite_queue = 0",
                "redis.write_queue: must be at least 1",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                with_minimal(text),
                vec![expected.to_string()],
                "for {text:?}"
            );
        }
        assert_eq!(
            with_minimal("[redis]\nurl = \"http://nope\""),
            vec![
                "redis.url: \"http://nope\": use redis://, rediss://, redis-cluster:// or redis-sentinel://"
            ]
        );
        let url = with_minimal("[redis]\nurl = \"redis-cluster://\"");
        assert!(
            url[0].starts_with("redis.url: invalid Redis URL"),
            "{url:?}"
        );
    }

    #[test]
    fn unknown_keys_and_invalid_values_are_reported_together() {
        assert_eq!(
            errors(
                "[origin]\nurl = \"http://a:1\"\ntimeout = \"0s\"\n[[routes]]\npath = \"/a\"\ntll = \"1s\"\n"
            ),
            vec![
                "routes[0].tll: unknown key",
                "origin.timeout: must be greater than zero"
            ]
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let errors =
            errors("[server]\nmax_connections = 0\n[[routes]]\npath = \"x\"\nttl = \"?\"\n");
        assert_eq!(errors.len(), 4, "{errors:?}");
    }
}
