//! A demo origin for trying sidecache: `/users/{id}` takes one second, like a slow database.
//!
//! Run it with `cargo run --example origin` (listens on 127.0.0.1:3000, the
//! address the shipped `proxy.toml` points at; `--listen ADDR` to change).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// How long a user lookup "takes".
const SLOW_LOOKUP: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen: SocketAddr = std::env::args()
        .skip_while(|arg| arg != "--listen")
        .nth(1)
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    let listener = TcpListener::bind(listen).await?;
    println!("demo origin on http://{listen} — try /users/1 (slow), /health, /private");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service =
                service_fn(|request| async move { Ok::<_, Infallible>(respond(request).await) });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    println!("origin: {} {path}", request.method());
    let (status, cache_control, body) = match path.strip_prefix("/users/") {
        Some(id) => {
            tokio::time::sleep(SLOW_LOOKUP).await;
            (
                StatusCode::OK,
                None,
                format!("{{\"id\":{id:?},\"name\":\"user {id}\"}}\n"),
            )
        }
        None if path == "/health" => (StatusCode::OK, Some("no-store"), "ok\n".to_owned()),
        None if path == "/private" => (StatusCode::OK, Some("private"), "yours only\n".to_owned()),
        None => (StatusCode::NOT_FOUND, None, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(cc) = cache_control {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, header::HeaderValue::from_static(cc));
    }
    response
}
