//! Shadow routes: each request is forwarded as on a route that does not cache, while the cache looks up, stores and counts what it would have served.
//!
//! The client and the origin see exactly what a `cache = false` route gives
//! them (a sidecar is invisible until it helps): the client's request goes
//! up untouched and the origin's response comes back as it streams. Beside
//! it, the request is keyed by the request model, looked up within its Redis
//! budget at the same time as the origin is asked, and judged by the same
//! decisions as on a caching route; nothing it finds is ever served. No
//! single-flight and no Redis lease: a shadow request never waits for
//! another. The response is stored when the cache would have fetched it and
//! the origin was asked what the cache would have asked ([`first_difference`]).

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{CacheableRequest, Failed, Proxy, Served};
use crate::body;
use crate::cache::Budget;
use crate::cache::decide::{self, OnHead, OnLookup, Plan, Prior, Times};
use crate::cache::entry::{Entry, Variants};
use crate::cache::fill::{Fill, StoringBody};
use crate::cache::key;
use crate::cache::status::{CacheStatus, Would};
use crate::origin::{self, Peer};
use crate::request;
use crate::route::Route;

impl Proxy {
    /// A GET or HEAD the cache would look up, on a shadow route: forwarded
    /// untouched while the cache looks it up; answered with the origin's
    /// response, stored on its way through when the cache would have
    /// stored it.
    pub(super) async fn serve_shadow(
        &self,
        parts: Parts,
        body: Incoming,
        route: Arc<Route>,
        client: &Peer,
    ) -> Result<Served, Failed> {
        // The cache's view of the request, keyed as on a caching route.
        let mut modelled = copy(&parts);
        let request = self.cacheable(route, client, &mut modelled);
        // What the origin gets: the client's request, as `forward` sends it.
        let mut sent = parts;
        let host = key::request_host(&sent);
        origin::add_forwarding_headers(&mut sent.headers, sent.version, client, &host);
        origin::strip_hop_by_hop(&mut sent.headers);
        let difference = match body.size_hint().exact() {
            Some(0) => {
                first_difference(&sent.uri, &sent.headers, &modelled.uri, request.forwarded())
            }
            _ => Some("a request body".to_owned()),
        };
        let route = request.route.name.as_str();
        let budget = Budget::default();
        let lookup = async {
            let now = self.cache.now();
            let found = self
                .cache
                .lookup(&request.url_key, &request, now, &budget)
                .await;
            (found, now)
        };
        let sent_at = self.cache.now();
        // At the same time: the lookup adds no latency unless Redis answers
        // after the origin, and never more than the request's Redis budget.
        let ((found, now), response) =
            tokio::join!(lookup, self.send_upstream(sent, body.boxed_unsync(), route));
        let presented = request.presented(self.max_object_size);
        let Shadowed {
            would,
            served,
            fetched,
        } = shadowed(decide::on_lookup(&presented, found, now));
        let saved = served.map_or(0, |(entry, status)| {
            let answer = request.answer(&entry, status, now).response;
            answer.body().size_hint().exact().unwrap_or(0)
        });
        self.metrics.shadow(route, would.as_str(), saved);
        let status = CacheStatus::Shadow { would };
        let response = response.map_err(Failed::with(status))?;
        let (head, body) = response.into_parts();
        let fill = match (fetched, difference) {
            (Some(prior), None) => {
                let times = Times {
                    request: sent_at,
                    response: self.cache.now(),
                };
                self.shadow_fill(&request, prior, &head, times)
            }
            (Some(_), Some(difference)) => {
                tracing::debug!(
                    difference,
                    "shadow: not stored, the origin was not asked what the cache would ask"
                );
                None
            }
            (None, _) => None,
        };
        let body = match fill {
            Some(fill) => body::stream(StoringBody::new(body, fill)),
            None => body::stream(body),
        };
        let response = Response::from_parts(head, body);
        Ok(Served { response, status })
    }

