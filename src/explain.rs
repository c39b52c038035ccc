//! `GET /explain?url=...` on the admin port: what the cache holds for a URL and what the next request for it would get, and why, decided by the pipeline's own functions and changing nothing.
//!
//! The request is taken in as the proxy takes one in (the route, the
//! request model, the key), the tiers are read without side effects
//! ([`Cache::inspect`]: no copy into L1, no metric, no lease, Redis within
//! one request budget), and the decision is [`decide::on_lookup`]'s, so
//! what explain says cannot drift from what requests get.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use serde::Serialize;

use crate::body::{self, ProxyBody};
use crate::cache::decide::{self, OnError, OnLookup};
use crate::cache::entry::{Entry, Stored, Variants};
use crate::cache::key::CacheKey;
use crate::cache::policy::{NoCacheReason, RequestPolicy};
use crate::cache::status::CacheStatus;
use crate::cache::{Budget, Cache, Held, Shared};
use crate::origin::Peer;
use crate::proxy::{self, Proxy, shadow};
use crate::route::{Cookies, Route};

/// Longest `url=` value, decoded: as long as a request target hyper takes
/// by default is far more than any route needs.
pub const MAX_URL_LEN: usize = 8 * 1024;
/// Most `header=` parameters: hyper's default header count.
pub const MAX_HEADERS: usize = 100;
/// Longest `header=` value, decoded (`Name:Value`).
pub const MAX_HEADER_LEN: usize = 8 * 1024;
/// Longest `method=` value.
const MAX_METHOD_LEN: usize = 16;

/// The client address the request model writes into `X-Forwarded-For`:
/// explain stands for no client in particular.
const NO_CLIENT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Why an explain request was refused (a 400 with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error(
        "give ?url=http://host/path (percent-encoded), and header=Name:Value for request headers"
    )]
    NoUrl,
    #[error("url= is given more than once")]
    RepeatedUrl,
    #[error("url= is longer than {MAX_URL_LEN} bytes")]
    UrlTooLong,
    #[error("url= is not a URL: {0}")]
    BadUrl(String),
    #[error("url= needs a scheme and a host: http://host/path")]
    NoHost,
    #[error("more than {MAX_HEADERS} header= parameters")]
    TooManyHeaders,
    #[error("header= is longer than {MAX_HEADER_LEN} bytes")]
    HeaderTooLong,
    #[error("header= is not Name:Value: {0}")]
    BadHeader(String),
    #[error("method= is not an HTTP method (at most {MAX_METHOD_LEN} characters)")]
    BadMethod,
    #[error("{0}= is not valid percent-encoded UTF-8")]
    NotUtf8(&'static str),
    #[error("unknown parameter {0}; give url=, header= or method=")]
    UnknownParameter(String),
}

/// What to explain: a request, as the query describes it.
#[derive(Debug)]
pub struct Asked {
    pub url: Uri,
    pub method: Method,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Reads `url=`, `header=` (repeated) and `method=` (default GET) from an
/// explain query, each percent-encoded, within their bounds.
pub fn parse_query(query: &str) -> Result<Asked, ExplainError> {
    let mut url = None;
    let mut method = Method::GET;
    let mut headers = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "url" => {
                if url.is_some() {
                    return Err(ExplainError::RepeatedUrl);
                }
                let text = decode(value, "url")?;
                if text.len() > MAX_URL_LEN {
                    return Err(ExplainError::UrlTooLong);
                }
                let uri = text
                    .parse::<Uri>()
                    .map_err(|_| ExplainError::BadUrl(text.clone()))?;
                if uri.scheme().is_none() || uri.host().is_none_or(str::is_empty) {
                    return Err(ExplainError::NoHost);
                }
                url = Some(uri);
            }
            "header" => {
                if headers.len() == MAX_HEADERS {
                    return Err(ExplainError::TooManyHeaders);
                }
                let text = decode(value, "header")?;
                if text.len() > MAX_HEADER_LEN {
                    return Err(ExplainError::HeaderTooLong);
                }
                headers.push(parse_header(&text)?);
            }
            "method" => {
                let text = decode(value, "method")?;
                method = (text.len() <= MAX_METHOD_LEN)
                    .then(|| Method::from_bytes(text.as_bytes()).ok())
                    .flatten()
                    .ok_or(ExplainError::BadMethod)?;
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(ExplainError::UnknownParameter(shown));
            }
        }
    }
    let url = url.ok_or(ExplainError::NoUrl)?;
    Ok(Asked {
        url,
        method,
        headers,
    })
}

