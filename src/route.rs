//! Route table: the first route whose path pattern matches a request decides how it is cached.

use std::sync::Arc;
use std::time::Duration;

use globset::{GlobMatcher, GlobSet};
use http::{HeaderName, Method};

/// One `[[routes]]` entry after validation.
#[derive(Debug)]
pub struct Route {
    /// Label in metrics and logs; defaults to the path pattern.
    pub name: String,
    /// The pattern as written in the config, for `--check` and logs.
    pub path: String,
    /// Compiled pattern: `*` stays within one path segment, `**` crosses them.
    pub matcher: PathPattern,
    /// Methods answered from and stored in the cache; other methods are forwarded.
    pub methods: Vec<Method>,
    /// Freshness for responses that carry none of their own; zero means only
    /// the origin's own freshness counts.
    pub ttl: Duration,
    /// `false` turns the cache off for this route: every request is forwarded.
    pub cache: bool,
    /// Forward every request as if the route did not cache, while the cache
    /// looks up, stores and counts what it would have served (a trial run).
    pub shadow: bool,
    /// Response statuses that may be stored.
    pub statuses: Vec<u16>,
    /// Whether responses without explicit freshness may get heuristic
    /// freshness from `Last-Modified` (RFC 9111 §4.2.2) when `ttl` is zero.
    pub heuristic_freshness: bool,
    /// On a miss with `Range`, fetch the whole body to fill the cache and
    /// answer the range from it; otherwise the range is passed through.
    pub range_fill: bool,
    /// Collapse concurrent misses for the same key into one origin fetch.
    pub coalesce: bool,
    /// How long a collapsed request waits for the fetch it joined before
    /// going to the origin itself.
    pub lock_timeout: Duration,
    /// Serve a stale entry this long past its freshness while refreshing it
    /// in the background, when the origin does not say (RFC 5861).
    pub stale_while_revalidate: Duration,
    /// Serve a stale entry this long past its freshness when the origin
    /// fails, when the origin does not say (RFC 5861).
    pub stale_if_error: Duration,
    /// Request headers whose values select a variant, as if the origin sent
    /// `Vary` for them (`cookie` when the route keys cookies).
    pub key_headers: Vec<HeaderName>,
    /// In strict mode, the headers forwarded besides the keyed ones; the
    /// operator vouches that they do not change the response.
    pub forward_headers: Vec<HeaderName>,
    /// What the origin receives of a cacheable request's headers.
    pub forward: Forward,
    /// What a cacheable request's cookies do.
    pub cookies: Cookies,
    /// Which query parameters the key (and so the origin) sees.
    pub key_query: KeyQuery,
    /// `cache.targeted_fields`, copied here because responses are judged
    /// with the route's other storing rules.
    pub targeted_fields: Vec<HeaderName>,
}

/// What the origin receives of a cacheable request's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Every end-to-end header but the guard list and what the cache manages
    /// (conditions, ranges); `Vary` says which of them select a variant.
    All,
    /// Only `Host`, the keyed and the forwarded headers, and credentials.
    Declared,
}

/// What a cacheable request's `Cookie` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cookies {
    /// The request is forwarded untouched and nothing is looked up or stored:
    /// a stored response is shared, a session is not.
    Bypass,
    /// The cookie is dropped; the anonymous response is shared.
    Strip,
    /// Only these cookies are forwarded, and their values select the variant.
    Key(Vec<String>),
}

/// Which query parameters count: the others are dropped from the key and
/// from the URL the origin receives, so they cannot change the response.
#[derive(Clone, Debug)]
pub enum KeyQuery {
    All,
    /// Every parameter but those whose name matches.
    Ignore(GlobSet),
    /// Only the parameters whose name matches.
    Only(GlobSet),
}

impl KeyQuery {
    /// Whether a parameter named `name` (percent-encoding normalised) counts.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            KeyQuery::All => true,
            KeyQuery::Ignore(names) => !names.is_match(name),
            KeyQuery::Only(names) => names.is_match(name),
        }
    }
}

impl Route {
    /// Whether a request with this method may be answered from the cache.
    pub fn caches(&self, method: &Method) -> bool {
        self.cache && self.methods.contains(method)
    }

