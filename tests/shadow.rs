//! Shadow routes: every request reaches the origin as on a route that does not cache, while the cache stores and counts what it would have served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use sidecache::config::Config;
use support::redis::{RedisCluster, cli};
use support::{Answer, Origin, Proxy, ProxyConfig, Reply, eventually};

/// A shadow route over `/s/*` that would cache for 60 s, and a route over
/// `/p/*` that does not cache, to compare with.
const ROUTES: &str = "[[routes]]\nname = \"shadow\"\npath = \"/s/*\"\nttl = \"60s\"\nshadow = true\n\
                      [[routes]]\nname = \"plain\"\npath = \"/p/*\"\ncache = false\n";

async fn proxy(origin: &Origin) -> Proxy {
    ProxyConfig::new(origin).with(ROUTES).start().await
}

/// `sidecache_shadow_requests_total` of the shadow route for one `would`.
async fn would(proxy: &Proxy, would: &str) -> u64 {
    proxy
        .metric(&format!(
            "sidecache_shadow_requests_total{{route=\"shadow\",would=\"{would}\"}}"
        ))
        .await
}

async fn saved_bytes(proxy: &Proxy) -> u64 {
    proxy
        .metric("sidecache_shadow_saved_bytes_total{route=\"shadow\"}")
        .await
}

/// The headers a client got, but those that differ from one answer to the
/// next whatever the route (`Date`) and `Cache-Status`.
fn comparable(answer: &Answer) -> HeaderMap {
    let mut headers = answer.headers.clone();
    headers.remove("date");
    headers.remove("cache-status");
    headers
}

#[tokio::test]
async fn every_request_reaches_the_origin_and_the_later_ones_count_as_would_hits() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin).await;
    let reply = Reply::ok()
        .header("cache-control", "max-age=60")
        .header("x-app", "1")
        .etag("\"v1\"");
    origin.on("/s/page", reply.clone());
    origin.on("/p/page", reply);
    // Headers the request model would change (the guard list aside): they
    // reach the origin as on the route that does not cache.
    let sent = [
        ("accept-encoding", "gzip, deflate, br"),
        ("accept", "TEXT/HTML, */*"),
        ("x-custom", "a"),
    ];

    for n in 1..=4 {
        let shadowed = proxy.send("GET", "/s/page", &sent).await;
        let plain = proxy.send("GET", "/p/page", &sent).await;
        assert_eq!(shadowed.status, 200);
        assert_eq!(
            shadowed.text(),
            format!("/s/page #{n}"),
            "the origin's body"
        );
        assert_eq!(comparable(&shadowed), comparable(&plain));
        assert_eq!(
            origin.last_headers("/s/page"),
            origin.last_headers("/p/page"),
            "the origin gets what a route that does not cache sends it"
        );
        let expected = match n {
            1 => "sidecache; fwd=bypass; detail=shadow-miss",
            _ => "sidecache; fwd=bypass; detail=shadow-hit",
        };
        assert_eq!(shadowed.cache_status(), expected, "request {n}");
    }
    assert_eq!(
        origin.hits("/s/page"),
        4,
        "every request reached the origin"
    );
    assert_eq!(would(&proxy, "miss").await, 1);
    assert_eq!(would(&proxy, "hit").await, 3);
    // Each would-hit would have served the first answer, stored.
    assert_eq!(saved_bytes(&proxy).await, 3 * "/s/page #1".len() as u64);
    let shadow_requests = "sidecache_requests_total{route=\"shadow\",cache_status=\"shadow\"}";
    assert_eq!(proxy.metric(shadow_requests).await, 4);
}

#[tokio::test]
async fn a_stored_response_past_its_freshness_counts_as_would_stale_and_is_stored_again() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin).await;
    origin.on(
        "/s/aging",
        Reply::ok().header("cache-control", "max-age=10"),
    );
    proxy.get("/s/aging").await;
    assert!(
        proxy
            .get("/s/aging")
            .await
            .cache_status()
            .ends_with("shadow-hit")
    );
    // Freshness running out is the subject: the clock moves instead.
    proxy.advance(Duration::from_secs(11));
    assert_eq!(
        proxy.get("/s/aging").await.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-stale"
    );
    assert_eq!(
        proxy.get("/s/aging").await.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-hit",
        "the answer to the stale one was stored, as the cache would have"
    );
    assert_eq!(origin.hits("/s/aging"), 4);
    assert_eq!(would(&proxy, "stale").await, 1);
    assert_eq!(would(&proxy, "hit").await, 2);
    assert_eq!(saved_bytes(&proxy).await, 2 * "/s/aging #1".len() as u64);
}

