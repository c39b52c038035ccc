//! What a lookup, a response head or an origin failure means for one cacheable request: pure decisions over enums, time passed in.
//!
//! The proxy does the I/O and matches on these answers; every RFC 9111 /
//! RFC 5861 branch it takes is decided here, each with the `Cache-Status`
//! the client will see, so the rules are unit-tested as tables.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::response;
use http::{HeaderMap, HeaderName, StatusCode, header};

use super::Lookup;
use super::entry::{self, Entry, Variants};
use super::key::CacheKey;
use super::policy::{self, CacheControl, NoCacheReason, RequestFacts, StoreRules, Usability};
use super::status::CacheStatus;
use super::validation;

/// How a cacheable request is answered, decided once from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A GET answered with the whole response.
    Full,
    /// A HEAD: headers only; a miss is forwarded as HEAD and not stored.
    Head,
    /// A GET with `Range` on a route that passes range misses through (and
    /// never stores the 206).
    RangePass,
    /// A GET with `Range` whose miss is fetched whole, stored, and the range
    /// cut from it.
    RangeFill,
}

impl Plan {
    /// The plan for a GET or HEAD, with or without `Range`, on a route that
    /// does or does not fill the cache on range misses.
    pub fn new(head: bool, range: bool, range_fill: bool) -> Plan {
        match (head, range, range_fill) {
            (true, _, _) => Plan::Head,
            (false, false, _) => Plan::Full,
            (false, true, false) => Plan::RangePass,
            (false, true, true) => Plan::RangeFill,
        }
    }

    pub fn head_only(self) -> bool {
        self == Plan::Head
    }

    /// Concurrent misses collapse into one fetch only for whole GETs: HEAD
    /// and range answers are not stored for the others to use.
    pub fn coalesces(self) -> bool {
        self == Plan::Full
    }

    /// The plan of the forwarded request: validating a stored response
    /// fetches it whole (a 304 says nothing about a range), so a range is
    /// then answered from the validated copy.
    pub fn forwarding(self, validating: bool) -> Plan {
        match self {
            Plan::RangePass if validating => Plan::RangeFill,
            plan => plan,
        }
    }
}

/// What the decisions know about one cacheable request.
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub plan: Plan,
    /// The request's own cache directives.
    pub cc: &'a CacheControl,
    /// Whether it carries `Authorization` (RFC 9111 §3.5).
    pub authorization: bool,
    /// The route's rules for storing.
    pub rules: StoreRules<'a>,
    /// The route's RFC 5861 windows, for responses that give none.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// The URL's key, under which a response or its variant index is stored.
    pub url_key: &'a CacheKey,
    /// The headers the origin gets: they select among variants.
    pub forwarded: &'a HeaderMap,
    /// The route's key headers: every response is stored as a variant by them.
    pub key_headers: &'a [HeaderName],
    /// Largest body the cache takes.
    pub max_object_size: u64,
}

impl Presented<'_> {
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            cc: self.cc,
            authorization: self.authorization,
        }
    }
}

/// What the cache held for a request it could not answer from its store.
#[derive(Clone, Default)]
pub struct Prior {
    /// A stored response the request could not use as it is: the origin may
    /// validate it, or it may stand in for a failing origin.
    pub stale: Option<Arc<Entry>>,
    /// The URL's variant index, if its responses vary.
    pub variants: Option<Arc<Variants>>,
}

impl Prior {
    /// The stored response the origin is asked to validate: one with an
    /// `ETag` or `Last-Modified` (RFC 9111 §4.3.1).
    pub fn validating(&self) -> Option<&Arc<Entry>> {
        self.stale
            .as_ref()
            .filter(|entry| policy::has_validators(&entry.headers))
    }
}

/// When the forwarded request was sent and its response head arrived.
#[derive(Clone, Copy, Debug)]
pub struct Times {
    pub request: SystemTime,
    pub response: SystemTime,
}

/// What a lookup means for the request (RFC 9111 §4, RFC 5861 §3).
pub enum OnLookup {
    /// Fresh, or stale as far as the request accepts (`max-stale`).
    Serve(Arc<Entry>, CacheStatus),
    /// Stale within `stale-while-revalidate`: serve it, refresh it in the background.
    ServeAndRefresh(Arc<Entry>, CacheStatus, Prior),
    /// Nothing usable: ask the origin.
    Forward(Prior),
    /// `only-if-cached` and nothing usable (§5.2.1.7): a 504.
    Refuse(CacheStatus),
}

/// Decides how a request uses what the lookup found.
pub fn on_lookup(request: &Presented<'_>, lookup: Lookup, now: SystemTime) -> OnLookup {
    let Lookup { found, variants } = lookup;
    // §3.5: credentials may only be answered by a shareable response.
    let found = found.filter(|(entry, _)| {
        !request.authorization || CacheControl::parse(&entry.headers).shareable_with_authorization()
    });
    let mut prior = Prior {
        stale: None,
        variants,
    };
    if let Some((entry, tier)) = found {
        let stored = CacheControl::parse(&entry.headers);
        let lifetime = entry.freshness_lifetime;
        let age = entry.age(now);
        match policy::usability(&stored, lifetime, age, request.cc) {
            Usability::Fresh { ttl } => {
                let ttl = seconds(ttl);
                return OnLookup::Serve(entry, CacheStatus::Hit { ttl, tier });
            }
            Usability::Stale { stale_for } => {
                let ttl = -seconds(stale_for);
                return OnLookup::Serve(entry, CacheStatus::Hit { ttl, tier });
            }
            Usability::Revalidate
                if policy::serve_while_revalidating(
                    &stored,
                    lifetime,
                    age,
                    request.cc,
                    request.stale_while_revalidate,
                ) =>
            {
                let ttl = -seconds(age - lifetime);
                prior.stale = Some(entry.clone());
                return OnLookup::ServeAndRefresh(
                    entry,
                    CacheStatus::WhileRevalidate { ttl },
                    prior,
                );
            }
            Usability::Revalidate => prior.stale = Some(entry),
        }
    }
    if request.cc.only_if_cached {
        let not_stored = Some(NoCacheReason::OnlyIfCached);
        return OnLookup::Refuse(CacheStatus::Miss { not_stored });
    }
    OnLookup::Forward(prior)
}

