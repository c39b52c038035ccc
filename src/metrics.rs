//! Prometheus metrics: requests by route and cache status, origin latency and errors, L1 size.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Route label for requests that matched no route.
pub const UNROUTED: &str = "unrouted";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    cache_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    route: String,
    would: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisCallLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RedisOpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginErrorLabels {
    route: String,
    kind: &'static str,
}

/// Every metric the proxy exports, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    origin_duration: Family<RouteLabels, Histogram>,
    origin_errors: Family<OriginErrorLabels, Counter>,
    memory_bytes: Gauge,
    memory_entries: Gauge,
    redis_calls: Family<RedisCallLabels, Counter>,
    redis_duration: Family<RedisOpLabels, Histogram>,
    redis_connected: Gauge,
    redis_breaker_open: Gauge,
    redis_node_open: Family<NodeLabels, Gauge>,
    background_refreshes: Family<ResultLabels, Counter>,
    memory_flushes: Family<ReasonLabels, Counter>,
    memory_unconfirmed: Counter,
    purges: Family<PurgeLabels, Counter>,
    tag_purged_reads: Family<EffectLabels, Counter>,
    purged_fills: Family<TierLabels, Counter>,
    tags_ignored: Counter,
    client_rejections: Family<ReasonLabels, Counter>,
    shadow_requests: Family<ShadowLabels, Counter>,
    shadow_saved_bytes: Family<RouteLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgeLabels {
    kind: &'static str,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EffectLabels {
    effect: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// A Redis Cluster node, as `host:port`: a handful of values per cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sidecache");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests answered, by route and cache status",
            requests.clone(),
        );
        // 1 ms to ~33 s: covers a local app and a slow origin.
        let origin_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "origin_duration_seconds",
            "Time from sending a request upstream to the origin's response head",
            origin_duration.clone(),
        );
        let origin_errors = Family::<OriginErrorLabels, Counter>::default();
        registry.register(
            "origin_errors",
            "Origin requests that failed, by kind (unreachable, timeout)",
            origin_errors.clone(),
        );
        let memory_bytes = Gauge::default();
        registry.register(
            "cache_memory_bytes",
            "Bytes held by the in-memory tier",
            memory_bytes.clone(),
        );
        let memory_entries = Gauge::default();
        registry.register(
            "cache_memory_entries",
            "Entries held by the in-memory tier",
            memory_entries.clone(),
        );
        let redis_calls = Family::<RedisCallLabels, Counter>::default();
        registry.register(
            "redis_calls",
            "L2 calls by operation (get, lease, set, del, publish) and outcome (hit, miss, won, lost, done, error, timeout, corrupt, skipped by a breaker, no-budget when the request had spent its Redis time, dropped from a full queue)",
            redis_calls.clone(),
        );
        // 50 us to ~0.8 s: Redis answers in well under a millisecond when healthy.
        let redis_duration = Family::<RedisOpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
        });
        registry.register(
            "redis_duration_seconds",
            "Time of L2 calls that were sent, by operation",
            redis_duration.clone(),
        );
        let redis_connected = Gauge::default();
        registry.register(
            "redis_connected",
            "1 while the Redis client has its connections up (absent without [redis])",
            redis_connected.clone(),
        );
        let redis_breaker_open = Gauge::default();
        registry.register(
            "redis_breaker_open",
            "1 while the global circuit breaker skips Redis (every node failing)",
            redis_breaker_open.clone(),
        );
        let redis_node_open = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "redis_node_open",
            "1 while a Redis Cluster node's breaker skips the calls routed to it (one series per node calls went to)",
            redis_node_open.clone(),
        );
        let background_refreshes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "background_refreshes",
            "Stale-while-revalidate refreshes, by result (stored, not-stored, failed)",
            background_refreshes.clone(),
        );
        let memory_flushes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "memory_flushes",
            "Memory tier cleared because invalidations from other pods may have been missed, by reason (gap, behind, reset, start)",
            memory_flushes.clone(),
        );
        let memory_unconfirmed = Counter::default();
        registry.register(
            "memory_unconfirmed",
            "Memory tier lookups skipped under redis.coherence = \"strict\": the pod could not confirm within the bound that it heard every invalidation",
            memory_unconfirmed.clone(),
        );
        let purges = Family::<PurgeLabels, Counter>::default();
        registry.register(
            "purges",
            "Purges taken on the admin port, by kind (url, tag: one per tag) and mode (hard, soft)",
            purges.clone(),
        );
        let tag_purged_reads = Family::<EffectLabels, Counter>::default();
        registry.register(
            "tag_purged_reads",
            "Stored responses found purged by a tag when read, by effect (gone: a miss; stale: soft-purged)",
            tag_purged_reads.clone(),
        );
        let purged_fills = Family::<TierLabels, Counter>::default();
        registry.register(
            "purged_fills",
            "Responses not stored because their URL was purged after their fetch was sent, by tier (memory: the purge was heard by this pod; redis: recorded there)",
            purged_fills.clone(),
        );
        let tags_ignored = Counter::default();
        registry.register(
            "tags_ignored",
            "Tags left out of stored responses: past 64 per response, longer than 256 bytes, or not UTF-8",
            tags_ignored.clone(),
        );
        let client_rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "client_rejections",
            "Client requests refused and connections closed at the proxy's limits, by reason (head-too-large: 431, malformed: 400, header-timeout, idle-timeout)",
            client_rejections.clone(),
        );
        let shadow_requests = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_requests",
            "Requests a shadow route looked up and forwarded, by how the cache would have answered (hit, stale-while-revalidate, stale, miss)",
            shadow_requests.clone(),
        );
        let shadow_saved_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "shadow_saved_bytes",
            "Body bytes of the answers a shadow route's cache would have served without the origin",
            shadow_saved_bytes.clone(),
        );
        Metrics {
            registry,
            purges,
            tag_purged_reads,
            purged_fills,
            tags_ignored,
            shadow_requests,
            shadow_saved_bytes,
            memory_flushes,
            memory_unconfirmed,
            client_rejections,
            background_refreshes,
            redis_calls,
            redis_duration,
            redis_connected,
            redis_breaker_open,
            redis_node_open,
            requests,
            origin_duration,
            origin_errors,
            memory_bytes,
            memory_entries,
        }
    }

    pub fn request(&self, route: &str, cache_status: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                cache_status,
            })
            .inc();
    }

    pub fn origin_duration(&self, route: &str, elapsed: Duration) {
        self.origin_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn origin_error(&self, route: &str, kind: &'static str) {
        self.origin_errors
            .get_or_create(&OriginErrorLabels {
                route: route.to_owned(),
                kind,
            })
            .inc();
    }

    /// A request a shadow route forwarded, how the cache would have answered
    /// it, and the body bytes it would have served itself.
    pub fn shadow(&self, route: &str, would: &'static str, saved_bytes: u64) {
        self.shadow_requests
            .get_or_create(&ShadowLabels {
                route: route.to_owned(),
                would,
            })
            .inc();
        if saved_bytes > 0 {
            self.shadow_saved_bytes
                .get_or_create(&RouteLabels {
                    route: route.to_owned(),
                })
                .inc_by(saved_bytes);
        }
    }

    pub fn background_refresh(&self, result: &'static str) {
        self.background_refreshes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn memory_flush(&self, reason: &'static str) {
        self.memory_flushes
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A memory tier lookup skipped: strict coherence, not confirmed.
    pub fn memory_unconfirmed(&self) {
        self.memory_unconfirmed.inc();
    }

    /// A purge taken: `kind` url or tag, `mode` hard or soft.
    pub fn purge(&self, kind: &'static str, mode: &'static str) {
        self.purges.get_or_create(&PurgeLabels { kind, mode }).inc();
    }

    /// A stored response read after a purge of one of its tags.
    pub fn tag_purged_read(&self, effect: &'static str) {
        self.tag_purged_reads
            .get_or_create(&EffectLabels { effect })
            .inc();
    }

    /// A response not stored in `tier` (memory, redis): its URL was purged
    /// after its fetch was sent.
    pub fn purged_fill(&self, tier: &'static str) {
        self.purged_fills.get_or_create(&TierLabels { tier }).inc();
    }

    pub fn tags_ignored(&self, count: usize) {
        self.tags_ignored.inc_by(count as u64);
    }

    pub fn client_rejection(&self, reason: &'static str) {
        self.client_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn redis_call(&self, op: &'static str, outcome: &'static str) {
        self.redis_calls
            .get_or_create(&RedisCallLabels { op, outcome })
            .inc();
    }

    pub fn redis_duration(&self, op: &'static str, elapsed: Duration) {
        self.redis_duration
            .get_or_create(&RedisOpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    /// The memory tier's size, set just before rendering.
    pub fn set_memory(&self, bytes: u64, entries: u64) {
        self.memory_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.memory_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The Redis client's state, set just before rendering.
    pub fn set_redis(&self, connected: bool, breaker_open: bool) {
        self.redis_connected.set(i64::from(connected));
        self.redis_breaker_open.set(i64::from(breaker_open));
    }

    /// Each cluster node's breaker, set just before rendering.
    pub fn set_redis_nodes(&self, nodes: Vec<(String, bool)>) {
        // Nodes that left the cluster's slot map drop out.
        self.redis_node_open.clear();
        for (node, open) in nodes {
            self.redis_node_open
                .get_or_create(&NodeLabels { node })
                .set(i64::from(open));
        }
    }

    /// The Prometheus text exposition; the gauges are set by the caller first.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
