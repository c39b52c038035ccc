//! `[[routes]]`: path patterns and per-route cache rules; the defaults here are the only copy, unit tests' routes included.

use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderName, Method, header};
use serde::Deserialize;

use super::server::CacheConfig;
use super::{Problems, parse_duration, parse_header_names, parse_positive_duration};
use crate::cache::policy::DEFAULT_CACHE_STATUSES;
use crate::request;
use crate::route::{Cookies, Forward, KeyQuery, PathPattern, Route};

/// Default time a collapsed request waits for the fetch it joined.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Methods whose responses this version can store, and the default for `methods`.
const CACHEABLE_METHODS: [Method; 2] = [Method::GET, Method::HEAD];

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawRoute {
    name: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
    ttl: Option<String>,
    cache: Option<bool>,
    shadow: Option<bool>,
    cache_status: Option<Vec<u16>>,
    heuristic_freshness: Option<bool>,
    range_fill: Option<bool>,
    coalesce: Option<bool>,
    lock_timeout: Option<String>,
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
    #[serde(default)]
    key_headers: Vec<String>,
    #[serde(default)]
    forward_headers: Vec<String>,
    forward: Option<String>,
    cookies: Option<String>,
    #[serde(default)]
    key_cookies: Vec<String>,
    key_query: Option<RawKeyQuery>,
}

/// `key_query = { ignore = [...] }` or `{ only = [...] }`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawKeyQuery {
    ignore: Option<Vec<String>>,
    only: Option<Vec<String>>,
}

/// Validates every route, in order, then their stale windows against how
/// long `cache` keeps stale entries; each gets `cache`'s targeted fields.
pub(super) fn validate(raw: Vec<RawRoute>, cache: &CacheConfig, p: &mut Problems) -> Vec<Route> {
    let mut routes = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        if let Some(route) = raw.validate(index, &routes, &cache.targeted_fields, p) {
            routes.push(route);
        }
    }
    for (index, route) in routes.iter().enumerate() {
        for (field, window) in [
            ("stale_while_revalidate", route.stale_while_revalidate),
            ("stale_if_error", route.stale_if_error),
        ] {
            if window > cache.keep_stale {
                p.push(
                    format!("routes[{index}].{field}"),
                    format!(
                        "longer than cache.keep_stale ({}); stale entries are kept only that long",
                        humantime::format_duration(cache.keep_stale)
                    ),
                );
            }
        }
    }
    routes
}

/// Compiles a route path pattern: `*` matches within one segment, `**` across.
pub(crate) fn compile_path(pattern: &str) -> Result<PathPattern, String> {
    if !pattern.starts_with('/') {
        return Err(format!("{pattern:?} must start with \"/\""));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|glob| PathPattern::new(pattern, glob.compile_matcher()))
        .map_err(|e| format!("invalid pattern {pattern:?}: {}", e.kind()))
}