fn decode(value: &str, what: &'static str) -> Result<String, ExplainError> {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| ExplainError::NotUtf8(what))
}

/// `Name:Value` (spaces around the value trimmed, as in a request head).
fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), ExplainError> {
    let bad = || ExplainError::BadHeader(text.chars().take(64).collect());
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

impl Asked {
    /// The request as hyper hands an HTTP/1.1 one to the proxy: the target
    /// in origin form, the URL's authority as `Host`.
    fn into_parts(self) -> Parts {
        let mut parts = Request::new(()).into_parts().0;
        parts.method = self.method;
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        if let Some(host) = self
            .url
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        {
            headers.insert(header::HOST, host);
        }
        parts.headers = headers;
        parts.uri = self
            .url
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        parts
    }
}

/// The JSON answer.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub url: String,
    pub method: String,
    /// The route the path falls under, if any.
    pub route: Option<RouteReport>,
    /// The URL's key, when the request is looked up.
    pub key: Option<KeyReport>,
    /// How the URL's responses vary and which variant this request selects.
    pub variants: Option<VariantSelection>,
    /// What each tier holds, when the request is looked up.
    pub tiers: Option<Tiers>,
    pub decision: Decision,
}

#[derive(Debug, Serialize)]
pub struct RouteReport {
    pub name: String,
    pub path: String,
    pub cache: bool,
    /// Forwarded as if uncached, while the cache stores and counts.
    pub shadow: bool,
    pub methods: Vec<String>,
    pub ttl_seconds: u64,
    pub stale_while_revalidate_seconds: u64,
    pub stale_if_error_seconds: u64,
    pub key_headers: Vec<String>,
    /// `bypass`, `strip` or `key`.
    pub cookies: &'static str,
}

/// The canonical parts of the URL key, read back from its bytes.
#[derive(Debug, Serialize)]
pub struct KeyReport {
    /// BLAKE3 of the canonical key, in hex: what the tiers index by.
    pub hash: String,
    pub version: String,
    pub namespace: String,
    pub scheme: String,
    pub host: String,
    /// GET for HEAD too: they share stored responses.
    pub method: String,
    pub path: String,
    /// Sorted, with only the parameters the route keys.
    pub query: String,
}

#[derive(Debug, Serialize)]
pub struct VariantSelection {
    /// The request headers that select a variant (the response's `Vary`
    /// and the route's key headers), lowercase and sorted.
    pub vary: Vec<String>,
    /// The index's generation (a purge makes a new one), in hex.
    pub generation: String,
    /// The key of the variant this request selects, in hex.
    pub key: String,
    /// This request's values of those headers as the origin gets them
    /// (empty: it does not send the header).
    pub selected_by: Vec<SelectingHeader>,
}

#[derive(Debug, Serialize)]
pub struct SelectingHeader {
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Tiers {
    pub memory: TierReport,
    pub redis: TierReport,
}

/// What one tier holds under the URL's key and, when it varies, under the
/// key of the variant the request selects.
#[derive(Debug, Serialize)]
pub struct TierReport {
    pub url: Object,
    pub variant: Option<Object>,
}

/// One tier's object under one key.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Object {
    /// The tier is not configured: no `[redis]`, or a memory capacity of 0.
    Off,
    Absent,
    /// Redis gave no answer within the request budget, or its breaker is
    /// open: a request would treat it as a miss.
    Unavailable {
        reason: &'static str,
    },
    /// A value a request would treat as a miss (and remove).
    Unusable {
        reason: String,
    },
    Response(ResponseReport),
    /// A variant index: the responses are stored under variant keys.
    Variants {
        vary: Vec<String>,
        generation: String,
    },
}

