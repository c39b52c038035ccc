//! The request model on a plain caching route: what reaches the app, what selects a stored answer, and what can never poison one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sidecache::request::GUARDED;
use support::{Origin, Proxy, ProxyConfig, Reply, routes};

/// A proxy with one caching route, `/**` for 60 s, plus `extra` lines for it.
async fn proxy(origin: &Origin, extra: &str) -> Proxy {
    ProxyConfig::new(origin)
        .with(routes::cache("/**", "60s") + extra)
        .start()
        .await
}

#[tokio::test]
async fn every_end_to_end_header_reaches_the_app_on_a_miss() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin, "").await;
    let sent = [
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("accept-language", "fr"),
        ("x-request-id", "req-42"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "text/html"),
        ("cache-control", "max-age=600"),
    ];
    let mut with_encoding = sent.to_vec();
    with_encoding.push(("accept-encoding", "gzip, deflate"));
    let answer = proxy.send("GET", "/page", &with_encoding).await;
    assert_eq!(answer.cache_status(), "sidecache; fwd=miss; stored");
    let seen = origin.last_headers("/page");
    for (name, value) in sent {
        assert_eq!(seen[name], value, "{name}");
    }
    assert_eq!(
        seen["accept-encoding"], "gzip",
        "the one best coding sidecache knows"
    );
    assert_eq!(seen["via"], "1.1 sidecache");
}

#[tokio::test]
async fn vary_accept_language_gives_one_variant_per_language_and_hits_for_repeats() {
    let origin = Origin::start().await;
    origin.on(
        "/hello",
        Reply::ok()
            .header("vary", "Accept-Language")
            .echo("accept-language"),
    );
    let proxy = proxy(&origin, "").await;
    let ask = async |language: &str| {
        let answer = proxy
            .send("GET", "/hello", &[("accept-language", language)])
            .await;
        (answer.cache_status().to_owned(), answer.text())
    };
    assert_eq!(ask("fr").await.1, "/hello #1 accept-language=fr");
    assert_eq!(ask("en").await.1, "/hello #2 accept-language=en");
    assert_eq!(
        ask("de;q=0.5, en-GB").await.1,
        "/hello #3 accept-language=en-GB, de;q=0.5"
    );
    for (language, body) in [
        ("fr", "/hello #1 accept-language=fr"),
        ("en", "/hello #2 accept-language=en"),
        ("FR", "/hello #1 accept-language=fr"),
        // Spelling, case and order by weight do not split variants: the
        // app gets one canonical spelling, the one the variant is keyed by.
        (
            "en-gb,de;q=0.50",
            "/hello #3 accept-language=en-GB, de;q=0.5",
        ),
    ] {
        let (status, text) = ask(language).await;
        assert!(status.starts_with("sidecache; hit"), "{language}: {status}");
        assert_eq!(text, body, "{language}");
    }
    assert_eq!(origin.hits("/hello"), 3);
}

#[tokio::test]
async fn twenty_accept_encodings_make_at_most_three_variants() {
    let origin = Origin::start().await;
    origin.on(
        "/asset",
        Reply::ok()
            .header("vary", "Accept-Encoding")
            .echo("accept-encoding"),
    );
    let proxy = proxy(&origin, "").await;
    let cases = [
        ("gzip, deflate, br", "br"),
        ("gzip, deflate, br, zstd", "br"),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", "br"),
        ("gzip, deflate", "gzip"),
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("deflate, gzip;q=1.0, *;q=0.5", "gzip"),
        ("deflate", "identity"),
        ("identity", "identity"),
        ("", "identity"),
        ("compress, deflate", "identity"),
        ("br;q=0, gzip;q=0.3", "gzip"),
        ("gzip;q=0.3, identity;q=0.5", "identity"),
        ("*", "br"),
        ("zstd, br", "br"),
        ("gzip,br", "br"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
        ("identity;q=1, *;q=0", "identity"),
        ("gzip;q=0.001", "gzip"),
    ];
    let mut codings = HashSet::new();
    for (accept, coding) in cases {
        let answer = proxy
            .send("GET", "/asset", &[("accept-encoding", accept)])
            .await;
        let echoed = answer.text();
        let seen = echoed.rsplit('=').next().unwrap().to_owned();
        assert_eq!(seen, coding, "for {accept:?}: {}", answer.cache_status());
        codings.insert(seen);
    }
    assert_eq!(codings.len(), 3);
    assert_eq!(origin.hits("/asset"), 3, "one fetch per coding");
}

#[tokio::test]
async fn a_request_with_cookies_bypasses_the_cache_by_default() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin, "").await;
    // An anonymous copy is stored...
    proxy.get("/home").await;
    for session in ["session=alice", "session=bob"] {
        // ...and never served to a request that carries a session.
        let answer = proxy.send("GET", "/home", &[("cookie", session)]).await;
        assert_eq!(
            answer.cache_status(),
            "sidecache; fwd=bypass; detail=cookie"
        );
        assert_eq!(origin.last_headers("/home")["cookie"], session);
    }
    assert_eq!(origin.hits("/home"), 3);
    assert!(proxy.get("/home").await.cache_status().contains("hit"));
}

