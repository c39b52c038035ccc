//! Test harness: a real origin that counts hits and misbehaves on request, the real proxy on port 0, and a client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod redis;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::{self, Display};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sidecache::Running;
use sidecache::clock::Clock;
use sidecache::config::Config;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What the origin answers on one path.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// `None`: the default body, "`path` #`hit`".
    body: Option<Bytes>,
    /// Wait before sending the response head.
    head_delay: Duration,
    /// Send the body in chunks of this size with this pause between them.
    slow: Option<(usize, Duration)>,
    /// Send only this many bytes, then break the connection.
    truncate_after: Option<usize>,
    /// Leave out Content-Length (chunked encoding).
    chunked: bool,
    /// Send this `ETag` and answer a matching `If-None-Match` with 304.
    etag: Option<String>,
    /// Add this request header's value to the default body, as an app
    /// that renders by it does.
    echo: Option<String>,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            status: 200,
            headers: vec![],
            body: None,
            head_delay: Duration::ZERO,
            slow: None,
            truncate_after: None,
            chunked: false,
            etag: None,
            echo: None,
        }
    }
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::default()
    }
    pub fn status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = Some(body.into());
        self
    }
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.head_delay = delay;
        self
    }
    pub fn slow(mut self, chunk: usize, pause: Duration) -> Reply {
        self.slow = Some((chunk, pause));
        self
    }
    pub fn truncate_after(mut self, bytes: usize) -> Reply {
        self.truncate_after = Some(bytes);
        self
    }
    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }
    /// Validates with this entity tag (give it quoted: "\"v1\"").
    /// The default body ends with " `name`=`value`" of this request header
    /// ("-" when absent).
    pub fn echo(mut self, name: &str) -> Reply {
        self.echo = Some(name.into());
        self
    }

    pub fn etag(mut self, tag: &str) -> Reply {
        self.etag = Some(tag.into());
        self
    }
}

/// What the origin knows about one path: how to answer it and what it saw.
#[derive(Default)]
struct PathState {
    reply: Reply,
    hits: usize,
    last_headers: HeaderMap,
    /// Path and query of the last request.
    last_target: String,
    /// Bodies sent to their end (or their break).
    finished: usize,
    /// 304 answers.
    not_modified: usize,
    /// A body the test sends by hand for the next request, and the length
    /// its head declares (`None`: chunked).
    fed: Option<(FedBody, Option<usize>)>,
}

type FedBody = mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>;

/// The body of an answer the test sends by hand ([`Origin::feed`]).
pub struct Feed(mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>);

impl Feed {
    /// Sends the next chunk of the body; waits while the reader is behind.
    pub async fn send(&self, chunk: impl Into<Bytes>) {
        self.0
            .send(Ok(Frame::data(chunk.into())))
            .await
            .expect("the proxy still reads the body");
    }

    /// Breaks the body off here: the origin drops the connection.
    pub async fn fail(self) {
        let _ = self
            .0
            .send(Err(std::io::Error::other("broken off on purpose")))
            .await;
    }

    /// Whether the body's reader is gone: the proxy dropped the response.
    pub fn reader_gone(&self) -> bool {
        self.0.is_closed()
    }

    /// Ends the body (dropping the feed does the same).
    pub fn end(self) {}
}

/// The origin's state: one entry per path, shared with its connections.
#[derive(Clone, Default)]
struct Paths(Arc<Mutex<HashMap<String, PathState>>>);

impl Paths {
    /// One field of `path`'s state; its default for a path never seen.
    fn read<T: Default>(&self, path: &str, field: impl FnOnce(&PathState) -> T) -> T {
        self.0
            .lock()
            .unwrap()
            .get(path)
            .map(field)
            .unwrap_or_default()
    }

    /// Changes `path`'s state, starting from the default for a path never seen.
    fn update<T>(&self, path: &str, change: impl FnOnce(&mut PathState) -> T) -> T {
        change(self.0.lock().unwrap().entry(path.into()).or_default())
    }
}

/// A real HTTP origin on a loopback port that counts requests per path.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    paths: Paths,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Stamps `Date` on every answer; proxies started with
    /// [`ProxyConfig::new`] share it, so moving it ages their entries.
    clock: Clock,
}

