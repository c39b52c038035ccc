//! Response and request fields a cache decision reads: `Cache-Control`, `Pragma`, the targeted fields (RFC 9213), `Expires`, `Date`, `Last-Modified`, `Age`, `Vary`, and the decisions built on them.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use http::{HeaderName, StatusCode};
use libfuzzer_sys::fuzz_target;
use sidecache::cache::entry;
use sidecache::cache::policy::{
    self, CacheControl, DEFAULT_CACHE_STATUSES, RequestFacts, StoreRules, Usability,
};
use sidecache_fuzz::{Field, Time, header_map};

#[derive(Arbitrary, Debug)]
struct Input {
    request: Vec<Field>,
    response: Vec<Field>,
    status: u16,
    ttl: u32,
    heuristic: bool,
    authorization: bool,
    request_time: Time,
    response_time: Time,
    now: Time,
    route_window: u32,
}

/// Delta-seconds are capped at 2^31 (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 1 << 31;

fuzz_target!(|input: Input| {
    let request = header_map(&input.request);
    let response = header_map(&input.response);
    let targeted = [
        HeaderName::from_static(policy::SIDECACHE_CACHE_CONTROL),
        HeaderName::from_static(policy::CDN_CACHE_CONTROL),
    ];
    let Ok(status) = StatusCode::from_u16(input.status) else {
        return;
    };
    let (request_time, response_time, now) = (
        input.request_time.at(),
        input.response_time.at(),
        input.now.at(),
    );

    let request_cc = CacheControl::parse_request(&request);
    let cc = CacheControl::parse_response(&response, &targeted);
    let _ = CacheControl::parse(&response);
    for seconds in [
        cc.max_age,
        cc.s_maxage,
        cc.stale_while_revalidate,
        cc.stale_if_error,
    ]
    .into_iter()
    .chain([request_cc.max_age, request_cc.min_fresh])
    .flatten()
    {
        assert!(
            seconds <= MAX_DELTA,
            "delta-seconds {seconds} above the cap"
        );
    }

    let _ = policy::request_policy(true, true, &request);
    let rules = StoreRules {
        ttl: Duration::from_secs(input.ttl.into()),
        statuses: &DEFAULT_CACHE_STATUSES,
        heuristic: input.heuristic,
        targeted: &targeted,
    };
    let facts = RequestFacts {
        cc: &request_cc,
        authorization: input.authorization,
    };
    let stored = policy::storability(status, &response, &cc, facts, rules, response_time);
    let lifetime = policy::freshness_lifetime(status, &response, &cc, rules, response_time);
    if let Ok(stored) = stored {
        assert_eq!(Some(stored), lifetime, "storability reports the lifetime");
    }
    let _ = policy::vary_names(&response);
    let lifetime = lifetime.unwrap_or(Duration::ZERO);
    let initial_age = policy::corrected_initial_age(&response, request_time, response_time);
    let age = policy::current_age(initial_age, response_time, now);
    match policy::usability(&cc, lifetime, age, &request_cc) {
        Usability::Fresh { ttl } => assert!(ttl <= lifetime && !ttl.is_zero()),
        Usability::Stale { stale_for } => assert_eq!(stale_for, age - lifetime),
        Usability::Revalidate => {}
    }
    let window = Duration::from_secs(input.route_window.into());
    let _ = policy::serve_while_revalidating(&cc, lifetime, age, &request_cc, window);
    let _ = policy::serve_on_error(&cc, lifetime, age, window);

    let (kept, directives) = entry::storable(&response, cc.clone(), &targeted);
    assert!(!kept.contains_key(http::header::AGE));
    for name in cc.private_fields.iter().chain(&cc.no_cache_fields) {
        assert!(!kept.contains_key(name), "{name} was to be left out");
    }
    // An entry's directives, handed over from the response or read again,
    // are what its kept fields say.
    assert_eq!(
        *directives.of(&kept, &targeted),
        CacheControl::parse_response(&kept, &targeted)
    );
});
