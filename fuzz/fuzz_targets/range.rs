//! Byte ranges: `Range` and `If-Range` against a stored body, and the 206 / 416 cut from it.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use sidecache::cache::entry::Entry;
use sidecache::cache::key::CacheKey;
use sidecache::cache::range::{self, Ranges};
use sidecache::respond;
use sidecache_fuzz::{Field, Time, header_map};

/// More ranges than this make the whole body: the limit in range.rs.
const MAX_RANGES: usize = 16;

#[derive(Arbitrary, Debug)]
struct Input {
    range: String,
    body_len: u16,
    content_type: Option<Vec<u8>>,
    stored: Vec<Field>,
    request: Vec<Field>,
    now: Time,
}

fuzz_target!(|input: Input| {
    let body: Bytes = (0..input.body_len)
        .map(|i| i as u8)
        .collect::<Vec<_>>()
        .into();
    let len = body.len() as u64;
    let ranges = range::parse(&input.range, len);
    if let Ranges::Parts(parts) = &ranges {
        assert!(!parts.is_empty() && parts.len() <= MAX_RANGES);
        for &(first, last) in parts {
            assert!(first <= last && last < len, "{first}-{last} outside {len}");
        }
    }
    let content_type = input
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    match (
        range::partial(&body, &ranges, content_type.as_ref()),
        &ranges,
    ) {
        (None, Ranges::Whole) => {}
        (Some(partial), Ranges::Unsatisfiable) => {
            assert_eq!(partial.status, StatusCode::RANGE_NOT_SATISFIABLE);
            assert!(partial.body.is_empty());
        }
        (Some(partial), Ranges::Parts(parts)) => {
            assert_eq!(partial.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(
                partial.headers[header::CONTENT_LENGTH],
                partial.body.len().to_string()
            );
            if let [(first, last)] = parts.as_slice() {
                assert_eq!(partial.body, body.slice(*first as usize..=*last as usize));
            } else {
                let payload: u64 = parts.iter().map(|(first, last)| last - first + 1).sum();
                assert!(partial.body.len() as u64 >= payload);
                assert!(partial.body.len() as u64 <= payload + 512 * parts.len() as u64 + 512);
            }
        }
        (partial, _) => panic!("{:?} made {:?}", ranges, partial.map(|p| p.status)),
    }

    let stored = header_map(&input.stored);
    let mut request = header_map(&input.request);
    if let Ok(value) = HeaderValue::from_str(&input.range) {
        request.insert(header::RANGE, value);
    }
    if let Some(if_range) = request.get(header::IF_RANGE) {
        let _ = range::if_range_holds(if_range, &stored);
    }
    let uri = http::Uri::from_static("/range");
    let entry = Entry {
        key: CacheKey::for_url("fuzz", "example.com", &uri),
        status: StatusCode::OK,
        headers: stored,
        body: body.clone(),
        response_time: input.now.at(),
        initial_age: Duration::ZERO,
        freshness_lifetime: Duration::from_secs(60),
        request_time: input.now.at(),
        tags: Vec::new(),
        directives: Default::default(),
    };
    let answer = respond::answer(&entry, &request, false, input.now.at());
    let _: &HeaderMap = answer.headers();
});
