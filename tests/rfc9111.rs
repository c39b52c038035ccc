//! HTTP caching semantics through the running proxy: freshness, validation, request directives, invalidation (RFC 9111, RFC 9110 §13).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Origin, Proxy, ProxyConfig, Reply, eventually, routes};

async fn proxy(origin: &Origin, route_extra: &str) -> Proxy {
    ProxyConfig::new(origin)
        .with(routes::cache("/**", "60s") + route_extra)
        .start()
        .await
}

fn ttl_of(cache_status: &str) -> i64 {
    let ttl = cache_status
        .split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .unwrap();
    ttl.parse().unwrap()
}

#[tokio::test]
async fn no_cache_response_is_stored_and_revalidated_on_every_use_rfc9111_5_2_2_4() {
    let origin = Origin::start().await;
    origin.on(
        "/nc",
        Reply::ok()
            .body("body v1")
            .header("cache-control", "no-cache")
            .etag("\"v1\""),
    );
    let proxy = proxy(&origin, "").await;
    assert_eq!(
        proxy.get("/nc").await.cache_status(),
        "sidecache; fwd=miss; stored"
    );
    for round in 1..=2 {
        let answer = proxy.get("/nc").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "body v1", "the stored body, after a 304");
        assert_eq!(
            answer.cache_status(),
            "sidecache; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(origin.last_headers("/nc")["if-none-match"], "\"v1\"");
        assert_eq!(origin.not_modified("/nc"), round);
    }
    assert_eq!(
        origin.hits("/nc") - origin.not_modified("/nc"),
        1,
        "one full body"
    );
}

#[tokio::test]
async fn stale_entry_is_refreshed_by_304_and_replaced_by_200_rfc9111_4_3_4() {
    let origin = Origin::start().await;
    origin.on(
        "/v",
        Reply::ok()
            .body("old")
            .header("cache-control", "max-age=1")
            .etag("\"a\""),
    );
    let proxy = proxy(&origin, "").await;
    proxy.get("/v").await;
    // Freshness is the subject: the entry ages past max-age=1 on the proxy's clock.
    proxy.advance(Duration::from_millis(2100));
    let refreshed = proxy.get("/v").await;
    assert_eq!(
        refreshed.cache_status(),
        "sidecache; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(refreshed.text(), "old");
    // The 304 restarted its freshness: a plain hit now.
    assert!(proxy.get("/v").await.cache_status().contains("hit"));

    // The origin has a new version: its 200 replaces the stored one.
    origin.on(
        "/v",
        Reply::ok()
            .body("new")
            .header("cache-control", "max-age=60")
            .etag("\"b\""),
    );
    proxy.advance(Duration::from_millis(2100));
    let replaced = proxy.get("/v").await;
    assert_eq!(
        replaced.cache_status(),
        "sidecache; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(replaced.text(), "new");
    let hit = proxy.get("/v").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.text(), "new");
}

#[tokio::test]
async fn client_conditionals_are_answered_from_a_fresh_entry_rfc9111_4_3_2() {
    let origin = Origin::start().await;
    origin.on(
        "/c",
        Reply::ok()
            .body("content")
            .etag("W/\"e1\"")
            .header("cache-control", "max-age=60"),
    );
    let proxy = proxy(&origin, "").await;
    proxy.get("/c").await;
    // Weak comparison: "e1" matches W/"e1".
    let not_modified = proxy
        .send("GET", "/c", &[("if-none-match", "\"e1\"")])
        .await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), "W/\"e1\"");
    assert!(
        !not_modified.header("age").is_empty(),
        "Age on every cached answer"
    );
    assert!(not_modified.cache_status().contains("hit"));
    let changed = proxy
        .send("GET", "/c", &[("if-none-match", "\"e0\"")])
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.text(), "content");
    assert_eq!(origin.hits("/c"), 1);
}