#[derive(Debug, Serialize)]
pub struct ResponseReport {
    pub status: u16,
    pub age_seconds: u64,
    pub freshness_lifetime_seconds: u64,
    /// Zero once stale.
    pub freshness_left_seconds: u64,
    /// Zero while fresh.
    pub stale_for_seconds: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub cache_control: Option<String>,
    pub vary: Option<String>,
    /// Body bytes.
    pub size: usize,
    /// The purge tags the entry carries (`cache.tag_headers`).
    pub tags: Vec<String>,
}

/// What the next request would get.
#[derive(Debug, Serialize)]
pub struct Decision {
    /// `hit`, `stale-hit`, `stale-while-revalidate`, `revalidate`,
    /// `refetch`, `miss`, `vary-miss`, `only-if-cached`, `bypass` or
    /// `forward`.
    pub outcome: &'static str,
    /// Why, with the rule it follows.
    pub reason: String,
    /// The `Cache-Status` the client would see, when the lookup alone
    /// decides it (a forwarded request's depends on the origin's answer).
    pub cache_status: Option<String>,
    /// The tier that would answer.
    pub tier: Option<&'static str>,
    /// For a stale stored response: whether stale-while-revalidate lets it
    /// be served while it is refreshed (RFC 5861 §3).
    pub stale_while_revalidate: Option<bool>,
    /// For a stale stored response: whether stale-if-error lets it stand in
    /// if the origin fails now (RFC 5861 §4).
    pub stale_if_error: Option<bool>,
}

impl Decision {
    fn new(outcome: &'static str, reason: impl Into<String>) -> Decision {
        Decision {
            outcome,
            reason: reason.into(),
            cache_status: None,
            tier: None,
            stale_while_revalidate: None,
            stale_if_error: None,
        }
    }

    fn status(mut self, status: CacheStatus) -> Decision {
        self.cache_status = status.header_value().to_str().ok().map(str::to_owned);
        self
    }
}

/// Answers `GET /explain?...`: the JSON explanation, or a 400 naming what
/// is wrong with the query.
pub async fn respond(proxy: &Proxy, cache: &Cache, query: &str) -> Response<ProxyBody> {
    let asked = match parse_query(query) {
        Ok(asked) => asked,
        Err(error) => return text(StatusCode::BAD_REQUEST, format!("{error}\n")),
    };
    let explanation = explain(proxy, cache, asked).await;
    match serde_json::to_vec_pretty(&explanation) {
        Ok(mut json) => {
            json.push(b'\n');
            let mut response = Response::new(body::full(json));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the explanation: {error}\n"),
        ),
    }
}

/// What the proxy would do with `asked` now, from its own pipeline pieces.
pub async fn explain(proxy: &Proxy, cache: &Cache, asked: Asked) -> Explanation {
    let url = asked.url.to_string();
    let mut parts = asked.into_parts();
    let route = proxy.route_for(parts.uri.path());
    let mut explanation = Explanation {
        url,
        method: parts.method.to_string(),
        route: route.as_deref().map(route_report),
        key: None,
        variants: None,
        tiers: None,
        // Every path below sets it.
        decision: Decision::new("bypass", ""),
    };
    // The cache's part is decided before any lookup, as `Proxy::serve` does.
    let route = match (proxy::request_policy(route.as_deref(), &parts), route) {
        (RequestPolicy::Lookup, Some(route)) => route,
        (RequestPolicy::Lookup, None) => {
            explanation.decision = bypass(None, None, &parts.method);
            return explanation;
        }
        (RequestPolicy::Bypass(detail), route) => {
            explanation.decision = bypass(detail, route.as_deref(), &parts.method);
            return explanation;
        }
        (RequestPolicy::Forward(reason), _) => {
            explanation.decision = forward(reason);
            return explanation;
        }
    };
    let shadow_route = route.shadow;
    let request = proxy.cacheable(route, &Peer::new(NO_CLIENT), &mut parts);
    let now = cache.now();
    // One Redis budget, as a request has: Redis trouble is "unavailable".
    let budget = Budget::default();
    let inspection = cache
        .inspect(&request.url_key, request.forwarded(), now, &budget)
        .await;
    explanation.key = Some(key_report(&request.url_key));
    explanation.variants = inspection
        .lookup
        .variants
        .as_deref()
        .map(|index| selection(index, request.forwarded()));
    explanation.tiers = Some(tiers(
        &inspection.url,
        inspection.variant.as_ref().map(|(_, held)| held),
        cache.memory().enabled(),
        now,
    ));
    // Found, before `on_lookup` may turn it down for credentials.
    let found = inspection.lookup.found.is_some();
    let presented = request.presented(proxy.max_object_size());
    let decided = decide::on_lookup(&presented, inspection.lookup, now);
    let would = shadow::would(&decided);
    explanation.decision = looked_up(&presented, decided, found, now);
    if shadow_route {
        // The decision is what the cache would do; the request is forwarded.
        let decision = &mut explanation.decision;
        decision.reason = format!(
            "shadow route, forwarded; the cache would: {}",
            decision.reason
        );
        let status = CacheStatus::Shadow { would }.header_value();
        decision.cache_status = status.to_str().ok().map(str::to_owned);
    }
    explanation
}

