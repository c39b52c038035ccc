//! The origin and driver of `bench/tag-purge.sh`: fills the pods with tagged entries, purges the tag through one pod, and measures how long until every pod stops serving a sample of them.
//!
//! - **origin** (`--origin ADDR`): `GET /tagged/{i}` answers a 1 KiB body,
//!   `Cache-Control: max-age=3600` and `Surrogate-Key: bench item-{i}`, and
//!   numbers every fetch in `X-Fetch`, so the driver can tell a copy made
//!   before the purge from one made after it.
//! - **fill**: `--entries` GETs through the first pod (stored in its memory
//!   and in Redis), then the same through every other pod (Redis hits,
//!   copied into their memory), `--concurrency` at a time; then checks that
//!   every pod answers the sample from its memory.
//! - **purge and measure**: `POST /purge?tag=bench` on the first pod's admin
//!   port; then each pod's sample (`--sample` paths spread over all the
//!   entries) is asked again and again until every path has answered with a
//!   copy fetched after the purge. Prints, per pod, the time from sending
//!   the purge to the last sample path changing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Body size of every entry.
const BODY: usize = 1024;

#[derive(Parser, Debug)]
#[command(about = "sidecache tag purge benchmark: origin and driver (run by bench/tag-purge.sh)")]
struct Args {
    /// Address the in-process origin listens on.
    #[arg(long)]
    origin: SocketAddr,
    /// Client addresses of the pods, comma-separated; the purge goes to the first.
    #[arg(long, value_delimiter = ',', required = true)]
    pods: Vec<SocketAddr>,
    /// Admin addresses of the pods, comma-separated, in the same order.
    #[arg(long, value_delimiter = ',', required = true)]
    admins: Vec<SocketAddr>,
    /// Tagged entries to fill.
    #[arg(long, default_value_t = 100_000)]
    entries: u64,
    /// Paths per pod checked after the purge.
    #[arg(long, default_value_t = 200)]
    sample: u64,
    /// Requests in flight at once while filling.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.pods.len() != args.admins.len() || args.sample == 0 || args.sample > args.entries {
        bail!("give as many --admins as --pods, and 0 < --sample <= --entries");
    }
    let fetches = Arc::new(AtomicU64::new(0));
    serve_origin(args.origin, fetches.clone()).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency as usize)
        .build_http();

    for (n, (pod, admin)) in args.pods.iter().zip(&args.admins).enumerate() {
        let started = Instant::now();
        fill(&client, *pod, args.entries, args.concurrency).await?;
        let filled = started.elapsed();
        settle(&client, *admin).await?;
        println!(
            "filled {} entries through pod {n} in {filled:.1?}, its Redis writes sent after {:.1?} (origin fetches so far: {})",
            args.entries,
            started.elapsed(),
            fetches.load(Ordering::Relaxed)
        );
    }
    let sample: Vec<u64> = (0..args.sample)
        .map(|k| k * args.entries / args.sample)
        .collect();
    for (n, pod) in args.pods.iter().enumerate() {
        for &i in &sample {
            let (status, _) = get(&client, *pod, i).await?;
            if !status.contains("; hit") || status.contains("detail=l2") {
                bail!("pod {n} does not answer /tagged/{i} from memory: {status}");
            }
        }
    }
    let filled = fetches.load(Ordering::Relaxed);

    let purge_url = format!("http://{}/purge?tag=bench", args.admins[0]);
    let purge = Request::post(purge_url).body(Full::default())?;
    let started = Instant::now();
    let answer = client.request(purge).await?;
    let acknowledged = started.elapsed();
    let text = answer.into_body().collect().await?.to_bytes();
    println!(
        "purge answered in {acknowledged:.1?}: {}",
        String::from_utf8_lossy(&text).trim()
    );
    // Every pod at once (spawned here, not when awaited below).
    let measures: Vec<_> = args
        .pods
        .iter()
        .map(|&pod| {
            let client = client.clone();
            let sample = sample.clone();
            tokio::spawn(async move { time_to_effect(&client, pod, sample, filled, started).await })
        })
        .collect();
    for (n, measure) in measures.into_iter().enumerate() {
        let effect = measure.await??;
        let last_old = if effect.last_old.is_zero() {
            "no request got a copy from before the purge".to_owned()
        } else {
            format!(
                "the last request answered with a copy from before the purge was sent {:.1?} after it",
                effect.last_old
            )
        };
        println!(
            "pod {n}: {last_old}; the first new copy came {:.1?} after it; all {} sampled paths fetched again {:.1?} after it",
            effect.first_new, args.sample, effect.all_new
        );
    }
    Ok(())
}

