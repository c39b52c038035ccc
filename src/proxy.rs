//! The request pipeline: route, key, lookup, forward, store — the one place that runs the stages in order.

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field};

use crate::body::{self, ProxyBody};
use crate::cache::decide::{self, OnError, OnHead, OnLookup, Plan, Presented, Prior, Times};
use crate::cache::entry::{Entry, Forwarded};
use crate::cache::fill::{Fill, StoringBody};
use crate::cache::flight::Leader;
use crate::cache::key::{self, CacheKey};
use crate::cache::policy::{self, CacheControl, RequestPolicy};
use crate::cache::status::{CACHE_STATUS, CacheStatus};
use crate::cache::{Admission, Budget, Cache, Flight, validation};
use crate::config::CacheConfig;
use crate::metrics::{Metrics, UNROUTED};
use crate::origin::{self, Origin, OriginBody, OriginError, OriginResponseBody, Peer};
use crate::request;
use crate::respond::{answer, answer_arriving, not_modified};
use crate::route::{Cookies, Route, RouteTable};

pub(crate) mod shadow;

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
    let mut response = Response::new(body::full(format!("{error}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response, and how the cache took part in it.
pub struct Served {
    pub response: Response<ProxyBody>,
    pub status: CacheStatus,
}

/// A request that ended in an error, and how the cache had taken part.
struct Failed {
    error: ProxyError,
    status: CacheStatus,
}

impl Failed {
    fn with(status: CacheStatus) -> impl FnOnce(ProxyError) -> Failed {
        move |error| Failed { error, status }
    }
}

/// What the cacheable pipeline knows about one GET or HEAD.
#[derive(Clone)]
pub(crate) struct CacheableRequest {
    route: Arc<Route>,
    /// The request target as the origin gets it, to fetch it again in the
    /// background.
    uri: Uri,
    /// The URL's key: a response, or the index of its variants.
    pub(crate) url_key: CacheKey,
    /// The request's cache directives.
    cc: CacheControl,
    pub(crate) authorization: bool,
    plan: Plan,
    /// The client's own headers, for its conditions and ranges.
    client_headers: HeaderMap,
    /// The headers the origin gets, which also select among variants:
    /// built when first asked for ([`Self::forwarded`]), which a hit on a
    /// URL without variants never does.
    forwarded: OnceLock<HeaderMap>,
    /// What they are built from, besides the client's headers and the route.
    host: String,
    version: Version,
    client: Peer,
}

impl CacheableRequest {
    /// Reads what caching needs from `parts`: the target and host the
    /// origin gets (the request model's first half, [`request::target`]),
    /// which the key is built from. The headers it gets, which `Vary`
    /// selects by, are built when first asked for ([`Self::forwarded`]).
    fn new(
        namespace: &str,
        canonical_host: Option<&str>,
        route: Arc<Route>,
        client: &Peer,
        parts: &mut Parts,
    ) -> CacheableRequest {
        let (client_headers, host) = request::target(&route, canonical_host, parts);
        // Whether the origin gets an `Authorization` (a guarded one it
        // does not get makes no answer personal).
        let authorization = request::forwards_authorization(&route, &client_headers);
        let plan = Plan::new(
            parts.method == Method::HEAD,
            client_headers.contains_key(header::RANGE),
            route.range_fill,
        );
        CacheableRequest {
            uri: parts.uri.clone(),
            url_key: CacheKey::for_request_to(namespace, &host, parts),
            cc: CacheControl::parse_request(&client_headers),
            authorization,
            plan,
            client_headers,
            forwarded: OnceLock::new(),
            host,
            version: parts.version,
            client: client.clone(),
            route,
        }
    }

    /// The headers the origin gets, each time it is asked
    /// ([`Self::prepare`]); what `Vary` selects by.
    pub(crate) fn forwarded(&self) -> &HeaderMap {
        self.forwarded.get_or_init(|| {
            request::forwarded(
                &self.route,
                &self.client_headers,
                self.version,
                &self.client,
                &self.host,
            )
        })
    }

    /// A whole GET for the same thing with the headers the origin gets,
    /// and nothing of the client's own conditions or ranges: what a
    /// background refresh sends.
    fn refresh(&self) -> (CacheableRequest, Parts) {
        let mut parts = Request::new(()).into_parts().0;
        parts.uri = self.uri.clone();
        // Built before the clone, so that the refresh carries them as they
        // are, not built again from its own headers (which are these).
        let forwarded = self.forwarded().clone();
        let request = CacheableRequest {
            plan: Plan::Full,
            client_headers: forwarded,
            ..self.clone()
        };
        (request, parts)
    }

    /// What the cache's decisions need to know about this request.
    pub(crate) fn presented(&self, max_object_size: u64) -> Presented<'_> {
        Presented {
            plan: self.plan,
            cc: &self.cc,
            authorization: self.authorization,
            rules: self.route.store_rules(),
            stale_while_revalidate: self.route.stale_while_revalidate,
            stale_if_error: self.route.stale_if_error,
            url_key: &self.url_key,
            forwarded: self,
            key_headers: &self.route.key_headers,
            max_object_size,
        }
    }

    /// The headers the origin gets, with the validators of the stored
    /// response being validated, or the client's `Range` when it is passed
    /// through; and the plan of the forwarded request.
    fn prepare(&self, prior: &Prior) -> (HeaderMap, Plan) {
        let mut headers = self.forwarded().clone();
        let validating = prior.validating();
        if let Some(entry) = validating {
            validation::add_validators(&mut headers, &entry.headers);
        }
        let plan = self.plan.forwarding(validating.is_some());
        if plan == Plan::RangePass {
            for name in [header::RANGE, header::IF_RANGE] {
                if let Some(value) = self.client_headers.get(&name) {
                    headers.insert(name, value.clone());
                }
            }
        }
        (headers, plan)
    }

    /// The fetch that requests the origin would answer alike may share;
    /// `prior` knows what the URL's stored variants vary on.
    fn flight<'a>(&'a self, prior: &'a Prior) -> Flight<'a> {
        let varied = prior.variants.iter().flat_map(|index| index.names.iter());
        Flight::new(
            &self.url_key,
            self.forwarded(),
            self.route.key_headers.iter().chain(varied),
            self.route.lock_timeout,
        )
    }

    /// A stored response as this request's answer (304, 206, HEAD as it asks).
    fn answer(&self, entry: &Entry, status: CacheStatus, now: SystemTime) -> Served {
        let response = answer(entry, &self.client_headers, self.plan.head_only(), now);
        Served { response, status }
    }
}

impl Forwarded for CacheableRequest {
    fn headers(&self) -> &HeaderMap {
        self.forwarded()
    }
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
    /// The host cacheable requests are keyed under and sent with, if one is set.
    canonical_host: Option<String>,
    /// Largest body copied into the cache.
    max_object_size: u64,
    /// The tag fields removed from every response (none with
    /// `cache.expose_tags`): tags name the origin's internals.
    hidden_tags: Vec<HeaderName>,
    /// Background refreshes, so that shutdown can let them finish.
    background: TaskTracker,
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
            canonical_host: cache_config.host.clone(),
            max_object_size: cache_config.max_object_size,
            hidden_tags: if cache_config.expose_tags {
                Vec::new()
            } else {
                cache_config.tag_headers.clone()
            },
            background: TaskTracker::new(),
        }
    }

    /// Replaces the route table; requests already under way keep the one they
    /// started with.
    pub fn set_routes(&self, routes: RouteTable) {
        self.routes.store(Arc::new(routes));
    }

    /// Waits for the background refreshes under way (new ones are still
    /// accepted: a request served during the wait may start one).
    pub async fn background_done(&self) {
        self.background.close();
        self.background.wait().await;
    }

    /// Outer handler: never fails. Matches the route, runs the pipeline in a
    /// span, turns errors into responses, removes `Sidecache-Cache-Control`
    /// and the tag fields, adds `Cache-Status`, and writes metrics and the access log from what
    /// the pipeline returned.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client: Peer,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let route = self.route_for(&path);
        let route_name = route.as_ref().map_or(UNROUTED, |r| r.name.as_str());
        let span = tracing::info_span!(
            "request",
            %method,
            path,
            route = route_name,
            cache_status = field::Empty,
            origin_status = field::Empty,
            origin_ms = field::Empty,
        );
        async {
            let Served {
                mut response,
                status,
            } = match self.serve(request, route.clone(), &client).await {
                Ok(served) => served,
                Err(Failed { error, status }) => {
                    if !matches!(error, ProxyError::NotCached) {
                        tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "origin failed");
                    }
                    let response = error_response(&error);
                    Served { response, status }
                }
            };
            tracing::Span::current().record("cache_status", status.as_str());
            // Addressed to this cache alone; stored entries keep it, so that
            // later decisions still read it.
            response
                .headers_mut()
                .remove(policy::SIDECACHE_CACHE_CONTROL);
            // Also on bypassed routes: tags are the origin's business
            // wherever the response comes from.
            for name in &self.hidden_tags {
                response.headers_mut().remove(name);
            }
            append_cache_status(response.headers_mut(), status);
            self.metrics.request(route_name, status.as_str());
            tracing::info!(
                target: "sidecache::access",
                %method,
                path,
                route = route_name,
                status = response.status().as_u16(),
                cache_status = status.as_str(),
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
        route: Option<Arc<Route>>,
        client: &Peer,
    ) -> Result<Served, Failed> {
        let (parts, body) = request.into_parts();
        let route_name = route.as_ref().map_or(UNROUTED, |r| r.name.as_str());
        // Each path's future is boxed: they are several KiB, and a request's
        // future that held them inline would be copied whole each time it
        // moves (hyper moves it more than once before polling it).
        match (request_policy(route.as_deref(), &parts), &route) {
            (RequestPolicy::Lookup, Some(route)) if route.shadow => {
                Box::pin(self.serve_shadow(parts, body, route.clone(), client)).await
            }
            (RequestPolicy::Lookup, Some(route)) => {
                Box::pin(self.serve_cacheable(parts, route.clone(), client)).await
            }
            (RequestPolicy::Forward(reason), _) => {
                let status = CacheStatus::Request(reason);
                Box::pin(self.forward(parts, body, client, route_name, status)).await
            }
            (RequestPolicy::Bypass(detail), _) => {
                let status = CacheStatus::Bypass(detail);
                Box::pin(self.forward(parts, body, client, route_name, status)).await
            }
            (RequestPolicy::Lookup, None) => {
                let status = CacheStatus::Bypass(None);
                Box::pin(self.forward(parts, body, client, route_name, status)).await
            }
        }
    }

    /// A GET or HEAD on a caching route: answer from the cache, or join the
    /// fetch of it (RFC 9111 §4).
    async fn serve_cacheable(
        self: &Arc<Self>,
        mut parts: Parts,
        route: Arc<Route>,
        client: &Peer,
    ) -> Result<Served, Failed> {
        let request = self.cacheable(route, client, &mut parts);
        let now = self.cache.now();
        // All of this request's Redis calls share one deadline.
        let budget = Budget::default();
        let lookup = self
            .cache
            .lookup(&request.url_key, &request, now, &budget)
            .await;
        let presented = request.presented(self.max_object_size);
        let prior = match decide::on_lookup(&presented, lookup, now) {
            OnLookup::Serve(entry, status) => return Ok(request.answer(&entry, status, now)),
            OnLookup::ServeAndRefresh(entry, status, prior) => {
                self.refresh_in_background(&request, prior);
                return Ok(request.answer(&entry, status, now));
            }
            OnLookup::Refuse(status) => {
                let error = ProxyError::NotCached;
                return Err(Failed { error, status });
            }
            OnLookup::Forward(prior) => prior,
        };
        // The miss path's futures are boxed: held inline they would make
        // this future, which every hit builds and moves, several KiB.
        // Concurrent misses for the same thing wait for one fetch.
        let mut leader = None;
        if request.route.coalesce && request.plan.coalesces() {
            match Box::pin(self.cache.admit(request.flight(&prior), &budget)).await {
                Admission::Lead(lead) => leader = Some(lead),
                Admission::Collapsed(entry) if decide::may_answer(&presented, &entry) => {
                    let now = self.cache.now();
                    return Ok(request.answer(&entry, CacheStatus::Collapsed, now));
                }
                Admission::Streaming { head, body } if decide::may_answer(&presented, &head) => {
                    let now = self.cache.now();
                    let body = body::stream(body);
                    let response = answer_arriving(&head, body, &request.client_headers, now);
                    let status = CacheStatus::Collapsed;
                    return Ok(Served { response, status });
                }
                Admission::Collapsed(_) | Admission::Streaming { .. } | Admission::Alone => {}
            }
        }
        Box::pin(self.fetch(&request, parts, prior, leader)).await
    }

    /// Forwards a cacheable request the cache could not answer — with the
    /// validators of a stale entry if it has any, with its `Range` if the
    /// plan passes ranges through — and does what the answer means.
    async fn fetch(
        &self,
        request: &CacheableRequest,
        mut parts: Parts,
        prior: Prior,
        leader: Option<Leader>,
    ) -> Result<Served, Failed> {
        let plan;
        (parts.headers, plan) = request.prepare(&prior);
        let presented = request.presented(self.max_object_size);
        let route = request.route.name.as_str();
        let sent = self.cache.now();
        let response = match self.send_upstream(parts, origin::no_body(), route).await {
            Ok(response) => response,
            Err(error) => {
                let now = self.cache.now();
                return match decide::on_error(&presented, &prior, error.status(), now) {
                    OnError::StandIn(entry, status) => {
                        tracing::warn!(%error, "origin failed; serving stale");
                        Ok(request.answer(&entry, status, now))
                    }
                    OnError::Fail(status) => Err(Failed { error, status }),
                };
            }
        };
        let times = Times {
            request: sent,
            response: self.cache.now(),
        };
        let (head, body) = response.into_parts();
        match decide::on_head(&presented, plan, &prior, &head, times) {
            OnHead::StandIn(entry, status) => Ok(request.answer(&entry, status, times.response)),
            OnHead::Refreshed {
                entry,
                store,
                status,
            } => {
                let served = request.answer(&entry, status, times.response);
                if store {
                    let (variants, looked_up) = (prior.variants, prior.looked_up);
                    self.cache
                        .store(entry, variants, looked_up, leader, times.response);
                }
                Ok(served)
            }
            OnHead::PassOn(status) => {
                let response = Response::from_parts(head, body::stream(body));
                Ok(Served { response, status })
            }
            OnHead::Store {
                entry,
                variants,
                status,
            } => {
                let fill = Fill::new(
                    self.cache.clone(),
                    entry,
                    variants,
                    prior.looked_up,
                    leader,
                    self.max_object_size,
                );
                self.stream_and_store(request, plan, head, body, fill, status)
                    .await
            }
        }
    }

    /// Answers with a response whose body is being stored as it streams:
    /// passed on as it arrives, or, for a range filled whole, read to its
    /// end and cut; a client whose own condition holds gets a 304 while
    /// the body is still read to the end in the background, to fill the cache.
    /// A body the requests waiting on this fetch share moves into a task of
    /// its own when the first of them joins.
    async fn stream_and_store(
        &self,
        request: &CacheableRequest,
        plan: Plan,
        head: http::response::Parts,
        body: OriginResponseBody,
        fill: Fill,
        status: CacheStatus,
    ) -> Result<Served, Failed> {
        let mut whole = (plan == Plan::RangeFill
            && head.headers.contains_key(header::CONTENT_LENGTH))
        .then(|| fill.entry().clone());
        let received = fill.entry().response_time;
        let body = StoringBody::new(body, fill);
        if let Some(whole) = &mut whole {
            // It fits the cache (its declared length was checked), so
            // reading it whole is bounded.
            whole.body = body
                .collect()
                .await
                .map_err(|error| Failed::with(status)(ProxyError::OriginBody(error)))?
                .to_bytes();
            return Ok(request.answer(whole, status, self.cache.now()));
        }
        let body = match body.share(&self.background) {
            Ok(shared) => body::stream(shared),
            Err(body) => body::stream(body),
        };
        if validation::not_modified(&request.client_headers, &head.headers, received) {
            self.background.spawn(drain(body));
            let response = not_modified(&head.headers);
            return Ok(Served { response, status });
        }
        let response = Response::from_parts(head, body);
        Ok(Served { response, status })
    }

    /// Refreshes a stale entry off the request path, unless a fetch for the
    /// same thing is already under way in this process (so once per key),
    /// or in the fleet (another pod stores it for everyone).
    fn refresh_in_background(self: &Arc<Self>, request: &CacheableRequest, prior: Prior) {
        if self.cache.in_flight(request.flight(&prior)) {
            return;
        }
        let proxy = self.clone();
        let (request, parts) = request.refresh();
        self.background.spawn(async move {
            // A refresh is a request of its own, with its own Redis budget.
            let budget = Budget::default();
            let leader = match proxy.cache.admit(request.flight(&prior), &budget).await {
                Admission::Lead(leader) => leader,
                Admission::Collapsed(_) | Admission::Streaming { .. } => {
                    proxy.metrics.background_refresh("elsewhere");
                    return;
                }
                // Another fetch of it started meanwhile and stored nothing:
                // the next request that finds it stale tries again.
                Admission::Alone => return,
            };
            let result = match proxy.fetch(&request, parts, prior, Some(leader)).await {
                // Reading the body to its end is what stores it.
                Ok(Served { response, status }) => match response.into_body().collect().await {
                    Ok(_)
                        if matches!(
                            status,
                            CacheStatus::Stale {
                                not_stored: None,
                                ..
                            }
                        ) =>
                    {
                        "stored"
                    }
                    Ok(_) => "not-stored",
                    Err(_) => "failed",
                },
                Err(Failed { error, .. }) => {
                    tracing::warn!(%error, "background refresh failed");
                    "failed"
                }
            };
            proxy.metrics.background_refresh(result);
        });
    }

    /// The route a request for `path` falls under: the first whose pattern
    /// matches the normalised path.
    pub fn route_for(&self, path: &str) -> Option<Arc<Route>> {
        self.routes.load().find(&key::normalise_path(path)).cloned()
    }

    /// A GET or HEAD on a caching `route` as the cacheable pipeline takes it
    /// in: keyed, and `parts` turned into what the origin gets.
    pub(crate) fn cacheable(
        &self,
        route: Arc<Route>,
        client: &Peer,
        parts: &mut Parts,
    ) -> CacheableRequest {
        let canonical_host = self.canonical_host.as_deref();
        CacheableRequest::new(&self.namespace, canonical_host, route, client, parts)
    }

    /// Largest body the cache takes, which decisions weigh.
    pub(crate) fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    /// Passes a request through untouched by the cache, body streamed both ways.
    async fn forward(
        &self,
        mut parts: Parts,
        body: Incoming,
        client: &Peer,
        route: &str,
        status: CacheStatus,
    ) -> Result<Served, Failed> {
        let host = key::request_host(&parts);
        // What an unsafe request's answer may invalidate.
        let unsafe_target = (!parts.method.is_safe()).then(|| parts.uri.clone());
        origin::add_forwarding_headers(&mut parts.headers, parts.version, client, &host);
        let response = self
            .send_upstream(parts, body.boxed_unsync(), route)
            .await
            .map_err(Failed::with(status))?;
        let fine = response.status().is_success() || response.status().is_redirection();
        if let Some(uri) = unsafe_target
            && fine
        {
            self.invalidate(&host, &uri, response.headers());
        }
        let response = response.map(body::stream);
        Ok(Served { response, status })
    }

    /// After a non-error response to an unsafe request, drops what is stored
    /// for its URL and for the same-host `Location` and `Content-Location`
    /// (RFC 9111 §4.4), whatever route they fall under.
    fn invalidate(&self, host: &str, uri: &Uri, response: &HeaderMap) {
        let hosts = [Some(host), self.canonical_host.as_deref()];
        let linked = [header::LOCATION, header::CONTENT_LOCATION]
            .into_iter()
            .filter_map(|name| response.get(name)?.to_str().ok())
            .filter_map(|value| {
                hosts
                    .iter()
                    .flatten()
                    .find_map(|host| key::same_host_target(value, host))
            });
        for target in std::iter::once(uri.clone()).chain(linked) {
            self.purge(host, &target);
        }
    }

    /// Drops what is stored for a GET of `uri` on `host`, all variants
    /// included, from every tier and every pod: the URL is keyed as a
    /// request for it would be (the canonical host, the route's query rule).
    pub fn purge(&self, host: &str, uri: &Uri) {
        let routes = self.routes.load();
        let keyed = routes
            .find(&key::normalise_path(uri.path()))
            .and_then(|route| request::keyed_uri(uri, &route.key_query));
        let host = self.canonical_host.as_deref().unwrap_or(host);
        let uri = keyed.as_ref().unwrap_or(uri);
        self.cache
            .remove(&CacheKey::for_url(&self.namespace, host, uri));
    }

    /// Sends a request to the origin (its forwarding headers already added)
    /// with hop-by-hop headers removed, timing it into the request's span;
    /// the response comes back cleaned the same way.
    async fn send_upstream(
        &self,
        mut parts: Parts,
        body: OriginBody,
        route: &str,
    ) -> Result<Response<OriginResponseBody>, ProxyError> {
        origin::strip_hop_by_hop(&mut parts.headers);
        let version = parts.version;
        let started = Instant::now();
        let result = self.origin.send(Request::from_parts(parts, body)).await;
        let elapsed = started.elapsed();
        let span = tracing::Span::current();
        span.record("origin_ms", elapsed.as_secs_f64() * 1e3);
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
        span.record("origin_status", response.status().as_u16());
        origin::strip_hop_by_hop(response.headers_mut());
        origin::append_via(response.headers_mut(), version);
        Ok(response)
    }
}