#[tokio::test]
async fn a_conditional_miss_still_fills_the_cache_rfc9111_4_3_2() {
    let origin = Origin::start().await;
    origin.on("/cm", Reply::ok().body("filled").etag("\"z\""));
    let proxy = proxy(&origin, "").await;
    let first = proxy
        .send("GET", "/cm", &[("if-none-match", "\"z\"")])
        .await;
    assert_eq!(first.status, 304, "answered per the client's condition");
    assert!(
        !origin.last_headers("/cm").contains_key("if-none-match"),
        "fetched unconditionally"
    );
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    // The body was read to the end in the background and stored.
    let mut hit = None;
    eventually("the stored body", Duration::from_secs(2), async || {
        let answer = proxy.get("/cm").await;
        let stored = answer.cache_status().contains("hit");
        hit = Some(answer);
        stored
    })
    .await;
    let hit = hit.unwrap();
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.text(), "filled");
}

#[tokio::test]
async fn request_directives_rfc9111_5_2_1() {
    let origin = Origin::start().await;
    origin.on("/r", Reply::ok().etag("\"r\""));
    let proxy = proxy(&origin, "").await;
    // only-if-cached with nothing stored: 504, and the origin is not asked (§5.2.1.7).
    let not_cached = proxy
        .send("GET", "/r", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(not_cached.status, 504);
    assert_eq!(origin.hits("/r"), 0);
    proxy.get("/r").await;
    assert_eq!(
        proxy
            .send("GET", "/r", &[("cache-control", "only-if-cached")])
            .await
            .status,
        200
    );
    // no-cache, max-age=0 and Pragma: no-cache all make the cache revalidate (§5.2.1.4, §5.2.1.1, §5.4).
    for directive in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        let before = origin.not_modified("/r");
        let answer = proxy.send("GET", "/r", &[directive]).await;
        assert_eq!(
            answer.cache_status(),
            "sidecache; fwd=stale; fwd-status=304; stored",
            "{directive:?}"
        );
        assert_eq!(origin.not_modified("/r"), before + 1);
    }
    // min-fresh beyond what is left: revalidate (§5.2.1.3).
    let answer = proxy
        .send("GET", "/r", &[("cache-control", "min-fresh=3600")])
        .await;
    assert!(
        answer.cache_status().contains("fwd=stale"),
        "{}",
        answer.cache_status()
    );
    // no-store: answered, not stored (§5.2.1.5).
    let answer = proxy
        .send("GET", "/r-ns", &[("cache-control", "no-store")])
        .await;
    assert_eq!(
        answer.cache_status(),
        "sidecache; fwd=miss; detail=request-no-store"
    );
    assert!(proxy.get("/r-ns").await.cache_status().contains("fwd=miss"));
}

#[tokio::test]
async fn max_stale_serves_stale_unless_the_response_forbids_it_rfc9111_5_2_1_2() {
    let origin = Origin::start().await;
    origin.on("/ms", Reply::ok().header("cache-control", "max-age=1"));
    origin.on(
        "/mr",
        Reply::ok().header("cache-control", "max-age=1, must-revalidate"),
    );
    let proxy = proxy(&origin, "").await;
    proxy.get("/ms").await;
    proxy.get("/mr").await;
    proxy.advance(Duration::from_millis(2100));
    let stale = proxy
        .send("GET", "/ms", &[("cache-control", "max-stale=60")])
        .await;
    assert!(
        stale.cache_status().contains("hit"),
        "{}",
        stale.cache_status()
    );
    assert!(
        ttl_of(stale.cache_status()) < 0,
        "negative ttl when stale: {}",
        stale.cache_status()
    );
    assert_eq!(origin.hits("/ms"), 1);
    let must = proxy
        .send("GET", "/mr", &[("cache-control", "max-stale=60")])
        .await;
    assert!(
        must.cache_status().contains("fwd="),
        "{}",
        must.cache_status()
    );
    assert_eq!(origin.hits("/mr"), 2);
}