impl RawRoute {
    /// `earlier` are the routes before this one, whose names it must not reuse.
    fn validate(
        self,
        index: usize,
        earlier: &[Route],
        targeted_fields: &[HeaderName],
        p: &mut Problems,
    ) -> Option<Route> {
        let key = |field: &str| format!("routes[{index}].{field}");
        let (path, matcher) = match self.path {
            None => {
                p.push(key("path"), "missing; e.g. \"/users/*\"");
                (String::new(), None)
            }
            Some(path) => match compile_path(&path) {
                Ok(matcher) => (path, Some(matcher)),
                Err(message) => {
                    p.push(key("path"), message);
                    (path, None)
                }
            },
        };
        let methods = methods(self.methods, &key("methods"), p);
        let ttl = p.parse(
            &key("ttl"),
            self.ttl.as_deref(),
            Duration::ZERO,
            parse_duration,
        );
        let name = self.name.unwrap_or_else(|| path.clone());
        if name.is_empty() && !path.is_empty() {
            p.push(key("name"), "must not be empty");
        } else if let Some(other) = earlier.iter().position(|r| r.name == name) {
            p.push(
                key("name"),
                format!("{name:?} is already the name of routes[{other}]; names label metrics and must be unique"),
            );
        }
        let statuses = statuses(self.cache_status, &key("cache_status"), p);
        let lock_timeout = p.parse(
            &key("lock_timeout"),
            self.lock_timeout.as_deref(),
            DEFAULT_LOCK_TIMEOUT,
            parse_positive_duration,
        );
        let stale_while_revalidate = p.parse(
            &key("stale_while_revalidate"),
            self.stale_while_revalidate.as_deref(),
            Duration::ZERO,
            parse_duration,
        );
        let stale_if_error = p.parse(
            &key("stale_if_error"),
            self.stale_if_error.as_deref(),
            Duration::ZERO,
            parse_duration,
        );
        let mut key_headers = parse_header_names(p, &key("key_headers"), &self.key_headers);
        if key_headers.contains(&header::COOKIE) {
            p.push(
                key("key_headers"),
                "\"cookie\" cannot be keyed whole; name the cookies in key_cookies",
            );
        }
        let forward_headers = parse_header_names(p, &key("forward_headers"), &self.forward_headers);
        for (field, names) in [
            ("key_headers", &key_headers),
            ("forward_headers", &forward_headers),
        ] {
            if let Some(name) = names.iter().find(|h| request::never_forwarded(h)) {
                p.push(
                    key(field),
                    format!("{name:?} never reaches the origin on a cacheable request (the cache handles it)"),
                );
            }
        }
        if let Some(guarded) = forward_headers.iter().find(|h| request::is_guarded(h)) {
            p.push(
                key("forward_headers"),
                format!("{guarded:?} can rewrite the URL, method or host; list it in key_headers"),
            );
        }
        let cookies = cookies(self.cookies, self.key_cookies, index, p);
        if matches!(cookies, Cookies::Key(_)) {
            // The keyed cookies are forwarded as one canonical `Cookie`.
            key_headers.push(header::COOKIE);
        }
        let forward = forward(self.forward.as_deref(), &key("forward"), p);
        let key_query = key_query(self.key_query, &key("key_query"), p);
        let cache = self.cache.unwrap_or(true);
        let shadow = self.shadow.unwrap_or(false);
        if shadow && !cache {
            p.push(
                key("shadow"),
                "the route does not cache (cache = false), so there is nothing to try; remove one of the two",
            );
        }
        Some(Route {
            name,
            path,
            matcher: matcher?,
            methods,
            ttl,
            cache,
            shadow,
            statuses,
            heuristic_freshness: self.heuristic_freshness.unwrap_or(true),
            range_fill: self.range_fill.unwrap_or(false),
            coalesce: self.coalesce.unwrap_or(true),
            lock_timeout,
            stale_while_revalidate,
            stale_if_error,
            key_headers,
            forward_headers,
            forward,
            cookies,
            key_query,
            targeted_fields: targeted_fields.to_vec(),
        })
    }
}

/// `forward`: `"all"` (default) or `"declared"` (strict mode).
fn forward(value: Option<&str>, key: &str, p: &mut Problems) -> Forward {
    match value {
        None | Some("all") => Forward::All,
        Some("declared") => Forward::Declared,
        Some(other) => {
            p.push(
                key,
                format!("{other:?} is not a mode; use \"all\" or \"declared\""),
            );
            Forward::All
        }
    }
}

/// `cookies` (`"bypass"`, the default, or `"strip"`) and `key_cookies`,
/// which forwards and keys the named cookies and drops the others.
fn cookies(mode: Option<String>, names: Vec<String>, index: usize, p: &mut Problems) -> Cookies {
    let key = |field: &str| format!("routes[{index}].{field}");
    for name in &names {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=;,\"\\".contains(&b));
        if !token {
            p.push(key("key_cookies"), format!("invalid cookie name {name:?}"));
        }
    }
    match (mode.as_deref(), names.is_empty()) {
        (None | Some("bypass"), true) => Cookies::Bypass,
        (Some("strip"), true) => Cookies::Strip,
        (None | Some("strip"), false) => Cookies::Key(names),
        (Some("bypass"), false) => {
            p.push(
                key("key_cookies"),
                "requests with cookies bypass the cache (cookies = \"bypass\"); use cookies = \"strip\" to key these and drop the others",
            );
            Cookies::Bypass
        }
        (Some(other), _) => {
            p.push(
                key("cookies"),
                format!(
                    "{other:?} is not a mode; use \"bypass\" or \"strip\" (or key_cookies = [...])"
                ),
            );
            Cookies::Bypass
        }
    }
}

