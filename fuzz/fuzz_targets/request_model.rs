//! The request model: what a cacheable request sends the origin (guard list, cookies, `Accept-*` in canonical form, host, query keys), and the keys made from it.
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use http::{HeaderName, Method, Version, header};
use libfuzzer_sys::fuzz_target;
use sidecache::cache::entry::Variants;
use sidecache::cache::key::CacheKey;
use sidecache::config::Config;
use sidecache::origin::Peer;
use sidecache::request;
use sidecache_fuzz::{Field, header_map};

/// Routes covering each mode: keyed cookies and query, strict forwarding
/// with stripped cookies, and the defaults.
const ROUTES: &str = r#"
[origin]
url = "http://127.0.0.1:3000"

[[routes]]
path = "/k/**"
key_cookies = ["lang", "ab"]
key_query = { only = ["page", "s*"] }
key_headers = ["x-forwarded-proto", "accept-language"]

[[routes]]
path = "/d/**"
forward = "declared"
forward_headers = ["accept"]
cookies = "strip"
key_query = { ignore = ["utm_*", "fbclid"] }

[[routes]]
path = "/**"
"#;

static CONFIG: LazyLock<Config> = LazyLock::new(|| {
    Config::from_toml_with(ROUTES, &|_| None).unwrap_or_else(|e| panic!("fuzz routes: {e}"))
});

#[derive(Arbitrary, Debug)]
struct Input {
    route: u8,
    head: bool,
    http2: bool,
    target: Vec<u8>,
    canonical_host: bool,
    fields: Vec<Field>,
    vary: Vec<Field>,
}

/// The fields whose canonical form the request model writes: forwarding
/// what it forwarded must not change them, or one request would make two
/// variants.
const CANONICAL: [HeaderName; 6] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::ACCEPT_CHARSET,
    header::ACCEPT_ENCODING,
    header::COOKIE,
    header::HOST,
];

fuzz_target!(|input: Input| {
    let routes: Vec<_> = CONFIG.routes.iter().collect();
    let route = routes[usize::from(input.route) % routes.len()];
    let mut builder = http::Request::builder()
        .method(if input.head {
            Method::HEAD
        } else {
            Method::GET
        })
        .version(if input.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .uri(input.target.as_slice());
    if let Some(headers) = builder.headers_mut() {
        *headers = header_map(&input.fields);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let client = &Peer::new(SocketAddr::from(([10, 0, 0, 1], 4711)));
    let canonical_host = input.canonical_host.then_some("shop.example.com");

    let (client_headers, host) = request::prepare(route, canonical_host, client, &mut parts);
    // The proxy judges `Authorization` without building what the origin gets.
    assert_eq!(
        request::forwards_authorization(route, &client_headers),
        parts.headers.contains_key(header::AUTHORIZATION)
    );
    // The proxy writes these two itself (and keeps an ingress's
    // `X-Forwarded-Proto` only where the route keys it).
    let own = [
        header::HeaderName::from_static("x-forwarded-host"),
        header::HeaderName::from_static("x-forwarded-proto"),
    ];
    for name in request::GUARDED.iter().filter(|name| !own.contains(name)) {
        assert!(
            route.keys(name) || !parts.headers.contains_key(name),
            "guarded {name} reached the origin"
        );
    }
    let proto = header::HeaderName::from_static("x-forwarded-proto");
    if !route.keys(&proto) {
        assert_eq!(
            parts.headers.get_all(&proto).iter().collect::<Vec<_>>(),
            ["http"]
        );
    }
    let key = CacheKey::for_request("fuzz", &parts);
    // The proxy keys by the host prepare returns; it must be the one the
    // prepared request names.
    assert_eq!(key, CacheKey::for_request_to("fuzz", &host, &parts));

    let mut again = parts.clone();
    request::prepare(route, canonical_host, client, &mut again);
    for name in CANONICAL {
        assert!(
            parts
                .headers
                .get_all(&name)
                .iter()
                .eq(again.headers.get_all(&name).iter()),
            "{name} changed when prepared twice: {:?} then {:?}",
            parts.headers.get_all(&name),
            again.headers.get_all(&name),
        );
    }
    assert_eq!(parts.uri, again.uri, "the URI changed when prepared twice");
    assert_eq!(key, CacheKey::for_request("fuzz", &again));

    let names = header_map(&input.vary).keys().cloned().collect();
    let variants = Variants::new(key, names);
    let _ = variants.key_for(&parts.headers);
    let _ = request::keyed_uri(&parts.uri, &route.key_query);
});
