//! Conditional requests: a client's `If-None-Match` / `If-Modified-Since` judged against a stored response, a 304 merged into one, and the headers a 304 answer carries.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderName, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use sidecache::cache::entry::{self, Entry};
use sidecache::cache::key::CacheKey;
use sidecache::cache::policy::{self, CacheControl, DEFAULT_CACHE_STATUSES, StoreRules};
use sidecache::cache::validation;
use sidecache_fuzz::{Field, Time, header_map};

#[derive(Arbitrary, Debug)]
struct Input {
    request: Vec<Field>,
    stored: Vec<Field>,
    update: Vec<Field>,
    received: Time,
    request_time: Time,
    response_time: Time,
    ttl: u32,
}

fuzz_target!(|input: Input| {
    let request = header_map(&input.request);
    let stored = header_map(&input.stored);
    let update = header_map(&input.update);
    let received = input.received.at();

    let _ = validation::not_modified(&request, &stored, received);
    assert_eq!(
        validation::same_representation(&stored, &update),
        validation::same_representation(&update, &stored),
        "same_representation is symmetric"
    );

    let merged = validation::merge_not_modified(&stored, &update);
    for name in update.keys().filter(|name| *name != header::CONTENT_LENGTH) {
        assert!(
            merged.get_all(name).iter().eq(update.get_all(name).iter()),
            "{name} is the 304's"
        );
    }
    assert!(
        merged
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .eq(stored.get_all(header::CONTENT_LENGTH).iter()),
        "Content-Length describes the stored body"
    );

    let answer = validation::not_modified_headers(&stored);
    for (name, value) in &answer {
        assert!(stored.get_all(name).iter().any(|v| v == value));
    }

    let mut revalidation = request.clone();
    validation::add_validators(&mut revalidation, &stored);

    let targeted = [
        HeaderName::from_static(policy::SIDECACHE_CACHE_CONTROL),
        HeaderName::from_static(policy::CDN_CACHE_CONTROL),
    ];
    let rules = StoreRules {
        ttl: Duration::from_secs(input.ttl.into()),
        statuses: &DEFAULT_CACHE_STATUSES,
        heuristic: true,
        targeted: &targeted,
    };
    let uri = http::Uri::from_static("/validation");
    let entry = Entry {
        key: CacheKey::for_url("fuzz", "example.com", &uri),
        status: StatusCode::OK,
        headers: entry::storable(
            &stored,
            CacheControl::parse_response(&stored, &targeted),
            &targeted,
        )
        .0,
        body: Bytes::from_static(b"body"),
        response_time: received,
        initial_age: Duration::ZERO,
        freshness_lifetime: Duration::from_secs(60),
        request_time: received,
        tags: Vec::new(),
        directives: Default::default(),
    };
    let refreshed = entry::refreshed(
        &entry,
        &update,
        rules,
        input.request_time.at(),
        input.response_time.at(),
    );
    assert!(!refreshed.headers.contains_key(header::AGE));
    assert_eq!(refreshed.body, entry.body);
});
