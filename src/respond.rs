//! Answers made from a stored response: the full response, a 304 for a client's own condition, a 206 or 416 for a range, headers only for HEAD; and from one still arriving.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::cache::entry::Entry;
use crate::cache::{range, validation};

/// A stored response as the answer to a request: a 304 when the client's
/// own conditions hold, a 206 or 416 for a `Range` (RFC 9110 §14), no body
/// for HEAD, and a fresh `Age` either way.
pub fn answer(
    entry: &Entry,
    request: &HeaderMap,
    head_only: bool,
    now: SystemTime,
) -> Response<ProxyBody> {
    let response = if validation::not_modified(request, &entry.headers, entry.response_time) {
        not_modified(&entry.headers)
    } else if let Some(partial) = requested_range(entry, request, head_only) {
        let mut response = whole(entry, body::full(partial.body));
        *response.status_mut() = partial.status;
        for (name, value) in &partial.headers {
            response.headers_mut().insert(name, value.clone());
        }
        response
    } else if head_only {
        whole(entry, body::empty())
    } else {
        whole(entry, body::full(entry.body.clone()))
    };
    with_age(response, entry, now)
}

/// A response another request's fetch is still receiving (`entry` without
/// its body) as the answer to a whole GET collapsed onto it: a 304 at once
/// when the client's own conditions hold (they need only the head), else the
/// full response with `body` as it arrives. HEAD and range requests do not
/// collapse (they are answered from what was stored), so no other shape is
/// asked of it.
pub fn answer_arriving(
    entry: &Entry,
    body: ProxyBody,
    request: &HeaderMap,
    now: SystemTime,
) -> Response<ProxyBody> {
    let response = if validation::not_modified(request, &entry.headers, entry.response_time) {
        not_modified(&entry.headers)
    } else {
        whole(entry, body)
    };
    with_age(response, entry, now)
}

/// `entry`'s status and headers around `body`.
fn whole(entry: &Entry, body: ProxyBody) -> Response<ProxyBody> {
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response
}

/// `response` with `entry`'s current `Age`.
fn with_age(
    mut response: Response<ProxyBody>,
    entry: &Entry,
    now: SystemTime,
) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    response
}

/// The part of a stored 200 that a GET's `Range` asks for, unless `If-Range`
/// says the client's copy is another version (then the whole body is sent).
fn requested_range(entry: &Entry, request: &HeaderMap, head_only: bool) -> Option<range::Partial> {
    let value = request.get(header::RANGE)?.to_str().ok()?;
    if head_only || entry.status != StatusCode::OK {
        return None;
    }
    if let Some(if_range) = request.get(header::IF_RANGE)
        && !range::if_range_holds(if_range, &entry.headers)
    {
        return None;
    }
    let ranges = range::parse(value, entry.body.len() as u64);
    range::partial(
        &entry.body,
        &ranges,
        entry.headers.get(header::CONTENT_TYPE),
    )
}

/// A 304 for a client whose condition matched a full response with `headers`.
pub fn not_modified(headers: &HeaderMap) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    *response.headers_mut() = validation::not_modified_headers(headers);
    response
}
