//! The request model: what the origin receives for a cacheable request, and so what a stored answer may depend on.
//!
//! A cacheable request reaches the origin as the client sent it, minus what
//! the cache manages itself (conditions, ranges), the guard list, and what
//! the route says of cookies and query parameters. The headers that are
//! left are the ones a response's `Vary` selects by, so nothing the origin
//! saw can change a stored answer without being part of its key.

use std::borrow::Cow;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};

use crate::cache::key;
use crate::origin::{self, Peer};
use crate::route::{Cookies, Forward, KeyQuery, Route};

/// Headers that frameworks and servers read to rewrite the URL, the method,
/// the host or the scheme a request is handled as. Unkeyed, any of them lets
/// one client change what is stored for everyone (web cache poisoning,
/// CPDoS' method override), so on a cacheable route they reach the origin
/// only when the route keys them. Sources: James Kettle's "Practical Web
/// Cache Poisoning" and the CPDoS paper (Nguyen et al., 2019).
pub static GUARDED: [HeaderName; 23] = [
    // The URL (IIS, Symfony, Laravel, Zend).
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-override-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-path"),
    // The method (CPDoS "HTTP method override").
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-method"),
    // The host (absolute links, redirects, password-reset mails).
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-http-host-override"),
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

/// Content-negotiation lists whose items are case-insensitive and whose
/// order means nothing beyond their q-values (RFC 9110 §12.4.2, §12.5):
/// the origin gets, and the key compares, one canonical spelling of them.
const NEGOTIATION: [HeaderName; 3] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::ACCEPT_CHARSET,
];

/// The content codings this cache picks among, in its order of preference
/// when the client weighs them alike.
const CODINGS: [&str; 3] = ["br", "gzip", "identity"];

/// Whether the guard list holds `name`, also spelt with underscores: CGI,
/// PHP and Django read `X_Original_URL` as `X-Original-URL`.
pub fn is_guarded(name: &HeaderName) -> bool {
    if name.as_str().contains('_') {
        let dashed = name.as_str().replace('_', "-");
        GUARDED.iter().any(|guarded| guarded.as_str() == dashed)
    } else {
        GUARDED.contains(name)
    }
}

/// Whether the cache never forwards `name` on a cacheable request, whatever
/// the route says: it manages conditions and ranges itself, sends no body,
/// and hop-by-hop headers describe one connection.
pub fn never_forwarded(name: &HeaderName) -> bool {
    MANAGED.contains(name) || UNSENT_BODY.contains(name) || origin::is_hop_by_hop(name)
}

/// Whether the request model rewrites this header's spelling but not its
/// meaning: the negotiation lists, put in canonical form (RFC 9110 §12.5).
pub fn respelled(name: &HeaderName) -> bool {
    NEGOTIATION.contains(name)
}

/// Turns a cacheable request into what the origin receives: its query cut
/// to the parameters the route keys, its host made the one it is keyed by
/// (the canonical one, if the cache has one), its headers as the route
/// forwards them with `Accept-Encoding` reduced to one coding and the other
/// negotiation lists in canonical form, and the proxy's forwarding headers
/// for `client`. Everything a `Vary` can select by is then in `parts`; the
/// client's own headers (but hop-by-hop ones) are returned, for its
/// conditions, ranges and directives, with the host the origin gets and
/// the key is built from. [`target`] and [`forwarded`], one after the other.
pub fn prepare(
    route: &Route,
    canonical_host: Option<&str>,
    client: &Peer,
    parts: &mut Parts,
) -> (HeaderMap, String) {
    let (client_headers, host) = target(route, canonical_host, parts);
    parts.headers = forwarded(route, &client_headers, parts.version, client, &host);
    (client_headers, host)
}

