//! The upstream client: pooled HTTP/1.1 to the origin, deadlines, and header hygiene both ways.

use std::error::Error as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thread_local::ThreadLocal;

use crate::config::OriginConfig;

/// Body of a request sent upstream: the client's streamed body, or an empty one.
pub type OriginBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// The body of a request that sends none (a cacheable GET or HEAD, a refresh).
pub fn no_body() -> OriginBody {
    use http_body_util::BodyExt as _;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// How long an idle pooled connection to the origin is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The `Via` pseudonym this proxy adds (RFC 9110 §7.6.3).
const VIA_NAME: &str = "sidecache";

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// `proxy-connection` and `keep-alive` are not in the RFC but still sent by old clients.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Why the origin gave no response head.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin unreachable")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("origin connect timed out")]
    ConnectTimeout(#[source] hyper_util::client::legacy::Error),
    #[error("origin sent no response head within {0:?}")]
    Timeout(Duration),
    #[error("origin request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
}

impl OriginError {
    /// Whether a deadline ran out (504) rather than the origin failing (502).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            OriginError::Timeout(_) | OriginError::ConnectTimeout(_)
        )
    }
}

/// The pooled client for the one origin.
pub struct Origin {
    /// One client, and so one connection pool, per worker thread: a pooled
    /// connection is driven by a task on the runtime that opened it, and a
    /// request from another thread's runtime would wake that one each time.
    clients: ThreadLocal<Client<HttpConnector, OriginBody>>,
    connect_timeout: Duration,
    scheme: Scheme,
    authority: Authority,
    /// Deadline for the response head.
    timeout: Duration,
}

impl Origin {
    pub fn new(config: &OriginConfig) -> Origin {
        let parts = config.url.clone().into_parts();
        Origin {
            clients: ThreadLocal::new(),
            connect_timeout: config.connect_timeout,
            scheme: parts.scheme.unwrap_or(Scheme::HTTP),
            authority: parts
                .authority
                .unwrap_or_else(|| Authority::from_static("127.0.0.1")),
            timeout: config.timeout,
        }
    }

    /// Sends `request` (whose URI holds only a path and query) to the origin
    /// and waits for the response head within the deadline.
    pub async fn send(
        &self,
        mut request: Request<OriginBody>,
    ) -> Result<Response<Incoming>, OriginError> {
        let mut uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if let Some(path_and_query) = request.uri().path_and_query() {
            uri = uri.path_and_query(path_and_query.clone());
        }
        *request.uri_mut() = uri.build().unwrap_or_else(|_| request.uri().clone());
        *request.version_mut() = Version::HTTP_11;
        let client = self.clients.get_or(|| self.client());
        match tokio::time::timeout(self.timeout, client.request(request)).await {
            Err(_) => Err(OriginError::Timeout(self.timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() && caused_by_timeout(&error) => {
                Err(OriginError::ConnectTimeout(error))
            }
            Ok(Err(error)) if error.is_connect() => Err(OriginError::Connect(error)),
            Ok(Err(error)) => Err(OriginError::Request(error)),
        }
    }
}

impl Origin {
    /// A client with its own pool, for the calling thread.
    fn client(&self) -> Client<HttpConnector, OriginBody> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector)
    }
}

fn caused_by_timeout(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether `name` describes one connection and is never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // `Upgrade` only means something together with `Connection: upgrade`,
    // which was just removed; this proxy does not tunnel protocols.
    headers.remove(header::UPGRADE);
}

/// Keeps only the headers `keep` accepts (every value of a kept name): the
/// request model's cut of what a cacheable request forwards.
pub fn retain_headers(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    let mut kept = HeaderMap::with_capacity(headers.len());
    let mut current: Option<HeaderName> = None;
    for (name, value) in std::mem::take(headers) {
        if let Some(name) = name {
            current = Some(name);
        }
        if let Some(name) = current.as_ref().filter(|name| keep(name)) {
            kept.append(name.clone(), value);
        }
    }
    *headers = kept;
}

/// Adds `Via` and the `X-Forwarded-*` headers to a request going upstream.
/// `host` is the host the client asked for, kept as `Host` for the origin.
pub fn add_forwarding_headers(
    headers: &mut HeaderMap,
    version: Version,
    client: SocketAddr,
    host: &str,
) {
    append_via(headers, version);
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    // An ingress in front may already have said https and the public host.
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Ok(value) = HeaderValue::from_str(host)
        && !host.is_empty()
    {
        if !headers.contains_key("x-forwarded-host") {
            headers.insert("x-forwarded-host", value.clone());
        }
        // The host the key was built from: HTTP/2 sends `:authority` instead
        // of `Host`, and an absolute-form target overrides `Host` (RFC 9112
        // §3.2.2), so the origin must see the same host the entry is keyed by.
        headers.insert(header::HOST, value);
    }
}

/// Appends this proxy to `Via` (RFC 9110 §7.6.3), in requests and responses.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let protocol = match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    let entry = format!("{protocol} {VIA_NAME}");
    let value = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {entry}"),
        None => entry,
    };
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(header::VIA, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::headers;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("accept", "text/html"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["accept"]
        );
    }

    #[test]
    fn forwarding_headers_append_to_what_came_before() {
        let mut h = headers(&[("x-forwarded-for", "10.0.0.1"), ("via", "1.1 ingress")]);
        add_forwarding_headers(
            &mut h,
            Version::HTTP_11,
            "192.0.2.7:5555".parse().unwrap(),
            "shop.example",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["via"], "1.1 ingress, 1.1 sidecache");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["host"], "shop.example");
    }

    #[test]
    fn retain_keeps_every_value_of_kept_names() {
        let mut h = headers(&[("accept", "a"), ("cookie", "c"), ("accept", "b")]);
        retain_headers(&mut h, |name| name == header::ACCEPT);
        assert_eq!(
            h.get_all("accept").iter().collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert!(!h.contains_key("cookie"));
    }
}