    /// What this route says about storing responses.
    pub fn store_rules(&self) -> crate::cache::policy::StoreRules<'_> {
        crate::cache::policy::StoreRules {
            ttl: self.ttl,
            statuses: &self.statuses,
            heuristic: self.heuristic_freshness,
            targeted: &self.targeted_fields,
        }
    }

    /// Whether the route keys this header: it then reaches the origin even
    /// in strict mode or when it is on the guard list.
    pub fn keys(&self, name: &HeaderName) -> bool {
        self.key_headers.contains(name)
    }

    /// Whether a cacheable request in strict mode forwards this header.
    pub fn declares(&self, name: &HeaderName) -> bool {
        self.keys(name) || self.forward_headers.contains(name)
    }
}

/// The routes in config order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

/// A route's compiled path pattern. Every request is matched against the
/// routes in turn, so the two commonest shapes, a literal path and a
/// literal directory with `/**`, are compared as strings: a glob matcher
/// runs a regex (about 2 % of a memory hit's CPU, measured).
#[derive(Debug)]
pub struct PathPattern {
    shortcut: Shortcut,
    glob: GlobMatcher,
}

#[derive(Debug)]
enum Shortcut {
    /// The pattern has no wildcard: this path only.
    Exact(String),
    /// `DIR/**`: every path that starts with `DIR/`.
    Under(String),
    /// Anything else: the glob decides.
    None,
}

impl PathPattern {
    /// `glob` compiled from `pattern`, as `compile_path` in the config does.
    pub(crate) fn new(pattern: &str, glob: GlobMatcher) -> PathPattern {
        let literal = |s: &str| !s.is_empty() && !s.contains(['*', '?', '[', ']', '{', '}', '\\']);
        let shortcut = match pattern.strip_suffix("/**") {
            Some(dir) if literal(dir) => Shortcut::Under(format!("{dir}/")),
            _ if literal(pattern) => Shortcut::Exact(pattern.to_owned()),
            _ => Shortcut::None,
        };
        PathPattern { shortcut, glob }
    }

    pub fn is_match(&self, path: &str) -> bool {
        match &self.shortcut {
            Shortcut::Exact(exact) => path == exact,
            Shortcut::Under(dir) => path.starts_with(dir.as_str()),
            Shortcut::None => self.glob.is_match(path),
        }
    }
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// The first route whose pattern matches `path` (a normalised path).
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|route| route.matcher.is_match(path))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// A caching GET/HEAD route for unit tests, built with the config's defaults.
#[cfg(test)]
pub(crate) use crate::config::test_route;

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: &str) -> Route {
        test_route(name, path, &[])
    }

    #[test]
    fn first_matching_route_wins() {
        let table = RouteTable::new(vec![
            route("one", "/users/admin"),
            route("all-users", "/users/*"),
            route("deep", "/static/**"),
        ]);
        let find = |path| table.find(path).map(|r| r.name.as_str());
        assert_eq!(find("/users/admin"), Some("one"));
        assert_eq!(find("/users/7"), Some("all-users"));
        assert_eq!(find("/users/7/posts"), None, "* stays in one segment");
        assert_eq!(find("/static/css/site.css"), Some("deep"));
        assert_eq!(find("/other"), None);
    }

    #[test]
    fn shortcut_patterns_match_as_their_globs_do() {
        let patterns = [
            "/users/admin",
            "/static/**",
            "/a/b/**",
            "/**",
            "/users/*",
            "/x/**/y",
            "/v[12]/**",
            "/{a,b}/**",
            "/esc\\*/**",
            "/",
        ];
        let paths = [
            "/",
            "/users/admin",
            "/users/admin/",
            "/users/adminx",
            "/static",
            "/static/",
            "/static/a",
            "/static/a/b.css",
            "/staticx/a",
            "/a/b",
            "/a/b/",
            "/a/b/c",
            "/x/y",
            "/x/q/y",
            "/v1/a",
            "/a/x",
            "/esc*/a",
            "/users/7",
        ];
        for pattern in patterns {
            let compiled = crate::config::compile_path(pattern).unwrap();
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .unwrap()
                .compile_matcher();
            for path in paths {
                assert_eq!(
                    compiled.is_match(path),
                    glob.is_match(path),
                    "{pattern} on {path}"
                );
            }
        }
    }
}
