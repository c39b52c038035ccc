//! What a lookup, a response head or an origin failure means for one cacheable request: pure decisions over enums, time passed in.
//!
//! The proxy does the I/O and matches on these answers; every RFC 9111 /
//! RFC 5861 branch it takes is decided here, each with the `Cache-Status`
//! the client will see, so the rules are unit-tested as tables.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::response;
use http::{HeaderMap, HeaderName, StatusCode, header};

use super::Lookup;
use super::entry::{self, Entry, Forwarded, Variants};
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
    /// The headers the origin gets: they select among variants (built
    /// when first asked for).
    pub forwarded: &'a dyn Forwarded,
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

    /// The directives this cache acts on for a response on this route.
    fn directives(&self, response: &HeaderMap) -> CacheControl {
        CacheControl::parse_response(response, self.rules.targeted)
    }

    /// The same for a stored response, read once per entry.
    fn stored_directives<'e>(&self, entry: &'e Entry) -> Cow<'e, CacheControl> {
        entry.directives.of(&entry.headers, self.rules.targeted)
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
    /// When the lookup these come from was made: a purge of the URL since
    /// may have removed them (the index with its generation), so what is
    /// stored on their strength is judged from then, not from the fetch
    /// ([`super::purged`]). `None` where no lookup preceded.
    pub looked_up: Option<SystemTime>,
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
    let found = found.filter(|(entry, _)| may_answer(request, entry));
    let mut prior = Prior {
        stale: None,
        variants,
        looked_up: Some(now),
    };
    if let Some((entry, tier)) = found {
        let stored = request.stored_directives(&entry);
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
    if let Some(refreshed) = refresh(request, plan, prior, head, times) {
        return refreshed;
    }
    let storable = match plan {
        Plan::Head => Err(NoCacheReason::Head),
        Plan::RangePass => Err(NoCacheReason::Range),
        Plan::Full | Plan::RangeFill => {
            let directives = request.directives(&head.headers);
            policy::storability(
                head.status,
                &head.headers,
                &directives,
                request.facts(),
                request.rules,
                times.response,
            )
            .and_then(|lifetime| fits(&head.headers, request.max_object_size).map(|()| lifetime))
            .map(|lifetime| (lifetime, directives))
        }
    };
    let status = forwarded(prior, head.status, storable.as_ref().err().copied());
    let Ok((freshness_lifetime, directives)) = storable else {
        return OnHead::PassOn(status);
    };
    let (entry, variants) = to_store(request, prior, head, times, freshness_lifetime, directives);
    OnHead::Store {
        entry,
        variants,
        status,
    }
}

/// A 304 refreshes the stored response being validated (§4.3.4), and so
/// does a 200 to a HEAD that describes the same representation (§4.3.5).
fn refresh(
    request: &Presented<'_>,
    plan: Plan,
    prior: &Prior,
    head: &response::Parts,
    times: Times,
) -> Option<OnHead> {
    let stored = prior.validating().filter(|stored| {
        head.status == StatusCode::NOT_MODIFIED
            || (plan.head_only()
                && head.status == StatusCode::OK
                && validation::same_representation(&stored.headers, &head.headers))
    })?;
    let entry = entry::refreshed(
        stored,
        &head.headers,
        request.rules,
        times.request,
        times.response,
    );
    let storable = policy::storability(
        entry.status,
        &entry.headers,
        &request.directives(&entry.headers),
        request.facts(),
        request.rules,
        times.response,
    );
    let status = CacheStatus::Stale {
        fwd_status: head.status,
        not_stored: storable.err(),
    };
    Some(OnHead::Refreshed {
        entry,
        store: storable.is_ok(),
        status,
    })
}

/// Whether a stored response may answer this request at all: credentials
/// may only be answered by a shareable one (RFC 9111 §3.5). Also asked of
/// what another request's fetch stored, before a collapsed request uses it:
/// another pod's request may have carried no credentials.
pub fn may_answer(request: &Presented<'_>, entry: &Entry) -> bool {
    !request.authorization
        || request
            .stored_directives(entry)
            .shareable_with_authorization()
}