/// What one pod answered after the purge, in time since it was sent.
struct Effect {
    /// The last answer that was a copy from before the purge (zero: none).
    last_old: Duration,
    /// The first answer that was a copy fetched after it.
    first_new: Duration,
    /// When every sample path had answered with a new copy (this includes
    /// the pod fetching them again, one path after another).
    all_new: Duration,
}

/// Asks `pod` for each sample path, in turn and again, until it has answered
/// every one with a copy the origin made after `filled` fetches.
async fn time_to_effect(
    client: &HttpClient,
    pod: SocketAddr,
    mut pending: Vec<u64>,
    filled: u64,
    started: Instant,
) -> anyhow::Result<Effect> {
    let mut effect = Effect {
        last_old: Duration::ZERO,
        first_new: Duration::ZERO,
        all_new: Duration::ZERO,
    };
    while !pending.is_empty() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "{} sample paths still served from before the purge after 30 s",
                pending.len()
            );
        }
        let mut still = Vec::new();
        for i in pending {
            let asked = started.elapsed();
            let (_, fetch) = get(client, pod, i).await?;
            if fetch <= filled {
                effect.last_old = asked;
                still.push(i);
            } else {
                if effect.first_new.is_zero() {
                    effect.first_new = started.elapsed();
                }
                effect.all_new = started.elapsed();
            }
        }
        pending = still;
    }
    Ok(effect)
}

/// Waits until the pod whose admin port is `admin` has sent its queued
/// Redis writes (fills and lease releases): its write counters stop moving.
/// The measure is of a purge in a settled fleet, not of a purge queued
/// behind 100,000 fills (the queue is first in, first out).
async fn settle(client: &HttpClient, admin: SocketAddr) -> anyhow::Result<()> {
    let mut last = None;
    loop {
        let request = Request::get(format!("http://{admin}/metrics")).body(Full::default())?;
        let text = client
            .request(request)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        let writes: f64 = String::from_utf8_lossy(&text)
            .lines()
            .filter(|line| {
                line.starts_with("sidecache_redis_calls_total{op=\"set\"")
                    || line.starts_with("sidecache_redis_calls_total{op=\"del\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if last == Some(writes) {
            return Ok(());
        }
        last = Some(writes);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// GETs `/tagged/0` .. `/tagged/{entries - 1}` through `pod`, `concurrency`
/// at a time.
async fn fill(
    client: &HttpClient,
    pod: SocketAddr,
    entries: u64,
    concurrency: u64,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let workers = (0..concurrency).map(|_| {
        let client = client.clone();
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= entries {
                    return anyhow::Ok(());
                }
                get(&client, pod, i).await?;
            }
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await??;
    }
    Ok(())
}

/// `GET /tagged/{i}` through `pod`: its `Cache-Status` and `X-Fetch`.
async fn get(client: &HttpClient, pod: SocketAddr, i: u64) -> anyhow::Result<(String, u64)> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{pod}/tagged/{i}"))
        .header(header::HOST, "bench.test")
        .body(Full::default())?;
    let response = client.request(request).await.context("request to a pod")?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let cache_status = header("cache-status");
    let fetch = header("x-fetch").parse().unwrap_or(0);
    if response.headers().contains_key("surrogate-key") {
        bail!("the tag field reached the client");
    }
    response.into_body().collect().await?;
    if !status.is_success() {
        bail!("/tagged/{i}: {status}");
    }
    Ok((cache_status, fetch))
}

async fn serve_origin(addr: SocketAddr, fetches: Arc<AtomicU64>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.context("origin listen")?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let fetches = fetches.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let fetch = fetches.fetch_add(1, Ordering::Relaxed) + 1;
                    async move { Ok::<_, Infallible>(respond(&request, fetch)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn respond(request: &Request<Incoming>, fetch: u64) -> Response<Full<Bytes>> {
    let item = request
        .uri()
        .path()
        .strip_prefix("/tagged/")
        .unwrap_or("none")
        .to_owned();
    let mut body = format!("item {item} fetch {fetch} ").into_bytes();
    body.resize(BODY, b'.');
    Response::builder()
        .header(header::CACHE_CONTROL, "max-age=3600")
        .header("surrogate-key", format!("bench item-{item}"))
        .header("x-fetch", fetch.to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