/// What `on_lookup`'s answer means for the next request, and why; `found`
/// says whether the tiers had a response before credentials were weighed.
fn looked_up(
    presented: &decide::Presented<'_>,
    decided: OnLookup,
    found: bool,
    now: SystemTime,
) -> Decision {
    match decided {
        OnLookup::Serve(entry, status) => {
            let (outcome, reason) = match status {
                CacheStatus::Hit { ttl, .. } if ttl >= 0 => (
                    "hit",
                    format!(
                        "fresh: age {} s of a {} s freshness lifetime (RFC 9111 §4.2)",
                        entry.age(now).as_secs(),
                        entry.freshness_lifetime.as_secs()
                    ),
                ),
                _ => (
                    "stale-hit",
                    "stale, within what the request's max-stale accepts (RFC 9111 §5.2.1.2)"
                        .to_owned(),
                ),
            };
            let mut decision = Decision::new(outcome, reason).status(status);
            decision.tier = tier_of(status);
            decision
        }
        OnLookup::ServeAndRefresh(entry, status, prior) => {
            let mut decision = Decision::new(
                "stale-while-revalidate",
                format!(
                    "stale for {} s, within stale-while-revalidate: served at once and refreshed in the background (RFC 5861 §3)",
                    stale_for(&entry, now).as_secs()
                ),
            )
            .status(status);
            decision.stale_while_revalidate = Some(true);
            decision.stale_if_error = Some(stands_in(presented, &prior, now));
            decision
        }
        OnLookup::Refuse(status) => Decision::new(
            "only-if-cached",
            "only-if-cached and nothing usable is stored: a 504 (RFC 9111 §5.2.1.7)",
        )
        .status(status),
        OnLookup::Forward(prior) => {
            let mut decision = match (&prior.stale, prior.validating()) {
                (Some(entry), Some(_)) => Decision::new(
                    "revalidate",
                    format!(
                        "{}; forwarded with its validators, a 304 refreshes it (RFC 9111 §4.3.1)",
                        unusable(entry, now)
                    ),
                ),
                (Some(entry), None) => Decision::new(
                    "refetch",
                    format!(
                        "{}, and it has no ETag or Last-Modified to validate it with: fetched again (RFC 9111 §4.3.1)",
                        unusable(entry, now)
                    ),
                ),
                (None, _) if found && presented.authorization => Decision::new(
                    "miss",
                    "authorization: the stored response is not marked shareable (public, s-maxage or must-revalidate), so it cannot answer a request with credentials (RFC 9111 §3.5)",
                ),
                (None, _) if prior.variants.is_some() => Decision::new(
                    "vary-miss",
                    "the URL's responses vary, and none is stored for this request's values of the selecting headers (RFC 9111 §4.1)",
                ),
                (None, _) => Decision::new("miss", "nothing is stored for this URL"),
            };
            if prior.stale.is_some() {
                decision.stale_while_revalidate = Some(false);
                decision.stale_if_error = Some(stands_in(presented, &prior, now));
            }
            decision
        }
    }
}

