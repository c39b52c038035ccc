//! `/explain` on the admin port and `sidecache explain`, against the real proxy, origin and (one test) Redis Cluster: what it says before and after a fill, as time passes, for variants and bypasses, and that it changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use support::redis::RedisCluster;
use support::{Origin, Proxy, ProxyConfig, Reply, routes};

/// `/explain` for `url` with these request headers, as JSON.
async fn explain(proxy: &Proxy, url: &str, headers: &[&str]) -> Value {
    let answer = proxy.admin(&explain_path(url, headers)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), "application/json");
    serde_json::from_slice(&answer.body).unwrap()
}

fn explain_path(url: &str, headers: &[&str]) -> String {
    let mut path = format!(
        "/explain?url={}",
        utf8_percent_encode(url, NON_ALPHANUMERIC)
    );
    for header in headers {
        path.push_str("&header=");
        path.push_str(&utf8_percent_encode(header, NON_ALPHANUMERIC).to_string());
    }
    path
}

/// The `/metrics` lines that count requests, Redis calls and what the
/// memory tier holds: what a request changes and explain must not.
async fn counted(proxy: &Proxy) -> Vec<String> {
    proxy
        .admin("/metrics")
        .await
        .text()
        .lines()
        .filter(|line| {
            line.starts_with("sidecache_requests_total")
                || line.starts_with("sidecache_redis_calls_total{op=\"get\"")
                || line.starts_with("sidecache_redis_calls_total{op=\"lease\"")
                || line.starts_with("sidecache_memory_")
        })
        .map(str::to_owned)
        .collect()
}

fn decision(explained: &Value) -> (&str, &str) {
    let decision = &explained["decision"];
    (
        decision["outcome"].as_str().unwrap(),
        decision["reason"].as_str().unwrap(),
    )
}