#[tokio::test]
async fn a_request_with_cookies_is_forwarded_with_them_and_stores_nothing() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin).await;
    let with_cookie = proxy
        .send("GET", "/s/home", &[("cookie", "session=42")])
        .await;
    assert_eq!(with_cookie.text(), "/s/home #1");
    assert_eq!(
        with_cookie.cache_status(),
        "sidecache; fwd=bypass; detail=cookie",
        "what the route would say with its cache on"
    );
    assert_eq!(origin.last_headers("/s/home")["cookie"], "session=42");
    assert_eq!(
        proxy.get("/s/home").await.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-miss",
        "nothing was stored from the request with cookies"
    );
    let bypassed = "sidecache_requests_total{route=\"shadow\",cache_status=\"bypass\"}";
    assert_eq!(proxy.metric(bypassed).await, 1);
    assert_eq!(would(&proxy, "miss").await, 1, "only the looked-up one");
}

#[tokio::test]
async fn responses_the_cache_would_not_store_never_become_would_hits() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin).await;
    let replies = [
        (
            "/s/no-store",
            Reply::ok().header("cache-control", "no-store"),
        ),
        (
            "/s/private",
            Reply::ok().header("cache-control", "private, max-age=60"),
        ),
        ("/s/set-cookie", Reply::ok().header("set-cookie", "id=1")),
        (
            "/s/error",
            Reply::ok()
                .status(500)
                .header("cache-control", "max-age=60"),
        ),
    ];
    for (path, reply) in replies {
        origin.on(path, reply);
        for n in 1..=2 {
            let answer = proxy.get(path).await;
            assert_eq!(answer.text(), format!("{path} #{n}"));
            assert_eq!(
                answer.cache_status(),
                "sidecache; fwd=bypass; detail=shadow-miss",
                "{path}"
            );
        }
        assert_eq!(origin.hits(path), 2);
    }
    assert_eq!(
        proxy.get("/s/set-cookie").await.header("set-cookie"),
        "id=1",
        "the client still gets what the origin sent"
    );
    assert_eq!(would(&proxy, "hit").await, 0);
    assert_eq!(saved_bytes(&proxy).await, 0);
}

#[tokio::test]
async fn an_answer_to_a_request_the_cache_would_have_sent_otherwise_is_not_stored() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(
            "[[routes]]\nname = \"shadow\"\npath = \"/s/*\"\nttl = \"60s\"\nshadow = true\n\
             key_query = { ignore = [\"utm_*\"] }\n",
        )
        .start()
        .await;
    // The origin saw a host override the cache would have kept from it, or
    // a parameter the cache would have dropped: its answer may depend on it.
    let guarded = proxy
        .send("GET", "/s/guarded", &[("x-forwarded-host", "evil.example")])
        .await;
    assert_eq!(
        guarded.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-miss"
    );
    assert_eq!(
        origin.last_headers("/s/guarded")["x-forwarded-host"],
        "evil.example",
        "forwarded untouched"
    );
    proxy.get("/s/tracked?utm_source=mail").await;
    assert_eq!(
        origin.last_target("/s/tracked"),
        "/s/tracked?utm_source=mail"
    );
    for path in ["/s/guarded", "/s/tracked"] {
        let statuses = [
            "sidecache; fwd=bypass; detail=shadow-miss",
            "sidecache; fwd=bypass; detail=shadow-hit",
        ];
        for status in statuses {
            assert_eq!(proxy.get(path).await.cache_status(), status, "{path}");
        }
    }
    // A request the cache would key alike is a would-hit.
    assert_eq!(
        proxy.get("/s/tracked?utm_source=ad").await.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-hit"
    );
}

fn config_text(origin: &Origin, shadow: bool) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://{}\"\n\
         [[routes]]\npath = \"/page\"\nttl = \"60s\"\nshadow = {shadow}\n",
        origin.addr
    )
}

