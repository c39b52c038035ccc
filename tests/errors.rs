//! A broken origin gets 502 or 504 with a short body; the proxy keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Origin, ProxyConfig, Reply, routes};

fn route() -> String {
    routes::cache("/e/*", "60s")
}

#[tokio::test]
async fn unreachable_origin_is_502() {
    // A port that was just free: nothing listens there.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = ProxyConfig::for_url(&format!("http://{addr}"))
        .with(route())
        .start()
        .await;
    // A miss that failed says so; a route that bypasses the cache still does.
    for (path, cache_status) in [
        (
            "/e/cached",
            "sidecache; fwd=miss; detail=origin-unreachable",
        ),
        ("/uncached", "sidecache; fwd=bypass"),
    ] {
        let answer = proxy.get(path).await;
        assert_eq!(answer.status, 502, "{path}");
        assert_eq!(answer.text(), "origin unreachable\n");
        assert_eq!(answer.cache_status(), cache_status, "{path}");
    }
    let metrics = proxy.admin("/metrics").await.text();
    assert!(
        metrics.contains("sidecache_origin_errors_total{route=\"/e/*\",kind=\"unreachable\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn origin_slower_than_the_timeout_is_504_and_the_proxy_recovers() {
    let origin = Origin::start().await;
    origin.on("/e/slow", Reply::ok().delay(Duration::from_secs(3)));
    let proxy = ProxyConfig::new(&origin)
        .origin_timeout("300ms")
        .with(route())
        .start()
        .await;
    let answer = proxy.get("/e/slow").await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.text(), "origin sent no response head within 300ms\n");
    assert_eq!(
        answer.cache_status(),
        "sidecache; fwd=miss; detail=origin-timeout"
    );
    // Nothing was stored and the next request to a healthy path works.
    assert_eq!(proxy.get("/e/fine").await.status, 200);
    let metrics = proxy.admin("/metrics").await.text();
    assert!(metrics.contains("kind=\"timeout\"} 1"), "{metrics}");
}