#[tokio::test]
async fn explain_follows_a_url_from_miss_to_fresh_hit_to_stale_and_changes_nothing() {
    let origin = Origin::start().await;
    origin.on(
        "/users/1",
        Reply::ok()
            .header("cache-control", "max-age=60")
            .etag("\"v1\"")
            .body("one"),
    );
    let proxy = ProxyConfig::new(&origin)
        .with(routes::USERS)
        .with(routes::cache("/swr/*", "60s") + "stale_while_revalidate = \"30s\"\n")
        .start()
        .await;
    let url = proxy.url("/users/1");

    let before = explain(&proxy, &url, &[]).await;
    assert_eq!(
        decision(&before),
        ("miss", "nothing is stored for this URL")
    );
    assert_eq!(before["route"]["name"], "users");
    assert_eq!(before["key"]["path"], "/users/1");
    assert_eq!(before["key"]["method"], "GET");
    assert_eq!(before["key"]["scheme"], "http");
    assert_eq!(
        before["key"]["host"],
        proxy.running.addr().to_string().as_str()
    );
    assert_eq!(before["tiers"]["memory"]["url"]["state"], "absent");
    assert_eq!(before["tiers"]["redis"]["url"]["state"], "off");
    assert!(before["variants"].is_null());
    // Explain asked the origin nothing, and stored nothing.
    assert_eq!(origin.hits("/users/1"), 0);
    assert_eq!(
        explain(&proxy, &url, &[]).await["tiers"]["memory"]["url"]["state"],
        "absent"
    );

    assert_eq!(
        proxy.get("/users/1").await.cache_status(),
        "sidecache; fwd=miss; stored"
    );
    proxy.advance(Duration::from_secs(10));
    let counted_before = counted(&proxy).await;
    let filled = explain(&proxy, &url, &[]).await;
    assert_eq!(filled["decision"]["outcome"], "hit");
    assert_eq!(filled["decision"]["tier"], "l1");
    let stored = &filled["tiers"]["memory"]["url"];
    assert_eq!(stored["state"], "response");
    assert_eq!(stored["status"], 200);
    // Ages count whole seconds from a `Date` that has no fractions: the
    // real second under way may add one.
    let age = stored["age_seconds"].as_u64().unwrap();
    assert!((10..=11).contains(&age), "{age}");
    assert_eq!(stored["freshness_lifetime_seconds"], 60);
    let left = stored["freshness_left_seconds"].as_u64().unwrap();
    assert!((49..=50).contains(&left), "{left}");
    assert_eq!(
        filled["decision"]["cache_status"],
        format!("sidecache; hit; ttl={left}").as_str()
    );
    assert_eq!(stored["etag"], "\"v1\"");
    assert_eq!(stored["size"], 3);
    assert_eq!(stored["tags"], serde_json::json!([]), "no tag fields");
    // No request, hit or tier change counted, no origin request.
    assert_eq!(counted(&proxy).await, counted_before);
    assert_eq!(origin.hits("/users/1"), 1);
    // And the next request gets what explain said.
    let next = proxy.get("/users/1").await;
    assert!(
        next.cache_status().starts_with("sidecache; hit; ttl=4"),
        "{}",
        next.cache_status()
    );

    proxy.advance(Duration::from_secs(60));
    let stale = explain(&proxy, &url, &[]).await;
    let (outcome, reason) = decision(&stale);
    assert_eq!(outcome, "revalidate");
    assert!(
        reason.starts_with("stale: age 7")
            && reason.contains(" s past its 60 s freshness lifetime"),
        "{reason}"
    );
    assert_eq!(stale["decision"]["stale_while_revalidate"], false);
    assert_eq!(stale["decision"]["stale_if_error"], false);
    let stale_for = stale["tiers"]["memory"]["url"]["stale_for_seconds"]
        .as_u64()
        .unwrap();
    assert!((10..=11).contains(&stale_for), "{stale_for}");
    assert_eq!(stale["tiers"]["memory"]["url"]["freshness_left_seconds"], 0);
    assert_eq!(origin.hits("/users/1"), 1);
    assert_eq!(
        proxy.get("/users/1").await.cache_status(),
        "sidecache; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(origin.not_modified("/users/1"), 1);

    // Within the route's stale-while-revalidate window.
    origin.on(
        "/swr/a",
        Reply::ok().header("cache-control", "max-age=10").body("a"),
    );
    proxy.get("/swr/a").await;
    proxy.advance(Duration::from_secs(15));
    let swr = explain(&proxy, &proxy.url("/swr/a"), &[]).await;
    assert_eq!(swr["decision"]["outcome"], "stale-while-revalidate");
    let status = swr["decision"]["cache_status"].as_str().unwrap();
    assert!(
        status.starts_with("sidecache; hit; ttl=-")
            && status.ends_with("; detail=stale-while-revalidate"),
        "{status}"
    );
    assert_eq!(swr["decision"]["stale_while_revalidate"], true);
    assert_eq!(origin.hits("/swr/a"), 1);
}

#[tokio::test]
async fn explain_shows_which_variant_the_given_headers_select() {
    let origin = Origin::start().await;
    origin.on(
        "/users/v",
        Reply::ok()
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
            .echo("accept-language"),
    );
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;
    let url = proxy.url("/users/v");
    let german = proxy
        .send("GET", "/users/v", &[("accept-language", "de")])
        .await;
    assert_eq!(german.cache_status(), "sidecache; fwd=miss; stored");

    let de = explain(&proxy, &url, &["Accept-Language: de"]).await;
    assert_eq!(de["decision"]["outcome"], "hit");
    assert_eq!(
        de["variants"]["vary"],
        serde_json::json!(["accept-language"])
    );
    assert_eq!(
        de["variants"]["selected_by"],
        serde_json::json!([{"name": "accept-language", "values": ["de"]}])
    );
    assert_eq!(de["tiers"]["memory"]["url"]["state"], "variants");
    assert_eq!(de["tiers"]["memory"]["variant"]["state"], "response");
    assert_eq!(de["tiers"]["memory"]["variant"]["vary"], "Accept-Language");

    let fr = explain(&proxy, &url, &["Accept-Language: fr"]).await;
    assert_eq!(fr["decision"]["outcome"], "vary-miss");
    assert_eq!(fr["tiers"]["memory"]["variant"]["state"], "absent");
    assert_ne!(fr["variants"]["key"], de["variants"]["key"]);
    // Without the header: another variant again, selected by its absence.
    let none = explain(&proxy, &url, &[]).await;
    assert_eq!(none["decision"]["outcome"], "vary-miss");
    assert_eq!(
        none["variants"]["selected_by"],
        serde_json::json!([{"name": "accept-language", "values": []}])
    );
    assert_eq!(origin.hits("/users/v"), 1);
    assert_eq!(
        proxy
            .send("GET", "/users/v", &[("accept-language", "fr")])
            .await
            .cache_status(),
        "sidecache; fwd=vary-miss; stored"
    );
}

#[tokio::test]
async fn explain_says_why_a_request_bypasses_the_cache() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(routes::USERS)
        .with("[[routes]]\nname = \"live\"\npath = \"/live/*\"\ncache = false\n")
        .start()
        .await;

    let cookie = explain(&proxy, &proxy.url("/users/1"), &["Cookie: session=1"]).await;
    let (outcome, reason) = decision(&cookie);
    assert_eq!(outcome, "bypass");
    assert!(reason.starts_with("cookie: "), "{reason}");
    assert_eq!(
        cookie["decision"]["cache_status"],
        "sidecache; fwd=bypass; detail=cookie"
    );
    assert!(cookie["tiers"].is_null());

    let live = explain(&proxy, &proxy.url("/live/feed"), &[]).await;
    assert_eq!(decision(&live), ("bypass", "route live: cache = false"));
    assert_eq!(live["route"]["cache"], false);

    let unrouted = explain(&proxy, &proxy.url("/elsewhere"), &[]).await;
    assert_eq!(
        decision(&unrouted),
        (
            "bypass",
            "no route matches the path: forwarded, nothing is cached"
        )
    );
    assert!(unrouted["route"].is_null());

    let post = proxy
        .admin(&(explain_path(&proxy.url("/users/1"), &[]) + "&method=POST"))
        .await;
    let post: Value = serde_json::from_slice(&post.body).unwrap();
    let (outcome, reason) = decision(&post);
    assert_eq!(outcome, "bypass");
    assert!(
        reason.starts_with("method POST is not cached on route users"),
        "{reason}"
    );

    let precondition = explain(&proxy, &proxy.url("/users/1"), &["If-Match: \"x\""]).await;
    assert_eq!(precondition["decision"]["outcome"], "forward");
    assert_eq!(
        precondition["decision"]["cache_status"],
        "sidecache; fwd=request; detail=precondition"
    );

    // The real requests are bypassed alike.
    let answer = proxy
        .send("GET", "/users/1", &[("cookie", "session=1")])
        .await;
    assert_eq!(
        answer.cache_status(),
        "sidecache; fwd=bypass; detail=cookie"
    );
    assert_eq!(origin.hits("/users/1"), 1);
}

