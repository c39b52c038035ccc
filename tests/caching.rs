//! What gets cached and what does not, through the running proxy against a real origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Origin, ProxyConfig, Reply, get_h2, routes};

#[tokio::test]
async fn second_get_is_a_hit_and_the_origin_counts_one() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;

    let first = proxy.get("/users/1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(first.text(), "/users/1 #1");
    assert_eq!(first.header("via"), "1.1 sidecache");

    let second = proxy.get("/users/1").await;
    assert_eq!(second.status, 200);
    assert!(
        second.cache_status().starts_with("sidecache; hit; ttl="),
        "{}",
        second.cache_status()
    );
    let ttl: u64 = second
        .cache_status()
        .rsplit('=')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((58..=60).contains(&ttl), "ttl {ttl}");
    let age: u64 = second.header("age").parse().unwrap();
    assert!(age <= 2, "age {age}");
    assert_eq!(second.text(), "/users/1 #1", "body comes from the cache");
    assert_eq!(second.header("content-length"), "11");
    assert_eq!(origin.hits("/users/1"), 1);

    // Another key on the same route is its own miss.
    assert_eq!(proxy.get("/users/2").await.text(), "/users/2 #1");
    assert_eq!(origin.hits("/users/2"), 1);
}

#[tokio::test]
async fn entries_expire_after_the_route_ttl() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/ttl/*", "2s"))
        .start()
        .await;
    proxy.get("/ttl/a").await;
    assert!(proxy.get("/ttl/a").await.cache_status().contains("hit"));
    // The route ttl is the subject: the proxy's clock (and the origin's, which
    // stamps Date) moves past it instead of the test waiting.
    proxy.advance(Duration::from_millis(2100));
    // Stale, and with nothing to revalidate with: fetched again (RFC 9211 fwd=stale).
    let after = proxy.get("/ttl/a").await;
    assert_eq!(
        after.cache_status(),
        "sidecache; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(after.text(), "/ttl/a #2");
    assert_eq!(origin.hits("/ttl/a"), 2);
}

#[tokio::test]
async fn origin_freshness_beats_the_route_ttl() {
    let origin = Origin::start().await;
    origin.on(
        "/fresh/s",
        Reply::ok().header("cache-control", "max-age=600, s-maxage=300"),
    );
    origin.on(
        "/fresh/zero",
        Reply::ok().header("cache-control", "max-age=0"),
    );
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/fresh/*", "60s"))
        .start()
        .await;
    proxy.get("/fresh/s").await;
    let hit = proxy.get("/fresh/s").await;
    let ttl: u64 = hit
        .cache_status()
        .rsplit('=')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (298..=300).contains(&ttl),
        "s-maxage wins: {}",
        hit.cache_status()
    );

    assert_eq!(
        proxy.get("/fresh/zero").await.cache_status(),
        "sidecache; fwd=miss; detail=no-freshness"
    );
    proxy.get("/fresh/zero").await;
    assert_eq!(origin.hits("/fresh/zero"), 2);
}

#[tokio::test]
async fn first_matching_route_wins_and_cache_false_always_forwards() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with("[[routes]]\nname = \"live\"\npath = \"/api/live\"\ncache = false\n")
        .with("[[routes]]\nname = \"api\"\npath = \"/api/**\"\nttl = \"60s\"\n")
        .start()
        .await;
    for _ in 0..2 {
        assert_eq!(
            proxy.get("/api/live").await.cache_status(),
            "sidecache; fwd=bypass"
        );
    }
    assert_eq!(origin.hits("/api/live"), 2);

    proxy.get("/api/v1/items").await;
    assert!(
        proxy
            .get("/api/v1/items")
            .await
            .cache_status()
            .contains("hit")
    );
    assert_eq!(origin.hits("/api/v1/items"), 1);

    // No route: forwarded, never stored.
    for _ in 0..2 {
        assert_eq!(
            proxy.get("/elsewhere").await.cache_status(),
            "sidecache; fwd=bypass"
        );
    }
    assert_eq!(origin.hits("/elsewhere"), 2);
}

#[tokio::test]
async fn unlisted_methods_are_forwarded_with_their_body() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/m/*", "60s") + "methods = [\"GET\"]\n")
        .start()
        .await;
    for _ in 0..2 {
        let head = proxy.send("HEAD", "/m/x", &[]).await;
        assert_eq!(head.cache_status(), "sidecache; fwd=bypass");
        let post = proxy.send("POST", "/m/x", &[]).await;
        assert_eq!(post.cache_status(), "sidecache; fwd=bypass");
    }
    assert_eq!(origin.hits("/m/x"), 4);
}

#[tokio::test]
async fn query_order_gives_one_key() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/q", "60s"))
        .start()
        .await;
    proxy.get("/q?a=1&b=2").await;
    let hit = proxy.get("/q?b=2&a=1").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    // Different values are a different key.
    assert!(
        proxy
            .get("/q?a=1&b=3")
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert_eq!(origin.hits("/q"), 2);
}

#[tokio::test]
async fn responses_a_shared_cache_must_not_keep_are_not_stored() {
    let origin = Origin::start().await;
    origin.on(
        "/p/no-store",
        Reply::ok().header("cache-control", "no-store"),
    );
    origin.on(
        "/p/private",
        Reply::ok().header("cache-control", "private, max-age=60"),
    );
    origin.on("/p/cookie", Reply::ok().header("set-cookie", "session=abc"));
    origin.on("/p/error", Reply::ok().status(500));
    origin.on(
        "/p/redirect",
        Reply::ok().status(307).header("location", "/x"),
    );
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/p/*", "60s"))
        .start()
        .await;
    for (path, detail) in [
        ("/p/no-store", "no-store"),
        ("/p/private", "private"),
        ("/p/cookie", "set-cookie"),
        ("/p/error", "status"),
        ("/p/redirect", "status"),
    ] {
        for round in 1..=2 {
            let answer = proxy.get(path).await;
            assert_eq!(
                answer.cache_status(),
                format!("sidecache; fwd=miss; detail={detail}"),
                "{path}"
            );
            assert_eq!(answer.text(), format!("{path} #{round}"));
        }
        assert_eq!(origin.hits(path), 2, "{path}");
    }
    // The cookie still reaches the client that asked.
    assert_eq!(
        proxy.get("/p/cookie").await.header("set-cookie"),
        "session=abc"
    );
}

#[tokio::test]
async fn requests_with_authorization_use_only_shareable_responses_rfc9111_3_5() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/a/*", "60s"))
        .start()
        .await;
    // A stored entry exists...
    proxy.get("/a/doc").await;
    assert!(proxy.get("/a/doc").await.cache_status().contains("hit"));
    // ...but without `public` (or s-maxage, must-revalidate) a request with
    // credentials goes to the origin, with them, and its answer is not stored.
    for _ in 0..2 {
        let answer = proxy
            .send("GET", "/a/doc", &[("authorization", "Bearer t")])
            .await;
        assert_eq!(
            answer.cache_status(),
            "sidecache; fwd=miss; detail=authorization"
        );
        assert_eq!(origin.last_headers("/a/doc")["authorization"], "Bearer t");
    }
    assert_eq!(origin.hits("/a/doc"), 3);
    // And its answer did not replace the shared one.
    assert_eq!(proxy.get("/a/doc").await.text(), "/a/doc #1");

    // A public response is shared with requests that carry credentials too.
    origin.on(
        "/a/public",
        Reply::ok().header("cache-control", "public, max-age=60"),
    );
    let first = proxy
        .send("GET", "/a/public", &[("authorization", "Bearer t")])
        .await;
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    let again = proxy
        .send("GET", "/a/public", &[("authorization", "Bearer u")])
        .await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(origin.hits("/a/public"), 1);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/h/*", "60s"))
        .start()
        .await;
    // A HEAD miss is forwarded as HEAD and stores nothing.
    let head_miss = proxy.send("HEAD", "/h/doc", &[]).await;
    assert_eq!(head_miss.cache_status(), "sidecache; fwd=miss; detail=head");
    assert!(head_miss.body.is_empty());

    let get = proxy.get("/h/doc").await;
    let head = proxy.send("HEAD", "/h/doc", &[]).await;
    assert_eq!(head.status, 200);
    assert!(
        head.cache_status().contains("hit"),
        "{}",
        head.cache_status()
    );
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), get.body.len().to_string());
    assert_eq!(origin.hits("/h/doc"), 2);
}

#[tokio::test]
async fn in_strict_mode_cacheable_requests_forward_only_keyed_and_declared_headers() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(
            routes::cache("/lang/*", "60s")
                + "forward = \"declared\"\ncookies = \"strip\"\n\
                   key_headers = [\"accept-language\"]\nforward_headers = [\"user-agent\"]\n",
        )
        .with("[[routes]]\npath = \"/pass/*\"\ncache = false\n")
        .start()
        .await;
    let unkeyed = [
        ("accept-language", "en"),
        ("user-agent", "test"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("cookie", "session=1"),
        ("x-forwarded-host", "evil.example"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
    ];
    proxy.send("GET", "/lang/page", &unkeyed).await;
    let seen = origin.last_headers("/lang/page");
    assert_eq!(seen["accept-language"], "en");
    assert_eq!(seen["user-agent"], "test");
    assert!(
        !seen.contains_key("traceparent"),
        "undeclared headers stay behind in strict mode"
    );
    assert!(
        !seen.contains_key("cookie"),
        "cookies = \"strip\" drops the cookie"
    );
    assert!(
        !seen.contains_key("x-hop"),
        "hop-by-hop header named in Connection"
    );
    assert_ne!(seen["x-forwarded-host"], "evil.example");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["via"], "1.1 sidecache");

    // The key header picks the variant.
    assert!(
        proxy
            .send("GET", "/lang/page", &[("accept-language", "en")])
            .await
            .cache_status()
            .contains("hit")
    );
    let de = proxy
        .send("GET", "/lang/page", &[("accept-language", "de")])
        .await;
    assert!(
        de.cache_status().contains("fwd=vary-miss"),
        "{}",
        de.cache_status()
    );
    assert_eq!(origin.hits("/lang/page"), 2);

    // Bypassed requests forward everything end-to-end.
    proxy.send("GET", "/pass/x", &unkeyed).await;
    let seen = origin.last_headers("/pass/x");
    assert_eq!(seen["cookie"], "session=1");
    assert_eq!(seen["x-forwarded-host"], "evil.example");
    assert!(!seen.contains_key("x-hop"));
}

#[tokio::test]
async fn h2c_clients_share_entries_with_http1_clients() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;
    let h2 = get_h2(&proxy, "/users/h2").await;
    assert_eq!(h2.cache_status(), "sidecache; fwd=miss; stored");
    // HTTP/2 sends :authority instead of Host; the origin still gets a Host.
    assert_eq!(
        origin.last_headers("/users/h2")["host"],
        proxy.running.addr().to_string()
    );
    let h1 = proxy.get("/users/h2").await;
    assert!(h1.cache_status().contains("hit"), "{}", h1.cache_status());
    assert_eq!(origin.hits("/users/h2"), 1);
}

#[tokio::test]
async fn upstream_cache_status_is_kept_before_ours() {
    let origin = Origin::start().await;
    origin.on(
        "/cs/x",
        Reply::ok().header("cache-status", "app-cache; hit"),
    );
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/cs/*", "60s"))
        .start()
        .await;
    assert_eq!(
        proxy.get("/cs/x").await.cache_status(),
        "app-cache; hit, sidecache; fwd=miss; stored"
    );
    assert!(
        proxy
            .get("/cs/x")
            .await
            .cache_status()
            .starts_with("app-cache; hit, sidecache; hit")
    );
}

#[tokio::test]
async fn absolute_form_target_wins_over_the_host_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;
    // RFC 9112 §3.2.2: the URI's authority is the host; the origin must see
    // the host the entry is keyed by, or one host could fill another's entry.
    let mut stream = tokio::net::TcpStream::connect(proxy.running.addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET http://shop.example/users/abs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(origin.last_headers("/users/abs")["host"], "shop.example");
}