/// What the origin's response head means for the request and the store.
#[derive(Debug)]
pub enum OnHead {
    /// A 304 (or a HEAD's 200 describing the stored representation)
    /// refreshed the stored response (§4.3.4, §4.3.5): serve it, and store
    /// it when `store` says so.
    Refreshed {
        entry: Entry,
        store: bool,
        status: CacheStatus,
    },
    /// The origin answered 5xx and a stale response stands in (RFC 5861 §4).
    StandIn(Arc<Entry>, CacheStatus),
    /// Stream the response on, and store it once its body is complete:
    /// `entry` has everything but the body.
    Store {
        entry: Entry,
        variants: Option<Arc<Variants>>,
        status: CacheStatus,
    },
    /// Pass the response on; it is not stored, for the reason in `status`.
    PassOn(CacheStatus),
}

/// Decides what the origin's answer does, under the forwarding `plan`.
pub fn on_head(
    request: &Presented<'_>,
    plan: Plan,
    prior: &Prior,
    head: &response::Parts,
    times: Times,
) -> OnHead {
    if head.status.is_server_error()
        && let Some(entry) = stand_in(request, prior, times.response)
    {
        let status = CacheStatus::IfError {
            fwd_status: head.status,
        };
        return OnHead::StandIn(entry, status);
    }
    if let Some(stored) = prior.validating().filter(|stored| {
        head.status == StatusCode::NOT_MODIFIED
            || (plan.head_only()
                && head.status == StatusCode::OK
                && validation::same_representation(&stored.headers, &head.headers))
    }) {
        let entry = entry::refreshed(
            stored,
            &head.headers,
            request.rules,
            times.request,
            times.response,
        );
        let stored = policy::storability(
            entry.status,
            &entry.headers,
            &CacheControl::parse(&entry.headers),
            request.facts(),
            request.rules,
            times.response,
        );
        let status = CacheStatus::Stale {
            fwd_status: head.status,
            not_stored: stored.err(),
        };
        return OnHead::Refreshed {
            entry,
            store: stored.is_ok(),
            status,
        };
    }
    let storable = match plan {
        Plan::Head => Err(NoCacheReason::Head),
        Plan::RangePass => Err(NoCacheReason::Range),
        Plan::Full | Plan::RangeFill => policy::storability(
            head.status,
            &head.headers,
            &CacheControl::parse(&head.headers),
            request.facts(),
            request.rules,
            times.response,
        )
        .and_then(|lifetime| fits(&head.headers, request.max_object_size).map(|()| lifetime)),
    };
    let not_stored = storable.err();
    let status = match &prior.variants {
        _ if prior.stale.is_some() => CacheStatus::Stale {
            fwd_status: head.status,
            not_stored,
        },
        Some(_) => CacheStatus::VaryMiss { not_stored },
        None => CacheStatus::Miss { not_stored },
    };
    let Ok(freshness_lifetime) = storable else {
        return OnHead::PassOn(status);
    };
    // A response that varies (or any on a route with key headers) is stored
    // as a variant of its URL, through the URL's index of variants.
    let mut names = request.key_headers.to_vec();
    names.extend(policy::vary_names(&head.headers).unwrap_or_default());
    let variants = (!names.is_empty()).then(|| match &prior.variants {
        Some(index) if index.selects_by(&names) => index.clone(),
        _ => Arc::new(Variants::new(request.url_key.clone(), names)),
    });
    let key = variants.as_ref().map_or(request.url_key.clone(), |index| {
        index.key_for(request.forwarded)
    });
    let entry = Entry {
        key,
        status: head.status,
        headers: entry::storable_headers(&head.headers),
        body: bytes::Bytes::new(),
        response_time: times.response,
        initial_age: policy::corrected_initial_age(&head.headers, times.request, times.response),
        freshness_lifetime,
    };
    OnHead::Store {
        entry,
        variants,
        status,
    }
}

/// What an origin that gave no answer (`fwd_status`: 502 or 504) means: a
/// stale response that may stand in for it (RFC 5861 §4), or the error.
pub fn on_error(
    request: &Presented<'_>,
    prior: &Prior,
    fwd_status: StatusCode,
    now: SystemTime,
) -> Option<(Arc<Entry>, CacheStatus)> {
    let entry = stand_in(request, prior, now)?;
    Some((entry, CacheStatus::IfError { fwd_status }))
}

/// The stale response that may answer for a failing origin, if any.
fn stand_in(request: &Presented<'_>, prior: &Prior, now: SystemTime) -> Option<Arc<Entry>> {
    let entry = prior.stale.as_ref()?;
    policy::serve_on_error(
        &CacheControl::parse(&entry.headers),
        entry.freshness_lifetime,
        entry.age(now),
        request.stale_if_error,
    )
    .then(|| entry.clone())
}

/// Whether a declared body length fits in the cache; unknown lengths are
/// checked while streaming.
fn fits(headers: &HeaderMap, max_object_size: u64) -> Result<(), NoCacheReason> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > max_object_size => Err(NoCacheReason::TooLarge),
        _ => Ok(()),
    }
}

/// Whole seconds, for `ttl` in `Cache-Status`.
fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}