impl Origin {
    pub async fn start() -> Origin {
        init_logging();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = Origin {
            addr,
            paths: Paths::default(),
            connections: Arc::default(),
            clock: Clock::default(),
        };
        let server = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                server.connections.fetch_add(1, Ordering::Relaxed);
                // The body goes out as its own frame after the head: without
                // this, Nagle holds it for the proxy's delayed ACK (40 ms).
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.respond(request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        origin
    }

    /// Answers `path` with `reply` from now on.
    pub fn on(&self, path: &str, reply: Reply) {
        self.paths.update(path, |state| state.reply = reply);
    }

    /// Connections the origin has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests the origin has seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.paths.read(path, |state| state.hits)
    }

    /// Headers of the last request for `path`.
    pub fn last_headers(&self, path: &str) -> HeaderMap {
        self.paths.read(path, |state| state.last_headers.clone())
    }

    /// Path and query of the last request for `path`.
    pub fn last_target(&self, path: &str) -> String {
        self.paths.read(path, |state| state.last_target.clone())
    }

    /// Requests for `path` answered with 304 Not Modified.
    pub fn not_modified(&self, path: &str) -> usize {
        self.paths.read(path, |state| state.not_modified)
    }

    /// Bodies for `path` sent to their end.
    pub fn finished(&self, path: &str) -> usize {
        self.paths.read(path, |state| state.finished)
    }

    /// Waits (bounded) until the origin has seen `count` requests for `path`.
    pub async fn wait_for_hits(&self, path: &str, count: usize) {
        let seen = lazy_message(|| {
            format!(
                "{count} requests for {path}; the origin saw {}",
                self.hits(path)
            )
        });
        eventually(seen, Duration::from_secs(5), async || {
            self.hits(path) >= count
        })
        .await;
    }

    /// Answers the next request for `path` with `reply`'s head, declaring
    /// `length` bytes (`None`: chunked), and a body the test sends by hand
    /// through the returned feed. Later requests get `reply` as usual.
    pub fn feed(&self, path: &str, reply: Reply, length: Option<usize>) -> Feed {
        let (sender, receiver) = mpsc::channel(4);
        self.paths.update(path, |state| {
            state.reply = reply;
            state.fed = Some((receiver, length));
        });
        Feed(sender)
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<ChannelBody> {
        let path = request.uri().path().to_owned();
        let (reply, hit, fed) = self.paths.update(&path, |state| {
            state.hits += 1;
            state.last_headers = request.headers().clone();
            state.last_target = request.uri().to_string();
            (state.reply.clone(), state.hits, state.fed.take())
        });
        tokio::time::sleep(reply.head_delay).await;
        if let Some((body, length)) = fed {
            let mut response = Response::builder()
                .status(reply.status)
                .header("date", httpdate::fmt_http_date(self.clock.now()));
            for (name, value) in &reply.headers {
                response = response.header(name, value);
            }
            if let Some(length) = length {
                response = response.header("content-length", length);
            }
            return response.body(ChannelBody(body)).unwrap();
        }
        if let Some(etag) = &reply.etag {
            let matches = request
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v.to_str().unwrap().split(',').any(|t| t.trim() == etag));
            if matches {
                self.paths.update(&path, |state| state.not_modified += 1);
                let mut response = Response::builder()
                    .status(304)
                    .header("etag", etag)
                    .header("date", httpdate::fmt_http_date(self.clock.now()));
                for (name, value) in &reply.headers {
                    response = response.header(name, value);
                }
                let (_, receiver) = mpsc::channel(1);
                return response.body(ChannelBody(receiver)).unwrap();
            }
        }
        let body = reply.body.clone().unwrap_or_else(|| {
            let echoed = reply.echo.as_ref().map_or(String::new(), |name| {
                let value = request.headers().get(name.as_str());
                let value = value.map_or("-", |v| v.to_str().unwrap());
                format!(" {name}={value}")
            });
            Bytes::from(format!("{path} #{hit}{echoed}"))
        });
        let mut response = Response::builder().status(reply.status);
        for (name, value) in &reply.headers {
            response = response.header(name, value);
        }
        if !reply
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("date"))
        {
            response = response.header("date", httpdate::fmt_http_date(self.clock.now()));
        }
        if !reply.chunked {
            response = response.header("content-length", body.len());
        }
        if let Some(etag) = &reply.etag {
            response = response.header("etag", etag);
        }
        let (sender, receiver) = mpsc::channel(4);
        let paths = self.paths.clone();
        tokio::spawn(async move {
            let end = reply.truncate_after.unwrap_or(body.len()).min(body.len());
            let chunk = reply.slow.map_or(end.max(1), |(chunk, _)| chunk);
            let mut sent = 0;
            while sent < end {
                if let Some((_, pause)) = reply.slow.filter(|_| sent > 0) {
                    tokio::time::sleep(pause).await;
                }
                let next = (sent + chunk).min(end);
                if sender
                    .send(Ok(Frame::data(body.slice(sent..next))))
                    .await
                    .is_err()
                {
                    break;
                }
                sent = next;
            }
            if reply.truncate_after.is_some() {
                let _ = sender
                    .send(Err(std::io::Error::other("truncated on purpose")))
                    .await;
            }
            paths.update(&path, |state| state.finished += 1);
        });
        response.body(ChannelBody(receiver)).unwrap()
    }
}

