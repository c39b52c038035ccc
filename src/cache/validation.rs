//! Conditional requests (RFC 9110 §13, RFC 9111 §4.3): validators sent upstream, a 304 merged into a stored response, and a client's own conditions judged against one.

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, header};

/// Fields a 304 carries from the full response (RFC 9110 §15.4.5), plus
/// `Last-Modified`, which clients use to revalidate later.
const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

/// Adds the stored response's validators to a revalidation request
/// (RFC 9111 §4.3.1): `If-None-Match` from `ETag`, `If-Modified-Since`
/// from `Last-Modified`.
pub fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// The stored header fields updated by a 304 (RFC 9111 §3.2, §4.3.4): each
/// field the 304 carries replaces the stored one, except `Content-Length`,
/// which describes the stored body.
pub fn merge_not_modified(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in update.keys() {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        merged.remove(name);
        for value in update.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

/// Whether a client's conditional GET or HEAD is satisfied by a response
/// with these headers, so the answer is 304 (RFC 9110 §13.2.2: `If-None-Match`
/// first, with weak comparison; `If-Modified-Since` only without it).
/// `received` stands in for `Last-Modified` and `Date` when both are missing
/// (RFC 9111 §4.3.2).
pub fn not_modified(request: &HeaderMap, response: &HeaderMap, received: SystemTime) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return request
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == "*" || weak_match(tag.trim(), etag));
    }
    let Some(since) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let modified = [header::LAST_MODIFIED, header::DATE]
        .iter()
        .find_map(|name| {
            response
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
        })
        .unwrap_or(received);
    modified <= since
}

/// Whether a response describes the same representation as a stored one:
/// the same strong `ETag`, or without ETags the same `Last-Modified`
/// (RFC 9111 §4.3.5, for updating from a HEAD response).
pub fn same_representation(stored: &HeaderMap, response: &HeaderMap) -> bool {
    let field = |headers: &HeaderMap, name| {
        headers
            .get(name)
            .map(|v: &http::HeaderValue| v.as_bytes().to_vec())
    };
    match (field(stored, header::ETAG), field(response, header::ETAG)) {
        (Some(a), Some(b)) => a == b && !a.starts_with(b"W/"),
        (None, None) => field(stored, header::LAST_MODIFIED)
            .is_some_and(|modified| Some(modified) == field(response, header::LAST_MODIFIED)),
        _ => false,
    }
}

/// Weak comparison (RFC 9110 §8.8.3.2): the opaque tags match, `W/` aside.
fn weak_match(a: &str, b: &str) -> bool {
    let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_owned();
    opaque(a) == opaque(b)
}

/// The header fields of a 304 answer made from a full response's.
pub fn not_modified_headers(full: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in NOT_MODIFIED_FIELDS.iter() {
        for value in full.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Removes fields a shared cache must not store (`private="..."`, RFC 9111
/// §5.2.2.7) or must not send without revalidation (`no-cache="..."`,
/// §5.2.2.4); serving them only after revalidation is left to the origin's
/// fresh response.
pub fn strip_fields(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::testing::headers;

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs))
    }

    #[test]
    fn validators_become_conditions_rfc9111_4_3_1() {
        let mut request = HeaderMap::new();
        add_validators(
            &mut request,
            &headers(&[("etag", "\"v1\""), ("last-modified", &date(0))]),
        );
        assert_eq!(request["if-none-match"], "\"v1\"");
        assert_eq!(request["if-modified-since"], date(0).as_str());
    }

    #[test]
    fn a_304_updates_stored_fields_but_not_content_length_rfc9111_4_3_4() {
        let stored = headers(&[
            ("content-length", "5"),
            ("cache-control", "max-age=10"),
            ("x-old", "kept"),
            ("x-multi", "a"),
        ]);
        let update = headers(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("x-multi", "b"),
            ("x-multi", "c"),
        ]);
        let merged = merge_not_modified(&stored, &update);
        assert_eq!(merged["content-length"], "5");
        assert_eq!(merged["cache-control"], "max-age=60");
        assert_eq!(merged["x-old"], "kept");
        assert_eq!(
            merged.get_all("x-multi").iter().collect::<Vec<_>>(),
            vec!["b", "c"]
        );
    }

    #[test]
    fn client_conditions_rfc9110_13_2_2() {
        let response = headers(&[("etag", "W/\"v1\""), ("last-modified", &date(100))]);
        let received = SystemTime::UNIX_EPOCH;
        let check = |request: &[(&str, &str)]| not_modified(&headers(request), &response, received);
        // If-None-Match uses weak comparison and lists.
        assert!(check(&[("if-none-match", "\"v1\"")]));
        assert!(check(&[("if-none-match", "\"v0\", W/\"v1\"")]));
        assert!(check(&[("if-none-match", "*")]));
        assert!(!check(&[("if-none-match", "\"v2\"")]));
        // If-Modified-Since: not modified at or after the given date.
        assert!(check(&[("if-modified-since", &date(100))]));
        assert!(check(&[("if-modified-since", &date(200))]));
        assert!(!check(&[("if-modified-since", &date(50))]));
        assert!(!check(&[("if-modified-since", "yesterday")]));
        // If-None-Match wins over If-Modified-Since.
        assert!(!check(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", &date(200))
        ]));
        assert!(!check(&[]));
    }

    #[test]
    fn not_modified_answers_carry_only_the_listed_fields_rfc9110_15_4_5() {
        let full = headers(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("date", &date(0)),
        ]);
        let h = not_modified_headers(&full);
        assert!(
            h.contains_key("etag") && h.contains_key("cache-control") && h.contains_key("date")
        );
        assert!(!h.contains_key("content-type") && !h.contains_key("content-length"));
    }
}
