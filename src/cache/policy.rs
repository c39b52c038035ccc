//! HTTP caching decisions (RFC 9111): what may be looked up, what may be stored, for how long, how old it is.
//!
//! Every function here is pure: headers and times in, a decision out, so the
//! rules are unit-tested without sockets or clocks.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode, header};

use crate::route::Route;

/// Largest delta-seconds honoured (RFC 9111 §1.2.2): 2^31 seconds.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// What the proxy does with a request before looking at any stored response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPolicy {
    /// Answer from the cache when possible, and store the origin's answer.
    Lookup,
    /// The configuration says not to cache: no route, `cache = false`, or a
    /// method the route does not list.
    Bypass,
    /// The request itself rules out a shared answer (e.g. `Authorization`).
    Forward(NoCacheReason),
}

/// Why a request was not answered from, or a response not written to, the cache.
/// `as_str` is the RFC 9211 `detail` value and the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoCacheReason {
    /// The request carries credentials (RFC 9111 §3.5).
    Authorization,
    /// HEAD misses are forwarded as HEAD and carry no body to store.
    Head,
    /// Only 200 responses are stored.
    Status,
    NoStore,
    Private,
    /// `no-cache` would need revalidation on every use.
    NoCache,
    /// A response that sets cookies is somebody's own.
    SetCookie,
    /// Variants per `Vary` are not stored.
    Vary,
    /// Neither the response nor the route gives it any freshness.
    NoFreshness,
    /// The body is larger than `cache.max_object_size`.
    TooLarge,
    /// The origin or the client cut the body short.
    Incomplete,
}

impl NoCacheReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NoCacheReason::Authorization => "authorization",
            NoCacheReason::Head => "head",
            NoCacheReason::Status => "status",
            NoCacheReason::NoStore => "no-store",
            NoCacheReason::Private => "private",
            NoCacheReason::NoCache => "no-cache",
            NoCacheReason::SetCookie => "set-cookie",
            NoCacheReason::Vary => "vary",
            NoCacheReason::NoFreshness => "no-freshness",
            NoCacheReason::TooLarge => "too-large",
            NoCacheReason::Incomplete => "incomplete",
        }
    }
}

/// Decides whether a request may use the cache at all.
pub fn request_policy(
    route: Option<&Route>,
    method: &Method,
    headers: &HeaderMap,
) -> RequestPolicy {
    match route {
        Some(route) if route.caches(method) => {
            if headers.contains_key(header::AUTHORIZATION) {
                RequestPolicy::Forward(NoCacheReason::Authorization)
            } else {
                RequestPolicy::Lookup
            }
        }
        _ => RequestPolicy::Bypass,
    }
}