/// The decision for a request whose own conditions send it to the origin.
fn forward(reason: NoCacheReason) -> Decision {
    Decision::new(
        "forward",
        format!(
            "{}: the request's conditions are the origin's to judge, so it is forwarded (RFC 9111 §4)",
            reason.as_str()
        ),
    )
    .status(CacheStatus::Request(reason))
}

/// The decision for a request the cache keeps out of, with the rule that
/// did it.
fn bypass(detail: Option<NoCacheReason>, route: Option<&Route>, method: &Method) -> Decision {
    let reason = match (detail, route) {
        (Some(NoCacheReason::Cookie), _) => {
            "cookie: the route forwards requests with cookies untouched (cookies = \"bypass\")"
                .to_owned()
        }
        (Some(other), _) => other.as_str().to_owned(),
        (None, None) => "no route matches the path: forwarded, nothing is cached".to_owned(),
        (None, Some(route)) if !route.cache => {
            format!("route {}: cache = false", route.name)
        }
        (None, Some(route)) => format!(
            "method {method} is not cached on route {} (methods = {:?})",
            route.name,
            route.methods.iter().map(Method::as_str).collect::<Vec<_>>()
        ),
    };
    Decision::new("bypass", reason).status(CacheStatus::Bypass(detail))
}

/// Whether the stale response in `prior` would stand in for an origin that
/// fails now ([`decide::on_error`] with a 502).
fn stands_in(presented: &decide::Presented<'_>, prior: &decide::Prior, now: SystemTime) -> bool {
    matches!(
        decide::on_error(presented, prior, StatusCode::BAD_GATEWAY, now),
        OnError::StandIn(..)
    )
}

/// Why a stored response cannot answer as it is.
fn unusable(entry: &Entry, now: SystemTime) -> String {
    match entry.remaining_freshness(now) {
        None => format!(
            "stale: age {} s past its {} s freshness lifetime (RFC 9111 §4.2)",
            entry.age(now).as_secs(),
            entry.freshness_lifetime.as_secs()
        ),
        Some(_) => "fresh, but no-cache or the request's max-age / min-fresh ask for validation (RFC 9111 §5.2)".to_owned(),
    }
}

fn stale_for(entry: &Entry, now: SystemTime) -> Duration {
    entry.age(now).saturating_sub(entry.freshness_lifetime)
}

fn tier_of(status: CacheStatus) -> Option<&'static str> {
    match status {
        CacheStatus::Hit { tier, .. } => Some(tier.as_str()),
        _ => None,
    }
}

fn route_report(route: &Route) -> RouteReport {
    RouteReport {
        name: route.name.clone(),
        path: route.path.clone(),
        cache: route.cache,
        shadow: route.shadow,
        methods: route.methods.iter().map(|m| m.to_string()).collect(),
        ttl_seconds: route.ttl.as_secs(),
        stale_while_revalidate_seconds: route.stale_while_revalidate.as_secs(),
        stale_if_error_seconds: route.stale_if_error.as_secs(),
        key_headers: route.key_headers.iter().map(|h| h.to_string()).collect(),
        cookies: match route.cookies {
            Cookies::Bypass => "bypass",
            Cookies::Strip => "strip",
            Cookies::Key(_) => "key",
        },
    }
}

fn key_report(key: &CacheKey) -> KeyReport {
    let [version, namespace, scheme, host, method, path, query] =
        key.url_parts().unwrap_or_default();
    KeyReport {
        hash: key.hex(),
        version,
        namespace,
        scheme,
        host,
        method,
        path,
        query,
    }
}

fn selection(index: &Variants, forwarded: &HeaderMap) -> VariantSelection {
    VariantSelection {
        vary: names(index),
        generation: format!("{:016x}", index.generation),
        key: index.key_for(forwarded).hex(),
        selected_by: index
            .names
            .iter()
            .map(|name| SelectingHeader {
                name: name.to_string(),
                values: forwarded
                    .get_all(name)
                    .iter()
                    .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                    .collect(),
            })
            .collect(),
    }
}

