//! The request pipeline: route, key, lookup, forward, store — the one place that runs the stages in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tracing::{Instrument, field};

use crate::cache::Cache;
use crate::cache::entry::{self, Entry, Variants};
use crate::cache::fill::{Fill, StoringBody};
use crate::cache::flight::{Leader, Role};
use crate::cache::key::{self, CacheKey};
use crate::cache::policy::{
    self, CacheControl, NoCacheReason, RequestFacts, RequestPolicy, Usability,
};
use crate::cache::redis::Lease;
use crate::cache::status::CacheStatus;
use crate::cache::validation;
use crate::config::CacheConfig;
use crate::metrics::{Metrics, UNROUTED};
use crate::origin::{self, Origin, OriginBody, OriginError};
use crate::respond::{answer, not_modified};
use crate::route::{Route, RouteTable};

/// How often a pod that lost the fleet lease looks for the winner's fill.
const FLEET_POLL: Duration = Duration::from_millis(50);

/// Error type of response bodies: origin stream errors, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the proxy writes.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a request got a synthetic error response instead of the origin's.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The origin broke the body of a response read in full before answering.
    #[error("origin body failed")]
    OriginBody(#[source] hyper::Error),
    /// `only-if-cached` and nothing usable is stored (RFC 9111 §5.2.1.7).
    #[error("only-if-cached: no usable stored response")]
    NotCached,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Origin(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Origin(_) => StatusCode::BAD_GATEWAY,
            ProxyError::OriginBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// The one mapping from errors to responses: a status and a short plain-text body.
pub fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    let status = error.status();
    let mut response = Response::new(full_body(Bytes::from(format!("{error}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What the cacheable pipeline knows about one GET or HEAD.
#[derive(Clone)]
struct CacheableRequest {
    route: Arc<Route>,
    /// The request target, to fetch it again in the background.
    uri: Uri,
    /// The URL's key: a response, or the index of its variants.
    url_key: CacheKey,
    /// The request's cache directives.
    cc: CacheControl,
    authorization: bool,
    head_only: bool,
    /// The client's own headers, for its conditions and ranges.
    client_headers: HeaderMap,
    /// The headers the origin gets, which also select among variants.
    forwarded: HeaderMap,
}

impl CacheableRequest {
    /// Reads what caching needs from `parts`, and cuts its headers down to
    /// what the origin may see: only keyed or allow-listed headers (and
    /// credentials) are forwarded, so nothing the key does not capture can
    /// change what is stored for everyone. The client's conditions are
    /// judged by the proxy, so the origin's answer can always fill the cache.
    fn new(namespace: &str, route: Arc<Route>, parts: &mut Parts) -> CacheableRequest {
        let authorization = parts.headers.contains_key(header::AUTHORIZATION);
        let client_headers = parts.headers.clone();
        origin::retain_headers(&mut parts.headers, |name| {
            name == header::HOST
                || route.forwards(name)
                || (name == header::AUTHORIZATION && authorization)
        });
        CacheableRequest {
            route,
            uri: parts.uri.clone(),
            url_key: CacheKey::for_request(namespace, parts),
            cc: CacheControl::parse_request(&client_headers),
            authorization,
            head_only: parts.method == Method::HEAD,
            client_headers,
            forwarded: parts.headers.clone(),
        }
    }

    /// A GET for the same thing with the headers the origin gets: what a
    /// background refresh sends.
    fn refresh_parts(&self) -> Parts {
        let mut parts = Request::new(()).into_parts().0;
        parts.uri = self.uri.clone();
        parts.headers = self.forwarded.clone();
        parts
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            cc: &self.cc,
            authorization: self.authorization,
        }
    }
}

/// What the cache knew when a cacheable request had to be forwarded.
struct Known {
    /// A stored response that needs validation before use.
    stale: Option<Arc<Entry>>,
    /// The URL's variant index, if its responses vary.
    variants: Option<Arc<Variants>>,
    /// The flight this fetch leads, if it collapses others.
    leader: Option<Leader>,
}

/// What the pipeline learned about one request, for the access log and metrics.
struct Outcome {
    route: Option<Arc<Route>>,
    cache_status: Option<CacheStatus>,
    origin_time: Option<Duration>,
}

/// The proxy's request handler and what it needs.
pub struct Proxy {
    /// Swapped whole on a config reload; each request reads one version.
    routes: ArcSwap<RouteTable>,
    origin: Origin,
    cache: Cache,
    metrics: Arc<Metrics>,
    /// First part of every key.
    namespace: String,
    /// Largest body copied into the cache.
    max_object_size: u64,
}

impl Proxy {
    pub fn new(
        routes: RouteTable,
        origin: Origin,
        cache: Cache,
        cache_config: &CacheConfig,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        Proxy {
            routes: ArcSwap::from_pointee(routes),
            origin,
            cache,
            metrics,
            namespace: cache_config.namespace.clone(),
            max_object_size: cache_config.max_object_size,
        }
    }

    /// Replaces the route table; requests already under way keep the one they
    /// started with.
    pub fn set_routes(&self, routes: RouteTable) {
        self.routes.store(Arc::new(routes));
    }

    /// Outer handler: never fails. Runs the pipeline in a span, turns errors
    /// into responses, adds `Cache-Status`, and writes metrics and the access log.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "request",
            %method,
            path,
            route = field::Empty,
            cache_status = field::Empty,
            origin_status = field::Empty,
        );
        async move {
            let mut outcome = Outcome {
                route: None,
                cache_status: None,
                origin_time: None,
            };
            let mut response = match self.serve(request, client, &mut outcome).await {
                Ok(response) => response,
                Err(error) => {
                    if !matches!(error, ProxyError::NotCached) {
                        tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "origin failed");
                    }
                    error_response(&error)
                }
            };
            let route = outcome.route.as_ref().map_or(UNROUTED, |r| r.name.as_str());
            let cache_status = outcome.cache_status.unwrap_or(CacheStatus::Bypass);
            append_cache_status(response.headers_mut(), cache_status);
            self.metrics.request(route, cache_status.as_str());
            tracing::info!(
                target: "sidecache::access",
                %method,
                path,
                route,
                status = response.status().as_u16(),
                cache_status = cache_status.as_str(),
                origin_ms = outcome.origin_time.map(|t| t.as_secs_f64() * 1e3),
                total_ms = started.elapsed().as_secs_f64() * 1e3,
                "request"
            );
            response
        }
        .instrument(span)
        .await
    }

    /// Inner handler: the pipeline, with `?` for anything that ends it early.
    async fn serve(
        self: &Arc<Self>,
        request: Request<Incoming>,
        client: SocketAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, body) = request.into_parts();
        let route = self
            .routes
            .load()
            .find(&key::normalise_path(parts.uri.path()))
            .cloned();
        if let Some(route) = &route {
            tracing::Span::current().record("route", route.name.as_str());
        }
        outcome.route = route.clone();
        match (
            policy::request_policy(route.as_deref(), &parts.method, &parts.headers),
            route,
        ) {
            (RequestPolicy::Lookup, Some(route)) => {
                self.serve_cacheable(parts, route, client, outcome).await
            }
            (RequestPolicy::Forward(reason), _) => {
                self.forward(parts, body, client, CacheStatus::Request(reason), outcome)
                    .await
            }
            _ => {
                self.forward(parts, body, client, CacheStatus::Bypass, outcome)
                    .await
            }
        }
    }

    /// A GET or HEAD on a caching route: answer from the cache, revalidate a
    /// stored response, or fetch and store (RFC 9111 §4).
    async fn serve_cacheable(
        self: &Arc<Self>,
        mut parts: Parts,
        route: Arc<Route>,
        client: SocketAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let request = CacheableRequest::new(&self.namespace, route.clone(), &mut parts);
        let now = SystemTime::now();
        let lookup = self
            .cache
            .lookup(&request.url_key, &request.forwarded, now)
            .await;
        let mut stale = None;
        if let Some((entry, tier)) = &lookup.found {
            let stored_cc = CacheControl::parse(&entry.headers);
            // §3.5: credentials may only be answered by a shareable response.
            if !request.authorization || stored_cc.shareable_with_authorization() {
                let age = entry.age(now);
                let usability =
                    policy::usability(&stored_cc, entry.freshness_lifetime, age, &request.cc);
                let hit_ttl = match usability {
                    Usability::Fresh { ttl } => Some(seconds(ttl)),
                    Usability::Stale { stale_for } => Some(-seconds(stale_for)),
                    Usability::Revalidate
                        if policy::serve_while_revalidating(
                            &stored_cc,
                            entry.freshness_lifetime,
                            age,
                            &request.cc,
                            route.stale_while_revalidate,
                        ) =>
                    {
                        let ttl = -seconds(age - entry.freshness_lifetime);
                        record_cache_status(outcome, CacheStatus::WhileRevalidate { ttl });
                        self.refresh_in_background(
                            &request,
                            entry.clone(),
                            lookup.variants.clone(),
                            client,
                        );
                        return Ok(answer(
                            entry,
                            &request.client_headers,
                            request.head_only,
                            now,
                        ));
                    }
                    Usability::Revalidate => None,
                };
                match hit_ttl {
                    Some(ttl) => {
                        record_cache_status(outcome, CacheStatus::Hit { ttl, tier: *tier });
                        return Ok(answer(
                            entry,
                            &request.client_headers,
                            request.head_only,
                            now,
                        ));
                    }
                    None => stale = Some(entry.clone()),
                }
            }
        }
        if request.cc.only_if_cached {
            let not_stored = Some(NoCacheReason::OnlyIfCached);
            record_cache_status(outcome, CacheStatus::Miss { not_stored });
            return Err(ProxyError::NotCached);
        }
        // Concurrent misses for the same thing wait for one fetch. HEAD and
        // ranges fly alone: their answers are not stored for others to use.
        let coalesce = route.coalesce
            && !request.head_only
            && !request.client_headers.contains_key(header::RANGE);
        let mut leader = None;
        if coalesce {
            match self
                .cache
                .flights()
                .join(request.url_key.flight(&request.forwarded))
            {
                Role::Leader(mut role) => {
                    // Across the fleet: one pod fetches, the others wait for its fill.
                    if let Some(entry) = self.lead_in_fleet(&request, &mut role).await {
                        record_cache_status(outcome, CacheStatus::Collapsed);
                        role.stored(entry.clone());
                        return Ok(answer(
                            &entry,
                            &request.client_headers,
                            false,
                            SystemTime::now(),
                        ));
                    }
                    leader = Some(role);
                }
                Role::Follower(follower) => {
                    if let Some(entry) = follower.wait(route.lock_timeout).await {
                        record_cache_status(outcome, CacheStatus::Collapsed);
                        let now = SystemTime::now();
                        return Ok(answer(&entry, &request.client_headers, false, now));
                    }
                }
            }
        }
        let known = Known {
            stale,
            variants: lookup.variants,
            leader,
        };
        self.fetch(request, parts, known, client, outcome).await
    }

    /// Forwards a cacheable request that the cache could not answer: with
    /// the validators of a `stale` entry if it has any, with its `Range` if
    /// the route passes ranges through. The answer refreshes, replaces or
    /// fills the store as RFC 9111 allows.
    async fn fetch(
        &self,
        request: CacheableRequest,
        mut parts: Parts,
        known: Known,
        client: SocketAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Known {
            stale,
            variants,
            leader,
        } = known;
        let route = request.route.clone();
        let had_stale = stale.clone();
        let stale = stale.filter(|entry| policy::has_validators(&entry.headers));
        if let Some(entry) = &stale {
            validation::add_validators(&mut parts.headers, &entry.headers);
        }
        // A range miss is passed through (and not stored) unless the route
        // fetches whole bodies to answer ranges from the cache.
        let range_requested =
            request.client_headers.contains_key(header::RANGE) && !request.head_only;
        let pass_range = range_requested && !route.range_fill && stale.is_none();
        if pass_range {
            for name in [header::RANGE, header::IF_RANGE] {
                if let Some(value) = request.client_headers.get(&name) {
                    parts.headers.insert(name, value.clone());
                }
            }
        }
        let request_time = SystemTime::now();
        let empty = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let response = self.send_upstream(parts, empty, client, outcome).await;
        // An origin that fails or answers 5xx may be stood in for by a stale
        // response that allows it (RFC 5861 §4).
        let failed = match &response {
            Ok(response) if response.status().is_server_error() => Some(response.status()),
            Ok(_) => None,
            Err(error) => Some(error.status()),
        };
        if let (Some(fwd_status), Some(entry)) = (failed, &had_stale) {
            let now = SystemTime::now();
            let cc = CacheControl::parse(&entry.headers);
            if policy::serve_on_error(
                &cc,
                entry.freshness_lifetime,
                entry.age(now),
                route.stale_if_error,
            ) {
                if let Err(error) = &response {
                    tracing::warn!(%error, "origin failed; serving stale");
                }
                record_cache_status(outcome, CacheStatus::IfError { fwd_status });
                return Ok(answer(
                    entry,
                    &request.client_headers,
                    request.head_only,
                    now,
                ));
            }
        }
        let response = response?;
        let response_time = SystemTime::now();
        let (head, body) = response.into_parts();

        // A 304 refreshes the stored response (§4.3.4), and so does a 200 to
        // a HEAD that describes the same representation (§4.3.5).
        let refreshes = |entry: &&Arc<Entry>| {
            head.status == StatusCode::NOT_MODIFIED
                || (request.head_only
                    && head.status == StatusCode::OK
                    && validation::same_representation(&entry.headers, &head.headers))
        };
        if let Some(entry) = stale.as_ref().filter(refreshes) {
            let refreshed = entry::refreshed(
                entry,
                &head.headers,
                route.store_rules(),
                request_time,
                response_time,
            );
            let cc = CacheControl::parse(&refreshed.headers);
            let stored = policy::storability(
                refreshed.status,
                &refreshed.headers,
                &cc,
                request.facts(),
                route.store_rules(),
                response_time,
            );
            if stored.is_ok()
                && let Some(entry) = self.cache.store(refreshed.clone(), variants, response_time)
                && let Some(leader) = leader
            {
                leader.stored(entry);
            }
            let fwd_status = head.status;
            record_cache_status(
                outcome,
                CacheStatus::Stale {
                    fwd_status,
                    not_stored: stored.err(),
                },
            );
            return Ok(answer(
                &refreshed,
                &request.client_headers,
                request.head_only,
                response_time,
            ));
        }

        let decision = if request.head_only {
            Err(NoCacheReason::Head)
        } else if pass_range {
            Err(NoCacheReason::Range)
        } else {
            let cc = CacheControl::parse(&head.headers);
            let rules = route.store_rules();
            policy::storability(
                head.status,
                &head.headers,
                &cc,
                request.facts(),
                rules,
                response_time,
            )
            .and_then(|lifetime| self.fits(&head.headers).map(|()| lifetime))
        };
        let not_stored = decision.err();
        let fwd_status = head.status;
        record_cache_status(
            outcome,
            match &variants {
                _ if had_stale.is_some() => CacheStatus::Stale {
                    fwd_status,
                    not_stored,
                },
                Some(_) => CacheStatus::VaryMiss { not_stored },
                None => CacheStatus::Miss { not_stored },
            },
        );
        let Ok(freshness_lifetime) = decision else {
            return Ok(Response::from_parts(
                head,
                body.map_err(BoxError::from).boxed_unsync(),
            ));
        };

        // A response that varies (or a route with key headers) is stored as
        // a variant of its URL, through the URL's index of variants.
        let mut names = route.key_headers.clone();
        names.extend(policy::vary_names(&head.headers).unwrap_or_default());
        let variants = (!names.is_empty()).then(|| match variants {
            Some(index) if index.selects_by(&names) => index,
            _ => Arc::new(Variants::new(request.url_key.clone(), names)),
        });
        let key = variants.as_ref().map_or(request.url_key.clone(), |index| {
            index.key_for(&request.forwarded)
        });
        let entry = Entry {
            key,
            status: head.status,
            headers: entry::storable_headers(&head.headers),
            body: Bytes::new(),
            response_time,
            initial_age: policy::corrected_initial_age(&head.headers, request_time, response_time),
            freshness_lifetime,
        };
        let whole = (range_requested && head.headers.contains_key(header::CONTENT_LENGTH))
            .then(|| entry.clone());
        let body = StoringBody::new(
            body,
            Fill::new(
                self.cache.clone(),
                entry,
                variants,
                leader,
                self.max_object_size,
            ),
        );
        if let Some(mut whole) = whole {
            // Fetched whole for a range: read it all (it fits the cache, so
            // it is bounded), store it, and answer the range from it.
            whole.body = body
                .collect()
                .await
                .map_err(ProxyError::OriginBody)?
                .to_bytes();
            return Ok(answer(
                &whole,
                &request.client_headers,
                false,
                SystemTime::now(),
            ));
        }
        if validation::not_modified(&request.client_headers, &head.headers, response_time) {
            // The client's condition holds: it gets a 304, and the body is
            // still read to the end in the background to fill the cache.
            tokio::spawn(async move {
                let _ = body.collect().await;
            });
            return Ok(not_modified(&head.headers));
        }
        Ok(Response::from_parts(
            head,
            body.map_err(BoxError::from).boxed_unsync(),
        ))
    }

    /// The fleet-wide part of single-flight, for this process's leader: take
    /// the Redis lease and fetch (the lease is given back when the flight
    /// ends), or, when another pod holds it, poll L2 for that pod's fill
    /// until it lands, the lease goes away, or `lock_timeout` passes.
    /// `Some` is the other pod's entry; `None` means fetch. Redis trouble
    /// means fetch, never wait.
    async fn lead_in_fleet(
        &self,
        request: &CacheableRequest,
        leader: &mut Leader,
    ) -> Option<Arc<Entry>> {
        let redis = self.cache.redis()?.clone();
        let flight = request.url_key.flight(&request.forwarded);
        match redis.lease(&flight, request.route.lock_timeout).await {
            Lease::Won => {
                leader.on_finish(move || redis.release_lease(&flight));
                None
            }
            Lease::Unavailable => None,
            Lease::Lost => {
                let deadline = Instant::now() + request.route.lock_timeout;
                while Instant::now() < deadline {
                    tokio::time::sleep(FLEET_POLL).await;
                    let now = SystemTime::now();
                    let lookup = self
                        .cache
                        .lookup(&request.url_key, &request.forwarded, now)
                        .await;
                    if let Some((entry, _)) = lookup
                        .found
                        .filter(|(e, _)| e.remaining_freshness(now).is_some())
                    {
                        return Some(entry);
                    }
                    if redis.lease_held(&flight).await != Some(true) {
                        return None;
                    }
                }
                self.metrics.redis_call("lease", "expired");
                None
            }
        }
    }

    /// Refreshes a stale entry off the request path, unless a fetch for the
    /// same thing is already under way in this process (so once per key).
    fn refresh_in_background(
        self: &Arc<Self>,
        request: &CacheableRequest,
        stale: Arc<Entry>,
        variants: Option<Arc<Variants>>,
        client: SocketAddr,
    ) {
        let Role::Leader(leader) = self
            .cache
            .flights()
            .join(request.url_key.flight(&request.forwarded))
        else {
            return;
        };
        let proxy = self.clone();
        let request = request.clone();
        tokio::spawn(async move {
            let mut outcome = Outcome {
                route: Some(request.route.clone()),
                cache_status: None,
                origin_time: None,
            };
            let mut leader = leader;
            // Once per key in the fleet, too: another pod may be refreshing it.
            if proxy.lead_in_fleet(&request, &mut leader).await.is_some() {
                proxy.metrics.background_refresh("elsewhere");
                return;
            }
            let parts = request.refresh_parts();
            let known = Known {
                stale: Some(stale),
                variants,
                leader: Some(leader),
            };
            let result = match proxy
                .fetch(request, parts, known, client, &mut outcome)
                .await
            {
                // Reading the body to its end is what stores it.
                Ok(response) => match response.into_body().collect().await {
                    Ok(_) => match outcome.cache_status {
                        Some(CacheStatus::Stale {
                            not_stored: None, ..
                        }) => "stored",
                        _ => "not-stored",
                    },
                    Err(_) => "failed",
                },
                Err(error) => {
                    tracing::warn!(%error, "background refresh failed");
                    "failed"
                }
            };
            proxy.metrics.background_refresh(result);
        });
    }

    /// Whether a declared body length fits in the cache; unknown lengths are checked while streaming.
    fn fits(&self, headers: &HeaderMap) -> Result<(), NoCacheReason> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(len) if len > self.max_object_size => Err(NoCacheReason::TooLarge),
            _ => Ok(()),
        }
    }

    /// Passes a request through untouched by the cache, body streamed both ways.
    async fn forward(
        &self,
        parts: Parts,
        body: Incoming,
        client: SocketAddr,
        cache_status: CacheStatus,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        record_cache_status(outcome, cache_status);
        let unsafe_request = !parts.method.is_safe();
        let (host, uri) = (key::request_host(&parts), parts.uri.clone());
        let response = self
            .send_upstream(parts, body.boxed_unsync(), client, outcome)
            .await?;
        let status = response.status();
        if unsafe_request && (status.is_success() || status.is_redirection()) {
            self.invalidate(&host, &uri, response.headers());
        }
        Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
    }

    /// After a non-error response to an unsafe request, drops what is stored
    /// for its URL and for the same-host `Location` and `Content-Location`
    /// (RFC 9111 §4.4), whatever route they fall under.
    fn invalidate(&self, host: &str, uri: &Uri, response: &HeaderMap) {
        let linked = [header::LOCATION, header::CONTENT_LOCATION]
            .into_iter()
            .filter_map(|name| response.get(name)?.to_str().ok())
            .filter_map(|value| key::same_host_target(value, host));
        for target in std::iter::once(uri.clone()).chain(linked) {
            self.cache
                .remove(&CacheKey::for_url(&self.namespace, host, &target));
        }
    }

    /// Sends a request to the origin with hop-by-hop headers removed and
    /// forwarding headers added, timing it; the response comes back cleaned the same way.
    async fn send_upstream(
        &self,
        mut parts: Parts,
        body: OriginBody,
        client: SocketAddr,
        outcome: &mut Outcome,
    ) -> Result<Response<Incoming>, ProxyError> {
        let host = key::request_host(&parts);
        origin::strip_hop_by_hop(&mut parts.headers);
        origin::add_forwarding_headers(&mut parts.headers, parts.version, client, &host);
        let version = parts.version;
        let route = outcome.route.as_ref().map_or(UNROUTED, |r| r.name.as_str());
        let started = Instant::now();
        let result = self.origin.send(Request::from_parts(parts, body)).await;
        let elapsed = started.elapsed();
        outcome.origin_time = Some(elapsed);
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timeout"
                } else {
                    "unreachable"
                };
                self.metrics.origin_error(route, kind);
                return Err(error.into());
            }
        };
        self.metrics.origin_duration(route, elapsed);
        tracing::Span::current().record("origin_status", response.status().as_u16());
        origin::strip_hop_by_hop(response.headers_mut());
        origin::append_via(response.headers_mut(), version);
        Ok(response)
    }
}

