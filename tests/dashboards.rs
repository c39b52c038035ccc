//! The Grafana dashboard (`deploy/grafana/sidecache.json`) and the alerts (`deploy/k8s/components/alerts/prometheusrule.yaml`) query only series a real proxy exports: traffic through a proxy on a real Redis Cluster makes every family appear, and every `sidecache_*` name in their PromQL must be in its `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::redis::{RedisCluster, seeds};
use support::{Origin, Proxy, ProxyConfig, Reply, eventually, lazy_message, routes};

const DASHBOARD: &str = include_str!("../deploy/grafana/sidecache.json");
const RULES: &str = include_str!("../deploy/k8s/components/alerts/prometheusrule.yaml");

/// Every `expr` string in the dashboard: panel targets and the template
/// variables' queries, wherever they nest.
fn dashboard_queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                match (name.as_str(), field) {
                    ("expr" | "definition", Value::String(query)) => out.push(query.clone()),
                    _ => dashboard_queries(field, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_queries(item, out)),
        _ => {}
    }
}

/// Every rule's `expr` in the PrometheusRule: a one-line value, or a block
/// scalar (`expr: |`) made of the lines indented deeper than the key.
/// (A YAML parser for one field of one file would be a dependency for
/// little; `yamllint --strict` in scripts/check-deploy checks the syntax.)
fn rule_queries(yaml: &str) -> Vec<String> {
    let mut queries = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with('|') && !value.starts_with('>') {
            queries.push(value.to_owned());
            continue;
        }
        let indent = line.len() - trimmed.len();
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent;
            if !next.trim().is_empty() && !deeper {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            lines.next();
        }
        queries.push(block);
    }
    queries
}

/// The `sidecache_*` identifiers in a PromQL expression (metric names: the
/// only identifiers with that prefix, since labels here never carry it).
fn metric_names(query: &str) -> BTreeSet<String> {
    let identifier = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (at, _) in query.match_indices("sidecache_") {
        if query[..at].chars().next_back().is_some_and(identifier) {
            continue;
        }
        let name: String = query[at..].chars().take_while(|c| identifier(*c)).collect();
        names.insert(name);
    }
    names
}

/// The series names in a `/metrics` text: every sample line's name
/// (histograms as `_bucket`, `_count` and `_sum`, counters with `_total`,
/// as Prometheus stores them).
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// What a queried name that is not exported is, for the failure message.
fn missing(name: &str, exported: &BTreeSet<String>) -> String {
    let histogram = ["_bucket", "_count", "_sum"]
        .iter()
        .any(|suffix| exported.contains(&format!("{name}{suffix}")));
    if histogram {
        format!("{name} (a histogram: query {name}_bucket, _count or _sum)")
    } else if exported.contains(&format!("{name}_total")) {
        format!("{name} (a counter: query {name}_total)")
    } else {
        name.to_owned()
    }
}

