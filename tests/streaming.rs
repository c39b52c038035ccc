//! Bodies stream through as the origin sends them; only complete bodies within the size limit are stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::{Origin, ProxyConfig, Reply, eventually, routes};

fn route() -> String {
    routes::cache("/s/*", "60s")
}
const FIVE_MIB: usize = 5 * 1024 * 1024;

#[tokio::test]
async fn first_byte_of_a_slow_body_arrives_before_the_origin_finishes() {
    let origin = Origin::start().await;
    // 5 MiB in 64 KiB chunks, 20 ms apart: about 1.6 s to send in full.
    let body = Bytes::from(vec![b'x'; FIVE_MIB]);
    origin.on(
        "/s/slow",
        Reply::ok()
            .body(body.clone())
            .slow(64 * 1024, Duration::from_millis(20)),
    );
    let proxy = ProxyConfig::new(&origin).with(route()).start().await;

    let response = proxy.open("/s/slow").await;
    assert_eq!(response.status(), 200);
    let mut body_stream = response.into_body();
    let first = body_stream.frame().await.unwrap().unwrap();
    assert!(!first.data_ref().unwrap().is_empty());
    assert_eq!(
        origin.finished("/s/slow"),
        0,
        "first byte arrived while the origin was still sending"
    );

    let rest = body_stream.collect().await.unwrap().to_bytes();
    assert_eq!(first.data_ref().unwrap().len() + rest.len(), FIVE_MIB);
    assert_eq!(origin.finished("/s/slow"), 1);

    // Streamed and complete, so stored: the next request is a hit with the whole body.
    let hit = proxy.get("/s/slow").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.body, body);
    assert_eq!(origin.hits("/s/slow"), 1);
}

#[tokio::test]
async fn bodies_over_the_size_limit_are_streamed_but_not_stored() {
    let origin = Origin::start().await;
    let big = Bytes::from(vec![b'b'; 2048]);
    origin.on("/s/declared", Reply::ok().body(big.clone()));
    origin.on("/s/chunked", Reply::ok().body(big.clone()).chunked());
    origin.on("/s/small-chunked", Reply::ok().body("small").chunked());
    let proxy = ProxyConfig::new(&origin)
        .with("[cache]\nmax_object_size = \"1KiB\"\n")
        .with(route())
        .start()
        .await;

    for _ in 0..2 {
        let answer = proxy.get("/s/declared").await;
        assert_eq!(
            answer.cache_status(),
            "sidecache; fwd=miss; detail=too-large"
        );
        assert_eq!(answer.body, big);
    }
    assert_eq!(origin.hits("/s/declared"), 2);

    // Without Content-Length the size shows only while streaming.
    for _ in 0..2 {
        let answer = proxy.get("/s/chunked").await;
        assert!(
            answer.cache_status().contains("fwd=miss"),
            "{}",
            answer.cache_status()
        );
        assert_eq!(answer.body, big);
    }
    assert_eq!(origin.hits("/s/chunked"), 2);

    // A chunked body within the limit is stored, and answered with its length.
    proxy.get("/s/small-chunked").await;
    let hit = proxy.get("/s/small-chunked").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.text(), "small");
    assert_eq!(hit.header("content-length"), "5");
}

#[tokio::test]
async fn a_body_cut_short_by_the_origin_is_not_stored() {
    let origin = Origin::start().await;
    origin.on(
        "/s/cut",
        Reply::ok().body(vec![b'c'; 4096]).truncate_after(1000),
    );
    origin.on(
        "/s/cut-chunked",
        Reply::ok()
            .body(vec![b'c'; 4096])
            .truncate_after(1000)
            .chunked(),
    );
    let proxy = ProxyConfig::new(&origin).with(route()).start().await;
    for path in ["/s/cut", "/s/cut-chunked"] {
        for round in 1..=2 {
            // The client sees the break too, never a silently short body:
            // either the connection closes before the head was flushed, or
            // the body ends in an error.
            if let Ok(response) = proxy.try_open(path).await {
                assert_eq!(response.status(), 200);
                assert!(
                    response.into_body().collect().await.is_err(),
                    "{path} round {round}"
                );
            }
        }
        assert_eq!(origin.hits(path), 2, "{path} must not have been stored");
    }
}

#[tokio::test]
async fn a_body_the_client_abandons_is_not_stored() {
    let origin = Origin::start().await;
    let body = Bytes::from(vec![b'a'; 1024 * 1024]);
    origin.on(
        "/s/abandoned",
        Reply::ok()
            .body(body)
            .slow(16 * 1024, Duration::from_millis(10)),
    );
    let proxy = ProxyConfig::new(&origin).with(route()).start().await;

    let response = proxy.open("/s/abandoned").await;
    let mut body_stream = response.into_body();
    body_stream.frame().await.unwrap().unwrap();
    drop(body_stream);
    // Wait for the origin to finish sending into the void.
    eventually(
        "the origin to finish sending",
        Duration::from_secs(5),
        async || origin.finished("/s/abandoned") == 1,
    )
    .await;
    let again = proxy.get("/s/abandoned").await;
    assert!(
        again.cache_status().contains("fwd=miss"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.hits("/s/abandoned"), 2);
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_back_the_origin() {
    let origin = Origin::start().await;
    // 64 MiB, sent as fast as the proxy takes it: far more than the socket
    // buffers of both hops hold.
    let body = Bytes::from(vec![b'z'; 64 * 1024 * 1024]);
    let reply = || {
        Reply::ok()
            .body(body.clone())
            .slow(64 * 1024, Duration::ZERO)
    };
    origin.on("/s/big", reply());
    origin.on("/big", reply());
    let proxy = ProxyConfig::new(&origin).with(route()).start().await;
    // A caching route (the body is over max_object_size) and a pass-through.
    for path in ["/s/big", "/big"] {
        let response = proxy.open(path).await;
        assert_eq!(response.status(), 200);
        let mut body_stream = response.into_body();
        let first = body_stream.frame().await.unwrap().unwrap();
        // Real sockets: give the origin time to send all it could.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            origin.finished(path),
            0,
            "{path}: the origin sent everything while the client read nothing"
        );
        let rest = body_stream.collect().await.unwrap().to_bytes();
        assert_eq!(first.data_ref().unwrap().len() + rest.len(), body.len());
        eventually("the origin to finish", Duration::from_secs(5), async || {
            origin.finished(path) == 1
        })
        .await;
    }
}