fn record_cache_status(outcome: &mut Outcome, status: CacheStatus) {
    tracing::Span::current().record("cache_status", status.as_str());
    outcome.cache_status = Some(status);
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// A response body of bytes already in hand.
pub fn full_body(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Adds this cache's member to `Cache-Status`, after any an upstream cache wrote (RFC 9211 §2).
fn append_cache_status(headers: &mut HeaderMap, status: CacheStatus) {
    let ours = status.header_value();
    let value = match headers.get("cache-status").map(HeaderValue::as_bytes) {
        Some(earlier) => {
            let mut joined = earlier.to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ours.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or(ours)
        }
        None => ours,
    };
    headers.insert("cache-status", value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn origin_timeouts_are_504_and_other_failures_502() {
        let timeout = ProxyError::Origin(OriginError::Timeout(Duration::from_secs(1)));
        assert_eq!(
            error_response(&timeout).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            timeout.to_string(),
            "origin sent no response head within 1s"
        );
    }

    #[test]
    fn cache_status_is_appended_after_upstream_caches() {
        let mut headers = HeaderMap::new();
        append_cache_status(&mut headers, CacheStatus::Bypass);
        assert_eq!(headers["cache-status"], "sidecache; fwd=bypass");
        headers.insert("cache-status", HeaderValue::from_static("edge; hit"));
        append_cache_status(&mut headers, CacheStatus::Bypass);
        assert_eq!(headers["cache-status"], "edge; hit, sidecache; fwd=bypass");
    }
}