/// The entry a storable response becomes (its body still to come), and the
/// variant index it is stored under: a response that varies (or any on a
/// route with key headers) is stored as a variant of its URL.
fn to_store(
    request: &Presented<'_>,
    prior: &Prior,
    head: &response::Parts,
    times: Times,
    freshness_lifetime: Duration,
    directives: CacheControl,
) -> (Entry, Option<Arc<Variants>>) {
    let mut names = request.key_headers.to_vec();
    names.extend(policy::vary_names(&head.headers).unwrap_or_default());
    // A coded body is one coding's answer even when the origin forgot to
    // say `Vary: Accept-Encoding`: keyed by it, no client gets a coding it
    // did not accept.
    let coded = head
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|coding| !coding.as_bytes().eq_ignore_ascii_case(b"identity"));
    if coded {
        names.push(header::ACCEPT_ENCODING);
    }
    let variants = (!names.is_empty()).then(|| match &prior.variants {
        Some(index) if index.selects_by(&names) => index.clone(),
        _ => Arc::new(Variants::new(request.url_key.clone(), names)),
    });
    let key = variants.as_ref().map_or(request.url_key.clone(), |index| {
        index.key_for(request.forwarded.headers())
    });
    let (headers, directives) = entry::storable(&head.headers, directives, request.rules.targeted);
    let entry = Entry {
        key,
        status: head.status,
        headers,
        body: bytes::Bytes::new(),
        response_time: times.response,
        initial_age: policy::corrected_initial_age(&head.headers, times.request, times.response),
        freshness_lifetime,
        request_time: times.request,
        tags: Vec::new(),
        directives,
    };
    (entry, variants)
}

/// What an origin that gave no answer means for the request.
#[derive(Debug)]
pub enum OnError {
    /// A stale response stands in for it (RFC 5861 §4).
    StandIn(Arc<Entry>, CacheStatus),
    /// The error goes to the client; the status says what was forwarded
    /// (a miss, a variant's miss, a stale response's validation) and why
    /// nothing was stored.
    Fail(CacheStatus),
}

/// Decides what an origin that gave no answer (`fwd_status`: 502, or 504
/// when a deadline ran out) means: a stale response may stand in for it,
/// or the client gets the error.
pub fn on_error(
    request: &Presented<'_>,
    prior: &Prior,
    fwd_status: StatusCode,
    now: SystemTime,
) -> OnError {
    if let Some(entry) = stand_in(request, prior, now) {
        return OnError::StandIn(entry, CacheStatus::IfError { fwd_status });
    }
    let why = if fwd_status == StatusCode::GATEWAY_TIMEOUT {
        NoCacheReason::OriginTimeout
    } else {
        NoCacheReason::OriginUnreachable
    };
    OnError::Fail(forwarded(prior, fwd_status, Some(why)))
}

/// How the cache took part in a request it forwarded: to validate a stale
/// response, for a variant the URL does not have yet, or for a plain miss.
fn forwarded(
    prior: &Prior,
    fwd_status: StatusCode,
    not_stored: Option<NoCacheReason>,
) -> CacheStatus {
    match &prior.variants {
        _ if prior.stale.is_some() => CacheStatus::Stale {
            fwd_status,
            not_stored,
        },
        Some(_) => CacheStatus::VaryMiss { not_stored },
        None => CacheStatus::Miss { not_stored },
    }
}