#[test]
fn the_queries_are_read_from_both_files() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let dashboard_names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    // Every panel the issue asks for has its family.
    for family in [
        "sidecache_requests_total",
        "sidecache_origin_duration_seconds_bucket",
        "sidecache_redis_calls_total",
        "sidecache_redis_node_open",
        "sidecache_redis_breaker_open",
        "sidecache_background_refreshes_total",
        "sidecache_memory_flushes_total",
        "sidecache_shadow_requests_total",
        "sidecache_shadow_saved_bytes_total",
    ] {
        assert!(dashboard_names.contains(family), "{family}");
    }
    let rules = rule_queries(RULES);
    assert_eq!(rules.len(), 5, "{rules:#?}");
    assert!(
        rules[0].contains("offset 1d") && rules[0].ends_with("> 1\n"),
        "{}",
        rules[0]
    );
    assert_eq!(
        rules[1],
        "max by (namespace, pod) (sidecache_redis_breaker_open) == 1"
    );
    assert_eq!(
        metric_names("rate(sidecache_a_total[5m]) / x_sidecache_b + sidecache_c_bucket{le=\"1\"}"),
        BTreeSet::from(["sidecache_a_total".into(), "sidecache_c_bucket".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    // Redis comes up after the proxy: the memory tier it filled meanwhile
    // is cleared once it reads the fleet's invalidation counter (a memory
    // flush, reason "start").
    let ports = RedisCluster::reserve_ports();
    let origin = Origin::start().await;
    let cached = Reply::ok().header("cache-control", "max-age=60");
    origin.on("/r/early", cached.clone());
    origin.on("/r/a", cached.clone());
    origin.on(
        "/r/collapse",
        cached.clone().delay(Duration::from_millis(300)),
    );
    origin.on(
        "/swr/a",
        Reply::ok().header("cache-control", "max-age=1, stale-while-revalidate=60"),
    );
    origin.on("/r/slow", Reply::ok().delay(Duration::from_secs(3)));
    let proxy: Arc<Proxy> = Arc::new(
        ProxyConfig::new(&origin)
            .origin_timeout("1s")
            .with(format!(
                "[redis]\nnodes = {}\ncommand_timeout = \"200ms\"\nconnect_timeout = \"300ms\"\n",
                seeds(&ports)
            ))
            .with(routes::cache("/r/**", "60s"))
            .with(routes::cache("/swr/**", "0s"))
            .with(routes::cache("/shadow/**", "60s") + "shadow = true\n")
            .start()
            .await,
    );
    proxy.get("/r/early").await;
    let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_on(&ports))
        .await
        .unwrap();
    proxy.wait_redis_connected().await;

    // A miss and a hit; a purge (announced through Redis).
    proxy.get("/r/a").await;
    assert!(
        proxy
            .get("/r/a")
            .await
            .cache_status()
            .starts_with("sidecache; hit")
    );
    assert_eq!(proxy.purge(&proxy.url("/r/a")).await.status, 200);
    // A fetch under way when its URL is purged: not stored.
    let feed = origin.feed("/r/late", cached.clone(), Some(3));
    let late = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get("/r/late").await })
    };
    origin.wait_for_hits("/r/late", 1).await;
    assert_eq!(proxy.purge(&proxy.url("/r/late")).await.status, 200);
    feed.send("old").await;
    feed.end();
    assert_eq!(late.await.unwrap().text(), "old");
    // Requests collapsed onto one fetch.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.get("/r/collapse").await })
        })
        .collect();
    for answer in waiting {
        answer.await.unwrap();
    }
    assert_eq!(origin.hits("/r/collapse"), 1);
    // A stale serve with a background refresh.
    proxy.get("/swr/a").await;
    proxy.advance(Duration::from_secs(5));
    let stale = proxy.get("/swr/a").await;
    assert!(
        stale
            .cache_status()
            .ends_with("detail=stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    // A shadow route's would-miss and would-hit.
    proxy.get("/shadow/a").await;
    assert!(
        proxy
            .get("/shadow/a")
            .await
            .cache_status()
            .ends_with("detail=shadow-hit")
    );
    // An origin error (no response head within origin.timeout).
    assert_eq!(proxy.get("/r/slow").await.status, 504);

    let mut queried = BTreeSet::new();
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    queries.extend(rule_queries(RULES));
    for query in &queries {
        queried.extend(metric_names(query));
    }
    assert!(queried.len() >= 10, "{queried:?}");

    // The refresh, the Redis writes and the flush counter land in the
    // background: wait until nothing queried is missing, then name what is.
    let absent = std::sync::Mutex::new(Vec::new());
    eventually(
        lazy_message(|| {
            let absent = absent.lock().unwrap();
            format!("series the dashboard or alerts query but /metrics lacks: {absent:?}")
        }),
        Duration::from_secs(10),
        async || {
            let metrics = proxy.admin("/metrics").await.text();
            let exported = exported(&metrics);
            let lacking: Vec<String> = queried
                .iter()
                .filter(|name| !exported.contains(*name))
                .map(|name| missing(name, &exported))
                .collect();
            let done = lacking.is_empty();
            *absent.lock().unwrap() = lacking;
            done
        },
    )
    .await;
    drop(cluster);
}
