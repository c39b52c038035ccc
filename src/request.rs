//! The request model: what the origin receives for a cacheable request, and so what a stored answer may depend on.
//!
//! A cacheable request reaches the origin as the client sent it, minus what
//! the cache manages itself (conditions, ranges), the guard list, and what
//! the route says of cookies and query parameters. The headers that are
//! left are the ones a response's `Vary` selects by, so nothing the origin
//! saw can change a stored answer without being part of its key.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};

use crate::cache::key;
use crate::origin;
use crate::route::{Cookies, Forward, KeyQuery, Route};

/// Headers that frameworks and servers read to rewrite the URL, the method,
/// the host or the scheme a request is handled as. Unkeyed, any of them lets
/// one client change what is stored for everyone (web cache poisoning,
/// CPDoS' method override), so on a cacheable route they reach the origin
/// only when the route keys them. Sources: James Kettle's "Practical Web
/// Cache Poisoning" and the CPDoS paper (Nguyen et al., 2019).
pub static GUARDED: [HeaderName; 19] = [
    // The URL (IIS, Symfony, Laravel, Zend).
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-override-url"),
    HeaderName::from_static("x-original-uri"),
    // The method (CPDoS "HTTP method override").
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    // The host (absolute links, redirects, password-reset mails).
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-original-host"),
    header::FORWARDED,
    // The scheme, port and prefix (redirect loops, links to other origins).
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Request headers the cache sets itself when it asks the origin: the
/// client's conditions and ranges are judged by the cache, so that the
/// origin's answer can always fill it.
const MANAGED: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Headers about a request body, which a cacheable request never sends
/// upstream: a `Content-Length` without its body would stall the origin.
const UNSENT_BODY: [HeaderName; 2] = [header::CONTENT_LENGTH, header::EXPECT];

/// The content codings this cache picks among, in its order of preference
/// when the client weighs them alike.
const CODINGS: [&str; 3] = ["br", "gzip", "identity"];

/// Whether the guard list holds `name`.
pub fn is_guarded(name: &HeaderName) -> bool {
    GUARDED.contains(name)
}

/// Turns a cacheable request into what the origin receives: its query cut
/// to the parameters the route keys, its host made the canonical one (if
/// the cache has one), and its headers as the route forwards them, with
/// `Accept-Encoding` reduced to one coding.
pub fn prepare(route: &Route, canonical_host: Option<&str>, parts: &mut Parts) {
    if let Some(uri) = keyed_uri(&parts.uri, &route.key_query) {
        parts.uri = uri;
    }
    if let Some(host) = canonical_host {
        // The origin and the key both see the canonical host, however the
        // client addressed this pod.
        if let Some(origin_form) = parts.uri.path_and_query().cloned() {
            parts.uri = Uri::from(origin_form);
        }
        if let Ok(value) = HeaderValue::from_str(host) {
            parts.headers.insert(header::HOST, value);
        }
    }
    let cookie = match &route.cookies {
        Cookies::Key(names) => keyed_cookies(&parts.headers, names),
        Cookies::Bypass | Cookies::Strip => None,
    };
    origin::strip_hop_by_hop(&mut parts.headers);
    origin::retain_headers(&mut parts.headers, |name| forwards(route, name));
    if let Some(cookie) = cookie {
        parts.headers.insert(header::COOKIE, cookie);
    }
    if let Some(coding) = accept_encoding(&parts.headers) {
        parts.headers.insert(header::ACCEPT_ENCODING, coding);
    }
}

/// Whether a header of a cacheable request reaches the origin as it came
/// (cookies are rebuilt from the keyed ones by the caller).
fn forwards(route: &Route, name: &HeaderName) -> bool {
    if MANAGED.contains(name) || UNSENT_BODY.contains(name) || name == header::COOKIE {
        return false;
    }
    match route.forward {
        Forward::Declared => {
            name == header::HOST || name == header::AUTHORIZATION || route.declares(name)
        }
        Forward::All => !is_guarded(name) || route.keys(name),
    }
}

/// The URI with only the query parameters `rule` keeps, in the order the
/// client sent them; `None` when it keeps them all.
pub fn keyed_uri(uri: &Uri, rule: &KeyQuery) -> Option<Uri> {
    if matches!(rule, KeyQuery::All) {
        return None;
    }
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| rule.keeps(&key::normalise_path(key::pair_name(pair))))
        .collect();
    let kept = kept.join("&");
    if kept == query {
        return None;
    }
    let path_and_query = match kept.is_empty() {
        true => Cow::Borrowed(uri.path()),
        false => Cow::Owned(format!("{}?{kept}", uri.path())),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query.as_ref()).ok()?);
    Uri::from_parts(parts).ok()
}