    /// The fill of the origin's answer, if the cache would store it: judged
    /// by `on_head` as on a caching route, with two differences that come
    /// from the origin having answered the client's request rather than the
    /// cache's. It validated nothing (the client's own conditions were
    /// what a 304 answered, so it refreshes no stored response), and a range
    /// came back as a range, which is never stored.
    fn shadow_fill(
        &self,
        request: &CacheableRequest,
        prior: Prior,
        head: &http::response::Parts,
        times: Times,
    ) -> Option<Fill> {
        let presented = request.presented(self.max_object_size);
        let plan = match request.plan {
            Plan::RangeFill => Plan::RangePass,
            plan => plan,
        };
        let prior = Prior {
            stale: None,
            variants: prior.variants,
            looked_up: prior.looked_up,
        };
        if head.status == StatusCode::NOT_MODIFIED {
            return None;
        }
        match decide::on_head(&presented, plan, &prior, head, times) {
            OnHead::Store {
                entry, variants, ..
            } if coding_selected(variants.as_deref(), &head.headers, request.forwarded()) => {
                Some(Fill::new(
                    self.cache.clone(),
                    entry,
                    variants,
                    prior.looked_up,
                    None,
                    self.max_object_size,
                ))
            }
            OnHead::Store { .. } => {
                tracing::debug!("shadow: not stored, coded for another Accept-Encoding");
                None
            }
            OnHead::PassOn(status) => {
                tracing::debug!(?status, "shadow: not stored");
                None
            }
            // Without a stale response in `prior` the origin's answer
            // refreshes nothing and stands in for nothing.
            OnHead::Refreshed { .. } | OnHead::StandIn(..) => None,
        }
    }
}

/// What the cache would have done with a request.
struct Shadowed {
    would: Would,
    /// The stored response it would have answered with, and how.
    served: Option<(Arc<Entry>, CacheStatus)>,
    /// What it held when it would have asked the origin: the origin's
    /// answer may then be stored, as the cache's fetch would have been.
    fetched: Option<Prior>,
}

/// What the cache would have done, from what its lookup means for the request.
fn shadowed(lookup: OnLookup) -> Shadowed {
    let would = would(&lookup);
    match lookup {
        OnLookup::Serve(entry, status) => Shadowed {
            would,
            served: Some((entry, status)),
            fetched: None,
        },
        // Served, and refreshed in the background: the origin's answer
        // stands for the refresh.
        OnLookup::ServeAndRefresh(entry, status, prior) => Shadowed {
            would,
            served: Some((entry, status)),
            fetched: Some(prior),
        },
        // `only-if-cached` would have got a 504 and fetched nothing.
        OnLookup::Refuse(_) => Shadowed {
            would,
            served: None,
            fetched: None,
        },
        OnLookup::Forward(prior) => Shadowed {
            would,
            served: None,
            fetched: Some(prior),
        },
    }
}

/// How the cache would have answered, in the words of `Cache-Status`.
pub(crate) fn would(lookup: &OnLookup) -> Would {
    match lookup {
        OnLookup::Serve(..) => Would::Hit,
        OnLookup::ServeAndRefresh(..) => Would::WhileRevalidate,
        OnLookup::Forward(Prior { stale: Some(_), .. }) => Would::Stale,
        OnLookup::Forward(_) | OnLookup::Refuse(_) => Would::Miss,
    }
}

