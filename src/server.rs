//! Listeners: accept loops for the proxy and admin ports, connection limit, bounds on request heads and slow clients, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::body::{self, BoxError, ProxyBody};
use crate::config::{ClientLimits, DEFAULT_MAX_HEADERS};
use crate::metrics::Metrics;

/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}

/// How one listener runs and stops.
pub struct Limits {
    /// Connections served at once, shared by the listeners of one port;
    /// further clients wait in the backlog.
    pub connections: Arc<Semaphore>,
    /// Time open connections get to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// What one client may send before it is served, and how long it may take.
    pub client: ClientLimits,
    /// Where refused requests and closed connections are counted.
    pub metrics: Arc<Metrics>,
}

/// hyper's smallest HTTP/1 read buffer (it panics below it).
const HYPER_MIN_BUF_SIZE: usize = 8192;

/// The HTTP/1 and h2 settings that bound what one client can make this
/// process hold, and for how long.
fn builder(limits: &ClientLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    // No hyper timer: its header read timeout arms a timer for every
    // request (about 5 % of a pass-through's CPU); `Watchdog` bounds the
    // first head and idle connections without one.
    http1
        // hyper answers 431 and closes once its read buffer is full and the
        // head still incomplete. The buffer can grow past this before it
        // looks, so `head_fits` checks the exact size of heads it parsed.
        .max_buf_size(limits.max_header_size.max(HYPER_MIN_BUF_SIZE));
    // At its default hyper parses fields into a stack array; any other
    // value costs a heap allocation per request.
    if limits.max_headers != DEFAULT_MAX_HEADERS {
        http1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // h2 answers a larger header list with 431 itself.
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        // h2 has no idle timeout: ping a quiet connection instead, and
        // close it when the ping goes unanswered (hyper's 20 s), so dead
        // peers do not hold connections.
        .keep_alive_interval(limits.idle_timeout);
    builder
}

/// Bytes of a request head as HTTP/1.1 writes it: the request line and
/// each field as `name: value` and CRLF.
fn head_size(request: &Request<Incoming>) -> usize {
    const VERSION_AND_SPACES: usize = " HTTP/1.1\r\n".len() + 1;
    const FIELD_PUNCTUATION: usize = ": \r\n".len();
    let uri = request.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_PUNCTUATION)
        .sum();
    let blank_line = "\r\n".len();
    request.method().as_str().len() + target + VERSION_AND_SPACES + fields + blank_line
}

/// Whether a parsed request head is within the limits. hyper refuses most
/// heads beyond them before they are parsed; this catches the rest, so a
/// client sees the same 431 at exactly the configured bound.
fn head_fits(request: &Request<Incoming>, limits: &ClientLimits) -> bool {
    request.headers().len() <= limits.max_headers && head_size(request) <= limits.max_header_size
}

/// The `client_rejections` reason of a 431.
const HEAD_TOO_LARGE: &str = "head-too-large";

/// Which limit a connection that hyper ended with `error` ran into, if
/// any: hyper answers a head it cannot buffer with 431 and one it cannot
/// parse with 400 itself, before the service sees a request. A client
/// that went away is not counted.
fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if error.is_parse_too_large() {
        Some(HEAD_TOO_LARGE)
    } else if error.is_parse() {
        Some("malformed")
    } else {
        None
    }
}

/// 431, as hyper answers a head it cannot buffer; an HTTP/1 connection is
/// closed after it, as hyper's is.
fn head_too_large(version: Version) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// What a connection is doing, for its idle timeout; kept with two
/// atomics per request instead of a timer per request.
struct Activity {
    /// When the connection was accepted: `idle_since` counts from it.
    opened: Instant,
    /// Requests whose responses are not yet written to their end.
    in_flight: AtomicUsize,
    /// Whether a request head ever arrived.
    served: AtomicBool,
    /// When the last response ended, in nanoseconds since `opened`.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
        }
    }

    /// How long the connection has had no request under way; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(since))
    }
}

/// One request under way on a connection, from its head until its
/// response body is written (or dropped).
struct Tracked(Arc<Activity>);

impl Tracked {
    fn start(activity: Arc<Activity>) -> Tracked {
        activity.served.store(true, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Tracked(activity)
    }

    fn with(self, body: ProxyBody) -> TrackedBody {
        TrackedBody {
            body,
            _request: self,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let activity = &self.0;
        // Saturates at u64 nanoseconds: 584 years of connection.
        let now = u64::try_from(activity.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        activity.idle_since.store(now, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that ends its request's [`Tracked`] when dropped.
struct TrackedBody {
    body: ProxyBody,
    _request: Tracked,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why the [`Watchdog`] closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    /// No complete first request head within the header read timeout.
    HeaderTimeout,
    /// No request under way for the idle timeout.
    IdleTimeout,
}

impl Closed {
    /// The `client_rejections` reason.
    fn as_str(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header-timeout",
            Closed::IdleTimeout => "idle-timeout",
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Closed::HeaderTimeout => "no request head within the header read timeout",
            Closed::IdleTimeout => "idle timeout",
        })
    }
}

/// Closes a connection whose client is too slow to send its first request
/// head (slowloris), or that has had no request under way for the idle
/// timeout (which also bounds a later head sent slowly, as that request is
/// not under way until its head is complete). An h2 connection with no
/// open stream is idle too.
struct Watchdog {
    activity: Arc<Activity>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl Watchdog {
    fn new(activity: Arc<Activity>, limits: &ClientLimits) -> Watchdog {
        Watchdog {
            activity,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// Resolves when the connection should be closed, saying why.
    async fn run(self) -> Closed {
        tokio::time::sleep(self.header_read_timeout).await;
        if !self.activity.served.load(Ordering::Relaxed) {
            return Closed::HeaderTimeout;
        }
        loop {
            let wait = match self.activity.idle_for() {
                Some(idle) if idle >= self.idle_timeout => return Closed::IdleTimeout,
                Some(idle) => self.idle_timeout - idle,
                None => self.idle_timeout,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Accepts connections on `listener` and serves each with `handler`
/// (HTTP/1.1 or h2c, detected per connection) until `shutdown` turns true;
/// then stops accepting and waits up to the grace period for open
/// connections to finish their requests.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = builder(&limits.client);
    let client_limits = limits.client;
    let graceful = GracefulShutdown::new();
    let permits = limits.connections;
    let metrics = limits.metrics;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        // Small responses go out at once instead of waiting for Nagle.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let handler = handler.clone();
        let activity = Arc::new(Activity::new());
        let watchdog = Watchdog::new(activity.clone(), &client_limits);
        let refused = metrics.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let version = request.version();
            let response = head_fits(&request, &client_limits).then(|| handler(request, client));
            if response.is_none() {
                tracing::debug!(%client, "request head over the limits: 431");
                refused.client_rejection(HEAD_TOO_LARGE);
            }
            let tracked = Tracked::start(activity.clone());
            async move {
                let response = match response {
                    Some(response) => response.await,
                    None => head_too_large(version),
                };
                Ok::<_, Infallible>(response.map(|body| tracked.with(body)))
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(error) = ended {
                    tracing::debug!(%client, error = %error, "connection ended with an error");
                    if let Some(reason) = refusal(&*error) {
                        metrics.client_rejection(reason);
                    }
                },
                // Dropping the connection closes it, unanswered.
                closed = watchdog.run() => {
                    tracing::debug!(%client, "connection closed: {closed}");
                    metrics.client_rejection(closed.as_str());
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "shutdown grace over; closing remaining connections");
        }
    }
}