#[tokio::test]
async fn strip_drops_cookies_and_shares_the_anonymous_response() {
    let origin = Origin::start().await;
    let proxy = proxy(&origin, "cookies = \"strip\"\n").await;
    let first = proxy
        .send("GET", "/public", &[("cookie", "session=alice")])
        .await;
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    assert!(!origin.last_headers("/public").contains_key("cookie"));
    let other = proxy
        .send("GET", "/public", &[("cookie", "session=bob")])
        .await;
    assert!(
        other.cache_status().contains("hit"),
        "{}",
        other.cache_status()
    );
    assert_eq!(other.text(), "/public #1");
}

#[tokio::test]
async fn key_cookies_forward_only_the_named_cookies_and_select_by_them() {
    let origin = Origin::start().await;
    origin.on("/shop", Reply::ok().echo("cookie"));
    let proxy = proxy(&origin, "key_cookies = [\"lang\", \"ab\"]\n").await;
    let ask = async |cookie: Option<&str>| {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
        let answer = proxy.send("GET", "/shop", &headers).await;
        (answer.cache_status().to_owned(), answer.text())
    };
    let (status, text) = ask(Some("session=alice; lang=fr; tracking=1")).await;
    assert!(status.contains("stored"), "{status}");
    assert_eq!(text, "/shop #1 cookie=lang=fr", "only the named cookies");
    let (status, text) = ask(Some("lang=fr; session=bob")).await;
    assert!(status.starts_with("sidecache; hit"), "{status}");
    assert_eq!(text, "/shop #1 cookie=lang=fr");
    let (status, text) = ask(Some("lang=en")).await;
    assert!(status.contains("vary-miss"), "{status}");
    assert_eq!(text, "/shop #2 cookie=lang=en");
    // Order does not matter: the keyed cookies are sorted by name.
    assert_eq!(
        ask(Some("lang=en; ab=b")).await.1,
        "/shop #3 cookie=ab=b; lang=en"
    );
    assert_eq!(
        ask(Some("ab=b; x=1; lang=en")).await.1,
        "/shop #3 cookie=ab=b; lang=en"
    );
    assert_eq!(ask(None).await.1, "/shop #4 cookie=-");
    assert_eq!(ask(Some("session=carol")).await.1, "/shop #4 cookie=-");
}

