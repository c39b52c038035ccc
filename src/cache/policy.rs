//! HTTP caching decisions (RFC 9111): what may be looked up, what may be stored, for how long, how old it is.
//!
//! Every function here is pure: headers and times in, a decision out, so the
//! rules are unit-tested without sockets or clocks.

mod targeted;

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, StatusCode, header};

pub use targeted::{CDN_CACHE_CONTROL, SIDECACHE_CACHE_CONTROL};

/// Largest delta-seconds honoured (RFC 9111 §1.2.2): 2^31 seconds.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// Statuses that RFC 9110 §15.1 calls heuristically cacheable: they may be
/// stored without explicit freshness. (501 is one too, but no 5xx is stored
/// unless a route lists it.)
pub const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Statuses stored when a route does not say `cache_status`: the heuristic
/// ones without 501, and the temporary redirects 302, 303 and 307, which
/// [`freshness_lifetime`] lets in only with explicit freshness. No 5xx and
/// no 400: an error that one request's headers provoked would be served to
/// everyone (cache-poisoned denial of service, CPDoS).
pub const DEFAULT_CACHE_STATUSES: [u16; 13] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414,
];

/// Share of the time since `Last-Modified` taken as heuristic freshness (§4.2.2).
const HEURISTIC_FRACTION: u32 = 10;
/// Cap on heuristic freshness: one day, as common practice has it.
const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// What the proxy does with a request before looking at any stored response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPolicy {
    /// Answer from the cache when possible, and store the origin's answer.
    Lookup,
    /// The configuration says not to cache: no route, `cache = false`, a
    /// method the route does not list, or (`Cookie`) cookies on a route
    /// that does not share answers to them.
    Bypass(Option<NoCacheReason>),
    /// The request itself rules out the cache: conditions only the origin
    /// can evaluate (`If-Match`, `If-Unmodified-Since`, RFC 9111 §4.3.2).
    Forward(NoCacheReason),
}

/// Why a request was not answered from, or a response not written to, the cache.
/// `as_str` is the RFC 9211 `detail` value and the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoCacheReason {
    /// The request carries credentials and the response does not allow
    /// sharing it (RFC 9111 §3.5).
    Authorization,
    /// The request has preconditions only the origin can evaluate.
    Precondition,
    /// The request carries cookies, and its route shares no answers to them
    /// (`cookies = "bypass"`).
    Cookie,
    /// The request said `no-store` (§5.2.1.5).
    RequestNoStore,
    /// HEAD misses are forwarded as HEAD and carry no body to store.
    Head,
    /// The status is not one the route stores, or it needs explicit freshness.
    Status,
    NoStore,
    Private,
    /// `no-cache` with nothing to revalidate with (no `ETag` or `Last-Modified`).
    NoCache,
    /// A response that sets cookies is somebody's own.
    SetCookie,
    /// `Vary: *`: no later request can match it.
    Vary,
    /// No freshness and nothing to revalidate with.
    NoFreshness,
    /// The body is larger than `cache.max_object_size`.
    TooLarge,
    /// The origin or the client cut the body short.
    Incomplete,
    /// `only-if-cached` and nothing usable is stored (§5.2.1.7).
    OnlyIfCached,
    /// A range miss on a route that does not fetch whole bodies for ranges:
    /// the range is passed through, and a 206 is never stored as complete.
    Range,
    /// The origin could not be reached or broke the exchange before its
    /// response head (a 502).
    OriginUnreachable,
    /// The origin's connect or response head missed its deadline (a 504).
    OriginTimeout,
}

impl NoCacheReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NoCacheReason::Authorization => "authorization",
            NoCacheReason::Precondition => "precondition",
            NoCacheReason::Cookie => "cookie",
            NoCacheReason::RequestNoStore => "request-no-store",
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
            NoCacheReason::OnlyIfCached => "only-if-cached",
            NoCacheReason::Range => "range",
            NoCacheReason::OriginUnreachable => "origin-unreachable",
            NoCacheReason::OriginTimeout => "origin-timeout",
        }
    }
}

/// Decides whether a request may use the cache at all; `caches` says whether
/// its route caches its method, `cookies_bypass` whether it keeps requests
/// with cookies out of the cache.
pub fn request_policy(caches: bool, cookies_bypass: bool, headers: &HeaderMap) -> RequestPolicy {
    if !caches {
        RequestPolicy::Bypass(None)
    } else if cookies_bypass && headers.contains_key(header::COOKIE) {
        RequestPolicy::Bypass(Some(NoCacheReason::Cookie))
    } else if headers.contains_key(header::IF_MATCH)
        || headers.contains_key(header::IF_UNMODIFIED_SINCE)
    {
        RequestPolicy::Forward(NoCacheReason::Precondition)
    } else {
        RequestPolicy::Lookup
    }
}

/// `max-stale` in a request: any staleness, or up to so many seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxStale {
    Any,
    Seconds(u64),
}

