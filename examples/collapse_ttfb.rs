//! Measures streaming to collapsed requests: N requests at once for a slowly sent body, each one's first and last byte against the origin's.
//!
//! One process plays origin, proxy (the library, in memory-only mode) and
//! clients. The origin sends `--size` bytes (default 5 MiB) in 64 KiB chunks
//! `--pause` apart (default 20 ms: about 1.6 s in all); `--waiters` requests
//! (default 6) are sent at once, so one leads the fetch and the others wait
//! on it. Printed: when the origin sent its first and last byte, and when
//! each request got its head, its first body byte and its last, all in ms
//! from the moment the requests were sent.
//!
//! `cargo run --release --example collapse_ttfb -- [--waiters N] [--size BYTES] [--pause MS]`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const CHUNK: usize = 64 * 1024;

/// When the origin sent its first and last body byte.
#[derive(Default)]
struct Sent {
    first: Option<Instant>,
    last: Option<Instant>,
}

fn arg(name: &str, default: u64) -> u64 {
    std::env::args()
        .skip_while(|arg| arg != name)
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let waiters = arg("--waiters", 6) as usize;
    let size = arg("--size", 5 * 1024 * 1024) as usize;
    let pause = Duration::from_millis(arg("--pause", 20));
    let sent = Arc::new(Mutex::new(Sent::default()));
    let origin = start_origin(size, pause, sent.clone()).await?;

    let config = sidecache::config::Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [origin]\nurl = \"http://{origin}\"\n\
         [[routes]]\npath = \"/*\"\nttl = \"60s\"\nlock_timeout = \"30s\"\n"
    ))?;
    let proxy = sidecache::start(config).await?;
    let url = format!("http://{}/body", proxy.addr());

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let started = Instant::now();
    let requests: Vec<_> = (0..waiters)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let response = client
                    .request(Request::get(url).body(Full::default())?)
                    .await?;
                let head = started.elapsed();
                let status = response.headers()["cache-status"].to_str()?.to_owned();
                let mut body = response.into_body();
                let (mut first, mut len) = (None, 0);
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame?.data_ref() {
                        first.get_or_insert_with(|| started.elapsed());
                        len += data.len();
                    }
                }
                let last = started.elapsed();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, head, first, last, len))
            })
        })
        .collect();
    let mut rows = Vec::new();
    for request in requests {
        rows.push(request.await?.map_err(|e| e.to_string())?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let since = |t: Option<Instant>| t.map_or(f64::NAN, |t| ms(t.duration_since(started)));
    let (first, last) = {
        let sent = sent.lock().map_err(|_| "poisoned")?;
        (sent.first, sent.last)
    };
    println!(
        "origin: first byte {:.1} ms, last byte {:.1} ms ({size} bytes, {waiters} requests)",
        since(first),
        since(last)
    );
    println!("request  cache-status                   head ms  first byte ms  last byte ms  bytes");
    for (n, (status, head, first, last, len)) in rows.iter().enumerate() {
        println!(
            "{n:>7}  {status:<30} {:>7.1}  {:>13.1}  {:>12.1}  {len}",
            ms(*head),
            first.map_or(f64::NAN, ms),
            ms(*last)
        );
    }
    proxy.shutdown().await;
    Ok(())
}

/// An origin that sends `size` bytes in chunks `pause` apart on any path.
async fn start_origin(
    size: usize,
    pause: Duration,
    sent: Arc<Mutex<Sent>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(vec![b'x'; size]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (body, sent) = (body.clone(), sent.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    let (body, sent) = (body.clone(), sent.clone());
                    async move { Ok::<_, Infallible>(respond(body, pause, sent)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A response body fed from a channel, chunk by chunk.
struct Chunks(mpsc::Receiver<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

fn respond(body: Bytes, pause: Duration, sent: Arc<Mutex<Sent>>) -> Response<Chunks> {
    let (sender, receiver) = mpsc::channel(1);
    let len = body.len();
    tokio::spawn(async move {
        for start in (0..len).step_by(CHUNK) {
            if start > 0 {
                tokio::time::sleep(pause).await;
            }
            if sender
                .send(body.slice(start..(start + CHUNK).min(len)))
                .await
                .is_err()
            {
                return;
            }
            if let Ok(mut sent) = sent.lock() {
                let now = Instant::now();
                sent.first.get_or_insert(now);
                sent.last = Some(now);
            }
        }
    });
    let mut response = Response::new(Chunks(receiver));
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    response
}
