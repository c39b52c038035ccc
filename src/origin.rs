//! The upstream client: pooled HTTP/1.1 to the origin, deadlines, and header hygiene both ways.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use thread_local::ThreadLocal;
use tower_service::Service as _;

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
/// Idle connections kept per worker thread; more are closed when they
/// come back (a burst of concurrency does not pin its sockets forever).
const POOL_MAX_IDLE: usize = 512;

/// The `Via` pseudonym this proxy adds (RFC 9110 §7.6.3).
const VIA_NAME: &str = "sidecache";

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// `proxy-connection` and `keep-alive` are not in the RFC but still sent by old clients.
// A static, not a const: a const array is built (and dropped) at every use.
/// The fields that describe one connection (RFC 9110 §7.6.1), with
/// `Proxy-Connection` and `Upgrade`: never forwarded, in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why the origin gave no response head.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("origin unreachable")]
    Connect(#[source] BoxError),
    #[error("origin connect timed out")]
    ConnectTimeout(#[source] BoxError),
    #[error("origin sent no response head within {0:?}")]
    Timeout(Duration),
    #[error("origin request failed")]
    Request(#[source] hyper::Error),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl OriginError {
    /// Whether a deadline ran out (504) rather than the origin failing (502).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            OriginError::Timeout(_) | OriginError::ConnectTimeout(_)
        )
    }
}

/// The HTTP/1.1 client for the one origin, with a pool of kept-alive
/// connections per worker thread.
///
/// Written on hyper's connection API rather than hyper-util's pooled client:
/// that one hands every request to a pool behind a mutex and, for each
/// response with a body, spawns a task that puts the connection back once
/// it is idle. Here a connection goes back to the pool of the thread that
/// ends its response body, from the body itself; requests on a worker
/// thread use connections whose tasks run on that thread, with no
/// cross-thread wake-ups.
pub struct Origin {
    pool: Arc<Pool>,
    connector: HttpConnector,
    /// Where connections go: the origin URL with an empty path.
    address: Uri,
    /// `Host` for requests that came without one.
    authority: Authority,
    /// Deadline for the response head, connecting included.
    timeout: Duration,
}

impl Origin {
    pub fn new(config: &OriginConfig) -> Origin {
        let parts = config.url.clone().into_parts();
        let scheme = parts.scheme.unwrap_or(Scheme::HTTP);
        let authority = parts
            .authority
            .unwrap_or_else(|| Authority::from_static("127.0.0.1"));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        // Request heads go out at once instead of waiting for Nagle.
        connector.set_nodelay(true);
        let address = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/"));
        Origin {
            pool: Arc::default(),
            connector,
            address,
            authority,
            timeout: config.timeout,
        }
    }

