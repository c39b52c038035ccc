//! Purge by tag against the real proxy, origin and Redis Cluster: a purge through one pod reaches every pod and Redis and spares other tags; soft purges make entries stale, not gone; a fetch sent before a purge is not served after it; tag fields reach clients only when exposed; bad purge requests are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::{RedisCluster, cli};
use support::{Origin, Proxy, ProxyConfig, Reply, eventually, routes};

/// The coherence bound README documents (1 s + `command_timeout` + 250 ms),
/// plus slack for a loaded test machine.
const LIMIT: Duration = Duration::from_millis(2500);
/// The Host every pod is reached by, so all pods build the same keys.
const HOST: &str = "app.example";

async fn get(proxy: &Proxy, path: &str) -> support::Answer {
    proxy.send("GET", path, &[("host", HOST)]).await
}

/// Runs blocking harness work (redis-cli, process control) off the runtime's threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// The value of the metric line that starts with `series` (`name{labels}`).
async fn metric(pod: &Proxy, series: &str) -> u64 {
    let metrics = pod.admin("/metrics").await.text();
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

/// A cacheable 200 for ten minutes with these extra header lines.
/// Waits (up to 5 s) until Redis holds `count` stored objects: the pods'
/// queued fills have landed. The other pod is to get its copy from there: a
/// request of its that looked before may fetch the page itself (it waits on
/// the filling pod's lease only within its 50 ms Redis budget), which a
/// loaded machine makes likely.
async fn in_redis(cluster: &RedisCluster, count: usize) {
    let masters = cluster.master_ports();
    eventually("the fills in Redis", Duration::from_secs(5), async || {
        let masters = masters.clone();
        blocking(move || RedisCluster::entries(&masters) >= count).await
    })
    .await;
}

fn tagged(lines: &[(&str, &str)]) -> Reply {
    lines.iter().fold(
        Reply::ok().header("cache-control", "max-age=600"),
        |reply, (name, value)| reply.header(name, value),
    )
}

/// Two pods on one Redis Cluster, connected and subscribed to the
/// invalidation channel, having read its counter once.
async fn two_pods(origin: &Origin, cluster: &RedisCluster) -> (Proxy, Proxy) {
    let config = format!(
        "[redis]\nnodes = {}\ncommand_timeout = \"50ms\"\nconnect_timeout = \"300ms\"\n",
        cluster.seeds()
    );
    let start = || {
        ProxyConfig::new(origin)
            .with(&config)
            .with(routes::cache("/t/**", "600s"))
            .start()
    };
    let (a, b) = (start().await, start().await);
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    for pod in [&a, &b] {
        pod.wait_redis_connected().await;
        eventually(
            "a read of the counter",
            Duration::from_secs(10),
            async || {
                metric(
                    pod,
                    "sidecache_redis_calls_total{op=\"seq\",outcome=\"done\"}",
                )
                .await
                    > 0
            },
        )
        .await;
    }
    eventually(
        "both pods subscribed",
        Duration::from_secs(10),
        async || {
            let ports = ports.clone();
            let subscribers = blocking(move || {
                ports
                    .iter()
                    .filter_map(|&port| cli(port, &["pubsub", "numsub", "sidecache:invalidations"]))
                    .filter_map(|reply| reply.lines().last()?.trim().parse::<u64>().ok())
                    .sum::<u64>()
            })
            .await;
            // One subscription per pod on each master.
            subscribers == 2 * cluster.master_ports().len() as u64
        },
    )
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_through_one_pod_reaches_every_pod_and_redis_and_spares_other_tags() {
    let cluster = blocking(RedisCluster::start).await;
    let origin = Origin::start().await;
    origin.on("/t/shoe", tagged(&[("surrogate-key", "sale product-1")]));
    origin.on("/t/hat", tagged(&[("cache-tag", "product-2, sale")]));
    origin.on("/t/sock", tagged(&[("surrogate-key", "product-3")]));
    origin.on("/t/about", tagged(&[]));
    let (a, b) = two_pods(&origin, &cluster).await;
    let paths = ["/t/shoe", "/t/hat", "/t/sock", "/t/about"];
    // Filled through both pods, then held in both pods' memory.
    for (n, path) in paths.iter().enumerate() {
        let filler = if n % 2 == 0 { &a } else { &b };
        let answer = get(filler, path).await;
        assert!(answer.cache_status().contains("fwd=miss; stored"), "{path}");
        assert_eq!(answer.header("surrogate-key"), "", "tags are not exposed");
        assert_eq!(answer.header("cache-tag"), "");
        in_redis(&cluster, n + 1).await;
        for pod in [&a, &b] {
            eventually("the fill in Redis", Duration::from_secs(5), async || {
                get(pod, path).await.cache_status().contains("; hit")
            })
            .await;
            let hit = get(pod, path).await;
            assert!(
                hit.cache_status().contains("; hit"),
                "{}",
                hit.cache_status()
            );
            assert_eq!(hit.header("surrogate-key"), "", "nor on hits");
        }
    }

    let purged = Instant::now();
    let answer = a.admin_post("/purge?tag=sale").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.text(),
        "purged tag sale (hard): responses tagged with it are gone\n"
    );
    // The pod that took the purge applies it at once; the other within the
    // coherence bound. Each pod's first miss refetches, and what it stores
    // is a hit for the other.
    let shoe = get(&a, "/t/shoe").await;
    assert!(
        shoe.cache_status().contains("fwd=miss; stored"),
        "{}",
        shoe.cache_status()
    );
    assert_eq!(shoe.text(), "/t/shoe #2");
    eventually(
        "B to drop the purged hat",
        LIMIT.saturating_sub(purged.elapsed()),
        async || get(&b, "/t/hat").await.text() != "/t/hat #1",
    )
    .await;
    println!(
        "B stopped serving the purged entry {:?} after the purge",
        purged.elapsed()
    );
    // (Refilled by the other pod, or by this one if that fill is not in
    // Redis yet.)
    assert_ne!(get(&b, "/t/shoe").await.text(), "/t/shoe #1");
    assert_ne!(get(&a, "/t/hat").await.text(), "/t/hat #1");
    assert!(origin.hits("/t/shoe") >= 2);
    assert!(origin.hits("/t/hat") >= 2);
    // Other tags and untagged entries are still hits, in both pods.
    for pod in [&a, &b] {
        for path in ["/t/sock", "/t/about"] {
            let answer = get(pod, path).await;
            assert!(
                answer.cache_status().contains("; hit"),
                "{path}: {}",
                answer.cache_status()
            );
        }
    }
    assert_eq!(origin.hits("/t/sock"), 1);
    assert_eq!(origin.hits("/t/about"), 1);
    assert_eq!(
        metric(&a, "sidecache_purges_total{kind=\"tag\",mode=\"hard\"}").await,
        1
    );
    assert!(metric(&b, "sidecache_tag_purged_reads_total{effect=\"gone\"}").await >= 1);
    // One key per tag in Redis, where a pod starting now learns the purge.
    let keys: u64 = cluster
        .master_ports()
        .iter()
        .filter_map(|&port| cli(port, &["--scan", "--pattern", "sidecache:tag:*"]))
        .map(|reply| reply.lines().filter(|l| !l.is_empty()).count() as u64)
        .sum();
    assert_eq!(keys, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_makes_other_pods_revalidate_instead_of_refetch() {
    let cluster = blocking(RedisCluster::start).await;
    let origin = Origin::start().await;
    origin.on(
        "/t/page",
        tagged(&[("surrogate-key", "pages")]).etag("\"v1\""),
    );
    let (a, b) = two_pods(&origin, &cluster).await;
    assert!(
        get(&a, "/t/page")
            .await
            .cache_status()
            .contains("fwd=miss; stored")
    );
    in_redis(&cluster, 1).await;
    eventually("B holds the page", Duration::from_secs(5), async || {
        get(&b, "/t/page").await.cache_status().contains("; hit")
    })
    .await;

    let answer = a.admin_post("/purge?tag=pages&soft=1").await;
    assert_eq!(
        answer.text(),
        "purged tag pages (soft): responses tagged with it are stale\n"
    );
    let mut statuses = Vec::new();
    eventually("B to revalidate", LIMIT, async || {
        let status = get(&b, "/t/page").await.cache_status().to_owned();
        let done = status.contains("fwd=stale");
        statuses.push(status);
        done
    })
    .await;
    assert_eq!(
        statuses.last().unwrap(),
        "sidecache; fwd=stale; fwd-status=304; stored",
        "{statuses:?}"
    );
    // The stored body, validated: no new fetch of it, and fresh again.
    assert_eq!(origin.not_modified("/t/page"), 1);
    assert_eq!(origin.hits("/t/page"), 2);
    let answer = get(&b, "/t/page").await;
    assert!(
        answer.cache_status().contains("; hit"),
        "{}",
        answer.cache_status()
    );
    assert_eq!(answer.text(), "/t/page #1");
    assert_eq!(
        metric(&a, "sidecache_purges_total{kind=\"tag\",mode=\"soft\"}").await,
        1
    );
}

/// A memory-only proxy caching `/m/**` (and whatever `more` adds).
async fn memory_only(origin: &Origin, more: &str) -> Proxy {
    ProxyConfig::new(origin)
        .with(more)
        .with(routes::cache("/m/**", "600s"))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_tag_purge_applies_to_the_memory_tier() {
    let origin = Origin::start().await;
    origin.on("/m/a", tagged(&[("cache-tag", "x,y")]));
    origin.on("/m/b", tagged(&[("cache-tag", "y")]));
    origin.on("/m/c", tagged(&[("cache-tag", "z")]));
    let proxy = memory_only(&origin, "").await;
    for path in ["/m/a", "/m/b", "/m/c"] {
        proxy.get(path).await;
        assert!(proxy.get(path).await.cache_status().contains("; hit"));
    }
    // Two tags, one of which nothing carries.
    assert_eq!(
        proxy.admin_post("/purge?tag=y&tag=nothing").await.status,
        200
    );
    for path in ["/m/a", "/m/b"] {
        let answer = proxy.get(path).await;
        assert!(
            answer.cache_status().contains("fwd=miss; stored"),
            "{path}: {}",
            answer.cache_status()
        );
        assert!(
            proxy.get(path).await.cache_status().contains("; hit"),
            "refilled"
        );
    }
    assert!(proxy.get("/m/c").await.cache_status().contains("; hit"));
    assert_eq!(
        [
            origin.hits("/m/a"),
            origin.hits("/m/b"),
            origin.hits("/m/c")
        ],
        [2, 2, 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_serves_stale_while_revalidating_and_refreshes_once() {
    let origin = Origin::start().await;
    origin.on(
        "/m/swr",
        tagged(&[("surrogate-key", "news")])
            .header("cache-control", "stale-while-revalidate=60")
            .body("old"),
    );
    let proxy = Arc::new(memory_only(&origin, "").await);
    proxy.get("/m/swr").await;
    assert!(proxy.get("/m/swr").await.cache_status().contains("; hit"));
    origin.on(
        "/m/swr",
        tagged(&[("surrogate-key", "news")])
            .body("new")
            .delay(Duration::from_millis(300)),
    );
    proxy.admin_post("/purge?tag=news&soft=1").await;
    let stale = proxy.get("/m/swr").await;
    assert_eq!(stale.text(), "old");
    assert!(
        stale
            .cache_status()
            .ends_with("; detail=stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    eventually("the refreshed body", Duration::from_secs(3), async || {
        proxy.get("/m/swr").await.text() == "new"
    })
    .await;
    assert_eq!(origin.hits("/m/swr"), 2, "refreshed once");
    assert!(metric(&proxy, "sidecache_tag_purged_reads_total{effect=\"stale\"}").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_sent_before_a_purge_is_not_served_after_it() {
    let origin = Origin::start().await;
    origin.on(
        "/m/slow",
        tagged(&[("surrogate-key", "slow")]).delay(Duration::from_millis(500)),
    );
    let proxy = Arc::new(memory_only(&origin, "").await);
    let before = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get("/m/slow").await })
    };
    // And one that collapses into it, waiting for its fill.
    origin.wait_for_hits("/m/slow", 1).await;
    let waiting = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get("/m/slow").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.admin_post("/purge?tag=slow").await.status, 200);
    // The fetch under way still answers the request that sent it ...
    let first = before.await.unwrap();
    assert_eq!(first.text(), "/m/slow #1");
    // ... but not the one that waited for it, nor any later one.
    let second = waiting.await.unwrap();
    assert_eq!(second.text(), "/m/slow #2", "{}", second.cache_status());
    let third = proxy.get("/m/slow").await;
    assert!(
        third.cache_status().contains("; hit"),
        "{}",
        third.cache_status()
    );
    assert_eq!(third.text(), "/m/slow #2");
    assert_eq!(origin.hits("/m/slow"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_fields_reach_clients_only_when_exposed() {
    let origin = Origin::start().await;
    let reply = tagged(&[
        ("surrogate-key", "a b"),
        ("cache-tag", "c"),
        ("x-tags", "d"),
    ]);
    origin.on("/m/tags", reply.clone());
    origin.on("/pass/tags", reply);
    let bypass = "[[routes]]\npath = \"/pass/*\"\ncache = false\n";
    let hidden = memory_only(&origin, bypass).await;
    for path in ["/m/tags", "/m/tags", "/pass/tags"] {
        let answer = hidden.get(path).await;
        assert_eq!(
            answer.header("surrogate-key"),
            "",
            "{path}: {}",
            answer.cache_status()
        );
        assert_eq!(answer.header("cache-tag"), "");
        assert_eq!(answer.header("x-tags"), "d", "not a tag field here");
    }

    let exposed = memory_only(
        &origin,
        &format!(
            "[cache]\nexpose_tags = true\ntag_headers = [\"X-Tags\", \"Surrogate-Key\"]\n{bypass}"
        ),
    )
    .await;
    let miss = exposed.get("/m/tags").await;
    let hit = exposed.get("/m/tags").await;
    assert!(hit.cache_status().contains("; hit"));
    for answer in [&miss, &hit] {
        assert_eq!(answer.header("surrogate-key"), "a b");
        assert_eq!(answer.header("x-tags"), "d");
    }
    // Only the configured fields tag: `c` is no tag here, `d` is.
    exposed.admin_post("/purge?tag=c").await;
    assert!(
        exposed
            .get("/m/tags")
            .await
            .cache_status()
            .contains("; hit")
    );
    exposed.admin_post("/purge?tag=d").await;
    assert!(
        exposed
            .get("/m/tags")
            .await
            .cache_status()
            .contains("fwd=miss")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_purge_requests_are_refused() {
    let origin = Origin::start().await;
    let proxy = memory_only(&origin, "").await;
    let too_many: String = (0..65).map(|n| format!("tag=t{n}&")).collect();
    let long = "x".repeat(257);
    for (query, message) in [
        (too_many.as_str(), "at most 64 tags per purge\n"),
        ("tag=", "a tag must not be empty\n"),
        ("tag=a&tag=", "a tag must not be empty\n"),
        (&format!("tag={long}"), "a tag is at most 256 bytes\n"),
        (
            "tag=a%2Cb",
            "\"a,b\": spaces and commas separate tags, so no tag contains one\n",
        ),
        (
            "soft=1",
            "give ?url=http://host/path (percent-encoded) or ?tag=TAG (repeated; &soft=1 to make them stale)\n",
        ),
        (
            "url=http%3A%2F%2Fh%2Fx&soft=1",
            "soft=1 applies to tags; a URL purge is always hard\n",
        ),
    ] {
        let answer = proxy.admin_post(&format!("/purge?{query}")).await;
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(answer.text(), message, "{query}");
    }
    assert_eq!(
        metric(&proxy, "sidecache_purges_total{kind=\"tag\",mode=\"hard\"}").await,
        0
    );
}
