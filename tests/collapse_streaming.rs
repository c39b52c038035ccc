//! Requests collapsed onto one fetch read its body as it arrives: all at their own pace, broken when the fetch breaks, and only when it may be shared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::{Feed, Origin, Proxy, ProxyConfig, Reply, routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FIVE_MIB: usize = 5 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const WAITERS: usize = 6;

fn route() -> String {
    routes::cache("/s/*", "60s") + "lock_timeout = \"30s\"\n"
}

/// A body whose bytes differ along its length, so a reordered or repeated
/// chunk shows.
fn patterned(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn start(origin: &Origin) -> Arc<Proxy> {
    Arc::new(ProxyConfig::new(origin).with(route()).start().await)
}

/// `count` GETs of `path` sent at once; their responses, bodies still open.
async fn open_all(proxy: &Arc<Proxy>, path: &'static str, count: usize) -> Vec<Response<Incoming>> {
    let opening: Vec<_> = (0..count)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.open(path).await })
        })
        .collect();
    let mut responses = Vec::new();
    for response in opening {
        responses.push(response.await.unwrap());
    }
    responses
}

/// The first bytes of a response's body.
async fn first_bytes(response: &mut Response<Incoming>) -> Bytes {
    let frame = response.body_mut().frame().await.unwrap().unwrap();
    frame.into_data().unwrap()
}

/// The rest of the body, after what was read already.
fn read_rest(
    response: Response<Incoming>,
    read: Bytes,
) -> tokio::task::JoinHandle<Result<Bytes, hyper::Error>> {
    tokio::spawn(async move {
        let rest = response.into_body().collect().await?.to_bytes();
        let mut whole = BytesMut::from(&read[..]);
        whole.extend_from_slice(&rest);
        Ok(whole.freeze())
    })
}

/// Each response's first bytes read, then the rest read on in a task of
/// its own: the whole bodies, as they end.
async fn reading_each(
    mut responses: Vec<Response<Incoming>>,
) -> Vec<tokio::task::JoinHandle<Result<Bytes, hyper::Error>>> {
    let mut first = Vec::new();
    for response in &mut responses {
        first.push(first_bytes(response).await);
    }
    responses
        .into_iter()
        .zip(first)
        .map(|(r, f)| read_rest(r, f))
        .collect()
}

async fn feed_from(feed: &Feed, body: &Bytes, from: usize) {
    for start in (from..body.len()).step_by(CHUNK) {
        feed.send(body.slice(start..(start + CHUNK).min(body.len())))
            .await;
    }
}

/// A fetch under way whose origin has sent its first chunk of a 256 KiB
/// body, and the response of the request that sent it, that chunk read.
struct Fetching {
    feed: Feed,
    body: Bytes,
    leader: Response<Incoming>,
    read: Bytes,
}

impl Fetching {
    /// `reply` for `path`, with a declared length unless `chunked`.
    async fn start(
        origin: &Origin,
        proxy: &Proxy,
        path: &str,
        reply: Reply,
        chunked: bool,
    ) -> Fetching {
        let body = patterned(256 * 1024);
        let length = (!chunked).then_some(body.len());
        let feed = origin.feed(path, reply, length);
        feed.send(body.slice(..CHUNK)).await;
        let mut leader = proxy.open(path).await;
        let read = first_bytes(&mut leader).await;
        Fetching {
            feed,
            body,
            leader,
            read,
        }
    }

    /// Sends the rest of the body: the request that sent the fetch gets
    /// all of it.
    async fn finish(self) {
        let reading = read_rest(self.leader, self.read);
        feed_from(&self.feed, &self.body, CHUNK).await;
        self.feed.end();
        assert!(reading.await.unwrap().unwrap() == self.body);
    }
}

