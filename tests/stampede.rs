//! Stampede protection: concurrent misses for one key become one origin fetch, and only shareable answers are shared.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::{Origin, ProxyConfig, Reply, routes};

fn route() -> String {
    routes::cache("/s/*", "60s") + "lock_timeout = \"30s\"\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_make_one_origin_fetch() {
    let origin = Origin::start().await;
    origin.on(
        "/s/cold",
        Reply::ok()
            .body("the body")
            .delay(Duration::from_millis(500)),
    );
    let proxy = Arc::new(ProxyConfig::new(&origin).with(route()).start().await);
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.get("/s/cold").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "the body");
        statuses.push(answer.cache_status().to_owned());
    }
    assert_eq!(origin.hits("/s/cold"), 1);
    let collapsed = statuses
        .iter()
        .filter(|s| s.ends_with("; collapsed"))
        .count();
    let stored = statuses
        .iter()
        .filter(|s| *s == "sidecache; fwd=miss; stored")
        .count();
    assert_eq!(stored, 1, "{statuses:?}");
    assert!(
        collapsed > 100,
        "most waited for the one fetch: {collapsed}"
    );
    let metrics = proxy.admin("/metrics").await.text();
    assert!(
        metrics.contains(&format!("cache_status=\"collapsed\"}} {collapsed}")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_answer_is_never_shared_with_waiting_requests() {
    let origin = Origin::start().await;
    for path in ["/s/private", "/s/cookie"] {
        let reply = Reply::ok().delay(Duration::from_millis(300));
        origin.on(
            path,
            if path.ends_with("private") {
                reply.header("cache-control", "private")
            } else {
                reply.header("set-cookie", "session=mine")
            },
        );
    }
    let proxy = Arc::new(ProxyConfig::new(&origin).with(route()).start().await);
    for path in ["/s/private", "/s/cookie"] {
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let proxy = proxy.clone();
                tokio::spawn(async move { proxy.get(path).await })
            })
            .collect();
        let mut bodies = Vec::new();
        for request in requests {
            let answer = request.await.unwrap();
            assert_eq!(answer.status, 200);
            assert!(
                !answer.cache_status().contains("collapsed"),
                "{}",
                answer.cache_status()
            );
            bodies.push(answer.text());
        }
        // Every request got its own answer from the origin.
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 20, "{path}: {bodies:?}");
        assert_eq!(origin.hits(path), 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_client_leaves_does_not_strand_the_others() {
    let origin = Origin::start().await;
    let body = Bytes::from(vec![b'l'; 256 * 1024]);
    origin.on(
        "/s/slow",
        Reply::ok()
            .body(body.clone())
            .slow(8 * 1024, Duration::from_millis(20)),
    );
    let proxy = Arc::new(ProxyConfig::new(&origin).with(route()).start().await);

    let response = proxy.open("/s/slow").await;
    let mut leader_body = response.into_body();
    leader_body.frame().await.unwrap().unwrap();
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.get("/s/slow").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(leader_body);
    // lock_timeout is 30 s: finishing well before it shows they were released.
    for follower in followers {
        let answer = tokio::time::timeout(Duration::from_secs(20), follower)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, body);
    }
}