/// A response body fed from a channel, so the origin can pause or break it.
pub struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// Config text for a proxy on loopback port 0 in front of `origin`.
pub struct ProxyConfig {
    origin_url: String,
    /// The origin's clock, so that both age together.
    clock: Clock,
    origin_timeout: &'static str,
    shutdown_grace: &'static str,
    shutdown_delay: &'static str,
    /// `server.workers`; `None` leaves the default (one per core).
    workers: Option<usize>,
    /// More `[server]` lines (see [`ProxyConfig::server`]).
    server: String,
    rest: String,
}

impl ProxyConfig {
    pub fn new(origin: &Origin) -> ProxyConfig {
        ProxyConfig {
            clock: origin.clock.clone(),
            ..ProxyConfig::for_url(&format!("http://{}", origin.addr))
        }
    }
    pub fn for_url(url: &str) -> ProxyConfig {
        ProxyConfig {
            origin_url: url.into(),
            clock: Clock::default(),
            origin_timeout: "5s",
            shutdown_grace: "10s",
            shutdown_delay: "0s",
            workers: None,
            server: String::new(),
            rest: String::new(),
        }
    }
    pub fn origin_timeout(mut self, timeout: &'static str) -> ProxyConfig {
        self.origin_timeout = timeout;
        self
    }
    pub fn shutdown_grace(mut self, grace: &'static str) -> ProxyConfig {
        self.shutdown_grace = grace;
        self
    }
    pub fn shutdown_delay(mut self, delay: &'static str) -> ProxyConfig {
        self.shutdown_delay = delay;
        self
    }
    pub fn workers(mut self, workers: usize) -> ProxyConfig {
        self.workers = Some(workers);
        self
    }
    /// One more `[server]` key, e.g. `idle_timeout = "500ms"`.
    pub fn server(mut self, line: &str) -> ProxyConfig {
        self.server.push_str(line);
        self.server.push('\n');
        self
    }
    /// More TOML: `[cache]` settings and `[[routes]]` (see [`routes`]).
    pub fn with(mut self, toml: impl AsRef<str>) -> ProxyConfig {
        self.rest.push_str(toml.as_ref());
        self.rest.push('\n');
        self
    }
    pub fn toml(&self) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"{}\"\nshutdown_delay = \"{}\"\n{}{}\
             [origin]\nurl = \"{}\"\nconnect_timeout = \"1s\"\ntimeout = \"{}\"\n{}",
            self.shutdown_grace,
            self.shutdown_delay,
            self.workers
                .map_or(String::new(), |n| format!("workers = {n}\n")),
            self.server,
            self.origin_url,
            self.origin_timeout,
            self.rest
        )
    }
    pub async fn start(self) -> Proxy {
        let config =
            Config::from_toml(&self.toml()).unwrap_or_else(|e| panic!("{e}\n{}", self.toml()));
        Proxy {
            running: sidecache::start_with_clock(config, self.clock.clone())
                .await
                .unwrap(),
            client: client(),
            clock: self.clock,
        }
    }
}

/// `[[routes]]` snippets for [`ProxyConfig::with`].
pub mod routes {
    /// The route named `users`, as the metrics label it: `/users/*` for 60 s.
    pub const USERS: &str = "[[routes]]\nname = \"users\"\npath = \"/users/*\"\nttl = \"60s\"\n";

    /// A route that caches `path` for `ttl`; append lines for more of its keys.
    pub fn cache(path: &str, ttl: &str) -> String {
        format!("[[routes]]\npath = \"{path}\"\nttl = \"{ttl}\"\n")
    }
}