/// The `Cache-Control` directives a shared cache acts on, from a request or a response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// Unqualified `no-cache`: every use needs revalidation.
    pub no_cache: bool,
    /// `no-cache="field, ..."`: these fields need revalidation; the rest may be used.
    pub no_cache_fields: Vec<HeaderName>,
    /// Unqualified `private`: not for a shared cache.
    pub private: bool,
    /// `private="field, ..."`: these fields are not stored.
    pub private_fields: Vec<HeaderName>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    /// Seconds; an invalid value reads as 0, so the response is stale (§4.2.1).
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// Request only.
    pub max_stale: Option<MaxStale>,
    /// Request only.
    pub min_fresh: Option<u64>,
    /// Request only.
    pub only_if_cached: bool,
    /// RFC 5861: seconds a stale response may be served while it is
    /// refreshed in the background.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861: seconds a stale response may be served when the origin fails.
    pub stale_if_error: Option<u64>,
    /// Read from a targeted field (RFC 9213), which overrides `Expires` as
    /// well as `Cache-Control` (§2.2).
    pub targeted: bool,
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
                // Names are case-insensitive (RFC 9111 §5.2); lowercased on
                // the stack, every request and fill reads some. A name longer
                // than the buffer is none this cache knows.
                let mut buffer = [0u8; LONGEST_DIRECTIVE];
                let Some(lower) = buffer.get_mut(..name.len()) else {
                    continue;
                };
                lower.copy_from_slice(name.as_bytes());
                lower.make_ascii_lowercase();
                match &*lower {
                    b"no-store" => cc.no_store = true,
                    b"no-cache" => match value {
                        Some(fields) => cc.no_cache_fields.extend(field_names(fields)),
                        None => cc.no_cache = true,
                    },
                    b"private" => match value {
                        Some(fields) => cc.private_fields.extend(field_names(fields)),
                        None => cc.private = true,
                    },
                    b"public" => cc.public = true,
                    b"must-revalidate" => cc.must_revalidate = true,
                    b"proxy-revalidate" => cc.proxy_revalidate = true,
                    b"immutable" => cc.immutable = true,
                    b"only-if-cached" => cc.only_if_cached = true,
                    b"max-age" => cc.max_age = cc.max_age.or(Some(delta_seconds(value))),
                    b"s-maxage" => cc.s_maxage = cc.s_maxage.or(Some(delta_seconds(value))),
                    b"min-fresh" => cc.min_fresh = cc.min_fresh.or(Some(delta_seconds(value))),
                    b"stale-while-revalidate" => {
                        cc.stale_while_revalidate =
                            cc.stale_while_revalidate.or(Some(delta_seconds(value)))
                    }
                    b"stale-if-error" => {
                        cc.stale_if_error = cc.stale_if_error.or(Some(delta_seconds(value)))
                    }
                    b"max-stale" => {
                        let max_stale = match value {
                            None => MaxStale::Any,
                            Some(_) => MaxStale::Seconds(delta_seconds(value)),
                        };
                        cc.max_stale = cc.max_stale.or(Some(max_stale));
                    }
                    _ => {}
                }
            }
        }
        cc
    }

    /// The directives this cache acts on for a response: those of the first
    /// of the targeted `fields` (RFC 9213) with a valid, non-empty value,
    /// else `Cache-Control`'s.
    pub fn parse_response(headers: &HeaderMap, fields: &[HeaderName]) -> CacheControl {
        fields
            .iter()
            .find_map(|name| targeted::directives(headers, name))
            .unwrap_or_else(|| CacheControl::parse(headers))
    }

    /// Request directives, with `Pragma: no-cache` read as `no-cache` when
    /// there is no `Cache-Control` (RFC 9111 §5.4).
    pub fn parse_request(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::parse(headers);
        if !headers.contains_key(header::CACHE_CONTROL) {
            cc.no_cache = headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| split_directives(v).any(|d| d.eq_ignore_ascii_case("no-cache")));
        }
        cc
    }

    /// Whether a stale response must not be served without revalidation
    /// (§5.2.2.2, §5.2.2.8; `s-maxage` implies `proxy-revalidate`, §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }

    /// Whether a response to a request with `Authorization` may be stored and
    /// reused by a shared cache (§3.5).
    pub fn shareable_with_authorization(&self) -> bool {
        self.public || self.must_revalidate || self.s_maxage.is_some()
    }
}

/// Bytes of the longest directive name [`CacheControl::parse`] knows
/// (`stale-while-revalidate`).
const LONGEST_DIRECTIVE: usize = "stale-while-revalidate".len();

fn field_names(list: &str) -> impl Iterator<Item = HeaderName> + '_ {
    list.split(',')
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
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

/// What a route says about storing responses.
#[derive(Clone, Copy, Debug)]
pub struct StoreRules<'a> {
    /// Freshness for heuristically cacheable responses that carry none.
    pub ttl: Duration,
    /// Statuses that may be stored.
    pub statuses: &'a [u16],
    /// Whether heuristic freshness from `Last-Modified` is allowed (§4.2.2).
    pub heuristic: bool,
    /// Targeted cache-control fields (RFC 9213), the most specific first.
    pub targeted: &'a [HeaderName],
}

/// The request facts that storing depends on.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub cc: &'a CacheControl,
    pub authorization: bool,
}