/// The cookies named in `names`, sorted by name (repeats keep their order),
/// as one `Cookie` value: the same cookies always make the same value, so
/// it selects one variant whatever else the client carries.
fn keyed_cookies(headers: &HeaderMap, names: &[String]) -> Option<HeaderValue> {
    let mut kept: Vec<(&str, &str)> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let pair = pair.trim();
            let (name, _) = pair.split_once('=')?;
            Some((name.trim(), pair))
        })
        .filter(|(name, _)| names.iter().any(|n| n == name))
        .collect();
    if kept.is_empty() {
        return None;
    }
    kept.sort_by_key(|(name, _)| *name);
    let pairs: Vec<&str> = kept.into_iter().map(|(_, pair)| pair).collect();
    HeaderValue::from_str(&pairs.join("; ")).ok()
}

/// The one coding among [`CODINGS`] the client prefers, by its q-values
/// (RFC 9110 §12.5.3): `*` stands for any coding not named, and `identity`
/// is acceptable unless refused, as the last choice. `None` when the request has no
/// `Accept-Encoding` (then the origin sees none either).
fn accept_encoding(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
    values.peek()?;
    let items: Vec<(String, u16)> = values
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(weighed)
        .collect();
    let weight = |coding: &str| {
        let named = items
            .iter()
            .find(|(name, _)| name == coding || (coding == "gzip" && name == "x-gzip"));
        let any = items.iter().find(|(name, _)| name == "*");
        match (named, any) {
            (Some((_, q)), _) | (None, Some((_, q))) => *q,
            // Acceptable unless refused, but below any coding the client names.
            (None, None) if coding == "identity" => 1,
            (None, None) => 0,
        }
    };
    let mut best = ("identity", 0);
    for coding in CODINGS {
        let q = weight(coding);
        if q > best.1 {
            best = (coding, q);
        }
    }
    Some(HeaderValue::from_static(best.0))
}

