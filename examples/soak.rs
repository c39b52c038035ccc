//! The origin, load driver and checker of `bench/soak.sh`: versioned bodies, mixed traffic through the pods, every answer checked.
//!
//! One process plays both ends so that the checker knows every version the
//! origin has made current and when each was purged:
//!
//! - **origin** (`--origin ADDR`): `GET /soak/{i}` answers the path's current
//!   version: a body naming path and version with deterministic padding,
//!   `ETag: "{i}-{v}"`, `Cache-Control: max-age=...`, and a 304 to a matching
//!   `If-None-Match`. `POST /soak/{i}` makes a new version current.
//! - **driver**: `--concurrency` tasks send GETs through the pods at
//!   `--rate` in all (hot paths that hit, cold paths and unique queries that
//!   miss, conditional GETs with an `ETag` seen before), and a mutator makes
//!   `--changes` new versions a second, half by a POST through a pod (an
//!   RFC 9111 §4.4 invalidation), half at the origin followed by an admin
//!   purge on a pod.
//! - **checker**: a *failure* is a status other than 2xx/304, a connection
//!   error or a timeout; a *wrong body* is anything but the exact body of the
//!   requested path at a version the origin has made current (or an `ETag`
//!   that disagrees with it); a response (or a 304 for an `ETag`) carrying
//!   version `u` is *stale after purge* when the request started more than
//!   `--bound` after the purge or invalidation of a newer version completed.
//!
//! It prints a progress line every 30 s and a report at the end, and exits 1
//! when there were failures or wrong bodies (stale windows are reported, not
//! judged: their bound is what issue 12 adds).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The paths the soak uses: `/soak/0` .. `/soak/{PATHS - 1}`.
const PATHS: usize = 256;
/// The first `HOT` paths get most of the traffic, so most reads are hits
/// and most changes land on entries the pods hold.
const HOT: usize = 32;
/// How many examples of each kind of problem the report lists.
const EXAMPLES: usize = 10;
/// Stale windows are counted by when their purge completed, in buckets
/// this long.
const WINDOW_BUCKET: Duration = Duration::from_secs(15);
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(about = "sidecache chaos soak: origin, load driver and checker (run by bench/soak.sh)")]
struct Args {
    /// Address the in-process origin listens on.
    #[arg(long)]
    origin: SocketAddr,
    /// Client addresses of the pods, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pods: Vec<SocketAddr>,
    /// Admin addresses of the pods, comma-separated, in the same order.
    #[arg(long, value_delimiter = ',', required = true)]
    admins: Vec<SocketAddr>,
    /// The host the pods key everything under (their `cache.host`).
    #[arg(long, default_value = "soak.test")]
    host: String,
    /// How long to drive traffic, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Reads in flight at once (one task each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Reads per second, all tasks together.
    #[arg(long, default_value_t = 800)]
    rate: u32,
    /// New versions per second (half POST invalidations, half purges).
    #[arg(long, default_value_t = 10)]
    changes: u32,
    /// The origin's `max-age`, in seconds.
    #[arg(long, default_value_t = 30)]
    max_age: u64,
    /// How long after a purge or invalidation an older version may still
    /// be served, in seconds (issue 12's bound).
    #[arg(long, default_value_t = 2.0)]
    bound: f64,
    /// Deadline for each request, in seconds: past it, a failure.
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
}

/// The origin's state: the current version of every path.
struct Origin {
    /// Version of `/soak/{i}`, starting at 1; only ever increases.
    versions: Vec<AtomicU64>,
    /// `max-age` of every GET answer.
    max_age: u64,
}

impl Origin {
    fn current(&self, path: usize) -> u64 {
        self.versions[path].load(Ordering::SeqCst)
    }