#[tokio::test]
async fn unsafe_requests_invalidate_the_url_and_its_locations_rfc9111_4_4() {
    let origin = Origin::start().await;
    origin.on(
        "/items",
        Reply::ok().status(201).header("location", "/items/7"),
    );
    origin.on("/items/8", Reply::ok().status(500));
    // Unsafe requests pass through whatever the route caches.
    let proxy = proxy(&origin, "methods = [\"GET\"]\n").await;
    for path in ["/items", "/items/7", "/items/8"] {
        origin.on(path, Reply::ok());
    }
    for path in ["/items", "/items/7", "/items/8"] {
        proxy.get(path).await;
        assert!(
            proxy.get(path).await.cache_status().contains("hit"),
            "{path}"
        );
    }
    origin.on(
        "/items",
        Reply::ok().status(201).header("location", "/items/7"),
    );
    origin.on("/items/8", Reply::ok().status(500));
    assert_eq!(proxy.send("POST", "/items", &[]).await.status, 201);
    // An error response invalidates nothing.
    assert_eq!(proxy.send("DELETE", "/items/8", &[]).await.status, 500);
    origin.on("/items", Reply::ok());
    assert!(
        proxy
            .get("/items")
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert!(
        proxy
            .get("/items/7")
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert!(proxy.get("/items/8").await.cache_status().contains("hit"));
}

#[tokio::test]
async fn route_cache_status_widens_and_narrows_what_is_stored_rfc9110_15_1() {
    let origin = Origin::start().await;
    origin.on("/s/404", Reply::ok().status(404));
    origin.on(
        "/s/302",
        Reply::ok()
            .status(302)
            .header("location", "/x")
            .header("cache-control", "max-age=60"),
    );
    origin.on(
        "/s/500",
        Reply::ok()
            .status(500)
            .header("cache-control", "max-age=60"),
    );
    origin.on("/n/404", Reply::ok().status(404));
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/s/*", "60s") + "cache_status = [200, 302, 404]\n")
        .with(routes::cache("/n/*", "60s") + "cache_status = [200]\n")
        .start()
        .await;
    for path in ["/s/404", "/s/302"] {
        assert_eq!(
            proxy.get(path).await.cache_status(),
            "sidecache; fwd=miss; stored",
            "{path}"
        );
        assert!(
            proxy.get(path).await.cache_status().contains("hit"),
            "{path}"
        );
    }
    for path in ["/s/500", "/n/404"] {
        assert_eq!(
            proxy.get(path).await.cache_status(),
            "sidecache; fwd=miss; detail=status",
            "{path}"
        );
    }
}

#[tokio::test]
async fn heuristic_freshness_is_on_unless_the_route_turns_it_off_rfc9111_4_2_2() {
    let origin = Origin::start().await;
    let ago = |days: u64| {
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(days * 86_400))
    };
    let ten_days = ago(10);
    origin.on("/h/week", Reply::ok().header("last-modified", &ago(7)));
    for path in ["/h/doc", "/x/doc"] {
        origin.on(path, Reply::ok().header("last-modified", &ten_days));
    }
    // Neither route has a ttl; /h/* leaves heuristic_freshness at its default.
    let proxy = ProxyConfig::new(&origin)
        .with("[[routes]]\npath = \"/h/*\"\n")
        .with("[[routes]]\npath = \"/x/*\"\nheuristic_freshness = false\n")
        .start()
        .await;
    for (path, lifetime) in [
        // A tenth of seven days.
        ("/h/week", 60_480),
        // A tenth of ten days is one day, the cap.
        ("/h/doc", 86_400),
    ] {
        assert_eq!(
            proxy.get(path).await.cache_status(),
            "sidecache; fwd=miss; stored"
        );
        let hit = proxy.get(path).await;
        // Less the second the Date and Last-Modified lose to rounding.
        let ttl = ttl_of(hit.cache_status());
        assert!(
            (lifetime - 2..=lifetime).contains(&ttl),
            "{path}: {}",
            hit.cache_status()
        );
        assert_eq!(origin.hits(path), 1, "{path}");
    }
    // Turned off: only the origin's freshness counts; with Last-Modified as
    // a validator the response is kept, but every use revalidates.
    assert_eq!(
        proxy.get("/x/doc").await.cache_status(),
        "sidecache; fwd=miss; stored"
    );
    let again = proxy.get("/x/doc").await;
    assert_eq!(
        again.cache_status(),
        "sidecache; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(
        origin.last_headers("/x/doc")["if-modified-since"],
        ten_days.as_str()
    );
    assert_eq!(origin.hits("/x/doc"), 2);
}

#[tokio::test]
async fn private_and_no_cache_field_names_are_not_stored_rfc9111_5_2_2_7() {
    let origin = Origin::start().await;
    origin.on(
        "/f",
        Reply::ok()
            .header(
                "cache-control",
                "max-age=60, private=\"x-user\", no-cache=\"set-cookie\"",
            )
            .header("x-user", "alice")
            .header("set-cookie", "s=1")
            .header("x-shared", "yes"),
    );
    let proxy = proxy(&origin, "").await;
    let first = proxy.get("/f").await;
    assert_eq!(
        first.header("x-user"),
        "alice",
        "the requester gets everything"
    );
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    let hit = proxy.get("/f").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.header("x-shared"), "yes");
    assert!(!hit.headers.contains_key("x-user"));
    assert!(!hit.headers.contains_key("set-cookie"));
}

#[tokio::test]
async fn origin_age_counts_toward_the_age_of_hits_rfc9111_4_2_3() {
    let origin = Origin::start().await;
    origin.on(
        "/age",
        Reply::ok()
            .header("cache-control", "max-age=100")
            .header("age", "30"),
    );
    let proxy = proxy(&origin, "").await;
    proxy.get("/age").await;
    let hit = proxy.get("/age").await;
    let age: u64 = hit.header("age").parse().unwrap();
    assert!((30..=32).contains(&age), "age {age}");
    let ttl = ttl_of(hit.cache_status());
    assert!((68..=70).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn responses_are_stored_per_variant_rfc9111_4_1() {
    let origin = Origin::start().await;
    origin.on("/vary", Reply::ok().header("vary", "Accept-Language"));
    let proxy = proxy(&origin, "forward_headers = [\"accept-language\"]\n").await;
    let lang = |value: &'static str| [("accept-language", value)];
    assert_eq!(
        proxy.send("GET", "/vary", &lang("en")).await.cache_status(),
        "sidecache; fwd=miss; stored"
    );
    let en = proxy.send("GET", "/vary", &lang("en")).await;
    assert!(en.cache_status().contains("hit"), "{}", en.cache_status());
    assert_eq!(en.text(), "/vary #1");
    // Another language is another variant, found with one extra lookup.
    let de = proxy.send("GET", "/vary", &lang("de")).await;
    assert_eq!(de.cache_status(), "sidecache; fwd=vary-miss; stored");
    assert_eq!(de.text(), "/vary #2");
    assert_eq!(
        proxy.send("GET", "/vary", &lang("de")).await.text(),
        "/vary #2"
    );
    // Whitespace in lists does not split variants.
    proxy.send("GET", "/vary", &lang("fr, it")).await;
    assert!(
        proxy
            .send("GET", "/vary", &lang("fr,it"))
            .await
            .cache_status()
            .contains("hit")
    );
    assert_eq!(origin.hits("/vary"), 3);

    // An invalidation removes every variant at once (§4.4).
    origin.on(
        "/vary",
        Reply::ok().status(204).header("vary", "Accept-Language"),
    );
    proxy.send("PUT", "/vary", &[]).await;
    origin.on("/vary", Reply::ok().header("vary", "Accept-Language"));
    for value in ["en", "de"] {
        let after = proxy.send("GET", "/vary", &lang(value)).await;
        assert!(
            !after.cache_status().contains("hit"),
            "{value}: {}",
            after.cache_status()
        );
    }
}

#[tokio::test]
async fn in_strict_mode_vary_on_a_header_the_origin_never_sees_selects_one_shared_variant() {
    let origin = Origin::start().await;
    // In strict mode Accept-Encoding is not forwarded unless declared, so
    // the origin answered for "no Accept-Encoding", right for every client.
    origin.on("/enc", Reply::ok().header("vary", "Accept-Encoding"));
    let proxy = proxy(&origin, "forward = \"declared\"\n").await;
    proxy
        .send("GET", "/enc", &[("accept-encoding", "gzip")])
        .await;
    let other = proxy
        .send("GET", "/enc", &[("accept-encoding", "br")])
        .await;
    assert!(
        other.cache_status().contains("hit"),
        "{}",
        other.cache_status()
    );
    assert_eq!(origin.hits("/enc"), 1);
}

#[tokio::test]
async fn vary_star_is_never_stored_rfc9111_4_1() {
    let origin = Origin::start().await;
    origin.on("/star", Reply::ok().header("vary", "*"));
    let proxy = proxy(&origin, "").await;
    for _ in 0..2 {
        assert_eq!(
            proxy.get("/star").await.cache_status(),
            "sidecache; fwd=miss; detail=vary"
        );
    }
}

#[tokio::test]
async fn ranges_are_answered_from_a_stored_full_response_rfc9110_14() {
    let origin = Origin::start().await;
    origin.on(
        "/file",
        Reply::ok()
            .body("0123456789")
            .etag("\"f1\"")
            .header("content-type", "text/plain"),
    );
    let proxy = proxy(&origin, "").await;
    proxy.get("/file").await;

    let one = proxy.send("GET", "/file", &[("range", "bytes=2-4")]).await;
    assert_eq!(one.status, 206);
    assert_eq!(one.header("content-range"), "bytes 2-4/10");
    assert_eq!(one.text(), "234");
    assert!(one.cache_status().contains("hit"));

    let suffix = proxy.send("GET", "/file", &[("range", "bytes=-3")]).await;
    assert_eq!(
        (suffix.status.as_u16(), suffix.text().as_str()),
        (206, "789")
    );

    let several = proxy
        .send("GET", "/file", &[("range", "bytes=0-1, 8-9")])
        .await;
    assert_eq!(several.status, 206);
    assert!(
        several
            .header("content-type")
            .starts_with("multipart/byteranges; boundary=")
    );
    assert!(
        several
            .text()
            .contains("content-range: bytes 0-1/10\r\n\r\n01")
    );

    let beyond = proxy
        .send("GET", "/file", &[("range", "bytes=20-30")])
        .await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), "bytes */10");

    // If-Range with another version: the whole body (§13.1.5).
    let other = proxy
        .send(
            "GET",
            "/file",
            &[("range", "bytes=2-4"), ("if-range", "\"f0\"")],
        )
        .await;
    assert_eq!(
        (other.status.as_u16(), other.text().as_str()),
        (200, "0123456789")
    );
    let same = proxy
        .send(
            "GET",
            "/file",
            &[("range", "bytes=2-4"), ("if-range", "\"f1\"")],
        )
        .await;
    assert_eq!(same.status, 206);
    assert_eq!(origin.hits("/file"), 1);
}

#[tokio::test]
async fn a_range_miss_is_passed_through_unless_the_route_fills_whole() {
    let origin = Origin::start().await;
    origin.on("/pass/f", Reply::ok().body("abcdefghij"));
    origin.on("/fill/f", Reply::ok().body("abcdefghij"));
    let proxy = ProxyConfig::new(&origin)
        .with(routes::cache("/pass/*", "60s"))
        .with(routes::cache("/fill/*", "60s") + "range_fill = true\n")
        .start()
        .await;
    let passed = proxy
        .send("GET", "/pass/f", &[("range", "bytes=0-2")])
        .await;
    assert_eq!(passed.cache_status(), "sidecache; fwd=miss; detail=range");
    assert_eq!(origin.last_headers("/pass/f")["range"], "bytes=0-2");
    assert!(
        proxy
            .get("/pass/f")
            .await
            .cache_status()
            .contains("fwd=miss"),
        "nothing was stored"
    );

    let filled = proxy
        .send("GET", "/fill/f", &[("range", "bytes=0-2")])
        .await;
    assert_eq!(filled.status, 206);
    assert_eq!(filled.text(), "abc");
    assert_eq!(filled.cache_status(), "sidecache; fwd=miss; stored");
    assert!(
        !origin.last_headers("/fill/f").contains_key("range"),
        "fetched whole"
    );
    let hit = proxy.get("/fill/f").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.text(), "abcdefghij");
}

#[tokio::test]
async fn a_head_response_updates_the_stored_headers_rfc9111_4_3_5() {
    let origin = Origin::start().await;
    origin.on(
        "/hd",
        Reply::ok()
            .body("body")
            .header("cache-control", "max-age=1")
            .header("x-version", "1")
            .etag("\"h\""),
    );
    let proxy = proxy(&origin, "").await;
    proxy.get("/hd").await;
    proxy.advance(Duration::from_millis(2100));
    // The origin ignores conditions on HEAD and answers 200, same ETag.
    origin.on(
        "/hd",
        Reply::ok()
            .body("body")
            .header("cache-control", "max-age=60")
            .header("x-version", "2")
            .header("etag", "\"h\""),
    );
    let head = proxy.send("HEAD", "/hd", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.cache_status(),
        "sidecache; fwd=stale; fwd-status=200; stored"
    );
    let get = proxy.get("/hd").await;
    assert!(get.cache_status().contains("hit"), "{}", get.cache_status());
    assert_eq!(
        get.header("x-version"),
        "2",
        "headers updated from the HEAD"
    );
    assert_eq!(get.text(), "body", "body kept");
    assert_eq!(origin.hits("/hd"), 2);
}

#[tokio::test]
async fn purge_on_the_admin_port_drops_a_url_with_all_its_variants() {
    let origin = Origin::start().await;
    origin.on("/pv", Reply::ok().header("vary", "Accept-Language"));
    let proxy = proxy(&origin, "forward_headers = [\"accept-language\"]\n").await;
    let host = proxy.running.addr().to_string();
    for lang in ["en", "de"] {
        proxy
            .send("GET", "/pv?a=1", &[("accept-language", lang)])
            .await;
    }
    let client = support::client();
    let purge = |url: String| {
        let request = http::Request::post(proxy.admin_url(&format!("/purge?url={url}")))
            .body(Default::default())
            .unwrap();
        client.request(request)
    };
    let done = support::read(
        purge(format!("http%3A%2F%2F{host}%2Fpv%3Fa%3D1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text());
    for lang in ["en", "de"] {
        let after = proxy
            .send("GET", "/pv?a=1", &[("accept-language", lang)])
            .await;
        assert!(
            !after.cache_status().contains("hit"),
            "{lang}: {}",
            after.cache_status()
        );
    }
    // Both variants were fetched again (the first request after the purge
    // built a new index).
    assert_eq!(origin.hits("/pv"), 4);
    let bad = support::read(purge("nope".into()).await.unwrap()).await;
    assert_eq!(bad.status, 400);
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) in asctime form
/// (`Sun Nov  6 08:49:37 1994`).
fn asctime(imf_fixdate: &str) -> String {
    let parts: Vec<&str> = imf_fixdate.split(' ').collect();
    let day = parts[1].trim_start_matches('0');
    format!(
        "{} {} {day:>2} {} {}",
        &parts[0][..3],
        parts[2],
        parts[4],
        parts[3]
    )
}

#[tokio::test]
async fn expires_in_any_date_form_and_case_gives_freshness_rfc9111_5_3() {
    let origin = Origin::start().await;
    let in_two_minutes =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    origin.on(
        "/e/lower",
        Reply::ok().header("expires", &in_two_minutes.to_lowercase()),
    );
    origin.on(
        "/e/asctime",
        Reply::ok().header("expires", &asctime(&in_two_minutes)),
    );
    origin.on("/e/garbage", Reply::ok().header("expires", "next week"));
    let proxy = proxy(&origin, "").await;
    for path in ["/e/lower", "/e/asctime"] {
        assert_eq!(
            proxy.get(path).await.cache_status(),
            "sidecache; fwd=miss; stored",
            "{path}"
        );
        let hit = proxy.get(path).await;
        // Expires − Date, less the second both lose to rounding; the route's
        // ttl (60 s) does not count when the origin says Expires.
        let ttl = ttl_of(hit.cache_status());
        assert!((118..=120).contains(&ttl), "{path}: {}", hit.cache_status());
    }
    // An Expires that is no date means already expired.
    for _ in 0..2 {
        assert_eq!(
            proxy.get("/e/garbage").await.cache_status(),
            "sidecache; fwd=miss; detail=no-freshness"
        );
    }
    // And the lenient dates do run out.
    proxy.advance(Duration::from_secs(121));
    for path in ["/e/lower", "/e/asctime"] {
        let after = proxy.get(path).await;
        assert!(
            !after.cache_status().contains("hit"),
            "{path}: {}",
            after.cache_status()
        );
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

#[tokio::test]
async fn an_age_list_counts_its_first_member_rfc9111_5_1() {
    let origin = Origin::start().await;
    origin.on(
        "/al/one-line",
        Reply::ok()
            .header("cache-control", "max-age=100")
            .header("age", "30, 10"),
    );
    origin.on(
        "/al/two-lines",
        Reply::ok()
            .header("cache-control", "max-age=100")
            .header("age", "30")
            .header("age", "10"),
    );
    let proxy = proxy(&origin, "").await;
    for path in ["/al/one-line", "/al/two-lines"] {
        proxy.get(path).await;
        let hit = proxy.get(path).await;
        let age: u64 = hit.header("age").parse().unwrap();
        assert!((30..=32).contains(&age), "{path}: age {age}");
        let ttl = ttl_of(hit.cache_status());
        assert!((68..=70).contains(&ttl), "{path}: ttl {ttl}");
    }
}

#[tokio::test]
async fn temporary_redirects_are_stored_by_default_only_with_explicit_freshness_rfc9111_3() {
    let origin = Origin::start().await;
    for status in [302, 303, 307] {
        origin.on(
            &format!("/tr/{status}"),
            Reply::ok()
                .status(status)
                .header("location", "/elsewhere")
                .header("cache-control", "max-age=60"),
        );
    }
    // Not heuristically cacheable: the route's ttl does not make them fresh.
    origin.on(
        "/tr/302-bare",
        Reply::ok().status(302).header("location", "/elsewhere"),
    );
    // Errors stay out unless a route lists them (CPDoS).
    for status in [400, 500] {
        origin.on(
            &format!("/tr/{status}"),
            Reply::ok()
                .status(status)
                .header("cache-control", "max-age=60"),
        );
    }
    // The route leaves cache_status at its default.
    let proxy = proxy(&origin, "").await;
    for status in [302, 303, 307] {
        let path = format!("/tr/{status}");
        assert_eq!(
            proxy.get(&path).await.cache_status(),
            "sidecache; fwd=miss; stored",
            "{path}"
        );
        let hit = proxy.get(&path).await;
        assert_eq!(hit.status, status, "{path}");
        assert_eq!(hit.header("location"), "/elsewhere", "{path}");
        assert!(hit.cache_status().contains("hit"), "{path}");
        assert_eq!(origin.hits(&path), 1, "{path}");
    }
    for path in ["/tr/302-bare", "/tr/400", "/tr/500"] {
        for _ in 0..2 {
            assert_eq!(
                proxy.get(path).await.cache_status(),
                "sidecache; fwd=miss; detail=status",
                "{path}"
            );
        }
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}