fn cache_statuses(responses: &[Response<Incoming>]) -> Vec<String> {
    let mut statuses: Vec<String> = responses
        .iter()
        .map(|r| r.headers()["cache-status"].to_str().unwrap().to_owned())
        .collect();
    statuses.sort();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_waiters_read_a_slow_body_as_it_arrives_from_one_fetch() {
    let origin = Origin::start().await;
    let body = patterned(FIVE_MIB);
    let feed = origin.feed("/s/fed", Reply::ok(), Some(FIVE_MIB));
    let proxy = start(&origin).await;

    feed.send(body.slice(..CHUNK)).await;
    let mut responses = open_all(&proxy, "/s/fed", WAITERS).await;
    let mut expected = vec!["sidecache; fwd=miss; collapsed".to_owned(); WAITERS - 1];
    expected.push("sidecache; fwd=miss; stored".to_owned());
    assert_eq!(cache_statuses(&responses), expected);
    let mut first = Vec::new();
    for response in &mut responses {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], FIVE_MIB.to_string());
        // The origin holds back everything after its first chunk, so these
        // bytes came while the fetch was still under way.
        let bytes = first_bytes(response).await;
        assert!(!bytes.is_empty() && body.starts_with(&bytes));
        first.push(bytes);
    }
    assert_eq!(origin.hits("/s/fed"), 1);

    let reading: Vec<_> = responses
        .into_iter()
        .zip(first)
        .map(|(r, f)| read_rest(r, f))
        .collect();
    feed_from(&feed, &body, CHUNK).await;
    feed.end();
    for read in reading {
        assert!(
            read.await.unwrap().unwrap() == body,
            "every waiter gets the whole body"
        );
    }
    assert_eq!(origin.hits("/s/fed"), 1, "one origin fetch");
    let hit = proxy.get("/s/fed").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert!(hit.body == body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_broken_mid_body_breaks_every_waiter_and_stores_nothing() {
    let origin = Origin::start().await;
    let body = patterned(1024 * 1024);
    let feed = origin.feed("/s/broken", Reply::ok(), Some(body.len()));
    let proxy = start(&origin).await;

    feed.send(body.slice(..CHUNK)).await;
    let reading = reading_each(open_all(&proxy, "/s/broken", WAITERS).await).await;
    feed.send(body.slice(CHUNK..2 * CHUNK)).await;
    feed.fail().await;
    for read in reading {
        // Content-Length promised more: the client sees an incomplete body.
        assert!(
            read.await.unwrap().is_err(),
            "a broken body never looks complete"
        );
    }
    assert_eq!(origin.hits("/s/broken"), 1);
    let next = proxy.get("/s/broken").await;
    assert_eq!(next.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(next.text(), "/s/broken #2", "nothing was stored");
}

/// A client that reads a response's head and first bytes, then stops
/// reading; its small receive buffer makes the stop felt at once (a
/// default loopback socket would take in megabytes first).
struct Stalled {
    stream: TcpStream,
    /// Everything read so far, head included.
    read: Vec<u8>,
}

impl Stalled {
    async fn open(proxy: &Proxy, path: &str) -> Stalled {
        let url = proxy.url(path);
        let authority = url.trim_start_matches("http://").trim_end_matches(path);
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(authority.parse().unwrap()).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut stalled = Stalled {
            stream,
            read: Vec::new(),
        };
        while stalled.body_read() == 0 {
            stalled.read_some().await;
        }
        stalled
    }

    async fn read_some(&mut self) {
        let mut buffer = [0; 8192];
        let n = self.stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        self.read.extend_from_slice(&buffer[..n]);
    }

    fn head_len(&self) -> Option<usize> {
        self.read
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| at + 4)
    }

    fn head(&self) -> String {
        String::from_utf8_lossy(&self.read[..self.head_len().unwrap()]).into_owned()
    }

    fn body_read(&self) -> usize {
        self.head_len().map_or(0, |head| self.read.len() - head)
    }

    /// Reads on to the end of a body of `len` bytes.
    async fn body(mut self, len: usize) -> Bytes {
        while self.body_read() < len {
            self.read_some().await;
        }
        let head = self.head_len().unwrap();
        Bytes::copy_from_slice(&self.read[head..])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_stops_reading_holds_back_neither_the_fetch_nor_the_others() {
    let origin = Origin::start().await;
    // The most stored by default (8 MiB): far more than the stalled
    // readers' sockets take in.
    let len = 8 * 1024 * 1024;
    let body = patterned(len);
    let feed = origin.feed("/s/stalled", Reply::ok(), Some(len));
    let proxy = start(&origin).await;

    feed.send(body.slice(..CHUNK)).await;
    // The leader's client and one waiter stop reading; the others read on.
    let leader = Stalled::open(&proxy, "/s/stalled").await;
    assert!(
        leader
            .head()
            .contains("cache-status: sidecache; fwd=miss; stored"),
        "{}",
        leader.head()
    );
    let waiter = Stalled::open(&proxy, "/s/stalled").await;
    assert!(
        waiter
            .head()
            .contains("cache-status: sidecache; fwd=miss; collapsed"),
        "{}",
        waiter.head()
    );
    let reading = reading_each(open_all(&proxy, "/s/stalled", WAITERS - 2).await).await;
    feed_from(&feed, &body, CHUNK).await;
    feed.end();
    for read in reading {
        let read = tokio::time::timeout(Duration::from_secs(30), read).await;
        assert!(read.expect("not held back").unwrap().unwrap() == body);
    }
    // The fill finished and stored while two of its readers stood still.
    let hit = proxy.get("/s/stalled").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(origin.hits("/s/stalled"), 1);
    for stalled in [leader, waiter] {
        assert!(
            stalled.body_read() < len / 2,
            "it had stood still: {}",
            stalled.body_read()
        );
        assert!(stalled.body(len).await == body, "and still gets it all");
    }
}

/// Requests joining a fill in the instant it is stored (the race that
/// moving the fill into its own task opens), many times over: every one
/// gets the whole body, none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_joining_fills_as_they_are_stored_all_get_their_bodies() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(route())
        .workers(2)
        .start()
        .await;
    let proxy = Arc::new(proxy);
    let body = patterned(16 * 1024);
    for round in 0..150 {
        let path: &'static str = format!("/s/race{round}").leak();
        origin.on(path, Reply::ok().body(body.clone()));
        let requests = (0..6).map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.get(path).await })
        });
        for request in requests.collect::<Vec<_>>() {
            let answer = tokio::time::timeout(Duration::from_secs(10), request)
                .await
                .expect("a request hung")
                .unwrap();
            assert!(answer.body == body, "{path}: {}", answer.cache_status());
        }
    }
}