/// A copy of a request head for the request model to rewrite, while the
/// original goes to the origin untouched (`Parts` is not `Clone`: its
/// extensions may not be; the model reads none).
fn copy(parts: &Parts) -> Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Where the request the origin got (`sent_target`, `sent`: the client's,
/// with the forwarding headers) differs from the one the cache would have
/// sent (`model_target`, `model`: the request model's), in what could
/// change the answer; `None` when it could not, and the answer may be stored
/// for the cache's request. The rule:
/// - the same path and query (a `key_query` rule changes it) and the same
///   headers with the same values (the guard list, cookies the route strips
///   or does not key, and strict mode's undeclared headers make a
///   difference), so `Host` is the same too (`cache.host` changes it);
/// - except the headers the cache manages itself (conditions and ranges: a
///   304 or 206 they bring is not stored, and a 200 is the same answer) and
///   hop-by-hop ones;
/// - and except the negotiation lists the model respells without changing
///   their meaning (present in both or in neither), and `Accept-Encoding`,
///   which the model reduces to one coding: the response is checked for
///   it instead ([`coding_selected`]).
fn first_difference(
    sent_target: &Uri,
    sent: &HeaderMap,
    model_target: &Uri,
    model: &HeaderMap,
) -> Option<String> {
    if sent_target.path_and_query() != model_target.path_and_query() {
        return Some("the path or query".to_owned());
    }
    sent.keys()
        .chain(model.keys())
        .filter(|name| !request::never_forwarded(name) && *name != header::ACCEPT_ENCODING)
        .find(|name| {
            if request::respelled(name) {
                sent.contains_key(*name) != model.contains_key(*name)
            } else {
                !sent.get_all(*name).iter().eq(model.get_all(*name).iter())
            }
        })
        .map(|name| name.as_str().to_owned())
}

/// Whether a response stored as a variant by `Accept-Encoding` is in the
/// coding the cache would have asked for: the client's list reached the
/// origin, the model's one coding selects the variant.
fn coding_selected(variants: Option<&Variants>, response: &HeaderMap, model: &HeaderMap) -> bool {
    let selects = variants.is_some_and(|index| index.names.contains(&header::ACCEPT_ENCODING));
    !selects
        || coding(response.get(header::CONTENT_ENCODING))
            == coding(model.get(header::ACCEPT_ENCODING))
}

/// One coding, lowercase; `identity` when none is named.
fn coding(value: Option<&HeaderValue>) -> String {
    value
        .and_then(|value| value.to_str().ok())
        .map_or("identity", str::trim)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::headers;
    use http::HeaderName;

    #[test]
    fn the_origins_request_stands_for_the_caches_when_nothing_that_could_change_the_answer_differs()
    {
        let target: Uri = "/a?x=1".parse().unwrap();
        let model = headers(&[
            ("host", "app"),
            ("accept", "text/html, */*"),
            ("accept-encoding", "br"),
            ("x-forwarded-proto", "http"),
        ]);
        let same = headers(&[
            ("host", "app"),
            ("accept", "*/*,TEXT/HTML"),
            ("accept-encoding", "gzip, br"),
            ("if-none-match", "\"v1\""),
            ("range", "bytes=0-1"),
            ("connection", "keep-alive"),
            ("x-forwarded-proto", "http"),
        ]);
        assert_eq!(first_difference(&target, &same, &target, &model), None);
        let cases = [
            ("/a?x=1&utm=2", &[("host", "app")][..], "the path or query"),
            ("/a?x=1", &[("host", "other")][..], "host"),
            (
                "/a?x=1",
                &[("x-forwarded-proto", "https")][..],
                "x-forwarded-proto",
            ),
            ("/a?x=1", &[("cookie", "session=1")][..], "cookie"),
            (
                "/a?x=1",
                &[("x-original-url", "/admin")][..],
                "x-original-url",
            ),
        ];
        for (sent_target, changes, expected) in cases {
            let mut sent = same.clone();
            for (name, value) in changes {
                let name = HeaderName::from_static(name);
                sent.insert(name, HeaderValue::from_static(value));
            }
            let sent_target: Uri = sent_target.parse().unwrap();
            assert_eq!(
                first_difference(&sent_target, &sent, &target, &model).as_deref(),
                Some(expected),
                "{changes:?}"
            );
        }
        let mut strict = model.clone();
        strict.remove(header::ACCEPT);
        assert_eq!(
            first_difference(&target, &same, &target, &strict).as_deref(),
            Some("accept"),
            "a negotiation list the model drops (strict mode) makes a difference"
        );
    }

    #[test]
    fn a_variant_by_accept_encoding_is_stored_only_in_the_coding_the_cache_would_ask_for() {
        let url = crate::cache::key::CacheKey::for_url("ns", "app", &"/a".parse().unwrap());
        let by_coding = Variants::new(url.clone(), vec![header::ACCEPT_ENCODING]);
        let by_language = Variants::new(url, vec![header::ACCEPT_LANGUAGE]);
        let br = headers(&[("accept-encoding", "br")]);
        let gzipped = headers(&[("content-encoding", "gzip")]);
        let brotli = headers(&[("content-encoding", "BR")]);
        assert!(!coding_selected(Some(&by_coding), &gzipped, &br));
        assert!(coding_selected(Some(&by_coding), &brotli, &br));
        assert!(!coding_selected(Some(&by_coding), &HeaderMap::new(), &br));
        assert!(coding_selected(
            Some(&by_coding),
            &HeaderMap::new(),
            &HeaderMap::new()
        ));
        assert!(coding_selected(Some(&by_language), &gzipped, &br));
        assert!(coding_selected(None, &HeaderMap::new(), &br));
    }
}