/// The stale response that may answer for a failing origin, if any.
fn stand_in(request: &Presented<'_>, prior: &Prior, now: SystemTime) -> Option<Arc<Entry>> {
    let entry = prior.stale.as_ref()?;
    policy::serve_on_error(
        &request.directives(&entry.headers),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Tier;
    use crate::cache::policy::DEFAULT_CACHE_STATUSES;
    use crate::testing::headers;

    const MINUTE: Duration = Duration::from_secs(60);
    /// The default targeted fields (RFC 9213).
    static TARGETED: [HeaderName; 2] = [
        HeaderName::from_static(policy::SIDECACHE_CACHE_CONTROL),
        HeaderName::from_static(policy::CDN_CACHE_CONTROL),
    ];

    type Fields<'a> = &'a [(&'a str, &'a str)];
    /// Why; request fields; stored fields; stored (age, lifetime); route
    /// stale-while-revalidate; the verdict.
    type LookupRow<'a> = (
        &'a str,
        Fields<'a>,
        Fields<'a>,
        Option<(Duration, Duration)>,
        Duration,
        (&'a str, Option<CacheStatus>, bool),
    );
    /// Why; plan; stale entry; route stale-if-error; origin status and
    /// fields; the verdict.
    type HeadRow<'a> = (
        &'a str,
        Plan,
        Option<Arc<Entry>>,
        Duration,
        u16,
        Fields<'a>,
        (&'a str, CacheStatus),
    );

    /// The request side of a decision, owned, for building `Presented`.
    struct Ask {
        plan: Plan,
        cc: CacheControl,
        authorization: bool,
        stale_while_revalidate: Duration,
        stale_if_error: Duration,
        url_key: CacheKey,
        forwarded: HeaderMap,
    }

    fn ask(request_headers: &[(&str, &str)]) -> Ask {
        let (parts, ()) = http::Request::get("http://example.com/x")
            .body(())
            .unwrap()
            .into_parts();
        let forwarded = headers(request_headers);
        Ask {
            plan: Plan::Full,
            cc: CacheControl::parse_request(&forwarded),
            authorization: forwarded.contains_key(header::AUTHORIZATION),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            url_key: CacheKey::for_request("ns", &parts),
            forwarded,
        }
    }

    impl Ask {
        fn presented(&self) -> Presented<'_> {
            Presented {
                plan: self.plan,
                cc: &self.cc,
                authorization: self.authorization,
                rules: StoreRules {
                    ttl: Duration::ZERO,
                    statuses: &DEFAULT_CACHE_STATUSES,
                    heuristic: false,
                    targeted: &TARGETED,
                },
                stale_while_revalidate: self.stale_while_revalidate,
                stale_if_error: self.stale_if_error,
                url_key: &self.url_key,
                forwarded: &self.forwarded,
                key_headers: &[],
                max_object_size: 1024,
            }
        }
    }

    /// A stored 200 with these headers, `age` old at `now`, fresh for `lifetime`.
    fn stored(response_headers: &[(&str, &str)], age: Duration, lifetime: Duration) -> Arc<Entry> {
        let (parts, ()) = http::Request::get("http://example.com/x")
            .body(())
            .unwrap()
            .into_parts();
        Arc::new(Entry {
            key: CacheKey::for_request("ns", &parts),
            status: StatusCode::OK,
            headers: headers(response_headers),
            body: bytes::Bytes::from_static(b"stored"),
            response_time: now() - age,
            initial_age: Duration::ZERO,
            freshness_lifetime: lifetime,
            request_time: now() - age,
            tags: Vec::new(),
            directives: Default::default(),
        })
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn found(entry: Arc<Entry>, tier: Tier) -> Lookup {
        Lookup {
            found: Some((entry, tier)),
            variants: None,
        }
    }

    /// What `on_lookup` decided, in a comparable form: the verdict, its
    /// status, and whether a stale entry is carried on.
    fn lookup_verdict(decision: OnLookup) -> (&'static str, Option<CacheStatus>, bool) {
        match decision {
            OnLookup::Serve(_, status) => ("serve", Some(status), false),
            OnLookup::ServeAndRefresh(_, status, prior) => {
                ("serve+refresh", Some(status), prior.stale.is_some())
            }
            OnLookup::Forward(prior) => ("forward", None, prior.stale.is_some()),
            OnLookup::Refuse(status) => ("refuse", Some(status), false),
        }
    }

    #[test]
    fn plan_is_decided_once_from_the_request() {
        let rows = [
            // head, range, range_fill, plan, forwarding while validating
            (false, false, false, Plan::Full, Plan::Full),
            (true, false, false, Plan::Head, Plan::Head),
            (true, true, true, Plan::Head, Plan::Head),
            (false, true, false, Plan::RangePass, Plan::RangeFill),
            (false, true, true, Plan::RangeFill, Plan::RangeFill),
        ];
        for (head, range, fill, plan, validating) in rows {
            let decided = Plan::new(head, range, fill);
            assert_eq!(decided, plan, "{head} {range} {fill}");
            assert_eq!(decided.forwarding(false), plan);
            assert_eq!(decided.forwarding(true), validating);
        }
        assert!(Plan::Full.coalesces());
        assert!(!Plan::Head.coalesces() && !Plan::RangeFill.coalesces());
    }

    #[test]
    fn on_lookup_rfc9111_4_and_rfc5861_3() {
        let hit = |ttl, tier| Some(CacheStatus::Hit { ttl, tier });
        let miss = |reason| {
            Some(CacheStatus::Miss {
                not_stored: Some(reason),
            })
        };
        let (fresh, stale) = ((MINUTE, 2 * MINUTE), (3 * MINUTE, 2 * MINUTE));
        #[rustfmt::skip]
        let rows: Vec<LookupRow> = vec![
            ("§4.2 fresh is served", &[], &[], Some(fresh), Duration::ZERO, ("serve", hit(60, Tier::Memory), false)),
            ("§4.2 stale is forwarded to be validated", &[], &[], Some(stale), Duration::ZERO, ("forward", None, true)),
            ("nothing stored is a miss", &[], &[], None, Duration::ZERO, ("forward", None, false)),
            ("§5.2.1.2 max-stale accepts stale", &[("cache-control", "max-stale=120")], &[], Some(stale), Duration::ZERO, ("serve", hit(-60, Tier::Memory), false)),
            ("§5.2.2.2 must-revalidate refuses max-stale", &[("cache-control", "max-stale")], &[("cache-control", "must-revalidate")], Some(stale), Duration::ZERO, ("forward", None, true)),
            ("§5.2.1.4 request no-cache validates a fresh one", &[("cache-control", "no-cache")], &[], Some(fresh), Duration::ZERO, ("forward", None, true)),
            ("§5.2.1.4 Pragma no-cache without Cache-Control", &[("pragma", "no-cache")], &[], Some(fresh), Duration::ZERO, ("forward", None, true)),
            ("§5.2.1.1 request max-age below the age", &[("cache-control", "max-age=30")], &[], Some(fresh), Duration::ZERO, ("forward", None, true)),
            ("§5.2.1.3 min-fresh above what is left", &[("cache-control", "min-fresh=90")], &[], Some(fresh), Duration::ZERO, ("forward", None, true)),
            ("§5.2.2.4 stored no-cache is validated", &[], &[("cache-control", "no-cache")], Some(fresh), Duration::ZERO, ("forward", None, true)),
            ("RFC 5861 §3 route window serves stale and refreshes", &[], &[], Some(stale), 2 * MINUTE, ("serve+refresh", Some(CacheStatus::WhileRevalidate { ttl: -60 }), true)),
            ("RFC 5861 §3 response window", &[], &[("cache-control", "max-age=120, stale-while-revalidate=90")], Some(stale), Duration::ZERO, ("serve+refresh", Some(CacheStatus::WhileRevalidate { ttl: -60 }), true)),
            ("RFC 5861 §3 past the window", &[], &[("cache-control", "stale-while-revalidate=30")], Some(stale), Duration::ZERO, ("forward", None, true)),
            ("must-revalidate turns stale-while-revalidate off", &[], &[("cache-control", "must-revalidate")], Some(stale), 2 * MINUTE, ("forward", None, true)),
            ("request no-cache turns stale-while-revalidate off", &[("cache-control", "no-cache")], &[], Some(stale), 2 * MINUTE, ("forward", None, true)),
            ("§5.2.1.7 only-if-cached with nothing", &[("cache-control", "only-if-cached")], &[], None, Duration::ZERO, ("refuse", miss(NoCacheReason::OnlyIfCached), false)),
            ("§5.2.1.7 only-if-cached with a stale one", &[("cache-control", "only-if-cached")], &[], Some(stale), Duration::ZERO, ("refuse", miss(NoCacheReason::OnlyIfCached), false)),
            ("§3.5 credentials skip an unshareable response", &[("authorization", "Bearer x")], &[], Some(fresh), Duration::ZERO, ("forward", None, false)),
            ("§3.5 credentials may use a public one", &[("authorization", "Bearer x")], &[("cache-control", "public")], Some(fresh), Duration::ZERO, ("serve", hit(60, Tier::Memory), false)),
            ("RFC 9213 a stored targeted no-cache is validated", &[], &[("sidecache-cache-control", "no-cache")], Some(fresh), Duration::ZERO, ("forward", None, true)),
            ("RFC 9213 a targeted must-revalidate refuses max-stale", &[("cache-control", "max-stale")], &[("cdn-cache-control", "must-revalidate")], Some(stale), Duration::ZERO, ("forward", None, true)),
        ];
        for (why, request, response, entry, swr, expected) in rows {
            let mut ask = ask(request);
            ask.stale_while_revalidate = swr;
            let lookup = entry.map_or_else(Lookup::default, |(age, lifetime)| {
                found(stored(response, age, lifetime), Tier::Memory)
            });
            let decided = lookup_verdict(on_lookup(&ask.presented(), lookup, now()));
            assert_eq!(decided, expected, "{why}");
        }
    }

    #[test]
    fn an_l2_hit_says_so() {
        let lookup = found(stored(&[], MINUTE, 2 * MINUTE), Tier::Redis);
        let decided = lookup_verdict(on_lookup(&ask(&[]).presented(), lookup, now()));
        assert_eq!(
            decided.1,
            Some(CacheStatus::Hit {
                ttl: 60,
                tier: Tier::Redis
            })
        );
    }

    /// What `on_head` decided, in a comparable form.
    fn head_verdict(decision: &OnHead) -> (&'static str, CacheStatus) {
        match decision {
            OnHead::Refreshed {
                store: true,
                status,
                ..
            } => ("refresh+store", *status),
            OnHead::Refreshed {
                store: false,
                status,
                ..
            } => ("refresh", *status),
            OnHead::StandIn(_, status) => ("stand-in", *status),
            OnHead::Store { status, .. } => ("store", *status),
            OnHead::PassOn(status) => ("pass", *status),
        }
    }

    fn head(status: u16, response_headers: &[(&str, &str)]) -> response::Parts {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = StatusCode::from_u16(status).unwrap();
        parts.headers = headers(response_headers);
        parts
    }

    #[test]
    fn on_head_rfc9111_3_and_4_3() {
        let times = Times {
            request: now(),
            response: now(),
        };
        let miss = |not_stored| CacheStatus::Miss { not_stored };
        let stale = |code: u16, not_stored| CacheStatus::Stale {
            fwd_status: StatusCode::from_u16(code).unwrap(),
            not_stored,
        };
        let etag: &[(&str, &str)] = &[("etag", "\"v1\""), ("cache-control", "max-age=60")];
        let old = || Some(stored(etag, 3 * MINUTE, 2 * MINUTE));
        let old_without_validators = || Some(stored(&[], 3 * MINUTE, 2 * MINUTE));
        let fresh_200: &[(&str, &str)] = &[("cache-control", "max-age=60")];
        let none = None;
        #[rustfmt::skip]
        let rows: Vec<HeadRow> = vec![
            ("§3 a fresh 200 is stored", Plan::Full, none.clone(), Duration::ZERO, 200, fresh_200, ("store", miss(None))),
            ("§3 private is passed on", Plan::Full, none.clone(), Duration::ZERO, 200, &[("cache-control", "private, max-age=60")], ("pass", miss(Some(NoCacheReason::Private)))),
            ("§3 no-store is passed on", Plan::Full, none.clone(), Duration::ZERO, 200, &[("cache-control", "no-store")], ("pass", miss(Some(NoCacheReason::NoStore)))),
            ("§3 Set-Cookie is passed on", Plan::Full, none.clone(), Duration::ZERO, 200, &[("cache-control", "max-age=60"), ("set-cookie", "a=1")], ("pass", miss(Some(NoCacheReason::SetCookie)))),
            ("§4.1 Vary: * is passed on", Plan::Full, none.clone(), Duration::ZERO, 200, &[("cache-control", "max-age=60"), ("vary", "*")], ("pass", miss(Some(NoCacheReason::Vary)))),
            ("a 5xx the route does not list is passed on", Plan::Full, none.clone(), Duration::ZERO, 503, fresh_200, ("pass", miss(Some(NoCacheReason::Status)))),
            ("a declared body over the limit is passed on", Plan::Full, none.clone(), Duration::ZERO, 200, &[("cache-control", "max-age=60"), ("content-length", "2048")], ("pass", miss(Some(NoCacheReason::TooLarge)))),
            ("a HEAD miss has no body to store", Plan::Head, none.clone(), Duration::ZERO, 200, fresh_200, ("pass", miss(Some(NoCacheReason::Head)))),
            ("a range passed through is not stored", Plan::RangePass, none.clone(), Duration::ZERO, 206, fresh_200, ("pass", miss(Some(NoCacheReason::Range)))),
            ("a range fill stores the whole 200", Plan::RangeFill, none.clone(), Duration::ZERO, 200, fresh_200, ("store", miss(None))),
            ("§4.3.4 a 304 refreshes the stored response", Plan::Full, old(), Duration::ZERO, 304, fresh_200, ("refresh+store", stale(304, None))),
            ("§4.3.4 a refresh that turns private is served, not stored", Plan::Full, old(), Duration::ZERO, 304, &[("cache-control", "private")], ("refresh", stale(304, Some(NoCacheReason::Private)))),
            ("§4.3.5 a HEAD's 200 with the stored ETag refreshes", Plan::Head, old(), Duration::ZERO, 200, etag, ("refresh+store", stale(200, None))),
            ("§4.3.5 a HEAD's 200 with another ETag does not", Plan::Head, old(), Duration::ZERO, 200, &[("etag", "\"v2\"")], ("pass", stale(200, Some(NoCacheReason::Head)))),
            ("§4.3.4 a 200 replaces the stale response", Plan::Full, old(), Duration::ZERO, 200, fresh_200, ("store", stale(200, None))),
            ("a stale response without validators is fetched again", Plan::Full, old_without_validators(), Duration::ZERO, 200, fresh_200, ("store", stale(200, None))),
            ("RFC 5861 §4 a 5xx within stale-if-error gets the stale copy", Plan::Full, old(), 2 * MINUTE, 503, &[], ("stand-in", CacheStatus::IfError { fwd_status: StatusCode::SERVICE_UNAVAILABLE })),
            ("RFC 5861 §4 past the window the 5xx goes through", Plan::Full, old(), Duration::ZERO, 503, &[], ("pass", stale(503, Some(NoCacheReason::Status)))),
            ("RFC 9213 a targeted max-age overrides no-store", Plan::Full, none.clone(), Duration::ZERO, 200, &[("cache-control", "no-store"), ("sidecache-cache-control", "max-age=60")], ("store", miss(None))),
            ("RFC 9213 a targeted no-store overrides max-age", Plan::Full, none.clone(), Duration::ZERO, 200, &[("cache-control", "max-age=60"), ("cdn-cache-control", "no-store")], ("pass", miss(Some(NoCacheReason::NoStore)))),
            ("RFC 9213 a 304's targeted private is served, not stored", Plan::Full, old(), Duration::ZERO, 304, &[("cdn-cache-control", "private")], ("refresh", stale(304, Some(NoCacheReason::Private)))),
        ];
        for (why, plan, stale_entry, sie, status, response, expected) in rows {
            let mut ask = ask(&[]);
            ask.plan = plan;
            ask.stale_if_error = sie;
            let prior = Prior {
                stale: stale_entry,
                variants: None,
                looked_up: None,
            };
            let forwarding = plan.forwarding(prior.validating().is_some());
            let decided = on_head(
                &ask.presented(),
                forwarding,
                &prior,
                &head(status, response),
                times,
            );
            assert_eq!(head_verdict(&decided), expected, "{why}");
        }
    }

    #[test]
    fn on_head_stores_variants_behind_the_url_index_rfc9111_4_1() {
        let times = Times {
            request: now(),
            response: now(),
        };
        let ask = ask(&[("accept-language", "fr")]);
        let response = head(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        );
        let decided = on_head(
            &ask.presented(),
            Plan::Full,
            &Prior::default(),
            &response,
            times,
        );
        let OnHead::Store {
            entry,
            variants: Some(index),
            status,
        } = decided
        else {
            panic!("stored as a variant: {decided:?}");
        };
        assert_eq!(status, CacheStatus::Miss { not_stored: None });
        assert_eq!(index.key, ask.url_key);
        assert_eq!(entry.key, index.key_for(&ask.forwarded));
        assert_ne!(entry.key, ask.url_key);
        assert_eq!(entry.freshness_lifetime, MINUTE);

        // A coded body varies on Accept-Encoding, said or not.
        let gzip = head(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("content-encoding", "gzip"),
            ],
        );
        let decided = on_head(
            &ask.presented(),
            Plan::Full,
            &Prior::default(),
            &gzip,
            times,
        );
        let OnHead::Store {
            variants: Some(coded),
            ..
        } = decided
        else {
            panic!("stored as a variant: {decided:?}");
        };
        assert_eq!(coded.names, vec![header::ACCEPT_ENCODING]);

        // A URL known to vary reports a miss of this variant, and keeps its index.
        let prior = Prior {
            stale: None,
            variants: Some(index.clone()),
            looked_up: None,
        };
        let decided = on_head(&ask.presented(), Plan::Full, &prior, &response, times);
        let OnHead::Store {
            variants: Some(kept),
            status,
            ..
        } = decided
        else {
            panic!("stored as a variant");
        };
        assert_eq!(status, CacheStatus::VaryMiss { not_stored: None });
        assert!(Arc::ptr_eq(&kept, &index));
    }

    #[test]
    fn a_stored_copy_follows_the_targeted_field_rfc9213_2_2() {
        let times = Times {
            request: now(),
            response: now(),
        };
        let response = head(
            200,
            &[
                ("cache-control", "no-store"),
                ("sidecache-cache-control", "max-age=30, private=\"x-user\""),
                ("x-user", "ann"),
            ],
        );
        let ask = ask(&[]);
        let decided = on_head(
            &ask.presented(),
            Plan::Full,
            &Prior::default(),
            &response,
            times,
        );
        let OnHead::Store { entry, .. } = decided else {
            panic!("stored: {decided:?}");
        };
        assert_eq!(entry.freshness_lifetime, Duration::from_secs(30));
        assert!(!entry.headers.contains_key("x-user"), "private=\"x-user\"");
        assert!(
            entry.headers.contains_key("sidecache-cache-control"),
            "kept for later decisions"
        );
        // A stale copy's targeted stale-if-error stands in for a failing origin.
        let old = stored(
            &[("cdn-cache-control", "stale-if-error=300")],
            3 * MINUTE,
            2 * MINUTE,
        );
        let prior = Prior {
            stale: Some(old),
            variants: None,
            looked_up: None,
        };
        let decided = on_error(&ask.presented(), &prior, StatusCode::BAD_GATEWAY, now());
        assert!(matches!(decided, OnError::StandIn(..)), "{decided:?}");
    }

    #[test]
    fn on_error_rfc5861_4() {
        let (gateway, timeout) = (StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT);
        let old = stored(&[], 3 * MINUTE, 2 * MINUTE);
        let with_directive = stored(
            &[("cache-control", "stale-if-error=30")],
            3 * MINUTE,
            2 * MINUTE,
        );
        let stand_in = CacheStatus::IfError {
            fwd_status: gateway,
        };
        let miss = |why| CacheStatus::Miss {
            not_stored: Some(why),
        };
        let stale = CacheStatus::Stale {
            fwd_status: gateway,
            not_stored: Some(NoCacheReason::OriginUnreachable),
        };
        // The expected status tells a stand-in (IfError) from a failure.
        #[rustfmt::skip]
        let rows = [
            ("nothing stored: a miss that failed", None, 2 * MINUTE, gateway, miss(NoCacheReason::OriginUnreachable)),
            ("a miss that timed out", None, 2 * MINUTE, timeout, miss(NoCacheReason::OriginTimeout)),
            ("within the route's window", Some(old.clone()), 2 * MINUTE, gateway, stand_in),
            ("without a window: a validation that failed", Some(old.clone()), Duration::ZERO, gateway, stale),
            ("past the response's own window", Some(with_directive), 2 * MINUTE, gateway, stale),
        ];
        for (why, stale, window, fwd_status, expected) in rows {
            let mut ask = ask(&[]);
            ask.stale_if_error = window;
            let prior = Prior {
                stale,
                variants: None,
                looked_up: None,
            };
            let status = match on_error(&ask.presented(), &prior, fwd_status, now()) {
                OnError::StandIn(_, status) | OnError::Fail(status) => status,
            };
            assert_eq!(status, expected, "{why}");
        }
    }
}
