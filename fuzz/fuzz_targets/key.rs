//! Cache keys: path and query normalisation never changes what the origin would decode, two requests share a key only when they ask for the same thing, and invalidation targets stay on their host.
#![no_main]

use std::borrow::Cow;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use sidecache::cache::key::{self, CacheKey};

#[derive(Arbitrary, Debug)]
struct Input {
    a: Request,
    b: Request,
    location: String,
}

#[derive(Arbitrary, Debug)]
struct Request {
    target: Vec<u8>,
    host: Option<Vec<u8>>,
}

impl Request {
    fn parts(&self) -> Option<http::request::Parts> {
        let mut builder = http::Request::get(self.target.as_slice());
        if let Some(host) = &self.host {
            builder = builder.header(http::header::HOST, host.as_slice());
        }
        Some(builder.body(()).ok()?.into_parts().0)
    }
}

/// What the origin decodes: the bytes the percent-encoding stands for.
fn decoded(text: &str) -> Cow<'_, [u8]> {
    percent_decode_str(text).into()
}

/// The query as the key means it: its non-empty pairs decoded, stably
/// sorted by the decoded name (split at the first raw `=`), so repeated
/// names keep their order.
fn query_meaning(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            (
                decoded(key::pair_name(pair)).into_owned(),
                decoded(pair).into_owned(),
            )
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

fuzz_target!(|input: Input| {
    let mut keys = Vec::new();
    for request in [&input.a, &input.b] {
        let Some(parts) = request.parts() else {
            return;
        };
        let path = parts.uri.path();
        let normal = key::normalise_path(path);
        assert_eq!(
            decoded(&normal),
            decoded(path),
            "{path:?} became {normal:?}"
        );
        assert_eq!(
            key::normalise_path(&normal),
            normal,
            "normalising {path:?} twice"
        );
        let query = parts.uri.query().unwrap_or("");
        let canonical = key::canonical_query(query);
        assert_eq!(key::canonical_query(&canonical), canonical);
        assert_eq!(query_meaning(&canonical), query_meaning(query));

        let host = key::request_host(&parts);
        let url = CacheKey::for_request("fuzz", &parts);
        assert_eq!(url, CacheKey::for_url("fuzz", &host, &parts.uri));
        let _ = key::same_host_target(&input.location, &host);
        keys.push((url, host, parts.uri));
    }
    let [(key_a, host_a, uri_a), (key_b, host_b, uri_b)] = &keys[..] else {
        return;
    };
    if key_a == key_b {
        assert_eq!(host_a, host_b);
        assert_eq!(decoded(uri_a.path()), decoded(uri_b.path()));
        assert_eq!(
            query_meaning(uri_a.query().unwrap_or("")),
            query_meaning(uri_b.query().unwrap_or(""))
        );
    }
});