/// A running proxy and a client for it.
pub struct Proxy {
    pub running: Running,
    pub client: LegacyClient<HttpConnector, Full<Bytes>>,
    /// The clock its entries age by, shared with its origin.
    clock: Clock,
}

/// A fully read response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> LegacyClient<HttpConnector, Full<Bytes>> {
    LegacyClient::builder(TokioExecutor::new()).build_http()
}

impl Proxy {
    /// A client for a proxy the test started itself.
    pub fn around(running: Running) -> Proxy {
        Proxy {
            running,
            client: client(),
            clock: Clock::default(),
        }
    }

    /// Lets `by` pass for what the proxy and its origin have stored: where
    /// freshness running out is the subject, without waiting for it.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr())
    }

    /// Sends a request through the proxy and reads the whole answer.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(
            self.client
                .request(request.body(Full::default()).unwrap())
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[]).await
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn open(&self, path: &str) -> Response<Incoming> {
        self.try_open(path).await.unwrap()
    }

    /// Like `open`, but a connection the proxy broke is an `Err`.
    pub async fn try_open(
        &self,
        path: &str,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client
            .request(Request::get(self.url(path)).body(Full::default()).unwrap())
            .await
    }

    pub async fn admin(&self, path: &str) -> Answer {
        let request = Request::get(self.admin_url(path))
            .body(Full::default())
            .unwrap();
        read(self.client.request(request).await.unwrap()).await
    }

    /// `POST` on the admin port, e.g. `/purge?tag=a&soft=1`.
    pub async fn admin_post(&self, path: &str) -> Answer {
        let request = Request::post(self.admin_url(path))
            .body(Full::default())
            .unwrap();
        read(self.client.request(request).await.unwrap()).await
    }

    /// `POST /purge?url=URL` on the admin port.
    pub async fn purge(&self, url: &str) -> Answer {
        let url = percent_encoding::utf8_percent_encode(url, percent_encoding::NON_ALPHANUMERIC);
        let request = Request::post(self.admin_url(&format!("/purge?url={url}")))
            .body(Full::default())
            .unwrap();
        read(self.client.request(request).await.unwrap()).await
    }
}

pub async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// An HTTP/2 (h2c, prior knowledge) GET through the proxy.
pub async fn get_h2(proxy: &Proxy, path: &str) -> Answer {
    let client: LegacyClient<HttpConnector, Empty<Bytes>> =
        LegacyClient::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let response = client
        .request(Request::get(proxy.url(path)).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    read(response).await
}

/// Logs to the test's output (shown on failure); `RUST_LOG` filters.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Proxy {
    /// The value of one series (`name{labels}`, as rendered) in the proxy's
    /// `/metrics`; 0 while it is absent.
    pub async fn metric(&self, series: &str) -> u64 {
        self.admin("/metrics")
            .await
            .text()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits (bounded) until the proxy's Redis client reports its connections up.
    pub async fn wait_redis_connected(&self) {
        eventually(
            "the proxy to connect to Redis",
            Duration::from_secs(15),
            async || {
                let metrics = self.admin("/metrics").await.text();
                metrics
                    .lines()
                    .any(|line| line == "sidecache_redis_connected 1")
            },
        )
        .await;
    }
}

/// Shortest and longest pause between two checks of `eventually`: quick to
/// notice what happens at once, cheap over a long wait (some checks start
/// `redis-cli` processes).
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Checks `check` until it holds; fails the test with `what` when it still
/// does not after `limit`. The limit is wall time, as what tests wait for is
/// real work on sockets and processes. `what` is formatted only on failure,
/// so it can report the state then (see [`lazy_message`]).
pub async fn eventually(what: impl Display, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut pause = FIRST_PAUSE;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// [`eventually`] for blocking code. The Redis harness needs it: it drives
/// `redis-server` and `redis-cli` with blocking process calls, run from
/// `spawn_blocking`, so its waits must block the thread, not await.
pub fn eventually_blocking(what: impl Display, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut pause = FIRST_PAUSE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// A message built only when it is shown, from the state at that time.
pub fn lazy_message(message: impl Fn() -> String) -> impl Display {
    struct Lazy<F>(F);
    impl<F: Fn() -> String> Display for Lazy<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&(self.0)())
        }
    }
    Lazy(message)
}