fn names(index: &Variants) -> Vec<String> {
    index.names.iter().map(|name| name.to_string()).collect()
}

fn tiers(url: &Held, variant: Option<&Held>, memory_on: bool, now: SystemTime) -> Tiers {
    let memory = |held: &Held| match &held.memory {
        Some(object) => object_report(object, now),
        None if memory_on => Object::Absent,
        None => Object::Off,
    };
    let redis = |held: &Held| match &held.redis {
        Shared::Off => Object::Off,
        Shared::Absent => Object::Absent,
        Shared::Found(object) => object_report(object, now),
        Shared::Unusable(reason) => Object::Unusable {
            reason: reason.clone(),
        },
        Shared::Unavailable(reason) => Object::Unavailable { reason },
    };
    Tiers {
        memory: TierReport {
            url: memory(url),
            variant: variant.map(memory),
        },
        redis: TierReport {
            url: redis(url),
            variant: variant.map(redis),
        },
    }
}

fn object_report(object: &Stored, now: SystemTime) -> Object {
    match object {
        Stored::Variants(index) => Object::Variants {
            vary: names(index),
            generation: format!("{:016x}", index.generation),
        },
        Stored::Response(entry) => Object::Response(response_report(entry, now)),
    }
}

fn response_report(entry: &Arc<Entry>, now: SystemTime) -> ResponseReport {
    let field = |name: HeaderName| {
        let values: Vec<String> = entry
            .headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    ResponseReport {
        status: entry.status.as_u16(),
        age_seconds: entry.age(now).as_secs(),
        freshness_lifetime_seconds: entry.freshness_lifetime.as_secs(),
        freshness_left_seconds: entry.remaining_freshness(now).unwrap_or_default().as_secs(),
        stale_for_seconds: stale_for(entry, now).as_secs(),
        etag: field(header::ETAG),
        last_modified: field(header::LAST_MODIFIED),
        cache_control: field(header::CACHE_CONTROL),
        vary: field(header::VARY),
        size: entry.body.len(),
        tags: entry.tags.clone(),
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `sidecache explain`: the question for a running proxy's admin port.
pub struct Cli {
    pub url: String,
    /// `Name: Value` each.
    pub headers: Vec<String>,
    pub method: String,
    /// The admin port's `host:port`.
    pub admin: String,
}

/// How long `sidecache explain` waits for the admin port's answer.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer `sidecache explain` reads.
const CLI_MAX_ANSWER: usize = 1024 * 1024;

/// What `sidecache explain` could not do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--admin {0} is not host:port")]
    Admin(String),
    #[error("cannot reach the admin port at {admin}")]
    Unreachable {
        admin: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("no answer from the admin port within {CLI_TIMEOUT:?}")]
    Timeout,
    #[error("the answer broke off or is larger than {CLI_MAX_ANSWER} bytes")]
    Body,
    #[error("the admin port refused: {status} {message}")]
    Refused { status: StatusCode, message: String },
}

impl Cli {
    /// Asks the admin port's `/explain` and returns its JSON text.
    pub async fn ask(&self) -> Result<String, CliError> {
        use http_body_util::BodyExt as _;
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
        let mut query = format!("url={}", encode(&self.url));
        for line in &self.headers {
            query.push_str("&header=");
            query.push_str(&encode(line));
        }
        query.push_str("&method=");
        query.push_str(&encode(&self.method));
        let uri: Uri = format!("http://{}/explain?{query}", self.admin)
            .parse()
            .map_err(|_| CliError::Admin(self.admin.clone()))?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = Request::get(uri)
            .body(http_body_util::Empty::new())
            .map_err(|_| CliError::Admin(self.admin.clone()))?;
        let asked = async {
            let response =
                client
                    .request(request)
                    .await
                    .map_err(|source| CliError::Unreachable {
                        admin: self.admin.clone(),
                        source,
                    })?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), CLI_MAX_ANSWER)
                .collect()
                .await
                .map_err(|_| CliError::Body)?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if status != StatusCode::OK {
                let message = text.trim().to_owned();
                return Err(CliError::Refused { status, message });
            }
            Ok(text)
        };
        tokio::time::timeout(CLI_TIMEOUT, asked)
            .await
            .map_err(|_| CliError::Timeout)?
    }
}

