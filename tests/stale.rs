//! Serving stale (RFC 5861): while revalidating in the background, and when the origin fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Origin, ProxyConfig, Reply, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once_rfc5861_3() {
    let origin = Origin::start().await;
    origin.on(
        "/swr",
        Reply::ok()
            .body("old")
            .header("cache-control", "max-age=1, stale-while-revalidate=60"),
    );
    let proxy = Arc::new(
        ProxyConfig::new(&origin)
            .with("[[routes]]\npath = \"/swr\"\n")
            .start()
            .await,
    );
    proxy.get("/swr").await;
    // Freshness is the subject: the entry goes stale on the proxy's clock.
    proxy.advance(Duration::from_millis(2100));
    origin.on(
        "/swr",
        Reply::ok()
            .body("new")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(800)),
    );
    let stale: Vec<_> = (0..5)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.get("/swr").await })
        })
        .collect();
    for answer in stale {
        let answer = answer.await.unwrap();
        assert_eq!(answer.text(), "old");
        assert!(
            answer
                .cache_status()
                .ends_with("; detail=stale-while-revalidate"),
            "{}",
            answer.cache_status()
        );
    }
    // Answered while the refresh was still waiting on the slow origin.
    assert_eq!(origin.finished("/swr"), 1);
    origin.wait_for_hits("/swr", 2).await;
    // The refresh lands, and it was the only one.
    let mut fresh = None;
    eventually("the refreshed body", Duration::from_secs(2), async || {
        let answer = proxy.get("/swr").await;
        let refreshed = answer.text() == "new";
        fresh = Some(answer);
        refreshed
    })
    .await;
    let fresh = fresh.unwrap();
    assert_eq!(fresh.text(), "new");
    assert!(fresh.cache_status().contains("hit"));
    assert_eq!(origin.hits("/swr"), 2, "exactly one background refresh");
    // The refresh asks as the request that found the entry stale would
    // have: the proxy's forwarding headers once, not added again.
    let refresh = origin.last_headers("/swr");
    assert_eq!(refresh["x-forwarded-for"], "127.0.0.1");
    assert_eq!(refresh.get_all("via").iter().count(), 1);
    assert_eq!(refresh["via"], "1.1 sidecache");
    let metrics = proxy.admin("/metrics").await.text();
    assert!(
        metrics.contains("sidecache_background_refreshes_total{result=\"stored\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn stale_if_error_stands_in_for_a_failing_origin_within_its_window_rfc5861_4() {
    let origin = Origin::start().await;
    origin.on(
        "/sie/a",
        Reply::ok()
            .body("kept")
            .header("cache-control", "max-age=1"),
    );
    let proxy = ProxyConfig::new(&origin)
        .origin_timeout("300ms")
        .with("[[routes]]\npath = \"/sie/*\"\nstale_if_error = \"2s\"\n")
        .start()
        .await;
    proxy.get("/sie/a").await;
    proxy.advance(Duration::from_millis(1500));

    // A 5xx from the origin: the stale copy stands in.
    origin.on("/sie/a", Reply::ok().status(503));
    let answer = proxy.get("/sie/a").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "kept");
    assert_eq!(
        answer.cache_status(),
        "sidecache; fwd=stale; fwd-status=503; detail=stale-if-error"
    );
    // No answer in time (504): the same.
    origin.on("/sie/a", Reply::ok().delay(Duration::from_secs(3)));
    let answer = proxy.get("/sie/a").await;
    assert_eq!(answer.text(), "kept");
    assert_eq!(
        answer.cache_status(),
        "sidecache; fwd=stale; fwd-status=504; detail=stale-if-error"
    );

    // Past the window the failure reaches the client.
    proxy.advance(Duration::from_millis(2000));
    origin.on("/sie/a", Reply::ok().status(503));
    assert_eq!(proxy.get("/sie/a").await.status, 503);
    origin.on("/sie/a", Reply::ok().delay(Duration::from_secs(3)));
    assert_eq!(proxy.get("/sie/a").await.status, 504);
}

#[tokio::test]
async fn the_response_directive_sets_the_stale_if_error_window_rfc5861_4() {
    let origin = Origin::start().await;
    origin.on(
        "/sie-d",
        Reply::ok()
            .body("kept")
            .header("cache-control", "max-age=1, stale-if-error=60"),
    );
    let proxy = ProxyConfig::new(&origin)
        .with("[[routes]]\npath = \"/sie-d\"\n")
        .start()
        .await;
    proxy.get("/sie-d").await;
    proxy.advance(Duration::from_millis(1500));
    origin.on("/sie-d", Reply::ok().status(500));
    let answer = proxy.get("/sie-d").await;
    assert_eq!(
        (answer.status.as_u16(), answer.text().as_str()),
        (200, "kept")
    );
}