/// The fill is read through the leader's client until another request
/// joins: one that joins after that client stopped reading (so nothing
/// reads the origin any more) must set the fetch going again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_joins_after_the_leaders_client_stopped_reading_gets_it_all() {
    let origin = Origin::start().await;
    // Far more than the socket buffers between the origin, the proxy and
    // the stalled client hold (loopback buffers grow to several MiB).
    let len = 32 * 1024 * 1024;
    let body = patterned(len);
    let feed = origin.feed("/s/stood", Reply::ok(), Some(len));
    let proxy = ProxyConfig::new(&origin)
        .with("[cache]\nmax_object_size = \"32MiB\"\n")
        .with(route())
        .start()
        .await;

    feed.send(body.slice(..CHUNK)).await;
    let leader = Stalled::open(&proxy, "/s/stood").await;
    let feeding = {
        let body = body.clone();
        tokio::spawn(async move {
            feed_from(&feed, &body, CHUNK).await;
            feed.end();
        })
    };
    // Real sockets: give the origin time to send all the proxy takes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !feeding.is_finished(),
        "the proxy read the whole body while its only client read nothing"
    );
    let mut waiter = proxy.open("/s/stood").await;
    assert_eq!(
        waiter.headers()["cache-status"],
        "sidecache; fwd=miss; collapsed"
    );
    let first = first_bytes(&mut waiter).await;
    let read = tokio::time::timeout(Duration::from_secs(30), read_rest(waiter, first)).await;
    assert!(read.expect("the waiter was held back").unwrap().unwrap() == body);
    feeding.await.unwrap();
    let hit = proxy.get("/s/stood").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(origin.hits("/s/stood"), 1);
    assert!(leader.body_read() < len / 2, "{}", leader.body_read());
    assert!(
        leader.body(len).await == body,
        "the leader's client gets it all too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_client_leaves_mid_body_leaves_the_fetch_to_the_waiters() {
    let origin = Origin::start().await;
    let body = patterned(1024 * 1024);
    let feed = origin.feed("/s/left", Reply::ok(), Some(body.len()));
    let proxy = start(&origin).await;

    feed.send(body.slice(..CHUNK)).await;
    let mut leader = proxy.open("/s/left").await;
    first_bytes(&mut leader).await;
    let mut followers = open_all(&proxy, "/s/left", 3).await;
    let mut first = Vec::new();
    for follower in &mut followers {
        assert_eq!(
            follower.headers()["cache-status"],
            "sidecache; fwd=miss; collapsed"
        );
        first.push(first_bytes(follower).await);
    }
    drop(leader);
    let reading: Vec<_> = followers
        .into_iter()
        .zip(first)
        .map(|(r, f)| read_rest(r, f))
        .collect();
    feed_from(&feed, &body, CHUNK).await;
    feed.end();
    for read in reading {
        assert!(read.await.unwrap().unwrap() == body);
    }
    assert_eq!(origin.hits("/s/left"), 1);
    assert!(proxy.get("/s/left").await.cache_status().contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_nobody_reads_any_more_is_abandoned() {
    let origin = Origin::start().await;
    let body = patterned(1024 * 1024);
    let feed = origin.feed("/s/abandoned", Reply::ok(), Some(body.len()));
    let proxy = start(&origin).await;

    feed.send(body.slice(..CHUNK)).await;
    let mut responses = open_all(&proxy, "/s/abandoned", 3).await;
    for response in &mut responses {
        first_bytes(response).await;
    }
    drop(responses);
    // The proxy lets go of the origin's body: the feed finds nobody reading.
    support::eventually(
        "the origin body dropped",
        Duration::from_secs(10),
        async || feed.reader_gone(),
    )
    .await;
    let next = proxy.get("/s/abandoned").await;
    assert_eq!(next.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(next.text(), "/s/abandoned #2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_condition_holds_gets_a_304_before_the_body_arrives() {
    let origin = Origin::start().await;
    let proxy = start(&origin).await;
    let reply = Reply::ok().header("etag", "\"v1\"");
    let fetching = Fetching::start(&origin, &proxy, "/s/conditional", reply, false).await;
    let revalidating = proxy
        .send("GET", "/s/conditional", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(revalidating.status, 304);
    assert_eq!(
        revalidating.cache_status(),
        "sidecache; fwd=miss; collapsed"
    );
    fetching.finish().await;
    assert_eq!(origin.hits("/s/conditional"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_the_arriving_variant_does_not_select_fetches_for_itself() {
    let origin = Origin::start().await;
    let proxy = start(&origin).await;
    let reply = Reply::ok()
        .header("vary", "accept-language")
        .echo("accept-language");
    let fetching = Fetching::start(&origin, &proxy, "/s/vary", reply, false).await;
    let other = proxy
        .send("GET", "/s/vary", &[("accept-language", "fr")])
        .await;
    assert_eq!(other.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(other.text(), "/s/vary #2 accept-language=fr");
    fetching.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_is_shared_once_stored() {
    let origin = Origin::start().await;
    let proxy = start(&origin).await;
    let fetching = Fetching::start(&origin, &proxy, "/s/chunked", Reply::ok(), true).await;
    let body = fetching.body.clone();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.get("/s/chunked").await })
        })
        .collect();
    // It might grow past the size limit after they started: they wait for
    // the stored entry (given time to answer early, none has).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(waiting.iter().all(|waiter| !waiter.is_finished()));
    fetching.finish().await;
    for waiter in waiting {
        let answer = waiter.await.unwrap();
        assert_eq!(answer.cache_status(), "sidecache; fwd=miss; collapsed");
        assert!(answer.body == body);
    }
    assert_eq!(origin.hits("/s/chunked"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_answer_still_arriving_is_not_shared_with_waiters() {
    let origin = Origin::start().await;
    let proxy = start(&origin).await;
    let reply = Reply::ok().header("cache-control", "private, max-age=60");
    let fetching = Fetching::start(&origin, &proxy, "/s/private", reply, false).await;
    assert_eq!(
        fetching.leader.headers()["cache-status"],
        "sidecache; fwd=miss; detail=private"
    );
    // While the private body is still arriving, each request fetches its own.
    for hit in 2..=4 {
        let answer = proxy.get("/s/private").await;
        assert_eq!(answer.cache_status(), "sidecache; fwd=miss; detail=private");
        assert_eq!(answer.text(), format!("/s/private #{hit}"));
    }
    fetching.finish().await;
    assert_eq!(origin.hits("/s/private"), 4);
}