/// An explanation for a person: one line per part, the decision last.
/// Reads the JSON answer (possibly from another version of sidecache), so
/// a missing field prints as `-` rather than failing.
pub fn render(answer: &serde_json::Value) -> String {
    use serde_json::Value;
    use std::fmt::Write as _;
    let field = |value: &Value, name: &str| -> String {
        match value.get(name) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Null) | None => "-".to_owned(),
            Some(other) => other.to_string(),
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "url       {} ({})",
        field(answer, "url"),
        field(answer, "method")
    );
    match answer.get("route").filter(|route| !route.is_null()) {
        Some(route) => {
            let _ = writeln!(
                out,
                "route     {} ({}): cache {}, ttl {} s, stale-while-revalidate {} s, stale-if-error {} s, cookies {}",
                field(route, "name"),
                field(route, "path"),
                field(route, "cache"),
                field(route, "ttl_seconds"),
                field(route, "stale_while_revalidate_seconds"),
                field(route, "stale_if_error_seconds"),
                field(route, "cookies"),
            );
        }
        None => out.push_str("route     none matches\n"),
    }
    if let Some(key) = answer.get("key").filter(|key| !key.is_null()) {
        let _ = writeln!(
            out,
            "key       {} {} {} {}{}{} [{} {}]",
            field(key, "scheme"),
            field(key, "method"),
            field(key, "host"),
            field(key, "path"),
            if field(key, "query").is_empty() {
                ""
            } else {
                "?"
            },
            field(key, "query"),
            field(key, "namespace"),
            field(key, "hash"),
        );
    }
    if let Some(variants) = answer.get("variants").filter(|v| !v.is_null()) {
        let vary = list(variants.get("vary"));
        let selected: Vec<String> = variants
            .get("selected_by")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|header| {
                let values = list(header.get("values"));
                let values = if values.is_empty() {
                    "(absent)".to_owned()
                } else {
                    values
                };
                format!("{}: {values}", field(header, "name"))
            })
            .collect();
        let _ = writeln!(
            out,
            "vary      {vary}; this request selects variant {} by {}",
            field(variants, "key"),
            selected.join("; ")
        );
    }
    if let Some(tiers) = answer.get("tiers").filter(|t| !t.is_null()) {
        for (label, name) in [("memory", "memory"), ("redis ", "redis")] {
            let Some(tier) = tiers.get(name) else {
                continue;
            };
            let url = tier.get("url").map(describe_object).unwrap_or_default();
            let _ = write!(out, "{label}    {url}");
            if let Some(variant) = tier.get("variant").filter(|v| !v.is_null()) {
                let _ = write!(out, "; variant: {}", describe_object(variant));
            }
            out.push('\n');
        }
    } else {
        out.push_str("tiers     not consulted\n");
    }
    if let Some(decision) = answer.get("decision") {
        let tier = match field(decision, "tier").as_str() {
            "-" => String::new(),
            tier => format!(" from {tier}"),
        };
        let _ = writeln!(
            out,
            "decision  {}{tier}: {}",
            field(decision, "outcome"),
            field(decision, "reason")
        );
        if let Some(Value::String(status)) = decision.get("cache_status") {
            let _ = writeln!(out, "          Cache-Status: {status}");
        }
        let yes_no = |name: &str| match decision.get(name) {
            Some(Value::Bool(true)) => Some("yes"),
            Some(Value::Bool(false)) => Some("no"),
            _ => None,
        };
        if let (Some(swr), Some(sie)) = (yes_no("stale_while_revalidate"), yes_no("stale_if_error"))
        {
            let _ = writeln!(
                out,
                "          stale-while-revalidate allows serving it: {swr}; stale-if-error allows it if the origin fails: {sie}"
            );
        }
    }
    out
}