    /// Sends `request` to the origin (only its path and query are used of
    /// its target) and waits for the response head within the deadline.
    pub async fn send(
        &self,
        mut request: Request<OriginBody>,
    ) -> Result<Response<OriginResponseBody>, OriginError> {
        let target = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(target);
        *request.version_mut() = Version::HTTP_11;
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(self.authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        match tokio::time::timeout(self.timeout, self.send_pooled(request)).await {
            Err(_) => Err(OriginError::Timeout(self.timeout)),
            Ok(result) => result,
        }
    }

    /// Sends on an idle pooled connection, or on a new one. A request that a
    /// pooled connection could not even start (the origin closed it while it
    /// was idle) is sent again on a new connection, as it was never seen.
    async fn send_pooled(
        &self,
        request: Request<OriginBody>,
    ) -> Result<Response<OriginResponseBody>, OriginError> {
        let request = match self.pool.checkout() {
            Some(sender) => match self.send_on(sender, request).await {
                Err(NotSent::Unsent(request)) => *request,
                result => return result.map_err(NotSent::into_error),
            },
            None => request,
        };
        let sender = self.connect().await?;
        self.send_on(sender, request)
            .await
            .map_err(NotSent::into_error)
    }

    async fn send_on(
        &self,
        mut sender: SendRequest<OriginBody>,
        request: Request<OriginBody>,
    ) -> Result<Response<OriginResponseBody>, NotSent> {
        match sender.try_send_request(request).await {
            Ok(response) => {
                let pool = self.pool.clone();
                Ok(response.map(|body| OriginResponseBody::new(body, sender, pool)))
            }
            Err(mut error) => match error.take_message() {
                Some(request) => Err(NotSent::Unsent(Box::new(request))),
                None => Err(NotSent::Failed(error.into_error())),
            },
        }
    }

    /// Opens a connection, its task on the calling thread's runtime.
    async fn connect(&self) -> Result<SendRequest<OriginBody>, OriginError> {
        // `HttpConnector` is always ready (its resolver runs per call), so
        // `call` needs no `poll_ready` first.
        let io = self
            .connector
            .clone()
            .call(self.address.clone())
            .await
            .map_err(|error| {
                if caused_by_timeout(&error) {
                    OriginError::ConnectTimeout(error.into())
                } else {
                    OriginError::Connect(error.into())
                }
            })?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|error| OriginError::Connect(error.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "origin connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Why a connection gave no response head.
enum NotSent {
    /// The connection could not start the request (the origin had closed
    /// it): handed back whole, it may be sent again.
    Unsent(Box<Request<OriginBody>>),
    /// The request went out, at least in part; it is not sent again.
    Failed(hyper::Error),
}

impl NotSent {
    fn into_error(self) -> OriginError {
        match self {
            NotSent::Unsent(_) => {
                OriginError::Connect("a new connection closed before the request".into())
            }
            NotSent::Failed(error) => OriginError::Request(error),
        }
    }
}

fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
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

/// Idle kept-alive connections, one stack per thread (the most recently
/// used first, so a steady load keeps few of them warm).
#[derive(Default)]
struct Pool {
    idle: ThreadLocal<RefCell<Vec<Idle>>>,
}

struct Idle {
    sender: SendRequest<OriginBody>,
    since: Instant,
}

impl Pool {
    /// The calling thread's most recently used connection that is ready
    /// for a request; closed and expired ones are dropped on the way.
    fn checkout(&self) -> Option<SendRequest<OriginBody>> {
        let mut idle = self.idle.get_or_default().borrow_mut();
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps a connection whose response has ended for the next request.
    fn put_back(&self, sender: SendRequest<OriginBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.get_or_default().borrow_mut();
        // The oldest is at the bottom: closing one per return keeps a
        // steady load from holding connections it no longer uses.
        if idle
            .first()
            .is_some_and(|oldest| oldest.since.elapsed() >= POOL_IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// A response body from the origin; read to its end, it hands its
/// connection back to the pool.
pub struct OriginResponseBody {
    inner: Incoming,
    /// The connection, until the body has ended (then it goes back) or is
    /// dropped before its end (then the connection closes with it).
    reuse: Option<(SendRequest<OriginBody>, Arc<Pool>)>,
}

impl OriginResponseBody {
    fn new(inner: Incoming, sender: SendRequest<OriginBody>, pool: Arc<Pool>) -> Self {
        let mut body = OriginResponseBody {
            inner,
            reuse: Some((sender, pool)),
        };
        body.release_if_ended();
        body
    }

    fn release_if_ended(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.reuse.take() {
            pool.put_back(sender);
        }
    }
}

impl Body for OriginResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) => this.release_if_ended(),
            Some(Err(_)) => this.reuse = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `name` describes one connection and is never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Compared as text (most fail on the length at once) rather than with
    // each listed `HeaderName`: this runs for every field of every request
    // and response.
    HOP_BY_HOP.contains(&name.as_str())
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `Upgrade` goes too (it is in `is_hop_by_hop`): it only means
    // something together with `Connection: upgrade`, and this proxy does
    // not tunnel protocols. What `Connection` names beyond those is
    // usually nothing (`keep-alive`, `close`), so this stays empty.
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.is_empty()
                && !token.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(token))
        })
        .collect();
    // One pass over the names finds what to remove: each removal is a
    // hash lookup, and most messages hold none of these fields, or one.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            is_hop_by_hop(name) || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The headers `keep` accepts (every value of a kept name), in a new map
/// with `room` for more: the request model's cut of what a cacheable
/// request forwards.
pub fn retained(headers: &HeaderMap, room: usize, keep: impl Fn(&HeaderName) -> bool) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(headers.len() + room);
    for (name, value) in headers.iter().filter(|(name, _)| keep(name)) {
        kept.append(name.clone(), value.clone());
    }
    kept
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client at the other end of one connection: its address, and its
/// `X-Forwarded-For` member, formatted once for all the connection's
/// requests (formatting it per request was ~3 % of a memory hit's
/// instructions).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let forwarded_for = HeaderValue::try_from(addr.ip().to_string())
            // An IP address is always a valid field value.
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            forwarded_for,
        }
    }
}

/// Adds `Via` and the `X-Forwarded-*` headers to a request going upstream.
/// `host` is the host the client asked for, kept as `Host` for the origin.
pub fn add_forwarding_headers(
    headers: &mut HeaderMap,
    version: Version,
    client: &Peer,
    host: &str,
) {
    append_via(headers, version);
    let forwarded_for = match headers.get(X_FORWARDED_FOR) {
        Some(earlier) => joined(earlier, &client.forwarded_for),
        None => Some(client.forwarded_for.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    // An ingress in front may already have said https and the public host.
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if host.is_empty() {
        return;
    }
    // The host the key was built from: HTTP/2 sends `:authority` instead
    // of `Host`, and an absolute-form target overrides `Host` (RFC 9112
    // §3.2.2), so the origin must see the same host the entry is keyed by.
    // Most often it is the client's one `Host` as it came, kept as it is.
    let mut sent = headers.get_all(header::HOST).iter();
    let value = match (sent.next(), sent.next()) {
        (Some(sent), None) if sent.as_bytes() == host.as_bytes() => sent.clone(),
        _ => match HeaderValue::from_str(host) {
            Ok(value) => {
                headers.insert(header::HOST, value.clone());
                value
            }
            Err(_) => return,
        },
    };
    if !headers.contains_key(X_FORWARDED_HOST) {
        headers.insert(X_FORWARDED_HOST, value);
    }
}

/// Appends this proxy to `Via` (RFC 9110 §7.6.3), in requests and responses.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let ours = match version {
        Version::HTTP_10 => "1.0 sidecache",
        Version::HTTP_2 => "2 sidecache",
        Version::HTTP_3 => "3 sidecache",
        _ => "1.1 sidecache",
    };
    debug_assert!(ours.ends_with(VIA_NAME));
    let value = match headers.get(header::VIA) {
        Some(earlier) => joined(earlier, ours),
        None => Some(HeaderValue::from_static(ours)),
    };
    if let Some(value) = value {
        headers.insert(header::VIA, value);
    }
}

/// `earlier, ours`: a list-valued field with one more member.
pub fn joined(earlier: &HeaderValue, ours: impl AsRef<[u8]>) -> Option<HeaderValue> {
    let ours = ours.as_ref();
    let mut value = Vec::with_capacity(earlier.len() + 2 + ours.len());
    value.extend_from_slice(earlier.as_bytes());
    value.extend_from_slice(b", ");
    value.extend_from_slice(ours);
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
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
    fn every_listed_field_is_hop_by_hop_and_lookalikes_are_not() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "upgrade-insecure-requests",
            "tes",
            "trailers",
            "x-connection",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        let mut h = headers(&[("connection", "Keep-Alive, close"), ("keep-alive", "5")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn forwarding_headers_append_to_what_came_before() {
        let mut h = headers(&[("x-forwarded-for", "10.0.0.1"), ("via", "1.1 ingress")]);
        add_forwarding_headers(
            &mut h,
            Version::HTTP_11,
            &Peer::new("192.0.2.7:5555".parse().unwrap()),
            "shop.example",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["via"], "1.1 ingress, 1.1 sidecache");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["host"], "shop.example");
    }

    #[test]
    fn the_origin_gets_one_host_the_keyed_one() {
        let client = Peer::new("192.0.2.7:5555".parse().unwrap());
        for sent in [
            &[("host", "shop.example")][..],
            &[("host", "shop.example"), ("host", "other.example")],
            &[("host", "Shop.Example:80")],
            &[],
        ] {
            let mut h = headers(sent);
            add_forwarding_headers(&mut h, Version::HTTP_11, &client, "shop.example");
            let hosts: Vec<_> = h.get_all("host").iter().collect();
            assert_eq!(hosts, ["shop.example"], "{sent:?}");
            assert_eq!(h["x-forwarded-host"], "shop.example");
        }
    }

    #[test]
    fn retained_keeps_every_value_of_kept_names() {
        let h = headers(&[("accept", "a"), ("cookie", "c"), ("accept", "b")]);
        let h = retained(&h, 0, |name| name == header::ACCEPT);
        assert_eq!(
            h.get_all("accept").iter().collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert!(!h.contains_key("cookie"));
    }
}