/// `key_query`: either `ignore` or `only`, each a list of parameter-name
/// globs (`utm_*`).
fn key_query(raw: Option<RawKeyQuery>, key: &str, p: &mut Problems) -> KeyQuery {
    let Some(raw) = raw else {
        return KeyQuery::All;
    };
    let globs = |patterns: &[String], p: &mut Problems| {
        let mut set = GlobSetBuilder::new();
        for pattern in patterns {
            match Glob::new(pattern) {
                Ok(glob) => {
                    set.add(glob);
                }
                Err(e) => p.push(key, format!("invalid pattern {pattern:?}: {}", e.kind())),
            }
        }
        set.build().unwrap_or_else(|_| GlobSet::empty())
    };
    match (raw.ignore, raw.only) {
        (Some(ignore), None) => KeyQuery::Ignore(globs(&ignore, p)),
        (None, Some(only)) if only.is_empty() => {
            p.push(
                key,
                "only = [] keeps no parameter; to drop them all say ignore = [\"*\"]",
            );
            KeyQuery::All
        }
        (None, Some(only)) => KeyQuery::Only(globs(&only, p)),
        (Some(_), Some(_)) => {
            p.push(key, "use either ignore or only, not both");
            KeyQuery::All
        }
        (None, None) => {
            p.push(key, "give ignore = [...] or only = [...]");
            KeyQuery::All
        }
    }
}

/// `methods`: GET and/or HEAD, the methods a cache answers (default both).
fn methods(names: Option<Vec<String>>, key: &str, p: &mut Problems) -> Vec<Method> {
    match names {
        None => CACHEABLE_METHODS.to_vec(),
        Some(names) if names.is_empty() => {
            p.push(key, "must not be empty");
            vec![]
        }
        Some(names) => names
            .iter()
            .filter_map(|name| {
                let method = Method::from_bytes(name.as_bytes())
                    .ok()
                    .filter(|m| CACHEABLE_METHODS.contains(m));
                if method.is_none() {
                    p.push(
                        key,
                        format!("{name:?} cannot be cached; use \"GET\" and/or \"HEAD\""),
                    );
                }
                method
            })
            .collect(),
    }
}

/// `cache_status`: final statuses other than 206 (default:
/// `DEFAULT_CACHE_STATUSES`).
fn statuses(list: Option<Vec<u16>>, key: &str, p: &mut Problems) -> Vec<u16> {
    match list {
        None => DEFAULT_CACHE_STATUSES.to_vec(),
        Some(list) if list.is_empty() => {
            p.push(key, "must not be empty; use cache = false to store nothing");
            vec![]
        }
        Some(list) => {
            for status in &list {
                match status {
                    206 => p.push(
                        key,
                        "206 cannot be listed: partial responses are never stored as complete",
                    ),
                    200..=599 => {}
                    other => p.push(key, format!("{other} is not a final status (200-599)")),
                }
            }
            list
        }
    }
}