/// A JSON array of strings as `a, b`.
fn list(value: Option<&serde_json::Value>) -> String {
    value
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One tier object for a person.
fn describe_object(object: &serde_json::Value) -> String {
    let get = |name: &str| {
        object
            .get(name)
            .filter(|value| !value.is_null())
            .map(|value| {
                value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned)
            })
    };
    match get("state").as_deref() {
        Some("response") => {
            let mut text = format!(
                "response {}, age {} s, fresh for {} s more",
                get("status").unwrap_or_default(),
                get("age_seconds").unwrap_or_default(),
                get("freshness_left_seconds").unwrap_or_default(),
            );
            if let Some(stale) = get("stale_for_seconds").filter(|s| s != "0") {
                text = format!(
                    "response {}, age {} s, stale for {stale} s",
                    get("status").unwrap_or_default(),
                    get("age_seconds").unwrap_or_default()
                );
            }
            for (label, name) in [("ETag", "etag"), ("Last-Modified", "last_modified")] {
                if let Some(value) = get(name) {
                    text.push_str(&format!(", {label} {value}"));
                }
            }
            text.push_str(&format!(", {} bytes", get("size").unwrap_or_default()));
            if let Some(tags) = get("tags").filter(|tags| tags != "[]") {
                text.push_str(&format!(", tags {tags}"));
            }
            text
        }
        Some("variants") => format!("variant index by {}", list(object.get("vary"))),
        Some("unavailable") | Some("unusable") => format!(
            "{} ({})",
            get("state").unwrap_or_default(),
            get("reason").unwrap_or_default()
        ),
        Some(state) => state.to_owned(),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: &str) -> String {
        parse_query(query).unwrap_err().to_string()
    }

    #[test]
    fn a_query_reads_url_headers_and_method_percent_decoded() {
        let asked = parse_query(
            "url=http%3A%2F%2Fapp.example%2Fa%3Fx%3D1&header=Accept-Language%3A%20de&method=HEAD",
        )
        .unwrap();
        assert_eq!(asked.url, "http://app.example/a?x=1");
        assert_eq!(asked.method, Method::HEAD);
        assert_eq!(asked.headers.len(), 1);
        assert_eq!(asked.headers[0].0, "accept-language");
        assert_eq!(asked.headers[0].1, "de");
        let parts = asked.into_parts();
        assert_eq!(parts.uri, "/a?x=1");
        assert_eq!(parts.headers["host"], "app.example");
    }

    #[test]
    fn each_bad_query_is_refused_with_its_message() {
        let long = "a".repeat(MAX_URL_LEN);
        let cases = [
            (
                "",
                "give ?url=http://host/path (percent-encoded), and header=Name:Value for request headers",
            ),
            (
                "url=http://a/&url=http://b/",
                "url= is given more than once",
            ),
            (
                &format!("url=http://a/{long}"),
                "url= is longer than 8192 bytes",
            ),
            ("url=http://a b/", "url= is not a URL: http://a b/"),
            (
                "url=/path",
                "url= needs a scheme and a host: http://host/path",
            ),
            (
                "url=http://a/&header=nocolon",
                "header= is not Name:Value: nocolon",
            ),
            (
                "url=http://a/&header=bad%20name:x",
                "header= is not Name:Value: bad name:x",
            ),
            (
                &format!("url=http://a/&header=x:{long}"),
                "header= is longer than 8192 bytes",
            ),
            (
                "url=http://a/&method=G%20T",
                "method= is not an HTTP method (at most 16 characters)",
            ),
            ("url=%FF", "url= is not valid percent-encoded UTF-8"),
            (
                "url=http://a/&ttl=1",
                "unknown parameter ttl; give url=, header= or method=",
            ),
        ];
        for (query, message) in cases {
            assert_eq!(refused(query), message, "{query}");
        }
        let many = "&header=x:1".repeat(MAX_HEADERS + 1);
        assert_eq!(
            refused(&format!("url=http://a/{many}")),
            "more than 100 header= parameters"
        );
    }
}