/// Whether a response may be stored (RFC 9111 §3); `Ok` carries its
/// freshness lifetime, which is zero for a response stored only to be
/// revalidated on every use.
pub fn storability(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    request: RequestFacts<'_>,
    rules: StoreRules<'_>,
    response_time: SystemTime,
) -> Result<Duration, NoCacheReason> {
    if request.cc.no_store {
        return Err(NoCacheReason::RequestNoStore);
    }
    if cc.no_store {
        return Err(NoCacheReason::NoStore);
    }
    if cc.private {
        return Err(NoCacheReason::Private);
    }
    if request.authorization && !cc.shareable_with_authorization() {
        return Err(NoCacheReason::Authorization);
    }
    if !rules.statuses.contains(&status.as_u16()) {
        return Err(NoCacheReason::Status);
    }
    // A cookie is somebody's own, unless the origin names it as a field the
    // stored copy leaves out (`private="set-cookie"`, `no-cache="set-cookie"`).
    let cookie_left_out = cc.private_fields.contains(&header::SET_COOKIE)
        || cc.no_cache_fields.contains(&header::SET_COOKIE);
    if headers.contains_key(header::SET_COOKIE) && !cookie_left_out {
        return Err(NoCacheReason::SetCookie);
    }
    // `Vary: *` can never be matched by a later request (§4.1).
    if vary_names(headers).is_none() {
        return Err(NoCacheReason::Vary);
    }
    let validators = has_validators(headers);
    if cc.no_cache && !validators {
        return Err(NoCacheReason::NoCache);
    }
    match freshness_lifetime(status, headers, cc, rules, response_time) {
        // Needs explicit freshness and has none.
        None => Err(NoCacheReason::Status),
        Some(Duration::ZERO) if !validators => Err(NoCacheReason::NoFreshness),
        Some(lifetime) => Ok(lifetime),
    }
}

/// The request headers a response varies on, lowercased, sorted, without
/// duplicates; `None` for `Vary: *` (RFC 9111 §4.1).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for item in headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        if item == "*" {
            return None;
        }
        if let Ok(name) = HeaderName::from_bytes(item.as_bytes()) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Whether a response can be revalidated: it has an `ETag` or a `Last-Modified`.
pub fn has_validators(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// Freshness lifetime (RFC 9111 §4.2.1): `s-maxage`, then `max-age`, then
/// `Expires` − `Date`; failing those, for heuristically cacheable statuses
/// only, the route's `ttl`, then (if the route allows) a tenth of the time
/// since `Last-Modified` (§4.2.2). `None`: the status needs explicit
/// freshness and has none.
pub fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    rules: StoreRules<'_>,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(seconds));
    }
    let date = http_date(headers.get(header::DATE)).unwrap_or(response_time);
    if let Some(expires) = headers.get(header::EXPIRES).filter(|_| !cc.targeted) {
        // An invalid Expires (e.g. "0") means already expired (§5.3).
        return Some(
            http_date(Some(expires))
                .and_then(|expires| expires.duration_since(date).ok())
                .unwrap_or(Duration::ZERO),
        );
    }
    if !HEURISTIC_STATUSES.contains(&status.as_u16()) {
        return None;
    }
    if !rules.ttl.is_zero() {
        return Some(rules.ttl);
    }
    let heuristic = http_date(headers.get(header::LAST_MODIFIED))
        .filter(|_| rules.heuristic)
        .and_then(|modified| date.duration_since(modified).ok())
        .map_or(Duration::ZERO, |since| {
            (since / HEURISTIC_FRACTION).min(HEURISTIC_MAX)
        });
    Some(heuristic)
}

/// Whether a stale response may be served at once while it is refreshed in
/// the background (RFC 5861 §3): within the response's
/// `stale-while-revalidate` window (else the route's), when neither the
/// response forbids stale use nor the request asks for validation.
pub fn serve_while_revalidating(
    stored: &CacheControl,
    lifetime: Duration,
    age: Duration,
    request: &CacheControl,
    route_window: Duration,
) -> bool {
    let asks_for_validation =
        request.no_cache || request.max_age.is_some() || request.min_fresh.is_some();
    let window = stored
        .stale_while_revalidate
        .map_or(route_window, Duration::from_secs);
    age > lifetime
        && age - lifetime <= window
        && !stored.no_cache
        && !stored.forbids_stale()
        && !asks_for_validation
}

/// Whether a stale response may stand in for a failed origin (RFC 5861
/// §4): within the response's `stale-if-error` window (else the route's).
pub fn serve_on_error(
    stored: &CacheControl,
    lifetime: Duration,
    age: Duration,
    route_window: Duration,
) -> bool {
    let window = stored
        .stale_if_error
        .map_or(route_window, Duration::from_secs);
    age.saturating_sub(lifetime) <= window && !window.is_zero()
}

/// How a stored response may be used for a request (RFC 9111 §4.2, §5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usability {
    /// Fresh enough for this request; `ttl` is the freshness left.
    Fresh { ttl: Duration },
    /// Stale, but the request accepts it (`max-stale`); `stale_for` is how long.
    Stale { stale_for: Duration },
    /// Must be validated with the origin first.
    Revalidate,
}