/// A route for unit tests: `name`, `path` and `key_headers` as given and
/// every other key at its default, by the same validation a config file
/// goes through, so that tests cannot drift from the real defaults.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_route(name: &str, path: &str, key_headers: &[&str]) -> Route {
    let raw = RawRoute {
        name: Some(name.into()),
        path: Some(path.into()),
        key_headers: key_headers.iter().map(|h| h.to_string()).collect(),
        ..RawRoute::default()
    };
    let mut problems = Problems::default();
    let targeted_fields = super::server::DEFAULT_TARGETED_FIELDS.map(HeaderName::from_static);
    let route = raw.validate(0, &[], &targeted_fields, &mut problems);
    assert!(problems.0.is_empty(), "{:?}", problems.0);
    route.unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{MINIMAL, config, with_minimal};

    #[test]
    fn route_values_are_parsed() {
        let config = config(&format!(
            "{MINIMAL}[[routes]]\npath = \"/users/*\"\nmethods = [\"GET\"]\nttl = \"1m 30s\"\n\
             key_headers = [\"Accept-Language\"]\nshadow = true\n[[routes]]\nname = \"rest\"\npath = \"/**\"\ncache = false\n"
        ))
        .unwrap();
        let routes: Vec<_> = config.routes.iter().collect();
        assert_eq!(routes[0].name, "/users/*");
        assert_eq!(routes[0].methods, vec![Method::GET]);
        assert_eq!(routes[0].ttl, Duration::from_secs(90));
        assert_eq!(
            routes[0].key_headers,
            vec![HeaderName::from_static("accept-language")]
        );
        assert!(routes[0].cache);
        assert!(routes[0].shadow);
        assert_eq!(routes[1].name, "rest");
        assert_eq!(routes[1].methods, vec![Method::GET, Method::HEAD]);
        assert!(!routes[1].cache);
    }

    #[test]
    fn test_routes_get_the_documented_defaults() {
        let route = test_route("users", "/users/*", &["accept-language"]);
        assert_eq!(route.methods, vec![Method::GET, Method::HEAD]);
        assert_eq!(route.ttl, Duration::ZERO);
        assert!(route.cache);
        assert!(!route.shadow);
        assert_eq!(route.statuses, DEFAULT_CACHE_STATUSES.to_vec());
        assert!(route.heuristic_freshness);
        assert!(!route.range_fill);
        assert!(route.coalesce);
        assert_eq!(route.lock_timeout, Duration::from_secs(5));
        assert_eq!(route.stale_while_revalidate, Duration::ZERO);
        assert_eq!(route.stale_if_error, Duration::ZERO);
        assert_eq!(
            route.key_headers,
            vec![HeaderName::from_static("accept-language")]
        );
        assert!(route.forward_headers.is_empty());
    }

    #[test]
    fn route_validation_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "[[routes]]\nttl = \"1s\"",
                "routes[0].path: missing; e.g. \"/users/*\"",
            ),
            (
                "[[routes]]\npath = \"users\"",
                "routes[0].path: \"users\" must start with \"/\"",
            ),
            (
                "[[routes]]\npath = \"/a/[b\"",
                "routes[0].path: invalid pattern \"/a/[b\": unclosed character class; missing ']'",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = []",
                "routes[0].methods: must not be empty",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = [\"POST\"]",
                "routes[0].methods: \"POST\" cannot be cached; use \"GET\" and/or \"HEAD\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nttl = \"1 fortnight\"",
                "routes[0].ttl: invalid duration \"1 fortnight\" (unknown time unit \"fortnight\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); use e.g. \"250ms\", \"30s\", \"5m\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/a\"",
                "routes[1].name: \"/a\" is already the name of routes[0]; names label metrics and must be unique",
            ),
            (
                "[[routes]]\npath = \"/a\"\nname = \"\"",
                "routes[0].name: must not be empty",
            ),
            (
                "[[routes]]\npath = \"/a\"\nstale_if_error = \"1h\"",
                "routes[0].stale_if_error: longer than cache.keep_stale (10m); stale entries are kept only that long",
            ),
            (
                "[[routes]]\npath = \"/a\"\nlock_timeout = \"0s\"",
                "routes[0].lock_timeout: must be greater than zero",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncache_status = []",
                "routes[0].cache_status: must not be empty; use cache = false to store nothing",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncache_status = [200, 206]",
                "routes[0].cache_status: 206 cannot be listed: partial responses are never stored as complete",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncache_status = [200, 100]",
                "routes[0].cache_status: 100 is not a final status (200-599)",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_headers = [\"bad header\"]",
                "routes[0].key_headers: invalid header name \"bad header\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nforward_headers = [\"x:y\"]",
                "routes[0].forward_headers: invalid header name \"x:y\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nforward_headers = [\"X-Forwarded-Host\"]",
                "routes[0].forward_headers: \"x-forwarded-host\" can rewrite the URL, method or host; list it in key_headers",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_headers = [\"Cookie\"]",
                "routes[0].key_headers: \"cookie\" cannot be keyed whole; name the cookies in key_cookies",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncookies = \"keep\"",
                "routes[0].cookies: \"keep\" is not a mode; use \"bypass\" or \"strip\" (or key_cookies = [...])",
            ),
            (
                "[[routes]]\npath = \"/a\"\ncookies = \"bypass\"\nkey_cookies = [\"lang\"]",
                "routes[0].key_cookies: requests with cookies bypass the cache (cookies = \"bypass\"); use cookies = \"strip\" to key these and drop the others",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_cookies = [\"a=b\"]",
                "routes[0].key_cookies: invalid cookie name \"a=b\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nforward = \"some\"",
                "routes[0].forward: \"some\" is not a mode; use \"all\" or \"declared\"",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_query = { ignore = [\"utm_*\"], only = [\"page\"] }",
                "routes[0].key_query: use either ignore or only, not both",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_query = { only = [] }",
                "routes[0].key_query: only = [] keeps no parameter; to drop them all say ignore = [\"*\"]",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_headers = [\"Range\"]",
                "routes[0].key_headers: \"range\" never reaches the origin on a cacheable request (the cache handles it)",
            ),
            (
                "[[routes]]\npath = \"/a\"\nforward = \"declared\"\nforward_headers = [\"connection\"]",
                "routes[0].forward_headers: \"connection\" never reaches the origin on a cacheable request (the cache handles it)",
            ),
            (
                "[[routes]]\npath = \"/a\"\nshadow = true\ncache = false",
                "routes[0].shadow: the route does not cache (cache = false), so there is nothing to try; remove one of the two",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_query = {}",
                "routes[0].key_query: give ignore = [...] or only = [...]",
            ),
            (
                "[[routes]]\npath = \"/a\"\nkey_query = { only = [\"[a\"] }",
                "routes[0].key_query: invalid pattern \"[a\": unclosed character class; missing ']'",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                with_minimal(text),
                vec![expected.to_string()],
                "for {text:?}"
            );
        }
    }
}
