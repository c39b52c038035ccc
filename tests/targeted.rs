//! Targeted cache control (RFC 9213) through the running proxy: which field decides, one test per row of the precedence table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime};

use support::{Answer, Origin, Proxy, ProxyConfig, Reply, routes};

const SIDECACHE_CC: &str = "sidecache-cache-control";
const CDN_CC: &str = "cdn-cache-control";
const STORED: &str = "sidecache; fwd=miss; stored";

/// A proxy that caches everything with no freshness of its own (`ttl =
/// "0s"`), so only the origin's fields decide; `cache` is more `[cache]` TOML.
async fn proxy(origin: &Origin, cache: &str) -> Proxy {
    ProxyConfig::new(origin)
        .with(format!("[cache]\n{cache}"))
        .with(routes::cache("/**", "0s"))
        .start()
        .await
}

/// An origin answering `path` with these header fields.
async fn origin_with(path: &str, fields: &[(&str, &str)]) -> Origin {
    let origin = Origin::start().await;
    let mut reply = Reply::ok();
    for (name, value) in fields {
        reply = reply.header(name, value);
    }
    origin.on(path, reply);
    origin
}

fn is_hit(answer: &Answer) -> bool {
    answer.cache_status().starts_with("sidecache; hit; ttl=")
}

#[tokio::test]
async fn sidecache_field_overrides_no_store_and_never_reaches_the_client() {
    let origin = origin_with(
        "/a",
        &[(SIDECACHE_CC, "max-age=60"), ("cache-control", "no-store")],
    )
    .await;
    let proxy = proxy(&origin, "").await;

    let first = proxy.get("/a").await;
    assert_eq!(first.cache_status(), STORED);
    let second = proxy.get("/a").await;
    assert!(is_hit(&second), "{}", second.cache_status());
    assert_eq!(origin.hits("/a"), 1);
    for answer in [&first, &second] {
        assert_eq!(answer.header("cache-control"), "no-store", "for browsers");
        assert!(!answer.headers.contains_key(SIDECACHE_CC));
    }
    // Its max-age is the freshness, too.
    proxy.advance(Duration::from_secs(61));
    assert!(!is_hit(&proxy.get("/a").await));
    assert_eq!(origin.hits("/a"), 2);
}

#[tokio::test]
async fn cdn_field_overrides_private_and_passes_through() {
    let origin = origin_with(
        "/b",
        &[(CDN_CC, "max-age=60"), ("cache-control", "private")],
    )
    .await;
    let proxy = proxy(&origin, "").await;

    assert_eq!(proxy.get("/b").await.cache_status(), STORED);
    let hit = proxy.get("/b").await;
    assert!(is_hit(&hit), "{}", hit.cache_status());
    assert_eq!(hit.header(CDN_CC), "max-age=60", "for the CDNs downstream");
    assert_eq!(hit.header("cache-control"), "private");
    assert_eq!(origin.hits("/b"), 1);
}

#[tokio::test]
async fn targeted_no_store_overrides_cache_control_max_age() {
    let origin = origin_with(
        "/c",
        &[(SIDECACHE_CC, "no-store"), ("cache-control", "max-age=60")],
    )
    .await;
    let proxy = proxy(&origin, "").await;

    for _ in 0..2 {
        assert_eq!(
            proxy.get("/c").await.cache_status(),
            "sidecache; fwd=miss; detail=no-store"
        );
    }
    assert_eq!(origin.hits("/c"), 2);
}

#[tokio::test]
async fn sidecache_field_wins_over_cdn_field() {
    let origin = origin_with(
        "/d",
        &[
            (SIDECACHE_CC, "max-age=60"),
            (CDN_CC, "no-store"),
            ("cache-control", "no-store"),
        ],
    )
    .await;
    let proxy = proxy(&origin, "").await;

    assert_eq!(proxy.get("/d").await.cache_status(), STORED);
    let hit = proxy.get("/d").await;
    assert!(is_hit(&hit), "{}", hit.cache_status());
    assert_eq!(hit.header(CDN_CC), "no-store");
    assert!(!hit.headers.contains_key(SIDECACHE_CC));
    assert_eq!(origin.hits("/d"), 1);
}

#[tokio::test]
async fn invalid_targeted_fields_are_ignored_and_cache_control_decides() {
    let origin = origin_with(
        "/e",
        &[
            (SIDECACHE_CC, "max-age="),
            (CDN_CC, "a=1,,"),
            ("cache-control", "no-store"),
        ],
    )
    .await;
    let proxy = proxy(&origin, "").await;

    let answer = proxy.get("/e").await;
    assert_eq!(
        answer.cache_status(),
        "sidecache; fwd=miss; detail=no-store"
    );
    assert!(
        !answer.headers.contains_key(SIDECACHE_CC),
        "removed all the same"
    );
    assert_eq!(answer.header(CDN_CC), "a=1,,");
    proxy.get("/e").await;
    assert_eq!(origin.hits("/e"), 2);
}

#[tokio::test]
async fn without_targeted_fields_cache_control_decides() {
    let origin = origin_with("/f", &[("cache-control", "max-age=60")]).await;
    origin.on("/g", Reply::ok().header("cache-control", "no-store"));
    let proxy = proxy(&origin, "").await;

    assert_eq!(proxy.get("/f").await.cache_status(), STORED);
    assert!(is_hit(&proxy.get("/f").await));
    assert_eq!(origin.hits("/f"), 1);
    assert_eq!(
        proxy.get("/g").await.cache_status(),
        "sidecache; fwd=miss; detail=no-store"
    );
}

#[tokio::test]
async fn a_targeted_field_without_max_age_makes_expires_count_for_nothing() {
    let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let origin = origin_with("/h", &[(CDN_CC, "public"), ("expires", &in_an_hour)]).await;
    // The same Expires alone is an hour's freshness.
    origin.on("/i", Reply::ok().header("expires", &in_an_hour));
    let proxy = proxy(&origin, "").await;

    assert_eq!(
        proxy.get("/h").await.cache_status(),
        "sidecache; fwd=miss; detail=no-freshness"
    );
    proxy.get("/h").await;
    assert_eq!(origin.hits("/h"), 2);
    assert_eq!(proxy.get("/i").await.cache_status(), STORED);
    assert!(is_hit(&proxy.get("/i").await));
}

#[tokio::test]
async fn cache_targeted_fields_sets_which_fields_count() {
    let origin = origin_with(
        "/j",
        &[("x-my-cc", "max-age=60"), ("cache-control", "no-store")],
    )
    .await;
    origin.on(
        "/k",
        Reply::ok()
            .header(SIDECACHE_CC, "max-age=60")
            .header("cache-control", "no-store"),
    );
    let proxy = proxy(&origin, "targeted_fields = [\"X-My-CC\"]").await;

    assert_eq!(proxy.get("/j").await.cache_status(), STORED);
    let hit = proxy.get("/j").await;
    assert!(is_hit(&hit), "{}", hit.cache_status());
    assert_eq!(hit.header("x-my-cc"), "max-age=60", "passed on");
    assert_eq!(origin.hits("/j"), 1);
    // Sidecache-Cache-Control is no longer in the list.
    assert_eq!(
        proxy.get("/k").await.cache_status(),
        "sidecache; fwd=miss; detail=no-store"
    );
}