/// Decides whether a stored response with these directives, lifetime and
/// current age may answer a request with `request` directives.
pub fn usability(
    stored: &CacheControl,
    lifetime: Duration,
    age: Duration,
    request: &CacheControl,
) -> Usability {
    if stored.no_cache || request.no_cache {
        return Usability::Revalidate;
    }
    if request
        .max_age
        .is_some_and(|max| age > Duration::from_secs(max))
    {
        return Usability::Revalidate;
    }
    let left = lifetime.saturating_sub(age);
    if request
        .min_fresh
        .is_some_and(|min| left < Duration::from_secs(min))
    {
        return Usability::Revalidate;
    }
    if !left.is_zero() {
        return Usability::Fresh { ttl: left };
    }
    let stale_for = age - lifetime;
    match request.max_stale {
        _ if stored.forbids_stale() => Usability::Revalidate,
        Some(MaxStale::Any) => Usability::Stale { stale_for },
        Some(MaxStale::Seconds(max)) if stale_for <= Duration::from_secs(max) => {
            Usability::Stale { stale_for }
        }
        _ => Usability::Revalidate,
    }
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
    // Broken intermediaries send a list (`Age: 5, 7`, or two lines): the
    // first member counts; an invalid one (bytes that are not text
    // included) counts as no Age (§5.1).
    let first_age = headers
        .get_all(header::AGE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("invalid").split(','))
        .map(str::trim)
        .find(|member| !member.is_empty());
    let age_value = Duration::from_secs(delta_seconds(first_age));
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

/// A header field's HTTP-date, read as leniently as [`parse_http_date`] reads it.
fn http_date(value: Option<&http::HeaderValue>) -> Option<SystemTime> {
    parse_http_date(value?.to_str().ok()?)
}

/// Day names: short in IMF-fixdate and asctime, long in the RFC 850 form.
const WEEKDAYS: [(&str, &str); 7] = [
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
    ("Sun", "Sunday"),
];
/// Month names, as all three forms write them.
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// An HTTP-date in any of its three forms (RFC 9110 §5.6.7): IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form (`Sunday,
/// 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`). Day and
/// month names are matched in any case, as RFC 9111 §4.2 asks of caches,
/// and any run of whitespace (or commas) separates the parts. The parts are
/// picked out here by hand because httpdate rejects those case variants; the
/// date is then handed to httpdate as an IMF-fixdate for the calendar checks
/// (ranges, day of the month, weekday).
fn parse_http_date(text: &str) -> Option<SystemTime> {
    // Nearly every date is a well-formed IMF-fixdate, which httpdate reads
    // without the allocations below (this runs for every response stored).
    if let Ok(time) = httpdate::parse_http_date(text) {
        return Some(time);
    }
    let parts: Vec<&str> = text
        .split(|c: char| c.is_ascii_whitespace() || c == ',')
        .filter(|part| !part.is_empty())
        .collect();
    let (weekday, day, month, year, time) = match parts[..] {
        [weekday, day, month, year, time, zone] if zone.eq_ignore_ascii_case("GMT") => {
            (weekday, day, month, year, time)
        }
        [weekday, date, time, zone] if zone.eq_ignore_ascii_case("GMT") => {
            let mut date = date.split('-');
            match (date.next(), date.next(), date.next(), date.next()) {
                (Some(day), Some(month), Some(year), None) => (weekday, day, month, year, time),
                _ => return None,
            }
        }
        [weekday, month, day, time, year] => (weekday, day, month, year, time),
        _ => return None,
    };
    let (weekday, _) = WEEKDAYS.iter().find(|(short, long)| {
        weekday.eq_ignore_ascii_case(short) || weekday.eq_ignore_ascii_case(long)
    })?;
    let month = MONTHS
        .iter()
        .find(|name| month.eq_ignore_ascii_case(name))?;
    let day = digits(day, 2)?;
    let imf_fixdate = |year: u16| {
        let text = format!("{weekday}, {day:02} {month} {year:04} {time} GMT");
        httpdate::parse_http_date(&text).ok()
    };
    match year.len() {
        4 => imf_fixdate(digits(year, 4)?),
        // The weekday tells the century of a two-digit year: 100 years are
        // 36,524 or 36,525 days, never whole weeks, so a date falls on
        // another weekday in 19yy than in 20yy, and httpdate checks it.
        2 => {
            let year = digits(year, 2)?;
            imf_fixdate(2000 + year).or_else(|| imf_fixdate(1900 + year))
        }
        _ => None,
    }
}

/// A number of at most `max_len` ASCII digits.
fn digits(text: &str, max_len: usize) -> Option<u16> {
    let valid =
        !text.is_empty() && text.len() <= max_len && text.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// The directives in one canonical `Cache-Control` line.
        fn render(cc: &CacheControl) -> String {
            let names = |fields: &[HeaderName]| {
                fields
                    .iter()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut out: Vec<String> = Vec::new();
            let flags = [
                (cc.no_store, "no-store"),
                (cc.no_cache, "no-cache"),
                (cc.private, "private"),
                (cc.public, "public"),
                (cc.must_revalidate, "must-revalidate"),
                (cc.proxy_revalidate, "proxy-revalidate"),
                (cc.immutable, "immutable"),
                (cc.only_if_cached, "only-if-cached"),
            ];
            out.extend(
                flags
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, name)| name.to_string()),
            );
            if !cc.no_cache_fields.is_empty() {
                out.push(format!("no-cache=\"{}\"", names(&cc.no_cache_fields)));
            }
            if !cc.private_fields.is_empty() {
                out.push(format!("private=\"{}\"", names(&cc.private_fields)));
            }
            let deltas = [
                (cc.max_age, "max-age"),
                (cc.s_maxage, "s-maxage"),
                (cc.min_fresh, "min-fresh"),
                (cc.stale_while_revalidate, "stale-while-revalidate"),
                (cc.stale_if_error, "stale-if-error"),
            ];
            for (value, name) in deltas {
                if let Some(seconds) = value {
                    out.push(format!("{name}={seconds}"));
                }
            }
            match cc.max_stale {
                Some(MaxStale::Any) => out.push("max-stale".into()),
                Some(MaxStale::Seconds(seconds)) => out.push(format!("max-stale={seconds}")),
                None => {}
            }
            out.join(", ")
        }

        /// Directive-shaped text: known names in any case, values quoted or
        /// not, numbers past u64, field lists, stray quotes and commas.
        fn directives() -> impl Strategy<Value = String> {
            let name = prop::sample::select(
                &[
                    "no-store",
                    "No-Cache",
                    "private",
                    "public",
                    "must-revalidate",
                    "proxy-revalidate",
                    "immutable",
                    "only-if-cached",
                    "max-age",
                    "S-MaxAge",
                    "min-fresh",
                    "max-stale",
                    "stale-while-revalidate",
                    "stale-if-error",
                    "x",
                ][..],
            );
            let value = prop_oneof![
                Just(String::new()),
                "[0-9]{1,25}",
                "\"[a-z, -]{0,12}\"",
                "[ -~]{0,6}",
            ];
            vec((name, proptest::option::of(value)), 0..8).prop_map(|directives| {
                directives
                    .into_iter()
                    .map(|(name, value)| match value {
                        Some(value) => format!("{name}={value}"),
                        None => name.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn cache_control_reparses_its_canonical_form(line in directives(), noise in "[ -~]{0,40}") {
                for text in [line, noise] {
                    let Ok(value) = http::HeaderValue::from_str(&text) else { continue };
                    let mut map = HeaderMap::new();
                    map.insert(header::CACHE_CONTROL, value);
                    let cc = CacheControl::parse(&map);
                    for seconds in [cc.max_age, cc.s_maxage, cc.min_fresh].into_iter().flatten() {
                        prop_assert!(seconds <= MAX_DELTA_SECONDS);
                    }
                    let canonical = render(&cc);
                    map.insert(header::CACHE_CONTROL, canonical.parse().unwrap());
                    prop_assert_eq!(CacheControl::parse(&map), cc, "{}", canonical);
                }
            }

            #[test]
            fn http_dates_read_back_as_written(secs in 0u64..253_402_300_800) {
                let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
                let text = httpdate::fmt_http_date(time);
                prop_assert_eq!(parse_http_date(&text), Some(time));
                prop_assert_eq!(parse_http_date(&text.to_ascii_lowercase()), Some(time));
            }
        }
    }

    use crate::testing::headers;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    #[test]
    fn cache_control_directives_are_parsed_rfc9111_5_2() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "Public, max-age=60, immutable"),
            (
                "cache-control",
                "s-maxage=\"30\", no-cache=\"set-cookie, x-a\", private=\"x-b\", must-revalidate",
            ),
            // The longest known name, in capitals; a longer one is unknown.
            (
                "cache-control",
                "STALE-WHILE-REVALIDATE=9, stale-while-revalidate-x=1",
            ),
        ]));
        assert!(cc.public && cc.must_revalidate && cc.immutable);
        assert!(!cc.no_store && !cc.private && !cc.no_cache && !cc.proxy_revalidate);
        assert_eq!(
            cc.no_cache_fields,
            vec![header::SET_COOKIE, HeaderName::from_static("x-a")]
        );
        assert_eq!(cc.private_fields, vec![HeaderName::from_static("x-b")]);
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(30));
        assert_eq!(cc.stale_while_revalidate, Some(9));
        let request = CacheControl::parse_request(&headers(&[(
            "cache-control",
            "max-stale, min-fresh=5, only-if-cached, no-cache",
        )]));
        assert_eq!(request.max_stale, Some(MaxStale::Any));
        assert_eq!(request.min_fresh, Some(5));
        assert!(request.only_if_cached && request.no_cache);
        let bounded = CacheControl::parse_request(&headers(&[("cache-control", "max-stale=7")]));
        assert_eq!(bounded.max_stale, Some(MaxStale::Seconds(7)));
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control_rfc9111_5_4() {
        let pragma = CacheControl::parse_request(&headers(&[("pragma", "no-cache")]));
        assert!(pragma.no_cache);
        let both = CacheControl::parse_request(&headers(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=5"),
        ]));
        assert!(!both.no_cache);
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

    const TTL: Duration = Duration::from_secs(5);

    /// Response header fields of one table row.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn rules(ttl: Duration, heuristic: bool) -> StoreRules<'static> {
        StoreRules {
            ttl,
            statuses: &DEFAULT_CACHE_STATUSES,
            heuristic,
            targeted: &[],
        }
    }

    fn lifetime(status: u16, pairs: &[(&str, &str)], rules: StoreRules<'_>) -> Option<Duration> {
        let h = headers(pairs);
        let status = StatusCode::from_u16(status).unwrap();
        freshness_lifetime(status, &h, &CacheControl::parse(&h), rules, at(1000))
    }

    #[test]
    fn freshness_lifetime_rfc9111_4_2_1() {
        let r = rules(TTL, false);
        let secs = |s| Some(Duration::from_secs(s));
        let (d0, e100) = (date(0), date(100));
        let cases: &[(Pairs, Option<Duration>)] = &[
            (&[("cache-control", "max-age=60, s-maxage=30")], secs(30)),
            (
                &[("cache-control", "max-age=60"), ("expires", &e100)],
                secs(60),
            ),
            (&[("date", &d0), ("expires", &e100)], secs(100)),
            (&[("expires", "0")], secs(0)),
            (&[("date", &e100), ("expires", &d0)], secs(0)),
            (&[], Some(TTL)),
        ];
        for (pairs, expected) in cases {
            assert_eq!(lifetime(200, pairs, r), *expected, "{pairs:?}");
        }
        // No Date: Expires counts from the response time.
        assert_eq!(lifetime(200, &[("expires", &date(1100))], r), secs(100));
    }

    #[test]
    fn route_ttl_and_heuristics_only_for_heuristically_cacheable_statuses_rfc9111_4_2_2() {
        let modified = date(0);
        let lm: &[(&str, &str)] = &[("last-modified", &modified)];
        // A tenth of the 1000 s since Last-Modified, when the route allows it.
        assert_eq!(
            lifetime(200, lm, rules(Duration::ZERO, true)),
            Some(Duration::from_secs(100))
        );
        assert_eq!(
            lifetime(200, lm, rules(Duration::ZERO, false)),
            Some(Duration::ZERO)
        );
        // The route's ttl comes before heuristics.
        assert_eq!(lifetime(200, lm, rules(TTL, true)), Some(TTL));
        assert_eq!(lifetime(404, &[], rules(TTL, false)), Some(TTL));
        // 302 and 307 are not heuristically cacheable: explicit freshness only.
        assert_eq!(lifetime(302, &[], rules(TTL, true)), None);
        assert_eq!(
            lifetime(307, &[("cache-control", "max-age=9")], rules(TTL, true)),
            Some(Duration::from_secs(9))
        );
    }

    #[test]
    fn http_dates_in_all_three_forms_any_case_rfc9110_5_6_7_rfc9111_4_2() {
        let sunday = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777));
        let cases: &[(&str, Option<SystemTime>)] = &[
            ("Sun, 06 Nov 1994 08:49:37 GMT", sunday),
            ("Sunday, 06-Nov-94 08:49:37 GMT", sunday),
            ("Sun Nov  6 08:49:37 1994", sunday),
            // §4.2: names in any case.
            ("sun, 06 nov 1994 08:49:37 gmt", sunday),
            ("SUNDAY, 06-NOV-94 08:49:37 GMT", sunday),
            ("sUN nOV  6 08:49:37 1994", sunday),
            // Whitespace: any run, around and between the parts.
            (" Sun,  06 Nov 1994\t08:49:37  GMT ", sunday),
            ("Sun Nov 6 08:49:37 1994", sunday),
            ("Sun,06 Nov 1994 08:49:37 GMT", sunday),
            // Anything else is no date.
            ("0", None),
            ("-1", None),
            ("", None),
            ("Sun, 06 Nov 1994 08:49:37", None),
            ("Sun, 06 Nov 1994 08:49:37 PST", None),
            ("Sun, 06 Nov 1994 08:49:37 GMT+1", None),
            ("Sun, 06 Nov 1994 08:49:37 GMT x", None),
            ("Mon, 06 Nov 1994 08:49:37 GMT", None),
            ("Sun, 31 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 8:49:37 GMT", None),
            ("Sun, 06 Nov 1994 24:00:00 GMT", None),
            ("Sun, 06 Nov 01994 08:49:37 GMT", None),
            ("Sun, 006 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 November 1994 08:49:37 GMT", None),
            ("Sonntag, 06-Nov-94 08:49:37 GMT", None),
            ("Sunday, 06-Nov-94-1 08:49:37 GMT", None),
            ("Sun, 06 Nov 1969 08:49:37 GMT", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_http_date(text), *expected, "{text:?}");
        }
        // A two-digit year is in the century whose calendar has its weekday.
        let year_2070 = SystemTime::UNIX_EPOCH + Duration::from_secs(3_155_760_000);
        assert_eq!(
            parse_http_date("Wednesday, 01-Jan-70 00:00:00 GMT"),
            Some(year_2070)
        );
        assert_eq!(
            parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH)
        );
    }

    #[test]
    fn expires_is_read_leniently_and_invalid_means_expired_rfc9111_5_3() {
        let r = rules(TTL, false);
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(date(100), "Tue, 14 Nov 2023 22:15:00 GMT");
        let d0 = date(0);
        let cases: &[(&str, Option<Duration>)] = &[
            ("Tue, 14 Nov 2023 22:15:00 GMT", secs(100)),
            ("tue, 14 nov 2023 22:15:00 gmt", secs(100)),
            ("Tuesday, 14-Nov-23 22:15:00 GMT", secs(100)),
            ("Tue Nov 14 22:15:00 2023", secs(100)),
            ("0", secs(0)),
            ("never", secs(0)),
            ("Tue, 14 Nov 2023 22:15:00", secs(0)),
        ];
        for (expires, expected) in cases {
            let pairs = [("date", d0.as_str()), ("expires", expires)];
            assert_eq!(lifetime(200, &pairs, r), *expected, "{expires:?}");
        }
        // Date and Last-Modified are read the same way (§4.2.2: a tenth of
        // the 100 s between them).
        let pairs = [
            ("date", "tue nov 14 22:15:00 2023"),
            ("last-modified", "TUE, 14 NOV 2023 22:13:20 GMT"),
        ];
        assert_eq!(lifetime(200, &pairs, rules(Duration::ZERO, true)), secs(10));
    }

    #[test]
    fn default_statuses_take_redirects_with_explicit_freshness_only_rfc9111_3() {
        let h = |pairs: &[(&str, &str)]| headers(pairs);
        let store = |status: u16, h: &HeaderMap| {
            let no_cc = CacheControl::default();
            let request = RequestFacts {
                cc: &no_cc,
                authorization: false,
            };
            let status = StatusCode::from_u16(status).unwrap();
            storability(
                status,
                h,
                &CacheControl::parse(h),
                request,
                rules(TTL, true),
                at(0),
            )
        };
        let max_age = h(&[("cache-control", "max-age=60")]);
        let none = h(&[]);
        let ok = Ok(Duration::from_secs(60));
        let cases: &[(u16, &HeaderMap, Result<Duration, NoCacheReason>)] = &[
            (302, &max_age, ok),
            (303, &max_age, ok),
            (307, &max_age, ok),
            // Not heuristically cacheable: nothing without explicit freshness.
            (302, &none, Err(NoCacheReason::Status)),
            (303, &none, Err(NoCacheReason::Status)),
            (307, &none, Err(NoCacheReason::Status)),
            // Errors stay out unless a route lists them (CPDoS).
            (400, &max_age, Err(NoCacheReason::Status)),
            (500, &max_age, Err(NoCacheReason::Status)),
            (503, &max_age, Err(NoCacheReason::Status)),
            (501, &max_age, Err(NoCacheReason::Status)),
        ];
        for (status, h, expected) in cases {
            assert_eq!(store(*status, h), *expected, "{status} {h:?}");
        }
    }

    #[test]
    fn storability_rfc9111_3() {
        let no_cc = CacheControl::default();
        let no_store_request = CacheControl {
            no_store: true,
            ..CacheControl::default()
        };
        let store =
            |status: u16, pairs: &[(&str, &str)], request: &CacheControl, authorization: bool| {
                let h = headers(pairs);
                let widened = [200, 302];
                let rules = StoreRules {
                    ttl: Duration::from_secs(60),
                    statuses: if status == 302 {
                        &widened
                    } else {
                        &DEFAULT_CACHE_STATUSES
                    },
                    heuristic: false,
                    targeted: &[],
                };
                let facts = RequestFacts {
                    cc: request,
                    authorization,
                };
                storability(
                    StatusCode::from_u16(status).unwrap(),
                    &h,
                    &CacheControl::parse(&h),
                    facts,
                    rules,
                    at(0),
                )
            };
        let ok = |s| Ok(Duration::from_secs(s));
        let cases: &[(u16, Pairs, Result<Duration, NoCacheReason>)] = &[
            (200, &[], ok(60)),
            (200, &[("cache-control", "max-age=7")], ok(7)),
            (404, &[], ok(60)),
            (410, &[], ok(60)),
            (500, &[], Err(NoCacheReason::Status)),
            (
                501,
                &[("cache-control", "max-age=60")],
                Err(NoCacheReason::Status),
            ),
            (302, &[], Err(NoCacheReason::Status)),
            (302, &[("cache-control", "max-age=9")], ok(9)),
            (
                200,
                &[("cache-control", "no-store")],
                Err(NoCacheReason::NoStore),
            ),
            (
                200,
                &[("cache-control", "private, max-age=60")],
                Err(NoCacheReason::Private),
            ),
            (200, &[("cache-control", "private=\"x-user\"")], ok(60)),
            (
                200,
                &[("cache-control", "no-cache")],
                Err(NoCacheReason::NoCache),
            ),
            (
                200,
                &[("cache-control", "no-cache"), ("etag", "\"a\"")],
                ok(60),
            ),
            (200, &[("set-cookie", "a=b")], Err(NoCacheReason::SetCookie)),
            (
                200,
                &[
                    ("set-cookie", "a=b"),
                    ("cache-control", "private=\"set-cookie\""),
                ],
                ok(60),
            ),
            (200, &[("vary", "accept")], ok(60)),
            (200, &[("vary", "accept, *")], Err(NoCacheReason::Vary)),
            (
                200,
                &[("cache-control", "max-age=0")],
                Err(NoCacheReason::NoFreshness),
            ),
            (
                200,
                &[("cache-control", "max-age=0"), ("etag", "\"a\"")],
                ok(0),
            ),
        ];
        for (status, pairs, expected) in cases {
            assert_eq!(
                store(*status, pairs, &no_cc, false),
                *expected,
                "{status} {pairs:?}"
            );
        }
        // §5.2.1.5: the request's no-store.
        assert_eq!(
            store(200, &[], &no_store_request, false),
            Err(NoCacheReason::RequestNoStore)
        );
        // §3.5: with Authorization only public, s-maxage or must-revalidate allow storing.
        assert_eq!(
            store(200, &[], &no_cc, true),
            Err(NoCacheReason::Authorization)
        );
        for allowed in ["public", "s-maxage=60", "must-revalidate"] {
            assert_eq!(
                store(200, &[("cache-control", allowed)], &no_cc, true),
                ok(60),
                "{allowed}"
            );
        }
    }

    #[test]
    fn stale_while_revalidate_and_stale_if_error_rfc5861() {
        let secs = Duration::from_secs;
        let cc = |v: &str| CacheControl::parse(&headers(&[("cache-control", v)]));
        let none = CacheControl::default();
        let swr = |stored: &CacheControl, age, request: &CacheControl, route| {
            serve_while_revalidating(stored, secs(60), secs(age), request, secs(route))
        };
        // The response's window, else the route's.
        assert!(swr(
            &cc("max-age=60, stale-while-revalidate=30"),
            80,
            &none,
            0
        ));
        assert!(!swr(
            &cc("max-age=60, stale-while-revalidate=30"),
            91,
            &none,
            100
        ));
        assert!(swr(&none, 80, &none, 30));
        assert!(!swr(&none, 50, &none, 30), "fresh: not this path");
        assert!(!swr(&none, 80, &none, 0));
        // must-revalidate and request validation win.
        assert!(!swr(
            &cc("must-revalidate, stale-while-revalidate=30"),
            80,
            &none,
            0
        ));
        assert!(!swr(&none, 80, &cc("no-cache"), 30));
        // stale-if-error.
        assert!(serve_on_error(
            &cc("stale-if-error=30"),
            secs(60),
            secs(80),
            Duration::ZERO
        ));
        assert!(!serve_on_error(
            &cc("stale-if-error=30"),
            secs(60),
            secs(100),
            secs(100)
        ));
        assert!(serve_on_error(&none, secs(60), secs(100), secs(100)));
        assert!(!serve_on_error(&none, secs(60), secs(100), Duration::ZERO));
    }

    #[test]
    fn usability_rfc9111_4_2_and_5_2_1() {
        let secs = Duration::from_secs;
        let req = |v: &str| CacheControl::parse_request(&headers(&[("cache-control", v)]));
        let stored = |v: &str| CacheControl::parse(&headers(&[("cache-control", v)]));
        let none = CacheControl::default();
        // Fresh: lifetime 60, age 10.
        assert_eq!(
            usability(&none, secs(60), secs(10), &none),
            Usability::Fresh { ttl: secs(50) }
        );
        // Stale without request leeway: revalidate.
        assert_eq!(
            usability(&none, secs(60), secs(70), &none),
            Usability::Revalidate
        );
        // max-stale accepts staleness, bounded or not.
        assert_eq!(
            usability(&none, secs(60), secs(70), &req("max-stale")),
            Usability::Stale {
                stale_for: secs(10)
            }
        );
        assert_eq!(
            usability(&none, secs(60), secs(70), &req("max-stale=10")),
            Usability::Stale {
                stale_for: secs(10)
            }
        );
        assert_eq!(
            usability(&none, secs(60), secs(70), &req("max-stale=9")),
            Usability::Revalidate
        );
        // ...unless the response forbids serving it stale (§4.2.4).
        for forbid in ["must-revalidate", "proxy-revalidate", "s-maxage=60"] {
            assert_eq!(
                usability(&stored(forbid), secs(60), secs(70), &req("max-stale")),
                Usability::Revalidate
            );
        }
        // Request max-age and min-fresh tighten freshness.
        assert_eq!(
            usability(&none, secs(60), secs(10), &req("max-age=5")),
            Usability::Revalidate
        );
        assert_eq!(
            usability(&none, secs(60), secs(10), &req("max-age=10")),
            Usability::Fresh { ttl: secs(50) }
        );
        assert_eq!(
            usability(&none, secs(60), secs(10), &req("min-fresh=51")),
            Usability::Revalidate
        );
        // no-cache on either side: always revalidate.
        assert_eq!(
            usability(&stored("no-cache"), secs(60), secs(0), &none),
            Usability::Revalidate
        );
        assert_eq!(
            usability(&none, secs(60), secs(0), &req("no-cache")),
            Usability::Revalidate
        );
    }

    #[test]
    fn an_age_list_counts_its_first_member_rfc9111_5_1() {
        let cases: &[(Pairs, u64)] = &[
            (&[("age", "30")], 30),
            (&[("age", "30, 10")], 30),
            (&[("age", "30"), ("age", "10")], 30),
            (&[("age", " , 30")], 30),
            (&[("age", "x, 10")], 0),
            (&[("age", "-5, 10")], 0),
            (&[("age", "99999999999999999999999, 1")], MAX_DELTA_SECONDS),
        ];
        for (pairs, expected) in cases {
            // No Date and no round trip: the Age value alone.
            let age = corrected_initial_age(&headers(pairs), at(0), at(0));
            assert_eq!(age, Duration::from_secs(*expected), "{pairs:?}");
        }
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