    /// Makes a new version of `path` current and returns it.
    fn bump(&self, path: usize) -> u64 {
        self.versions[path].fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let origin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let origin = origin.clone();
                    async move { Ok::<_, Infallible>(origin.respond(&request)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(path) = request
            .uri()
            .path()
            .strip_prefix("/soak/")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < PATHS)
        else {
            return plain(StatusCode::NOT_FOUND, "not a soak path\n".into());
        };
        if request.method() == Method::POST {
            let version = self.bump(path);
            let mut response = plain(StatusCode::OK, format!("v{version}\n"));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            return response;
        }
        let version = self.current(path);
        let etag = etag(path, version);
        let matches = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
        let mut response = if matches {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            plain(StatusCode::OK, body(path, version))
        };
        let headers = response.headers_mut();
        if let Ok(value) = header::HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        if let Ok(value) = header::HeaderValue::from_str(&format!("max-age={}", self.max_age)) {
            headers.insert(header::CACHE_CONTROL, value);
        }
        response
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

fn etag(path: usize, version: u64) -> String {
    format!("\"{path}-{version}\"")
}

/// The version an `ETag` of `path` names, if it is one of ours.
fn etag_version(path: usize, etag: &str) -> Option<u64> {
    let inner = etag.trim().strip_prefix('"')?.strip_suffix('"')?;
    let (tag_path, version) = inner.split_once('-')?;
    (tag_path.parse::<usize>().ok()? == path)
        .then(|| version.parse().ok())
        .flatten()
}

/// The one body of `path` at `version`: a line naming both, then padding
/// that depends on both (so a body of another version, or cut short, or
/// spliced, never matches), 0.5-4 KiB depending on the path.
fn body(path: usize, version: u64) -> String {
    let mut body = format!("/soak/{path} v{version}\n");
    let size = 512 + (path % 8) * 512;
    let mut state = (path as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    while body.len() < size {
        state = xorshift(state);
        body.push(char::from(b'a' + (state % 26) as u8));
        if body.len() % 64 == 63 {
            body.push('\n');
        }
    }
    body
}

/// The version a body claims in its first line, if it names `path`.
fn body_version(path: usize, body: &[u8]) -> Option<u64> {
    let line = body.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix(&format!("/soak/{path} v"))?;
    rest.parse().ok()
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A small per-task random source: the soak needs variety, not quality.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 = xorshift(self.0);
        (self.0 % n as u64) as usize
    }

    fn percent(&mut self) -> usize {
        self.below(100)
    }

    fn path(&mut self) -> usize {
        if self.percent() < 80 {
            self.below(HOT)
        } else {
            self.below(PATHS)
        }
    }
}

/// What the checker has learned so far; shared by every task.
struct Tally {
    /// Per path: (version made current, when its purge or invalidation completed).
    purges: Vec<Mutex<Vec<(u64, Instant)>>>,
    /// Per path: the last `ETag` a GET saw, for conditional requests.
    seen: Vec<Mutex<Option<String>>>,
    counts: Mutex<Counts>,
    /// When the load began: examples say when they happened.
    start: Instant,
}

#[derive(Default)]
struct Counts {
    reads: u64,
    hits: u64,
    not_modified: u64,
    posts: u64,
    purges: u64,
    failures: u64,
    wrong: u64,
    /// Responses older than a version purged less than the bound ago.
    stale_within: u64,
    /// Responses older than a version purged more than the bound ago.
    stale_beyond: u64,
    /// (path, purged version) of every purge that was not honoured in
    /// time, with the latest an older version was still served after it.
    stale_windows: HashMap<(usize, u64), Duration>,
    /// New stale windows by when their purge completed, in
    /// `WINDOW_BUCKET`s since the start: lines them up with the chaos log.
    stale_windows_by_time: BTreeMap<u64, u64>,
    /// Stale responses beyond the bound by where they came from: the
    /// memory tier (a purge broadcast the pod missed), Redis (a purge whose
    /// delete did not land), anything else (a 304 on an old `ETag`).
    stale_from: [u64; 3],
    /// Longest time from a purge's completion to a request that still got
    /// an older version.
    stale_max: Duration,
    failure_examples: Vec<String>,
    wrong_examples: Vec<String>,
    stale_examples: Vec<String>,
}

impl Counts {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.failure_examples.len() < EXAMPLES {
            self.failure_examples.push(what);
        }
    }

    fn wrong(&mut self, what: String) {
        self.wrong += 1;
        if self.wrong_examples.len() < EXAMPLES {
            self.wrong_examples.push(what);
        }
    }
}

impl Tally {
    fn new() -> Self {
        Tally {
            purges: (0..PATHS).map(|_| Mutex::new(Vec::new())).collect(),
            seen: (0..PATHS).map(|_| Mutex::new(None)).collect(),
            counts: Mutex::new(Counts::default()),
            start: Instant::now(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn purged(&self, path: usize, version: u64, at: Instant) {
        if let Ok(mut purges) = self.purges[path].lock() {
            purges.push((version, at));
        }
    }

    /// Judges `version` of `path`, answered to a request started at
    /// `started`, against the purges of newer versions.
    fn judge_staleness(
        &self,
        path: usize,
        version: u64,
        started: Instant,
        bound: Duration,
        what: &str,
    ) {
        // The earliest completed purge of a version newer than the one served.
        let first = self.purges[path].lock().ok().and_then(|purges| {
            purges
                .iter()
                .filter(|(newer, at)| *newer > version && *at <= started)
                .min_by_key(|(_, at)| *at)
                .copied()
        });
        let Some((newer, at)) = first else { return };
        let late = started - at;
        let mut counts = self.counts();
        if late <= bound {
            counts.stale_within += 1;
            return;
        }
        counts.stale_beyond += 1;
        counts.stale_max = counts.stale_max.max(late);
        let tier = if what.contains("detail=l2") {
            1
        } else if what.contains("; hit") {
            0
        } else {
            2
        };
        counts.stale_from[tier] += 1;
        let new = counts.stale_windows.insert((path, newer), late).is_none();
        if let Some(longest) = counts.stale_windows.get_mut(&(path, newer)) {
            *longest = (*longest).max(late);
        }
        if new {
            let bucket = (at - self.start).as_secs() / WINDOW_BUCKET.as_secs();
            *counts.stale_windows_by_time.entry(bucket).or_default() += 1;
        }
        // One example per window: the first response beyond the bound.
        if new && counts.stale_examples.len() < EXAMPLES {
            counts.stale_examples.push(format!(
                "at {:.1}s /soak/{path}: v{version} served {:.2}s after v{newer} was purged ({what})",
                (started - self.start).as_secs_f64(),
                late.as_secs_f64()
            ));
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Everything a task needs.
struct Soak {
    args: Args,
    origin: Arc<Origin>,
    tally: Tally,
    client: HttpClient,
    bound: Duration,
    timeout: Duration,
}

/// A response read whole, or why there is none.
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    cache_status: String,
    body: Bytes,
}

impl Soak {
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request: {e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            let text = |name| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v: &header::HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            Ok(Answer {
                status: parts.status,
                etag: text(header::ETAG),
                cache_status: text(header::HeaderName::from_static("cache-status"))
                    .unwrap_or_default(),
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    /// One read: a GET of a hot or cold path (sometimes with a unique
    /// query, a certain miss), or a conditional GET with an `ETag` seen
    /// before; the answer is checked.
    async fn read(&self, dice: &mut Dice) {
        let path = dice.path();
        let pod = dice.below(self.args.pods.len());
        let roll = dice.percent();
        let query = if roll < 5 {
            format!("?n={}", dice.below(usize::MAX))
        } else {
            String::new()
        };
        let condition = if (5..25).contains(&roll) {
            self.tally.seen[path]
                .lock()
                .ok()
                .and_then(|seen| seen.clone())
        } else {
            None
        };
        let uri = format!("http://{}/soak/{path}{query}", self.args.pods[pod]);
        let mut request = Request::get(&uri);
        if let Some(etag) = &condition {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        let Ok(request) = request.body(Full::new(Bytes::new())) else {
            return;
        };
        let started = Instant::now();
        let answer = self.send(request).await;
        let what = |answer: &Answer| format!("pod {pod}, {}", answer.cache_status);
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                self.tally.counts().fail(format!("GET {uri}: {error}"));
                return;
            }
        };
        {
            let mut counts = self.tally.counts();
            counts.reads += 1;
            if answer.cache_status.contains("; hit") {
                counts.hits += 1;
            }
        }
        match answer.status {
            StatusCode::NOT_MODIFIED => {
                self.tally.counts().not_modified += 1;
                let etag = answer.etag.clone().or(condition);
                let version = etag.as_deref().and_then(|tag| etag_version(path, tag));
                match version {
                    Some(version) if version <= self.origin.current(path) => self
                        .tally
                        .judge_staleness(path, version, started, self.bound, &what(&answer)),
                    _ => self.tally.counts().wrong(format!(
                        "GET {uri}: 304 with ETag {etag:?} ({})",
                        what(&answer)
                    )),
                }
            }
            StatusCode::OK => {
                let claimed = body_version(path, &answer.body);
                let right = claimed.filter(|version| {
                    *version >= 1
                        && *version <= self.origin.current(path)
                        && answer.body == body(path, *version).as_bytes()
                        && answer.etag.as_deref() == Some(etag(path, *version).as_str())
                });
                let Some(version) = right else {
                    let head = String::from_utf8_lossy(&answer.body[..answer.body.len().min(40)])
                        .into_owned();
                    self.tally.counts().wrong(format!(
                        "GET {uri}: {} bytes starting {head:?}, ETag {:?} ({})",
                        answer.body.len(),
                        answer.etag,
                        what(&answer)
                    ));
                    return;
                };
                if let Ok(mut seen) = self.tally.seen[path].lock() {
                    *seen = answer.etag.clone();
                }
                self.tally
                    .judge_staleness(path, version, started, self.bound, &what(&answer));
            }
            status => self
                .tally
                .counts()
                .fail(format!("GET {uri}: {status} ({})", what(&answer))),
        }
    }

    /// One change: a POST through a pod (the pod forwards it, the origin
    /// makes a new version current, the pod invalidates the URL), or a new
    /// version at the origin and a purge on a pod's admin port.
    async fn change(&self, dice: &mut Dice) {
        let path = dice.path();
        let pod = dice.below(self.args.pods.len());
        if dice.percent() < 50 {
            let uri = format!("http://{}/soak/{path}", self.args.pods[pod]);
            let Ok(request) = Request::post(&uri).body(Full::new(Bytes::new())) else {
                return;
            };
            match self.send(request).await {
                Ok(answer) if answer.status.is_success() => {
                    let done = Instant::now();
                    let version = std::str::from_utf8(&answer.body)
                        .ok()
                        .and_then(|text| text.trim().strip_prefix('v')?.parse().ok());
                    match version {
                        Some(version) => {
                            self.tally.purged(path, version, done);
                            self.tally.counts().posts += 1;
                        }
                        None => self
                            .tally
                            .counts()
                            .wrong(format!("POST {uri}: answer {:?}", answer.body)),
                    }
                }
                Ok(answer) => self
                    .tally
                    .counts()
                    .fail(format!("POST {uri}: {}", answer.status)),
                Err(error) => self.tally.counts().fail(format!("POST {uri}: {error}")),
            }
        } else {
            let version = self.origin.bump(path);
            let target = format!("http://{}/soak/{path}", self.args.host);
            let encoded =
                percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC);
            let uri = format!("http://{}/purge?url={encoded}", self.args.admins[pod]);
            let Ok(request) = Request::post(&uri).body(Full::new(Bytes::new())) else {
                return;
            };
            match self.send(request).await {
                Ok(answer) if answer.status.is_success() => {
                    self.tally.purged(path, version, Instant::now());
                    self.tally.counts().purges += 1;
                }
                Ok(answer) => self
                    .tally
                    .counts()
                    .fail(format!("purge {uri}: {}", answer.status)),
                Err(error) => self.tally.counts().fail(format!("purge {uri}: {error}")),
            }
        }
    }
}

/// Calls `step` every `every` until `until`; a late step delays the next
/// rather than bunching them up.
async fn paced<F, Fut>(every: Duration, until: Instant, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if Instant::now() >= until {
            return;
        }
        step().await;
    }
}

fn seed(task: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    xorshift(nanos ^ (task as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

fn progress(soak: &Soak, elapsed: Duration) {
    let counts = soak.tally.counts();
    println!(
        "soak: {:>4}s  reads {}  changes {}  failures {}  wrong {}  stale>{}s {}",
        elapsed.as_secs(),
        counts.reads,
        counts.posts + counts.purges,
        counts.failures,
        counts.wrong,
        soak.args.bound,
        counts.stale_beyond
    );
}

fn report(soak: &Soak, elapsed: Duration) -> bool {
    let counts = soak.tally.counts();
    let requests = counts.reads + counts.posts + counts.purges + counts.failures;
    println!(
        "== soak report ({:.0} s, {} pods, {} reads in flight, {} reads/s, {} changes/s, max-age {} s)",
        elapsed.as_secs_f64(),
        soak.args.pods.len(),
        soak.args.concurrency,
        soak.args.rate,
        soak.args.changes,
        soak.args.max_age
    );
    println!("requests          {requests}");
    println!(
        "  reads           {} ({} hits, {} 304s)",
        counts.reads, counts.hits, counts.not_modified
    );
    println!("  POST invalidations {}", counts.posts);
    println!("  admin purges    {}", counts.purges);
    println!("failures          {}", counts.failures);
    println!("wrong bodies      {}", counts.wrong);
    println!(
        "stale after purge: {} windows beyond the {} s bound ({} responses), longest {:.2} s; {} responses within the bound",
        counts.stale_windows.len(),
        soak.args.bound,
        counts.stale_beyond,
        counts.stale_max.as_secs_f64(),
        counts.stale_within
    );
    if !counts.stale_windows.is_empty() {
        let mut lengths = [0u64; 4];
        for longest in counts.stale_windows.values() {
            let secs = longest.as_secs_f64();
            let bin = [5.0, 10.0, 20.0]
                .iter()
                .filter(|edge| secs >= **edge)
                .count();
            lengths[bin] += 1;
        }
        println!(
            "  windows lasting <5 s {}, 5-10 s {}, 10-20 s {}, >=20 s {}",
            lengths[0], lengths[1], lengths[2], lengths[3]
        );
        println!(
            "  stale responses from the memory tier {}, from Redis {}, other (304) {}",
            counts.stale_from[0], counts.stale_from[1], counts.stale_from[2]
        );
        let by_time: Vec<String> = counts
            .stale_windows_by_time
            .iter()
            .map(|(bucket, windows)| format!("{}s:{windows}", bucket * WINDOW_BUCKET.as_secs()))
            .collect();
        println!(
            "  windows by when their purge completed ({} s buckets): {}",
            WINDOW_BUCKET.as_secs(),
            by_time.join(" ")
        );
    }
    for (title, examples) in [
        ("failures", &counts.failure_examples),
        ("wrong bodies", &counts.wrong_examples),
        ("stale windows beyond the bound", &counts.stale_examples),
    ] {
        if !examples.is_empty() {
            println!("first {title}:");
            for example in examples {
                println!("  {example}");
            }
        }
    }
    counts.failures == 0 && counts.wrong == 0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.pods.len() == args.admins.len(),
        "--pods and --admins must list the same pods"
    );
    anyhow::ensure!(
        args.concurrency > 0 && args.rate > 0,
        "--concurrency and --rate must be > 0"
    );
    let origin = Arc::new(Origin {
        versions: (0..PATHS).map(|_| AtomicU64::new(1)).collect(),
        max_age: args.max_age,
    });
    let listener = TcpListener::bind(args.origin)
        .await
        .with_context(|| format!("origin: bind {}", args.origin))?;
    tokio::spawn(origin.clone().serve(listener));

    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let soak = Arc::new(Soak {
        bound: Duration::from_secs_f64(args.bound),
        timeout: Duration::from_secs_f64(args.timeout),
        args,
        origin,
        tally: Tally::new(),
        client,
    });
    let start = Instant::now();
    let until = start + Duration::from_secs(soak.args.seconds);
    println!(
        "soak: {} s through {} pods; origin on {}",
        soak.args.seconds,
        soak.args.pods.len(),
        soak.args.origin
    );

    let mut tasks = Vec::new();
    let per_task =
        Duration::from_secs_f64(soak.args.concurrency as f64 / f64::from(soak.args.rate));
    for task in 0..soak.args.concurrency {
        let soak = soak.clone();
        tasks.push(tokio::spawn(async move {
            let mut dice = Dice(seed(task));
            let dice = &mut dice;
            let mut ticks = tokio::time::interval(per_task);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < until {
                ticks.tick().await;
                soak.read(dice).await;
            }
        }));
    }
    if soak.args.changes > 0 {
        let soak = soak.clone();
        tasks.push(tokio::spawn(async move {
            let every = Duration::from_secs_f64(1.0 / f64::from(soak.args.changes));
            let mut dice = Dice(seed(usize::MAX - 1));
            // Each change in its own task, so that a slow one (a frozen
            // Redis node under the purge) does not hold up the others.
            paced(every, until, || {
                let soak = soak.clone();
                let mut change_dice = Dice(dice.0);
                dice.0 = xorshift(dice.0);
                async move {
                    tokio::spawn(async move { soak.change(&mut change_dice).await });
                }
            })
            .await;
        }));
    }
    {
        let soak = soak.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(
                tokio::time::Instant::now() + PROGRESS_EVERY,
                PROGRESS_EVERY,
            );
            loop {
                ticks.tick().await;
                progress(&soak, start.elapsed());
            }
        });
    }
    for task in tasks {
        task.await.context("a soak task panicked")?;
    }
    // Changes still under way get their deadline to finish.
    tokio::time::sleep(soak.timeout.min(Duration::from_secs(5))).await;
    let passed = report(&soak, start.elapsed());
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}
