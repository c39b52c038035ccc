//! Route table: the first route whose path pattern matches a request decides how it is cached.

use std::sync::Arc;
use std::time::Duration;

use globset::GlobMatcher;
use http::{HeaderName, Method};

/// One `[[routes]]` entry after validation.
#[derive(Debug)]
pub struct Route {
    /// Label in metrics and logs; defaults to the path pattern.
    pub name: String,
    /// The pattern as written in the config, for `--check` and logs.
    pub path: String,
    /// Compiled pattern: `*` stays within one path segment, `**` crosses them.
    pub matcher: GlobMatcher,
    /// Methods answered from and stored in the cache; other methods are forwarded.
    pub methods: Vec<Method>,
    /// Freshness for responses that carry none of their own; zero means only
    /// the origin's own freshness counts.
    pub ttl: Duration,
    /// `false` turns the cache off for this route: every request is forwarded.
    pub cache: bool,
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
    /// Request headers whose values become part of the cache key (and are
    /// forwarded on cacheable requests).
    pub key_headers: Vec<HeaderName>,
    /// Request headers forwarded on cacheable requests although they are not in
    /// the key; the operator vouches that they do not change the response.
    pub forward_headers: Vec<HeaderName>,
    /// `cache.targeted_fields`, copied here because responses are judged
    /// with the route's other storing rules.
    pub targeted_fields: Vec<HeaderName>,
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

    /// Whether a cacheable request forwards this header to the origin.
    pub fn forwards(&self, name: &HeaderName) -> bool {
        self.key_headers.contains(name) || self.forward_headers.contains(name)
    }
}

/// The routes in config order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
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
}