/// A `name;q=0.5` list item as its lowercased name and its weight in
/// thousandths; `None` for an empty item or an invalid weight.
fn weighed(item: &str) -> Option<(String, u16)> {
    let mut params = item.split(';');
    let name = params.next()?.trim().to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let mut q = 1000;
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("q") {
            q = key::qvalue(value.trim())?;
        }
    }
    Some((name, q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route;
    use crate::testing::headers;

    fn coding(values: &[&str]) -> Option<String> {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("accept-encoding", *v)).collect();
        accept_encoding(&headers(&pairs)).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn accept_encoding_becomes_the_best_known_coding_rfc9110_12_5_3() {
        let cases: &[(&[&str], &str)] = &[
            (&["gzip, deflate, br"], "br"),
            (&["gzip, deflate, br;q=0.9"], "gzip"),
            (&["GZIP"], "gzip"),
            (&["x-gzip"], "gzip"),
            (&["deflate"], "identity"),
            (&["zstd, *;q=0.5"], "br"),
            (&["br;q=0", "gzip;q=0.2"], "gzip"),
            (&[""], "identity"),
            (&["identity;q=0, *;q=0"], "identity"),
            (&["gzip;q=2"], "identity"),
            (&["gzip;q=0.3, identity;q=0.5"], "identity"),
            (&["br;q=0.5, gzip;q=0.5"], "br"),
        ];
        for (values, expected) in cases {
            assert_eq!(coding(values).as_deref(), Some(*expected), "for {values:?}");
        }
        assert_eq!(coding(&[]), None);
    }

    fn prepared(
        route: &Route,
        canonical: Option<&str>,
        uri: &str,
        pairs: &[(&str, &str)],
    ) -> Parts {
        let mut parts = http::Request::get(uri).body(()).unwrap().into_parts().0;
        parts.headers = headers(pairs);
        prepare(route, canonical, &mut parts);
        parts
    }

    fn names(parts: &Parts) -> Vec<&str> {
        parts.headers.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn everything_but_managed_guarded_and_cookies_is_forwarded() {
        let mut route = test_route("r", "/**", &["x-forwarded-proto"]);
        route.cookies = Cookies::Strip;
        let parts = prepared(
            &route,
            None,
            "/a",
            &[
                ("host", "shop.example"),
                ("traceparent", "00-1-2-01"),
                ("if-none-match", "\"x\""),
                ("range", "bytes=0-1"),
                ("x-original-url", "/admin"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
                ("cookie", "session=1"),
                ("connection", "close"),
                ("content-length", "5"),
                ("expect", "100-continue"),
            ],
        );
        assert_eq!(
            names(&parts),
            vec!["host", "traceparent", "x-forwarded-proto"]
        );
    }

    #[test]
    fn strict_mode_forwards_only_what_the_route_declares() {
        let mut route = test_route("r", "/**", &["accept-language"]);
        route.forward = Forward::Declared;
        route.forward_headers = vec![header::USER_AGENT];
        let parts = prepared(
            &route,
            None,
            "/a",
            &[
                ("host", "shop.example"),
                ("accept-language", "fr"),
                ("user-agent", "curl"),
                ("authorization", "Bearer x"),
                ("traceparent", "00-1-2-01"),
                ("accept-encoding", "gzip"),
            ],
        );
        assert_eq!(
            names(&parts),
            vec!["host", "accept-language", "user-agent", "authorization"]
        );
    }

    #[test]
    fn keyed_cookies_are_the_named_ones_sorted() {
        let mut route = test_route("r", "/**", &[]);
        route.cookies = Cookies::Key(vec!["lang".into(), "ab".into()]);
        let parts = prepared(
            &route,
            None,
            "/a",
            &[
                ("cookie", "session=1; lang=fr"),
                ("cookie", "ab=b; tracking=2"),
            ],
        );
        assert_eq!(parts.headers["cookie"], "ab=b; lang=fr");
        let none = prepared(&route, None, "/a", &[("cookie", "session=1")]);
        assert!(!none.headers.contains_key("cookie"));
    }

    #[test]
    fn canonical_host_replaces_the_clients() {
        let route = test_route("r", "/**", &[]);
        let parts = prepared(
            &route,
            Some("shop.example"),
            "http://10.0.0.7:8080/a?b=1",
            &[("host", "10.0.0.7:8080")],
        );
        assert_eq!(parts.uri, "/a?b=1");
        assert_eq!(parts.headers["host"], "shop.example");
    }

    fn rule(ignore: bool, patterns: &[&str]) -> KeyQuery {
        let mut set = globset::GlobSetBuilder::new();
        for pattern in patterns {
            set.add(globset::Glob::new(pattern).unwrap());
        }
        let set = set.build().unwrap();
        if ignore {
            KeyQuery::Ignore(set)
        } else {
            KeyQuery::Only(set)
        }
    }

    #[test]
    fn query_rules_cut_the_url_the_origin_gets() {
        let ignore = rule(true, &["utm_*", "fbclid"]);
        let cut = |uri: &str, rule: &KeyQuery| {
            keyed_uri(&uri.parse().unwrap(), rule).map(|u| u.to_string())
        };
        assert_eq!(
            cut("/a?b=2&utm_source=x&a=1&fbclid=y", &ignore).as_deref(),
            Some("/a?b=2&a=1")
        );
        assert_eq!(cut("/a?utm%5Fsource=x", &ignore).as_deref(), Some("/a"));
        assert_eq!(cut("/a?b=2&a=1", &ignore), None);
        assert_eq!(cut("/a", &ignore), None);
        let only = rule(false, &["page", "sort"]);
        assert_eq!(
            cut("/a?sort=up&x=1&page=2", &only).as_deref(),
            Some("/a?sort=up&page=2")
        );
        assert_eq!(cut("/a?page=1", &KeyQuery::All), None);
    }
}