/// What the cache does with a request on `route` (or none), before any
/// lookup: look it up, or forward it and why.
pub fn request_policy(route: Option<&Route>, parts: &Parts) -> RequestPolicy {
    let caches = route.is_some_and(|r| r.caches(&parts.method));
    let cookies_bypass = route.is_some_and(|r| r.cookies == Cookies::Bypass);
    policy::request_policy(caches, cookies_bypass, &parts.headers)
}

/// Reads a body to its end without keeping it (what reading it causes is
/// the point: a fill).
async fn drain(mut body: ProxyBody) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// Adds this cache's member to `Cache-Status`, after any an upstream cache wrote (RFC 9211 §2).
fn append_cache_status(headers: &mut HeaderMap, status: CacheStatus) {
    let ours = status.header_value();
    let value = match headers.get(CACHE_STATUS) {
        Some(earlier) => origin::joined(earlier, &ours).unwrap_or(ours),
        None => ours,
    };
    headers.insert(CACHE_STATUS, value);
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
        append_cache_status(&mut headers, CacheStatus::Bypass(None));
        assert_eq!(headers["cache-status"], "sidecache; fwd=bypass");
        headers.insert("cache-status", HeaderValue::from_static("edge; hit"));
        append_cache_status(&mut headers, CacheStatus::Bypass(None));
        assert_eq!(headers["cache-status"], "edge; hit, sidecache; fwd=bypass");
    }
}