#[tokio::test]
async fn a_bad_explain_query_is_a_400_that_names_the_problem() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;
    let cases = [
        ("/explain", "give ?url=http://host/path"),
        (
            "/explain?url=%2Fusers%2F1",
            "url= needs a scheme and a host",
        ),
        ("/explain?url=http%3A%2F%2Fa%20b%2F", "url= is not a URL"),
        (
            "/explain?url=http%3A%2F%2Fa%2F&header=nocolon",
            "header= is not Name:Value: nocolon",
        ),
        ("/explain?url=http%3A%2F%2Fa%2F&x=1", "unknown parameter x"),
    ];
    for (path, message) in cases {
        let answer = proxy.admin(path).await;
        assert_eq!(answer.status, 400, "{path}");
        assert!(
            answer.text().starts_with(message),
            "{path}: {}",
            answer.text()
        );
    }
    let long = format!(
        "/explain?url=http%3A%2F%2Fa%2F{}",
        "a".repeat(sidecache::explain::MAX_URL_LEN)
    );
    let answer = proxy.admin(&long).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.text(), "url= is longer than 8192 bytes\n");
    let many = "&header=x%3A1".repeat(sidecache::explain::MAX_HEADERS + 1);
    let answer = proxy
        .admin(&format!("/explain?url=http%3A%2F%2Fa%2F{many}"))
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.text(), "more than 100 header= parameters\n");
}

