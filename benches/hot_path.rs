//! Micro-benchmarks of the per-request work that is not I/O: the key, the caching decisions, the entry codec, an L1 hit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use sidecache::cache::entry::{Entry, Stored};
use sidecache::cache::key::CacheKey;
use sidecache::cache::memory::MemoryTier;
use sidecache::cache::policy::{
    self, CacheControl, DEFAULT_CACHE_STATUSES, RequestFacts, StoreRules,
};

fn request() -> http::request::Parts {
    Request::get("/api/v1/users/12345?sort=name&page=2&filter=active")
        .header("host", "users.example.svc.cluster.local")
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=60, stale-while-revalidate=30"),
    );
    headers.insert("etag", HeaderValue::from_static("\"a1b2c3\""));
    headers.insert(
        "date",
        HeaderValue::from_static("Wed, 25 Nov 2026 03:35:20 GMT"),
    );
    headers.insert("content-length", HeaderValue::from_static("16384"));
    headers
}

fn entry(body_len: usize) -> Entry {
    Entry {
        key: CacheKey::for_request("bench", &request()),
        status: StatusCode::OK,
        headers: response_headers(),
        body: Bytes::from(vec![b'x'; body_len]),
        response_time: SystemTime::now(),
        initial_age: Duration::ZERO,
        freshness_lifetime: Duration::from_secs(60),
        request_time: SystemTime::now(),
        tags: Vec::new(),
        directives: Default::default(),
    }
}

fn hot_path(c: &mut Criterion) {
    let parts = request();
    c.bench_function("key: canonical + blake3", |b| {
        b.iter(|| CacheKey::for_request("bench", std::hint::black_box(&parts)))
    });

    let headers = response_headers();
    let request_cc = CacheControl::default();
    // The default targeted fields, absent here: looked for, then Cache-Control read.
    let targeted = sidecache::config::DEFAULT_TARGETED_FIELDS.map(HeaderName::from_static);
    let rules = StoreRules {
        ttl: Duration::from_secs(60),
        statuses: &DEFAULT_CACHE_STATUSES,
        heuristic: false,
        targeted: &targeted,
    };
    c.bench_function("policy: parse Cache-Control + storability", |b| {
        b.iter(|| {
            let cc = CacheControl::parse_response(std::hint::black_box(&headers), &targeted);
            let facts = RequestFacts {
                cc: &request_cc,
                authorization: false,
            };
            policy::storability(
                StatusCode::OK,
                &headers,
                &cc,
                facts,
                rules,
                SystemTime::now(),
            )
        })
    });

    let stored = Stored::Response(Arc::new(entry(16 * 1024)));
    let encoded = stored.encode();
    let key = stored.key().clone();
    c.bench_function("codec: encode 16 KiB entry", |b| {
        b.iter(|| std::hint::black_box(&stored).encode())
    });
    c.bench_function("codec: decode 16 KiB entry", |b| {
        b.iter(|| Stored::decode(std::hint::black_box(encoded.clone()), &key).unwrap())
    });

    let memory = MemoryTier::new(64 * 1024 * 1024);
    memory.insert(stored.clone(), Duration::from_secs(60));
    c.bench_function("l1: hit (16 KiB entry)", |b| {
        b.iter(|| memory.get(std::hint::black_box(&key)).unwrap())
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
