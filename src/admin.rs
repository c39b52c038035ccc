//! The admin port: `/healthz` (alive), `/readyz` (serving, not shutting down), `/metrics` (Prometheus), `POST /purge` (drop a URL, or every response with a tag), `/explain` (what the cache would do with a URL, [`crate::explain`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};

use crate::body::{self, ProxyBody};
use crate::cache::Cache;
use crate::cache::tags::{self, MAX_TAGS_PER_PURGE};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Content type of the OpenMetrics text that prometheus-client writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report on.
pub struct Admin {
    /// True once the proxy listener is bound, false again when shutdown starts.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub cache: Cache,
    /// Keys a purged URL as a request for it would be keyed.
    pub proxy: Arc<Proxy>,
}

impl Admin {
    /// Answers one admin request: `/explain` reads the tiers (so it
    /// waits), everything else answers at once ([`Admin::handle`]).
    pub async fn serve<B>(&self, request: Request<B>) -> Response<ProxyBody> {
        if request.method() == Method::GET && request.uri().path() == "/explain" {
            let query = request.uri().query().unwrap_or("");
            return crate::explain::respond(&self.proxy, &self.cache, query).await;
        }
        self.handle(&request)
    }

    pub fn handle<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        if request.method() == Method::POST && request.uri().path() == "/purge" {
            return self.purge(request.uri().query().unwrap_or(""));
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET only (POST for /purge)\n",
            );
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.render_metrics());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz, /readyz, /metrics or /explain?url=\n",
            ),
        }
    }
}

impl Admin {
    /// The metrics, with the gauges read from the cache now (metrics knows
    /// nothing of the cache: it is a leaf every module may use).
    fn render_metrics(&self) -> String {
        let memory = self.cache.memory();
        self.metrics.set_memory(memory.bytes(), memory.entries());
        if let Some(redis) = self.cache.redis() {
            self.metrics
                .set_redis(redis.connected(), redis.breaker_open());
            self.metrics.set_redis_nodes(redis.nodes_open());
        }
        self.metrics.render()
    }

    /// `POST /purge?url=http://host/path?query`: drops what is stored for
    /// that URL, every variant included, from L1 here, from L2, and (through
    /// the invalidation channel) from every other pod's L1. The URL is keyed
    /// as a request for it would be: under `cache.host` when one is set,
    /// without the query parameters its route leaves out of keys.
    ///
    /// `POST /purge?tag=a&tag=b[&soft=1]`: every stored response tagged
    /// with one of them, in every pod, is gone (or, soft, stale), see
    /// [`crate::cache::tags`]. `url=` and `tag=` may be combined.
    fn purge(&self, query: &str) -> Response<ProxyBody> {
        let mut url = None;
        let mut tags = Vec::new();
        let mut soft = false;
        for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            match name {
                "url" => url = Some(value.into_owned()),
                "tag" if tags.len() >= MAX_TAGS_PER_PURGE => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("at most {MAX_TAGS_PER_PURGE} tags per purge\n"),
                    );
                }
                "tag" => {
                    if let Some(problem) = tags::refuse_purge_tag(&value) {
                        return text(StatusCode::BAD_REQUEST, format!("{problem}\n"));
                    }
                    tags.push(value.into_owned());
                }
                "soft" => soft = value == "1",
                _ => {}
            }
        }
        if url.is_none() && tags.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "give ?url=http://host/path (percent-encoded) or ?tag=TAG (repeated; &soft=1 to make them stale)\n",
            );
        }
        if soft && tags.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "soft=1 applies to tags; a URL purge is always hard\n",
            );
        }
        let mut said = String::new();
        if let Some(url) = url {
            let Ok(uri) = url.parse::<Uri>() else {
                return text(StatusCode::BAD_REQUEST, format!("not a URL: {url}\n"));
            };
            let Some(authority) = uri.authority().filter(|_| uri.scheme().is_some()) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the URL needs a host: http://host/path\n",
                );
            };
            let host = authority.as_str().to_ascii_lowercase();
            let host = host.strip_suffix(":80").unwrap_or(&host);
            self.proxy.purge(host, &uri);
            self.metrics.purge("url", "hard");
            said.push_str(&format!("purged {url}\n"));
        }
        if !tags.is_empty() {
            self.cache.purge_tags(&tags, soft);
            let mode = if soft { "soft" } else { "hard" };
            for tag in &tags {
                self.metrics.purge("tag", mode);
                let effect = if soft { "stale" } else { "gone" };
                said.push_str(&format!(
                    "purged tag {tag} ({mode}): responses tagged with it are {effect}\n"
                ));
            }
        }
        text(StatusCode::OK, said)
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