fn write(path: &Path, text: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

#[tokio::test]
async fn turned_on_by_a_reload_a_route_serves_what_its_shadow_stored() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text(&origin, true)).unwrap();
    let running = sidecache::start(Config::load(&path).unwrap())
        .await
        .unwrap();
    let reloader = running.reloader(path.clone());
    let proxy = Proxy::around(running);
    assert!(
        proxy
            .get("/page")
            .await
            .cache_status()
            .ends_with("shadow-miss")
    );
    assert!(
        proxy
            .get("/page")
            .await
            .cache_status()
            .ends_with("shadow-hit")
    );

    write(&path, &config_text(&origin, false));
    reloader.reload().unwrap();
    let hit = proxy.get("/page").await;
    assert!(
        hit.cache_status().starts_with("sidecache; hit; ttl="),
        "{}",
        hit.cache_status()
    );
    assert_eq!(hit.text(), "/page #1", "the answer the shadow stored");
    assert_eq!(origin.hits("/page"), 2);

    write(&path, &config_text(&origin, true));
    reloader.reload().unwrap();
    let shadowed = proxy.get("/page").await;
    assert_eq!(shadowed.text(), "/page #3", "back to forwarding everything");
    assert!(shadowed.cache_status().ends_with("shadow-hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_pods_shadow_stored_is_a_would_hit_in_another() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap(),
    );
    let origin = Origin::start().await;
    let redis = format!(
        "[redis]\nnodes = {}\ncommand_timeout = \"50ms\"\nconnect_timeout = \"300ms\"\n",
        cluster.seeds()
    );
    let a = ProxyConfig::new(&origin)
        .with(&redis)
        .with(ROUTES)
        .start()
        .await;
    let b = ProxyConfig::new(&origin)
        .with(&redis)
        .with(ROUTES)
        .start()
        .await;
    a.wait_redis_connected().await;
    b.wait_redis_connected().await;
    // Both pods key by the Host they are reached by (a Service name).
    let host = [("host", "app.example")];
    let first = a.send("GET", "/s/shared", &host).await;
    assert_eq!(
        first.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-miss"
    );
    let c = cluster.clone();
    eventually(
        "A's shadow store in Redis",
        Duration::from_secs(5),
        async || {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.total_keys())
                .await
                .unwrap()
                == 1
        },
    )
    .await;
    let from_b = b.send("GET", "/s/shared", &host).await;
    assert_eq!(
        from_b.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-hit",
        "B would have answered from what A's shadow stored"
    );
    assert_eq!(from_b.text(), "/s/shared #2", "yet the origin answered");
    assert_eq!(origin.hits("/s/shared"), 2);
    assert_eq!(would(&b, "hit").await, 1);
    assert_eq!(saved_bytes(&b).await, "/s/shared #1".len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_lookup_that_redis_does_not_answer_is_a_would_miss_within_the_budget() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let origin = Origin::start().await;
    let redis = format!(
        "[redis]\nnodes = {}\ncommand_timeout = \"50ms\"\nconnect_timeout = \"300ms\"\n",
        cluster.seeds()
    );
    let proxy = ProxyConfig::new(&origin)
        .with(&redis)
        .with(ROUTES)
        .start()
        .await;
    proxy.wait_redis_connected().await;
    // Every master stops answering for far longer than the Redis budget.
    let masters = cluster.master_ports();
    let paused = tokio::task::spawn_blocking(move || {
        masters
            .iter()
            .map(|&port| cli(port, &["client", "pause", "3000", "ALL"]))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(paused.iter().all(|reply| reply.as_deref() == Some("OK")));

    let started = Instant::now();
    let answer = proxy.get("/s/paused").await;
    let took = started.elapsed();
    assert_eq!(answer.text(), "/s/paused #1");
    assert_eq!(
        answer.cache_status(),
        "sidecache; fwd=bypass; detail=shadow-miss"
    );
    assert!(
        took < Duration::from_secs(1),
        "answered in {took:?}: the lookup gives up at its 50ms budget, not after the 3s pause"
    );
    let timeouts = "sidecache_redis_calls_total{op=\"get\",outcome=\"timeout\"}";
    assert!(proxy.metric(timeouts).await >= 1);
}

#[test]
fn check_shows_shadow_routes_and_refuses_one_that_does_not_cache() {
    let dir = tempfile::tempdir().unwrap();
    let check = |routes: &str| {
        let path = dir.path().join("proxy.toml");
        let text = format!("[origin]\nurl = \"http://127.0.0.1:3000\"\n{routes}");
        std::fs::write(&path, text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sidecache"))
            .args(["--check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), printed)
    };
    let (code, printed) = check("[[routes]]\nname = \"trial\"\npath = \"/s/*\"\nshadow = true\n");
    assert_eq!(code, Some(0), "{printed}");
    let row = printed.lines().find(|line| line.contains("trial")).unwrap();
    assert!(row.contains(" shadow "), "{row}");

    let (code, printed) = check("[[routes]]\npath = \"/s/*\"\nshadow = true\ncache = false\n");
    assert_eq!(code, Some(64), "{printed}");
    assert!(
        printed.contains("routes[0].shadow: the route does not cache (cache = false)"),
        "{printed}"
    );
}

#[tokio::test]
async fn explain_says_a_shadow_route_forwards_and_what_the_cache_would_do() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin).await;
    let url = proxy.url("/s/explained");
    let explain = async || {
        let query = percent_encoding::utf8_percent_encode(&url, percent_encoding::NON_ALPHANUMERIC);
        let answer = proxy.admin(&format!("/explain?url={query}")).await;
        serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap()
    };
    let before = explain().await;
    assert_eq!(before["route"]["shadow"], true);
    assert_eq!(before["decision"]["outcome"], "miss");
    assert_eq!(
        before["decision"]["cache_status"],
        "sidecache; fwd=bypass; detail=shadow-miss"
    );
    proxy.get("/s/explained").await;
    let after = explain().await;
    assert_eq!(after["decision"]["outcome"], "hit");
    assert_eq!(
        after["decision"]["cache_status"],
        "sidecache; fwd=bypass; detail=shadow-hit"
    );
    let reason = after["decision"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("shadow route, forwarded; the cache would: fresh"),
        "{reason}"
    );
}