/// The first half of [`prepare`], all a URL's key needs: the target the
/// origin gets (the query the route keys; origin-form with a canonical
/// host) in `parts`, and, returned, the client's own headers but hop-by-hop
/// ones (taken out of `parts`), and the host the origin gets and the key is
/// built from (in key form; empty when the request names none the key can
/// read).
pub fn target(
    route: &Route,
    canonical_host: Option<&str>,
    parts: &mut Parts,
) -> (HeaderMap, String) {
    if let Some(uri) = keyed_uri(&parts.uri, &route.key_query) {
        parts.uri = uri;
    }
    let host = match canonical_host {
        Some(host) => {
            // The origin and the key both see the canonical host, however
            // the client addressed this pod; an absolute target without a
            // path (`GET http://other`) asks for `/`, as the origin gets it.
            let origin_form = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(origin_form);
            host.to_owned()
        }
        None => key::request_host(parts),
    };
    let mut client_headers = std::mem::take(&mut parts.headers);
    origin::strip_hop_by_hop(&mut client_headers);
    (client_headers, host)
}

/// The second half of [`prepare`]: the headers the origin gets, built from
/// the client's own (as [`target`] returned them, with its `host`), which
/// are what a `Vary` selects by.
pub fn forwarded(
    route: &Route,
    client_headers: &HeaderMap,
    version: Version,
    client: &Peer,
    host: &str,
) -> HeaderMap {
    // Room for what is added below without growing the map.
    let room = 2 + NEGOTIATION.len() + 5;
    let mut headers = origin::retained(client_headers, room, |name| forwards(route, name));
    if let Cookies::Key(names) = &route.cookies
        && let Some(cookie) = keyed_cookies(client_headers, names)
    {
        headers.insert(header::COOKIE, cookie);
    }
    if let Some(coding) = accept_encoding(&headers) {
        headers.insert(header::ACCEPT_ENCODING, coding);
    }
    for name in NEGOTIATION {
        if let Some(list) = negotiation_list(&headers, &name) {
            headers.insert(name, list);
        }
    }
    // The origin gets the host the key is built from, as `Host` (put there
    // by `add_forwarding_headers` unless the client sent just that). A Host
    // the key could not read (not visible ASCII, or none) must not reach
    // the origin either: it then gets none, as the key has none.
    if host.is_empty() {
        headers.remove(header::HOST);
    }
    origin::add_forwarding_headers(&mut headers, version, client, host);
    headers
}

/// Whether a cacheable request sends the origin an `Authorization` (what
/// [`forwarded`] would keep of `client_headers`).
pub fn forwards_authorization(route: &Route, client_headers: &HeaderMap) -> bool {
    client_headers.contains_key(header::AUTHORIZATION) && forwards(route, &header::AUTHORIZATION)
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

/// A negotiation list in one canonical line: items in canonical case
/// (language tags as RFC 5646 §2.1.1 writes them, `fr-CH`; media types and
/// charsets lowercase), no spaces around parameters, `q=1` implied and
/// other weights in shortest form, sorted by weight (highest first, stably:
/// items of equal weight keep their order, which many frameworks read as
/// the client's preference). `None` when the field is absent. An item
/// whose weight does not parse is kept, with weight 1; one without a name
/// is dropped.
fn negotiation_list(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    let language = name == header::ACCEPT_LANGUAGE;
    let mut items: Vec<(u16, String)> = lines
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(|item| String::from_utf8_lossy(item.trim_ascii()).into_owned())
        .filter(|item| !item.is_empty())
        .map(|item| {
            let mut q = 1000;
            let mut params: Vec<String> = Vec::new();
            for (index, param) in item.split(';').map(str::trim).enumerate() {
                let weight = q_param(param).filter(|_| index > 0).and_then(qvalue);
                match weight {
                    Some(weight) => q = weight,
                    None if index == 0 && language => params.push(language_case(param)),
                    None => params.push(param.to_ascii_lowercase()),
                }
            }
            if q < 1000 {
                params.push(format!("q={}", f64::from(q) / 1000.0));
            }
            (q, params)
        })
        // An item without a name (`;q=1`) asks for nothing; kept, it would
        // canonicalise to another spelling each time.
        .filter(|(_, params)| params.first().is_some_and(|name| !name.is_empty()))
        .map(|(q, params)| (q, params.join(";")))
        .collect();
    items.sort_by_key(|(q, _)| std::cmp::Reverse(*q));
    let items: Vec<String> = items.into_iter().map(|(_, item)| item).collect();
    HeaderValue::from_str(&items.join(", ")).ok()
}

/// A language tag in the case RFC 5646 §2.1.1 recommends: language
/// lowercase, region uppercase, script titlecase, anything after a
/// singleton (`x-`, `u-`) lowercase.
fn language_case(tag: &str) -> String {
    let mut after_singleton = false;
    let subtags: Vec<String> = tag
        .split('-')
        .enumerate()
        .map(|(index, subtag)| {
            let lower = subtag.to_ascii_lowercase();
            if index == 0 || after_singleton {
                return lower;
            }
            match subtag.len() {
                1 => {
                    after_singleton = true;
                    lower
                }
                2 => subtag.to_ascii_uppercase(),
                4 if subtag.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    let mut title = lower;
                    title[..1].make_ascii_uppercase();
                    title
                }
                _ => lower,
            }
        })
        .collect();
    subtags.join("-")
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
    for value in params.filter_map(q_param) {
        q = qvalue(value)?;
    }
    Some((name, q))
}