#[tokio::test]
async fn guarded_headers_reach_the_app_only_when_keyed() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/open/*", "60s"))
        .with(routes::cache("/keyed/*", "60s") + "key_headers = [\"x-forwarded-proto\"]\n")
        .with("[[routes]]\npath = \"/pass/*\"\ncache = false\n")
        .start()
        .await;
    let sent: Vec<(&str, &str)> = GUARDED.iter().map(|name| (name.as_str(), "evil")).collect();
    // CGI, PHP and Django read `X_Original_URL` as `X-Original-URL`.
    let underscored: Vec<String> = GUARDED
        .iter()
        .map(|name| name.as_str().replace('-', "_"))
        .collect();
    let underscored: Vec<(&str, &str)> = underscored.iter().map(|n| (n.as_str(), "evil")).collect();
    proxy
        .send("GET", "/open/a", &[sent.clone(), underscored].concat())
        .await;
    let seen = origin.last_headers("/open/a");
    for (name, value) in &seen {
        assert_ne!(value, "evil", "{name} reached the app unkeyed");
    }
    // The proxy's own forwarding headers describe what was keyed.
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], seen["host"]);

    // Keyed, it reaches the app and selects the variant.
    let https = [("x-forwarded-proto", "https")];
    proxy.send("GET", "/keyed/a", &https).await;
    assert_eq!(
        origin.last_headers("/keyed/a")["x-forwarded-proto"],
        "https"
    );
    assert!(
        proxy
            .send("GET", "/keyed/a", &https)
            .await
            .cache_status()
            .contains("hit")
    );
    let http = proxy
        .send("GET", "/keyed/a", &[("x-forwarded-proto", "http")])
        .await;
    assert!(
        http.cache_status().contains("vary-miss"),
        "{}",
        http.cache_status()
    );

    // Requests that bypass the cache stay fully transparent.
    proxy.send("GET", "/pass/a", &sent).await;
    let seen = origin.last_headers("/pass/a");
    for name in &GUARDED {
        assert_eq!(seen[name], "evil", "{name} on a bypassed route");
    }
}

#[tokio::test]
async fn a_vary_on_a_header_without_list_syntax_compares_it_byte_for_byte() {
    let origin = Origin::start().await;
    origin.on(
        "/ua",
        Reply::ok().header("vary", "User-Agent").echo("user-agent"),
    );
    let proxy = proxy(&origin, "").await;
    let attacker = "Mozilla/5.0 (KHTML,like Gecko) Chrome/120";
    let victim = "Mozilla/5.0 (KHTML, like Gecko) Chrome/120";
    proxy.send("GET", "/ua", &[("user-agent", attacker)]).await;
    let answer = proxy.send("GET", "/ua", &[("user-agent", victim)]).await;
    assert_eq!(answer.cache_status(), "sidecache; fwd=vary-miss; stored");
    assert_eq!(answer.text(), format!("/ua #2 user-agent={victim}"));
}

#[tokio::test]
async fn ignored_query_parameters_neither_split_the_key_nor_reach_the_origin() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with(
            routes::cache("/list", "60s")
                + "key_query = { ignore = [\"utm_*\", \"fbclid\", \"gclid\"] }\n",
        )
        .with(routes::cache("/search", "60s") + "key_query = { only = [\"page\", \"sort\"] }\n")
        .start()
        .await;
    let first = proxy.get("/list?page=2&utm_source=news&fbclid=abc").await;
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(origin.last_target("/list"), "/list?page=2");
    let hit = proxy.get("/list?utm_medium=mail&page=2&gclid=x").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert!(
        proxy
            .get("/list?page=3")
            .await
            .cache_status()
            .contains("miss")
    );
    assert_eq!(origin.last_target("/list"), "/list?page=3");

    proxy
        .get("/search?q=shoes&sort=price&page=1&session=9")
        .await;
    assert_eq!(origin.last_target("/search"), "/search?sort=price&page=1");
    let hit = proxy.get("/search?page=1&sort=price&q=boots").await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(origin.hits("/search"), 1);

    // A purge names the URL as clients do; the ignored parameters don't matter.
    let purged = proxy.purge(&proxy.url("/list?utm_source=x&page=2")).await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    let after = proxy.get("/list?page=2").await;
    assert_eq!(after.cache_status(), "sidecache; fwd=miss; stored");
}

#[tokio::test]
async fn a_canonical_host_keys_every_request_under_one_host() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin)
        .with("[cache]\nhost = \"Shop.Example.com:80\"\n")
        .with(routes::cache("/**", "60s"))
        .start()
        .await;
    let first = proxy
        .send("GET", "/item", &[("host", "10.1.2.3:8080")])
        .await;
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    let seen = origin.last_headers("/item");
    assert_eq!(seen["host"], "shop.example.com");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com");
    for host in [
        "sidecache.default.svc",
        "localhost:9999",
        "SHOP.example.com",
    ] {
        let answer = proxy.send("GET", "/item", &[("host", host)]).await;
        assert!(
            answer.cache_status().contains("hit"),
            "{host}: {}",
            answer.cache_status()
        );
    }
    // A purge matches whatever host it names.
    let purged = proxy.purge("http://pod-7:8080/item").await;
    assert_eq!(purged.status, 200);
    let after = proxy.send("GET", "/item", &[("host", "other")]).await;
    assert_eq!(after.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(origin.hits("/item"), 2);
}

#[tokio::test]
async fn collapsed_requests_that_vary_get_their_own_variant() {
    let origin = Origin::start().await;
    origin.on(
        "/slow",
        Reply::ok()
            .header("vary", "Accept-Language")
            .echo("accept-language")
            .delay(Duration::from_millis(200)),
    );
    let proxy = proxy(&origin, "").await;
    // The second language asks 50 ms after the first, while its fetch is on.
    let both = async |first: &str, second: &str| {
        let first_headers = [("accept-language", first)];
        let (a, b) = tokio::join!(proxy.send("GET", "/slow", &first_headers), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            proxy
                .send("GET", "/slow", &[("accept-language", second)])
                .await
        });
        for (answer, language) in [(a, first), (b, second)] {
            let text = answer.text();
            assert!(
                text.ends_with(&format!("accept-language={language}")),
                "{text}"
            );
        }
    };
    both("fr", "en").await;
    assert_eq!(origin.hits("/slow"), 2);
    // Once the URL's variants are known, one language waits for its own fetch.
    both("de", "es").await;
    assert_eq!(origin.hits("/slow"), 4);
}

#[tokio::test]
async fn a_coded_body_without_vary_is_still_kept_from_clients_that_did_not_accept_it() {
    let origin = Origin::start().await;
    // A common misconfiguration: compressed, but no `Vary: Accept-Encoding`.
    origin.on(
        "/coded",
        Reply::ok()
            .header("content-encoding", "gzip")
            .echo("accept-encoding"),
    );
    let proxy = proxy(&origin, "").await;
    let gzip = [("accept-encoding", "gzip")];
    assert!(
        proxy
            .send("GET", "/coded", &gzip)
            .await
            .cache_status()
            .contains("stored")
    );
    assert!(
        proxy
            .send("GET", "/coded", &gzip)
            .await
            .cache_status()
            .contains("hit")
    );
    let plain = proxy
        .send("GET", "/coded", &[("accept-encoding", "identity")])
        .await;
    assert_eq!(plain.cache_status(), "sidecache; fwd=vary-miss; stored");
    assert_eq!(plain.text(), "/coded #2 accept-encoding=identity");
}