/// Both pods key by one Host, as behind a Service.
const HOST: &str = "app.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_both_tiers_from_redis_without_copying_into_memory() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap(),
    );
    let origin = Origin::start().await;
    origin.on(
        "/r/shared",
        Reply::ok()
            .header("cache-control", "max-age=60")
            .header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT")
            .body("shared"),
    );
    let redis = format!(
        "[redis]\nnodes = {}\ncommand_timeout = \"200ms\"\nconnect_timeout = \"300ms\"\n",
        cluster.seeds()
    );
    let pod = |origin: &Origin| {
        ProxyConfig::new(origin)
            .with(&redis)
            .with(routes::cache("/r/**", "60s"))
            .start()
    };
    let a = pod(&origin).await;
    let b = pod(&origin).await;
    a.wait_redis_connected().await;
    b.wait_redis_connected().await;
    let url = format!("http://{HOST}/r/shared");

    let before = explain(&b, &url, &[]).await;
    assert_eq!(before["decision"]["outcome"], "miss");
    assert_eq!(before["tiers"]["redis"]["url"]["state"], "absent");
    assert_eq!(
        a.send("GET", "/r/shared", &[("host", HOST)])
            .await
            .cache_status(),
        "sidecache; fwd=miss; stored"
    );
    // The fill reaches Redis through pod a's write queue.
    support::eventually(
        "the fill to reach Redis",
        Duration::from_secs(5),
        async || explain(&b, &url, &[]).await["tiers"]["redis"]["url"]["state"] == "response",
    )
    .await;

    let on_a = explain(&a, &url, &[]).await;
    assert_eq!(on_a["decision"]["tier"], "l1");
    assert_eq!(on_a["tiers"]["memory"]["url"]["state"], "response");
    assert_eq!(on_a["tiers"]["redis"]["url"]["state"], "response");
    assert_eq!(on_a["tiers"]["redis"]["url"]["size"], 6);
    assert_eq!(
        on_a["tiers"]["redis"]["url"]["last_modified"],
        "Tue, 01 Jan 2030 00:00:00 GMT"
    );

    let counted_before = counted(&b).await;
    let on_b = explain(&b, &url, &[]).await;
    assert_eq!(on_b["decision"]["outcome"], "hit");
    assert_eq!(on_b["decision"]["tier"], "l2");
    assert_eq!(on_b["tiers"]["memory"]["url"]["state"], "absent");
    let shared = &on_b["tiers"]["redis"]["url"];
    assert!(shared["age_seconds"].as_u64().unwrap() <= 1, "{shared}");
    let left = shared["freshness_left_seconds"].as_u64().unwrap();
    assert!((58..=60).contains(&left), "{left}");
    assert_eq!(
        on_b["decision"]["cache_status"],
        format!("sidecache; hit; ttl={left}; detail=l2").as_str()
    );
    // Explain copied nothing into b's memory and counted no Redis hit.
    assert_eq!(
        explain(&b, &url, &[]).await["tiers"]["memory"]["url"]["state"],
        "absent"
    );
    assert_eq!(counted(&b).await, counted_before);
    assert_eq!(origin.hits("/r/shared"), 1);

    // A real request does copy it, as explain predicted: an L2 hit.
    let status = b.send("GET", "/r/shared", &[("host", HOST)]).await;
    let status = status.cache_status();
    assert!(
        status.starts_with("sidecache; hit; ttl=") && status.ends_with("; detail=l2"),
        "{status}"
    );
    assert_eq!(
        explain(&b, &url, &[]).await["tiers"]["memory"]["url"]["state"],
        "response"
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_explanation_for_a_person_and_as_json() {
    let origin = Origin::start().await;
    origin.on(
        "/users/7",
        Reply::ok()
            .header("cache-control", "max-age=60")
            .etag("\"v7\"")
            .body("seven"),
    );
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;
    proxy.get("/users/7").await;
    let url = proxy.url("/users/7");
    let admin = proxy.running.admin_addr().to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sidecache"))
                .args(args)
                .output()
                .unwrap()
        })
    };

    let text = run(vec![
        "explain".into(),
        url.clone(),
        "--header".into(),
        "Accept: text/html".into(),
        "--admin".into(),
        admin.clone(),
    ])
    .await
    .unwrap();
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&format!("url       {url} (GET)")), "{text}");
    assert!(
        text.contains("route     users (/users/*): cache true"),
        "{text}"
    );
    assert!(text.contains("memory    response 200, age "), "{text}");
    assert!(text.contains(" s more, ETag \"v7\", 5 bytes"), "{text}");
    assert!(text.contains("redis     off"), "{text}");
    assert!(
        text.contains("decision  hit from l1: fresh: age "),
        "{text}"
    );
    assert!(
        text.contains("Cache-Status: sidecache; hit; ttl="),
        "{text}"
    );

    let json = run(vec![
        "explain".into(),
        url.clone(),
        "--admin".into(),
        admin.clone(),
        "--json".into(),
    ])
    .await
    .unwrap();
    assert!(json.status.success(), "{json:?}");
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["decision"]["outcome"], "hit");

    // A refused question and an unreachable port fail with a message.
    let refused = run(vec![
        "explain".into(),
        "/no-host".into(),
        "--admin".into(),
        admin,
    ])
    .await
    .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8(refused.stderr).unwrap();
    assert!(
        message.contains("400 Bad Request url= needs a scheme and a host"),
        "{message}"
    );
    assert_eq!(origin.hits("/users/7"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_reach_is_unavailable_in_the_answer_within_one_budget() {
    // Ports reserved for a cluster that is never started: nothing answers.
    let ports = RedisCluster::reserve_ports();
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(format!(
            "[redis]\nnodes = {}\ncommand_timeout = \"100ms\"\nconnect_timeout = \"100ms\"\n",
            support::redis::seeds(&ports)
        ))
        .with(routes::USERS)
        .start()
        .await;
    let started = std::time::Instant::now();
    let explained = explain(&proxy, &proxy.url("/users/gone"), &[]).await;
    // One request budget (100 ms) and the admin round trip, not a hang.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(explained["tiers"]["redis"]["url"]["state"], "unavailable");
    assert!(explained["tiers"]["redis"]["url"]["reason"].is_string());
    assert_eq!(explained["tiers"]["memory"]["url"]["state"], "absent");
    assert_eq!(explained["decision"]["outcome"], "miss");
}

#[tokio::test]
async fn explain_applies_tag_purges_as_the_next_request_would() {
    let origin = Origin::start().await;
    origin.on(
        "/users/7",
        Reply::ok()
            .header("cache-control", "max-age=60")
            .header("surrogate-key", "user-7 users")
            .etag("\"v7\"")
            .body("seven"),
    );
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;
    let url = proxy.url("/users/7");
    assert_eq!(
        proxy.get("/users/7").await.cache_status(),
        "sidecache; fwd=miss; stored"
    );
    let filled = explain(&proxy, &url, &[]).await;
    assert_eq!(filled["decision"]["outcome"], "hit");
    assert_eq!(
        filled["tiers"]["memory"]["url"]["tags"],
        serde_json::json!(["user-7", "users"])
    );

    // Soft: stale as of the purge, so a request revalidates it.
    assert_eq!(
        proxy.admin_post("/purge?tag=users&soft=1").await.status,
        200
    );
    let soft = explain(&proxy, &url, &[]).await;
    assert_eq!(soft["decision"]["outcome"], "revalidate", "{soft}");
    // Hard: gone for a request, though the memory tier still holds it
    // until a request drops it.
    assert_eq!(proxy.admin_post("/purge?tag=user-7").await.status, 200);
    let hard = explain(&proxy, &url, &[]).await;
    assert_eq!(hard["decision"]["outcome"], "miss", "{hard}");
    assert_eq!(hard["tiers"]["memory"]["url"]["state"], "response");
    // And the next request gets what explain said.
    assert_eq!(
        proxy.get("/users/7").await.cache_status(),
        "sidecache; fwd=miss; stored"
    );
    assert_eq!(origin.hits("/users/7"), 2);
}