/// The `Cache-Control` directives a shared cache acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// Seconds; an invalid value reads as 0, so the response is stale (§4.2.1).
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` line; for a repeated directive the first wins.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            let Ok(line) = line.to_str() else { continue };
            for directive in split_directives(line) {
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "max-age" => cc.max_age = cc.max_age.or(Some(delta_seconds(value))),
                    "s-maxage" => cc.s_maxage = cc.s_maxage.or(Some(delta_seconds(value))),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits on commas outside quoted strings (`no-cache="a, b"` is one directive).
fn split_directives(line: &str) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    line.split(move |c| {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        c == ',' && !in_quotes
    })
    .map(str::trim)
    .filter(|d| !d.is_empty())
}

fn delta_seconds(value: Option<&str>) -> u64 {
    match value.map(str::parse::<u64>) {
        Some(Ok(seconds)) => seconds.min(MAX_DELTA_SECONDS),
        // Digits too many for u64 are still a valid, very large delta.
        Some(Err(_))
            if value.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())) =>
        {
            MAX_DELTA_SECONDS
        }
        _ => 0,
    }
}

/// Whether a response may be stored; `Ok` carries its freshness lifetime.
pub fn storability(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    route_ttl: Duration,
    response_time: SystemTime,
) -> Result<Duration, NoCacheReason> {
    if status != StatusCode::OK {
        return Err(NoCacheReason::Status);
    }
    if cc.no_store {
        return Err(NoCacheReason::NoStore);
    }
    if cc.private {
        return Err(NoCacheReason::Private);
    }
    if cc.no_cache {
        return Err(NoCacheReason::NoCache);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NoCacheReason::SetCookie);
    }
    if headers.contains_key(header::VARY) {
        return Err(NoCacheReason::Vary);
    }
    match freshness_lifetime(headers, cc, route_ttl, response_time) {
        Duration::ZERO => Err(NoCacheReason::NoFreshness),
        lifetime => Ok(lifetime),
    }
}

/// Freshness lifetime (RFC 9111 §4.2.1): `s-maxage`, then `max-age`, then
/// `Expires` − `Date`, then the route's `ttl`.
pub fn freshness_lifetime(
    headers: &HeaderMap,
    cc: &CacheControl,
    route_ttl: Duration,
    response_time: SystemTime,
) -> Duration {
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return Duration::from_secs(seconds);
    }
    if let Some(expires) = headers.get(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired (§5.3).
        let Some(expires) = http_date(Some(expires)) else {
            return Duration::ZERO;
        };
        let date = http_date(headers.get(header::DATE)).unwrap_or(response_time);
        return expires.duration_since(date).unwrap_or(Duration::ZERO);
    }
    route_ttl
}

/// Age of the response when it arrived (RFC 9111 §4.2.3): the larger of the
/// apparent age (by the clocks) and the origin's `Age` plus the round trip.
pub fn corrected_initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent_age = http_date(headers.get(header::DATE))
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, |s| {
            Duration::from_secs(s.min(MAX_DELTA_SECONDS))
        });
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value + response_delay)
}

/// Current age (RFC 9111 §4.2.3): initial age plus time resident here.
pub fn current_age(
    corrected_initial_age: Duration,
    response_time: SystemTime,
    now: SystemTime,
) -> Duration {
    corrected_initial_age + now.duration_since(response_time).unwrap_or(Duration::ZERO)
}

fn http_date(value: Option<&http::HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    #[test]
    fn cache_control_directives_are_parsed() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "Public, max-age=60"),
            (
                "cache-control",
                "s-maxage=\"30\", no-cache=\"set-cookie, x\", must-revalidate",
            ),
        ]));
        assert!(cc.public && cc.no_cache && cc.must_revalidate);
        assert!(!cc.no_store && !cc.private && !cc.proxy_revalidate);
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(30));
    }

    #[test]
    fn delta_seconds_edge_cases() {
        let max_age = |v: &str| CacheControl::parse(&headers(&[("cache-control", v)])).max_age;
        assert_eq!(
            max_age("max-age=10, max-age=20"),
            Some(10),
            "first occurrence wins"
        );
        assert_eq!(max_age("max-age=ten"), Some(0), "invalid value is stale");
        assert_eq!(max_age("max-age=-1"), Some(0));
        assert_eq!(max_age("max-age"), Some(0));
        assert_eq!(
            max_age("max-age=99999999999999999999999"),
            Some(MAX_DELTA_SECONDS)
        );
        assert_eq!(max_age("no-store"), None);
    }

    #[test]
    fn freshness_prefers_s_maxage_then_max_age_then_expires_then_ttl() {
        let ttl = Duration::from_secs(5);
        let life = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            freshness_lifetime(&h, &CacheControl::parse(&h), ttl, at(0))
        };
        let (d0, e100) = (date(0), date(100));
        assert_eq!(
            life(&[("cache-control", "max-age=60, s-maxage=30")]),
            Duration::from_secs(30)
        );
        assert_eq!(
            life(&[("cache-control", "max-age=60"), ("expires", &e100)]),
            Duration::from_secs(60)
        );
        assert_eq!(
            life(&[("date", &d0), ("expires", &e100)]),
            Duration::from_secs(100)
        );
        assert_eq!(
            life(&[("expires", &e100)]),
            Duration::from_secs(100),
            "no Date: response time"
        );
        assert_eq!(
            life(&[("expires", "0")]),
            Duration::ZERO,
            "invalid Expires is expired"
        );
        assert_eq!(life(&[("date", &e100), ("expires", &d0)]), Duration::ZERO);
        assert_eq!(life(&[]), ttl);
    }

    #[test]
    fn storability_refuses_what_a_shared_cache_must_not_keep() {
        let ttl = Duration::from_secs(60);
        let check = |status: u16, pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            storability(
                StatusCode::from_u16(status).unwrap(),
                &h,
                &CacheControl::parse(&h),
                ttl,
                at(0),
            )
        };
        assert_eq!(check(200, &[]), Ok(ttl));
        assert_eq!(
            check(200, &[("cache-control", "max-age=7")]),
            Ok(Duration::from_secs(7))
        );
        assert_eq!(check(404, &[]), Err(NoCacheReason::Status));
        assert_eq!(check(500, &[]), Err(NoCacheReason::Status));
        assert_eq!(
            check(200, &[("cache-control", "no-store")]),
            Err(NoCacheReason::NoStore)
        );
        assert_eq!(
            check(200, &[("cache-control", "private, max-age=60")]),
            Err(NoCacheReason::Private)
        );
        assert_eq!(
            check(200, &[("cache-control", "no-cache")]),
            Err(NoCacheReason::NoCache)
        );
        assert_eq!(
            check(200, &[("set-cookie", "a=b")]),
            Err(NoCacheReason::SetCookie)
        );
        assert_eq!(check(200, &[("vary", "accept")]), Err(NoCacheReason::Vary));
        assert_eq!(
            check(200, &[("cache-control", "max-age=0")]),
            Err(NoCacheReason::NoFreshness)
        );
    }

    #[test]
    fn age_follows_rfc_9111_section_4_2_3() {
        // Apparent age: the Date is 10 s before the response arrived.
        let h = headers(&[("date", &date(0))]);
        assert_eq!(
            corrected_initial_age(&h, at(9), at(10)),
            Duration::from_secs(10)
        );
        // Age header plus the round trip beats a smaller apparent age.
        let h = headers(&[("date", &date(10)), ("age", "30")]);
        assert_eq!(
            corrected_initial_age(&h, at(8), at(10)),
            Duration::from_secs(32)
        );
        // A Date in the future gives no negative age.
        let h = headers(&[("date", &date(100))]);
        assert_eq!(corrected_initial_age(&h, at(10), at(10)), Duration::ZERO);
        // Resident time adds on.
        assert_eq!(
            current_age(Duration::from_secs(5), at(10), at(25)),
            Duration::from_secs(20)
        );
        assert_eq!(
            current_age(Duration::from_secs(5), at(10), at(0)),
            Duration::from_secs(5)
        );
    }
}