/// The value of a `q=...` item parameter; `None` for any other parameter.
fn q_param(param: &str) -> Option<&str> {
    let (key, value) = param.split_once('=')?;
    key.trim().eq_ignore_ascii_case("q").then(|| value.trim())
}

/// An RFC 9110 §12.4.2 qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route;
    use crate::testing::headers;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// One request makes one variant: the canonical form of a list
            /// is its own canonical form.
            #[test]
            fn negotiation_lists_are_canonical_once(
                line in "([a-zA-Z*/-]{0,8}(;[ qQ]{0,2}=?[0-9.]{0,5})?[ ,]{0,2}){0,5}",
            ) {
                let Ok(value) = HeaderValue::from_str(&line) else { return Ok(()) };
                for name in NEGOTIATION.iter().chain([&header::ACCEPT_ENCODING]) {
                    let mut map = HeaderMap::new();
                    map.insert(name.clone(), value.clone());
                    let once = if name == header::ACCEPT_ENCODING {
                        accept_encoding(&map)
                    } else {
                        negotiation_list(&map, name)
                    };
                    let once = once.unwrap();
                    map.insert(name.clone(), once.clone());
                    let twice = if name == header::ACCEPT_ENCODING {
                        accept_encoding(&map)
                    } else {
                        negotiation_list(&map, name)
                    };
                    prop_assert_eq!(twice, Some(once));
                }
            }
        }
    }

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

    #[test]
    fn qvalues_rfc9110_12_4_2() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.125"), Some(125));
        assert_eq!(qvalue("0"), Some(0));
        for bad in ["1.5", "2", "0.1234", "-1", "", "0.x"] {
            assert_eq!(qvalue(bad), None, "{bad}");
        }
    }

    fn prepared(
        route: &Route,
        canonical: Option<&str>,
        uri: &str,
        pairs: &[(&str, &str)],
    ) -> Parts {
        let mut parts = http::Request::get(uri).body(()).unwrap().into_parts().0;
        parts.headers = headers(pairs);
        prepare(
            route,
            canonical,
            &Peer::new("192.0.2.7:5555".parse().unwrap()),
            &mut parts,
        );
        parts
    }

    /// The names the origin gets, sorted, without the proxy's own `Via`
    /// and `X-Forwarded-For`.
    fn names(parts: &Parts) -> Vec<&str> {
        let mut names: Vec<&str> = parts
            .headers
            .keys()
            .map(HeaderName::as_str)
            .filter(|name| !["via", "x-forwarded-for"].contains(name))
            .collect();
        names.sort();
        names
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
                ("x_original_url", "/admin"),
                ("X-Forwarded-Uri", "/admin"),
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
            vec![
                "host",
                "traceparent",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        // The forwarding headers describe what the key holds.
        assert_eq!(parts.headers["x-forwarded-host"], "shop.example");
        assert_eq!(parts.headers["x-forwarded-proto"], "https", "keyed");
        assert_eq!(parts.headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(parts.headers["via"], "1.1 sidecache");
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
            vec![
                "accept-language",
                "authorization",
                "host",
                "user-agent",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
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
    fn the_host_prepare_returns_is_the_one_the_prepared_request_names() {
        let route = test_route("r", "/**", &[]);
        let hosts: [&[u8]; 4] = [
            b"shop.example",
            b"Shop.Example:80",
            b"shop:8080",
            b"evil\xff",
        ];
        for canonical in [None, Some("canon.example")] {
            for uri in ["/a", "http://Other.Example:80/a", "other.example"] {
                for host in hosts.iter().map(Some).chain([None]) {
                    let mut parts = http::Request::get(uri).body(()).unwrap().into_parts().0;
                    if let Some(host) = host {
                        let value = HeaderValue::from_bytes(host).unwrap();
                        parts.headers.insert(header::HOST, value);
                    }
                    let peer = Peer::new("192.0.2.7:5555".parse().unwrap());
                    let (_, keyed) = prepare(&route, canonical, &peer, &mut parts);
                    let named = crate::cache::key::request_host(&parts);
                    assert_eq!(keyed, named, "{canonical:?} {uri} {host:?}");
                }
            }
        }
    }

    #[test]
    fn a_host_the_key_cannot_read_does_not_reach_the_origin() {
        let route = test_route("r", "/**", &[]);
        let mut parts = http::Request::get("/a").body(()).unwrap().into_parts().0;
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_bytes(b"evil\xff.example").unwrap(),
        );
        prepare(
            &route,
            None,
            &Peer::new("192.0.2.7:5555".parse().unwrap()),
            &mut parts,
        );
        assert!(!parts.headers.contains_key(header::HOST));
        assert!(!parts.headers.contains_key("x-forwarded-host"));
        assert_eq!(crate::cache::key::request_host(&parts), "");
    }

    #[test]
    fn negotiation_lists_reach_the_origin_in_one_canonical_spelling_rfc9110_12_4_2() {
        let route = test_route("r", "/**", &[]);
        let list = |name: &str, values: &[&str]| {
            let pairs: Vec<(&str, &str)> = values.iter().map(|v| (name, *v)).collect();
            let parts = prepared(&route, None, "/a", &pairs);
            parts.headers[name].to_str().unwrap().to_owned()
        };
        let fr = "fr-CH, fr;q=0.9, en;q=0.5";
        assert_eq!(
            list("accept-language", &["fr-ch, FR;q=0.90", "en;Q=0.5"]),
            fr
        );
        assert_eq!(list("accept-language", &["en;q=0.50,FR-ch,fr;q=0.9"]), fr);
        assert_eq!(
            list("accept-language", &["fr-CH;q=1.000, fr;q=0.9, en;q=0.5"]),
            fr
        );
        assert_eq!(
            list(
                "accept-language",
                &["ZH-hant-tw, sr-latn, de-x-PRIVATE, *;q=0.1"]
            ),
            "zh-Hant-TW, sr-Latn, de-x-private, *;q=0.1"
        );
        // Equal weights keep their order: frameworks read it as preference.
        assert_eq!(list("accept-language", &["fr, en"]), "fr, en");
        assert_eq!(list("accept-language", &["en, fr"]), "en, fr");
        // An invalid weight is kept as written, with weight 1.
        assert_eq!(
            list("accept-language", &["de;q=0.5, fr;q=x"]),
            "fr;q=x, de;q=0.5"
        );
        assert_eq!(
            list(
                "accept",
                &["Text/HTML; Level=1 ;q=0.5, */*;q=0.1", "application/json"]
            ),
            "application/json, text/html;level=1;q=0.5, */*;q=0.1"
        );
        assert_eq!(
            list("accept-charset", &["UTF-8, iso-8859-1;q=0.5"]),
            "utf-8, iso-8859-1;q=0.5"
        );
    }

    #[test]
    fn nameless_list_items_are_dropped_so_the_canonical_form_is_stable() {
        // Found by `negotiation_lists_are_canonical_once`: `;,;q=1` became
        // `;, ` and then `;`, two variants for one request.
        let mut map = HeaderMap::new();
        map.insert(header::ACCEPT, HeaderValue::from_static(";,;q=1"));
        assert_eq!(negotiation_list(&map, &header::ACCEPT).unwrap(), "");
        map.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html, ;q=0.5"),
        );
        assert_eq!(
            negotiation_list(&map, &header::ACCEPT).unwrap(),
            "text/html"
        );
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
