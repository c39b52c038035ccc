//! The shared Redis tier against real Redis: a 3+3 cluster (or one standalone server) started by the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::{RedisCluster, RedisStandalone, cli, seeds};
use support::{Origin, Proxy, ProxyConfig, eventually, routes};

fn route() -> String {
    routes::cache("/r/**", "60s")
}

fn redis_toml(nodes: &str) -> String {
    redis_toml_with(nodes, "50ms")
}

fn redis_toml_with(nodes: &str, command_timeout: &str) -> String {
    format!(
        "[redis]\nnodes = {nodes}\ncommand_timeout = \"{command_timeout}\"\nconnect_timeout = \"300ms\"\n"
    )
}

async fn proxy_on(origin: &Origin, nodes: &str, extra: &str) -> Proxy {
    ProxyConfig::new(origin)
        .with(extra)
        .with(redis_toml(nodes))
        .with(route())
        .start()
        .await
}

/// The Host every pod is reached by (a Service name), so all pods build the
/// same keys; each test proxy listens on its own port, which a client's Host
/// would otherwise carry.
const HOST: &str = "app.example";

async fn get(proxy: &Proxy, path: &str) -> support::Answer {
    proxy.send("GET", path, &[("host", HOST)]).await
}

/// Runs blocking harness work (redis-cli, process control) off the runtime's threads.
/// Waits (up to 5 s) until the masters of `cluster` hold `count` keys: the
/// fills' queued Redis writes have landed.
async fn filled(cluster: &Arc<std::sync::Mutex<RedisCluster>>, count: u64) {
    eventually("the fill", Duration::from_secs(5), async || {
        let c = cluster.clone();
        blocking(move || c.lock().unwrap().total_keys()).await == count
    })
    .await;
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_fetched_through_one_pod_is_a_hit_for_another() {
    let cluster = Arc::new(blocking(RedisCluster::start).await);
    let origin = Origin::start().await;
    let a = proxy_on(&origin, &cluster.seeds(), "").await;
    let b = proxy_on(&origin, &cluster.seeds(), "").await;
    a.wait_redis_connected().await;
    b.wait_redis_connected().await;

    assert_eq!(
        get(&a, "/r/shared").await.cache_status(),
        "sidecache; fwd=miss; stored"
    );
    let c = cluster.clone();
    eventually("the L2 write", Duration::from_secs(5), async || {
        let c = c.clone();
        blocking(move || c.total_keys()).await == 1
    })
    .await;
    let from_b = get(&b, "/r/shared").await;
    assert!(
        from_b.cache_status().starts_with("sidecache; hit; ttl="),
        "{}",
        from_b.cache_status()
    );
    assert!(
        from_b.cache_status().ends_with("; detail=l2"),
        "{}",
        from_b.cache_status()
    );
    assert_eq!(from_b.text(), "/r/shared #1");
    assert_eq!(origin.hits("/r/shared"), 1);
    // B copied it into its own memory tier.
    assert!(
        !get(&b, "/r/shared")
            .await
            .cache_status()
            .contains("detail=l2")
    );

    let metrics = b.admin("/metrics").await.text();
    assert!(
        metrics.contains("sidecache_redis_calls_total{op=\"get\",outcome=\"hit\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_too_large_for_the_memory_tier_is_kept_and_served_by_redis() {
    let cluster = Arc::new(blocking(RedisCluster::start).await);
    let origin = Origin::start().await;
    let body = vec![b'x'; 200 * 1024];
    origin.on("/r/large", support::Reply::ok().body(body.clone()));
    // Refused without [redis]; with it, Redis holds what L1 cannot.
    let sizes = "[cache]\nmax_object_size = \"1MiB\"\n[cache.memory]\ncapacity = \"64KiB\"\n";
    let proxy = proxy_on(&origin, &cluster.seeds(), sizes).await;
    proxy.wait_redis_connected().await;

    let first = get(&proxy, "/r/large").await;
    assert_eq!(first.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(first.body, body);
    let c = cluster.clone();
    eventually("the L2 write", Duration::from_secs(5), async || {
        let c = c.clone();
        blocking(move || c.total_keys()).await == 1
    })
    .await;
    // Every hit comes from Redis: the memory tier never keeps it.
    for _ in 0..2 {
        let hit = get(&proxy, "/r/large").await;
        let status = hit.cache_status();
        assert!(
            status.starts_with("sidecache; hit; ttl=") && status.ends_with("; detail=l2"),
            "{status}"
        );
        assert_eq!(hit.body, body);
    }
    assert_eq!(origin.hits("/r/large"), 1);
    let metrics = proxy.admin("/metrics").await.text();
    assert!(
        metrics.contains("sidecache_cache_memory_entries 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_spread_over_all_three_masters() {
    let cluster = Arc::new(blocking(RedisCluster::start).await);
    let origin = Origin::start().await;
    let proxy = proxy_on(&origin, &cluster.seeds(), "").await;
    proxy.wait_redis_connected().await;
    for i in 0..30 {
        get(&proxy, &format!("/r/spread/{i}")).await;
    }
    let c = cluster.clone();
    eventually(
        "30 keys in the cluster",
        Duration::from_secs(5),
        async || {
            let c = c.clone();
            blocking(move || c.total_keys()).await == 30
        },
    )
    .await;
    let c = cluster.clone();
    let per_master = blocking(move || {
        let masters = c.master_ports();
        masters
            .iter()
            .map(|&port| (port, c.dbsize(port)))
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(per_master.len(), 3);
    for (port, keys) in &per_master {
        assert!(*keys > 0, "master {port} holds no entries: {per_master:?}");
    }
    // Keys carry their own hash as the hash tag, so their slots differ.
    let port = per_master[0].0;
    let key = blocking(move || cli(port, &["randomkey"]).unwrap()).await;
    assert!(
        key.starts_with("sidecache:{") && key.ends_with('}'),
        "{key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_all_of_redis_down_requests_succeed_and_l2_resumes_after_restart() {
    let mut cluster = blocking(RedisCluster::start).await;
    let origin = Origin::start().await;
    let a = proxy_on(&origin, &cluster.seeds(), "").await;
    let b = proxy_on(&origin, &cluster.seeds(), "").await;
    a.wait_redis_connected().await;
    b.wait_redis_connected().await;
    get(&a, "/r/warm").await;

    let cluster_down = blocking(move || {
        for node in &mut cluster.nodes {
            node.kill();
        }
        cluster
    })
    .await;
    // Every request still succeeds from the origin, none waits on Redis for
    // long: the deadline is 50 ms, and the breaker soon skips Redis entirely.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let answer = get(&b, &format!("/r/down/{i}")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(answer.status, 200);
        assert!(
            answer.cache_status().contains("fwd=miss"),
            "{}",
            answer.cache_status()
        );
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "slowest request took {slowest:?}"
    );
    eprintln!("with Redis down, slowest of 20 requests: {slowest:?}");
    assert_eq!(get(&b, "/r/warm").await.status, 200);
    assert_eq!(b.admin("/readyz").await.status, 200, "ready without Redis");
    let metrics = b.admin("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "sidecache_redis_breaker_open 1"),
        "{metrics}"
    );

    // Same ports, same cluster config: the proxies find it again by themselves.
    let cluster = Arc::new(
        blocking(move || {
            let mut cluster = cluster_down;
            for node in &mut cluster.nodes {
                node.restart();
            }
            cluster.wait_ok(Duration::from_secs(30));
            cluster
        })
        .await,
    );
    let mut round = 0;
    eventually(
        "L2 hits after the restart",
        Duration::from_secs(30),
        async || {
            round += 1;
            let path = format!("/r/back/{round}");
            get(&a, &path).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            get(&b, &path).await.cache_status().contains("detail=l2")
        },
    )
    .await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_no_request() {
    let cluster = blocking(RedisCluster::start).await;
    let origin = Origin::start().await;
    let filler = proxy_on(&origin, &cluster.seeds(), "").await;
    // No memory tier: every request of this proxy goes to L2.
    let reader = Arc::new(
        proxy_on(
            &origin,
            &cluster.seeds(),
            "[cache.memory]\ncapacity = \"0\"\n",
        )
        .await,
    );
    filler.wait_redis_connected().await;
    reader.wait_redis_connected().await;
    const URLS: usize = 60;
    for i in 0..URLS {
        get(&filler, &format!("/r/load/{i}")).await;
    }
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    filled(&cluster, URLS as u64).await;
    let origin_before = (0..URLS)
        .map(|i| origin.hits(&format!("/r/load/{i}")))
        .sum::<usize>();

    // Four clients, 8 s of steady load; one master dies after 1 s.
    let started = Instant::now();
    let run_for = Duration::from_secs(8);
    let mut clients = Vec::new();
    for client in 0..4 {
        let reader = reader.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = client;
            while started.elapsed() < run_for {
                let answer = get(&reader, &format!("/r/load/{}", i % URLS)).await;
                seen.push((
                    started.elapsed(),
                    answer.status.as_u16(),
                    answer.cache_status().contains("hit"),
                ));
                i += 4;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = cluster.clone();
    let killed_at = started.elapsed();
    let victim = blocking(move || {
        let mut cluster = c.lock().unwrap();
        let victim = cluster.master_ports()[0];
        cluster.node(victim).kill();
        victim
    })
    .await;
    let mut results = Vec::new();
    for client in clients {
        results.extend(client.await.unwrap());
    }
    let failed = results
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .count();
    let misses: Vec<Duration> = results
        .iter()
        .filter(|(t, _, hit)| !hit && *t >= killed_at)
        .map(|(t, ..)| *t)
        .collect();
    let window = misses
        .last()
        .map_or(Duration::ZERO, |last| *last - killed_at);
    let origin_during = (0..URLS)
        .map(|i| origin.hits(&format!("/r/load/{i}")))
        .sum::<usize>()
        - origin_before;
    let in_window = results
        .iter()
        .filter(|(t, ..)| *t >= killed_at && *t <= killed_at + window);
    let (window_hits, window_total) =
        in_window.fold((0, 0), |(h, n), (_, _, hit)| (h + usize::from(*hit), n + 1));
    eprintln!(
        "failover: killed master {victim} at {killed_at:?}; {} requests, {failed} failed, {} misses after the kill, \
         L2 hits lost for {window:?} (in that window {window_hits} of {window_total} requests were still L2 hits), \
         origin saw {origin_during} requests",
        results.len(),
        misses.len()
    );
    assert_eq!(failed, 0, "no client request may fail");
    assert!(results.len() > 100, "the load ran: {}", results.len());
    // However long the failover took on this machine, L2 serves again after it.
    let c = cluster.clone();
    blocking(move || c.lock().unwrap().wait_ok(Duration::from_secs(30))).await;
    eventually(
        "L2 hits after the failover",
        Duration::from_secs(30),
        async || {
            get(&reader, "/r/load/0")
                .await
                .cache_status()
                .contains("hit")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_before_redis_picks_it_up_when_it_appears() {
    let ports = RedisCluster::reserve_ports();
    let origin = Origin::start().await;
    let proxy = proxy_on(&origin, &seeds(&ports), "").await;
    for i in 0..3 {
        let answer = get(&proxy, &format!("/r/early/{i}")).await;
        assert_eq!(answer.status, 200);
    }
    let cluster = Arc::new(blocking(move || RedisCluster::start_on(&ports)).await);
    let mut round = 0;
    let c = cluster.clone();
    eventually("the first L2 write", Duration::from_secs(30), async || {
        round += 1;
        get(&proxy, &format!("/r/late/{round}")).await;
        let c = c.clone();
        blocking(move || c.total_keys()).await > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mode_shares_entries_and_a_corrupt_value_is_a_miss() {
    let redis = Arc::new(blocking(RedisStandalone::start).await);
    let origin = Origin::start().await;
    let node = format!("[\"127.0.0.1:{}\"]", redis.node.port);
    let standalone =
        format!("[redis]\nmode = \"standalone\"\nnodes = {node}\ncommand_timeout = \"50ms\"\n");
    let start = || {
        ProxyConfig::new(&origin)
            .with(&standalone)
            .with(route())
            .start()
    };
    let a = start().await;
    let b = start().await;
    a.wait_redis_connected().await;
    b.wait_redis_connected().await;

    get(&a, "/r/doc").await;
    let r = redis.clone();
    eventually("the L2 write", Duration::from_secs(5), async || {
        let r = r.clone();
        blocking(move || r.cli(&["dbsize"])).await.as_deref() == Some("1")
    })
    .await;
    assert!(get(&b, "/r/doc").await.cache_status().contains("detail=l2"));

    // Overwrite the stored value with garbage: a third pod reads it as a miss
    // (and removes it), never as an error.
    let r = redis.clone();
    let key = blocking(move || {
        let key = r.cli(&["randomkey"]).unwrap();
        assert_eq!(
            r.cli(&["set", &key, "not an entry", "px", "60000"])
                .as_deref(),
            Some("OK")
        );
        key
    })
    .await;
    let c = start().await;
    c.wait_redis_connected().await;
    let answer = get(&c, "/r/doc").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.cache_status(), "sidecache; fwd=miss; stored");
    assert_eq!(answer.text(), "/r/doc #2");
    let metrics = c.admin("/metrics").await.text();
    assert!(metrics.contains("outcome=\"corrupt\"} 1"), "{metrics}");
    // The garbage is gone: removed, then replaced by the new fill.
    let r = redis.clone();
    eventually("the garbage replaced", Duration::from_secs(5), async || {
        let (r, key) = (r.clone(), key.clone());
        blocking(move || r.cli(&["get", &key]))
            .await
            .is_some_and(|v| v != "not an entry")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_collapse_concurrent_misses_into_one_origin_fetch() {
    let cluster = blocking(RedisCluster::start).await;
    let origin = Origin::start().await;
    origin.on(
        "/r/hot",
        support::Reply::ok()
            .body("hot")
            .delay(Duration::from_millis(500)),
    );
    let mut pods = Vec::new();
    for _ in 0..3 {
        // A Redis call past its deadline fails open into a fetch of its own,
        // as it should; this test is about collapsing, so the deadline is
        // far above what a loaded CI machine makes a call take.
        let pod = ProxyConfig::new(&origin)
            .with(redis_toml_with(&cluster.seeds(), "1s"))
            .with(route())
            .start()
            .await;
        pod.wait_redis_connected().await;
        pods.push(Arc::new(pod));
    }
    let requests: Vec<_> = (0..300)
        .map(|i| {
            let pod = pods[i % 3].clone();
            tokio::spawn(async move { get(&pod, "/r/hot").await })
        })
        .collect();
    let mut collapsed = 0;
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "hot");
        collapsed += usize::from(answer.cache_status().ends_with("collapsed"));
    }
    eprintln!(
        "3 pods, 300 concurrent requests: origin saw {}, {collapsed} collapsed",
        origin.hits("/r/hot")
    );
    assert_eq!(origin.hits("/r/hot"), 1);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_canonical_host_pods_reached_by_different_names_share_every_entry() {
    let cluster = Arc::new(blocking(RedisCluster::start).await);
    let origin = Origin::start().await;
    origin.on(
        "/r/greeting",
        support::Reply::ok()
            .header("vary", "Accept-Language")
            .echo("accept-language"),
    );
    let canonical = "[cache]\nhost = \"shop.example\"\n";
    let a = proxy_on(&origin, &cluster.seeds(), canonical).await;
    let b = proxy_on(&origin, &cluster.seeds(), canonical).await;
    a.wait_redis_connected().await;
    b.wait_redis_connected().await;
    let paths = ["/r/page", "/r/greeting"];
    let through = async |pod: &Proxy, host: &str, path: &str| {
        pod.send("GET", path, &[("host", host), ("accept-language", "fr")])
            .await
    };
    for path in paths {
        let filled = through(&a, "10.0.0.7:8080", path).await;
        assert_eq!(filled.cache_status(), "sidecache; fwd=miss; stored");
    }
    assert_eq!(origin.last_headers("/r/page")["host"], "shop.example");
    // A plain response, and a variant with its index.
    let c = cluster.clone();
    eventually("the L2 writes", Duration::from_secs(5), async || {
        let c = c.clone();
        blocking(move || c.total_keys()).await == 3
    })
    .await;
    for path in paths {
        let shared = through(&b, "sidecache.shop.svc.cluster.local", path).await;
        assert!(
            shared.cache_status().ends_with("; detail=l2"),
            "{path}: {}",
            shared.cache_status()
        );
        assert_eq!(origin.hits(path), 1, "{path}");
    }
    assert_eq!(
        through(&b, "localhost:8080", "/r/greeting").await.text(),
        "/r/greeting #1 accept-language=fr"
    );

    // A purge through B, naming yet another host, reaches A's memory too.
    assert_eq!(b.purge("http://pod-9:8080/r/page").await.status, 200);
    eventually(
        "A drops the purged page",
        Duration::from_secs(5),
        async || {
            through(&a, "10.0.0.7:8080", "/r/page")
                .await
                .cache_status()
                .contains("fwd=miss")
        },
    )
    .await;
    drop(cluster);
}

/// Two pods, A and B, on one standalone Redis (`deadlines`: extra `[redis]`
/// keys), both connected and subscribed to invalidations, after A has
/// fetched `path` and its L2 write has landed.
struct TwoPods {
    redis: Arc<RedisStandalone>,
    origin: Origin,
    a: Proxy,
    b: Proxy,
}

async fn two_pods_after_a_fill(path: &str, deadlines: &str) -> TwoPods {
    let redis = Arc::new(blocking(RedisStandalone::start).await);
    let origin = Origin::start().await;
    let node = format!("[\"127.0.0.1:{}\"]", redis.node.port);
    let config = format!("[redis]\nmode = \"standalone\"\nnodes = {node}\n{deadlines}");
    let start = || {
        ProxyConfig::new(&origin)
            .with(&config)
            .with(route())
            .start()
    };
    let (a, b) = (start().await, start().await);
    a.wait_redis_connected().await;
    b.wait_redis_connected().await;
    get(&a, path).await;
    let r = redis.clone();
    eventually("A's L2 write", Duration::from_secs(5), async || {
        let r = r.clone();
        blocking(move || r.cli(&["dbsize"])).await.as_deref() == Some("1")
    })
    .await;
    let r = redis.clone();
    eventually("both subscribed", Duration::from_secs(10), async || {
        let r = r.clone();
        let numsub =
            blocking(move || r.cli(&["pubsub", "numsub", "sidecache:invalidations"])).await;
        numsub.is_some_and(|n| n.ends_with("\n2"))
    })
    .await;
    TwoPods {
        redis,
        origin,
        a,
        b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_through_one_pod_reaches_the_others_memory() {
    // `_redis` keeps the server running to the end of the test.
    let TwoPods {
        redis: _redis,
        origin,
        a,
        b,
    } = two_pods_after_a_fill("/r/item", "command_timeout = \"50ms\"\n").await;
    assert!(
        get(&b, "/r/item")
            .await
            .cache_status()
            .contains("detail=l2")
    );
    // Now in B's memory tier.
    assert!(
        !get(&b, "/r/item")
            .await
            .cache_status()
            .contains("detail=l2")
    );

    // A POST through A invalidates the URL: in A, in Redis, and in B's memory.
    origin.on("/r/item", support::Reply::ok().status(204));
    assert_eq!(
        a.send("POST", "/r/item", &[("host", HOST)]).await.status,
        204
    );
    origin.on("/r/item", support::Reply::ok());
    eventually("B's copy invalidated", Duration::from_secs(5), async || {
        !get(&b, "/r/item").await.cache_status().contains("hit")
    })
    .await;
}

#[tokio::test]
async fn an_invalidation_queued_at_shutdown_still_reaches_the_other_pods() {
    // Deadlines longer than the pause below: B's writes wait it out in its
    // queue instead of being dropped.
    let deadlines = "command_timeout = \"5s\"\nconnect_timeout = \"5s\"\n";
    let TwoPods {
        redis,
        origin,
        a,
        b,
    } = two_pods_after_a_fill("/r/gone", deadlines).await;
    let cached = get(&a, "/r/gone").await.cache_status().to_owned();
    assert!(cached.contains("hit") && !cached.contains("l2"), "{cached}");

    // Redis stops answering for a while, so B's DEL and PUBLISH are still
    // queued when B is told to stop right after accepting the POST.
    let pause = Duration::from_millis(1500);
    let millis = pause.as_millis().to_string();
    let r = redis.clone();
    let paused = blocking(move || r.cli(&["client", "pause", &millis, "ALL"])).await;
    assert_eq!(paused.as_deref(), Some("OK"));
    origin.on("/r/gone", support::Reply::ok().status(204));
    let posted = b.send("POST", "/r/gone", &[("host", HOST)]).await;
    assert_eq!(posted.status, 204);
    let stopping = std::time::Instant::now();
    b.running.shutdown().await;
    assert!(
        stopping.elapsed() >= pause / 2,
        "shutdown waited for the queued writes ({:?})",
        stopping.elapsed()
    );
    // Sent before B was gone: A drops its copy at once, not whenever a
    // writer task left behind gets round to it.
    origin.on("/r/gone", support::Reply::ok());
    eventually(
        "A's copy invalidated",
        Duration::from_millis(500),
        async || !get(&a, "/r/gone").await.cache_status().contains("hit"),
    )
    .await;
}

/// Which of `paths` (each stored once, from the origin's first answer)
/// the node on `port` holds: its values carry the origin's body, "{path} #1".
fn held_by(port: u16, paths: &[String]) -> Vec<bool> {
    let keys = cli(port, &["--scan"]).unwrap();
    let bodies: Vec<String> = keys
        .lines()
        .map(|key| cli(port, &["get", key]).unwrap())
        .collect();
    paths
        .iter()
        .map(|path| bodies.iter().any(|b| b.contains(&format!("{path} #1"))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_costs_a_request_at_most_one_deadline_and_the_other_shards_keep_serving() {
    const URLS: usize = 90;
    const CLIENTS: usize = 8;
    const PACE: Duration = Duration::from_millis(10);
    // Each request's Redis work shares this one deadline.
    const BUDGET: Duration = Duration::from_millis(150);
    // Scheduling on a loaded 2-core machine; the origin answers at once.
    const MARGIN: Duration = Duration::from_millis(100);
    let cluster = blocking(RedisCluster::start).await;
    let origin = Origin::start().await;
    let filler = proxy_on(&origin, &cluster.seeds(), "").await;
    // No memory tier: every request of this proxy asks L2.
    let reader = Arc::new(
        ProxyConfig::new(&origin)
            .with("[cache.memory]\ncapacity = \"0\"\n")
            .with(redis_toml_with(&cluster.seeds(), "150ms"))
            .with(route())
            .start()
            .await,
    );
    filler.wait_redis_connected().await;
    reader.wait_redis_connected().await;
    let url = |i: usize| format!("/r/frozen/{i}");
    for i in 0..URLS {
        get(&filler, &url(i)).await;
    }
    let victim = cluster.master_ports()[0];
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    filled(&cluster, URLS as u64).await;
    let on_victim =
        blocking(move || held_by(victim, &(0..URLS).map(url).collect::<Vec<_>>())).await;
    let frozen_urls = on_victim.iter().filter(|on| **on).count();
    assert!(
        (10..URLS - 10).contains(&frozen_urls),
        "keys spread over the masters: {frozen_urls} of {URLS} on {victim}"
    );
    let on_victim = Arc::new(on_victim);

    // Steady load over all URLs, each client paced to one request per
    // PACE (well below what the machine can serve, so that the windows
    // compare what Redis costs rather than how busy the CPU is): a client
    // that waits on Redis falls behind its pace. The master freezes after
    // 2.5 s. Equal windows before (0.5–2.5 s) and during (3.5–5.5 s) the
    // freeze; the second starts after the node's breaker has had time to open.
    let started = Instant::now();
    let frozen_at = Duration::from_millis(2500);
    let before = Duration::from_millis(500)..frozen_at;
    let during = Duration::from_millis(3500)..Duration::from_millis(5500);
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let reader = reader.clone();
        let during = during.clone();
        clients.push(tokio::spawn(async move {
            // (started after, took, URL index, status, L2 hit)
            let mut seen = Vec::new();
            let mut i = client;
            let mut pace = tokio::time::interval(PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while started.elapsed() < during.end {
                pace.tick().await;
                let sent = started.elapsed();
                let answer = get(&reader, &url(i % URLS)).await;
                seen.push((
                    sent,
                    started.elapsed() - sent,
                    i % URLS,
                    answer.status.as_u16(),
                    answer.cache_status().contains("hit"),
                ));
                i += CLIENTS;
            }
            seen
        }));
    }
    tokio::time::sleep(frozen_at).await;
    let c = cluster.clone();
    blocking(move || c.lock().unwrap().freeze_master(victim, false)).await;
    let mut results = Vec::new();
    for client in clients {
        results.extend(client.await.unwrap());
    }

    let failed = results.iter().filter(|r| r.3 != 200).count();
    let latencies = |window: &std::ops::Range<Duration>, healthy: bool| {
        let mut took: Vec<Duration> = results
            .iter()
            .filter(|r| window.contains(&r.0) && on_victim[r.2] != healthy)
            .map(|r| r.1)
            .collect();
        took.sort();
        took
    };
    let (healthy_before, healthy_during) = (latencies(&before, true), latencies(&during, true));
    let (frozen_before, frozen_during) = (latencies(&before, false), latencies(&during, false));
    // Over the budget: the frozen shard's keys against the healthy ones'
    // in the same window, which this machine's load alone slows alike.
    let over_budget = |took: &[Duration]| took.iter().filter(|t| **t > BUDGET).count();
    let slowest = |took: &[Duration]| took.last().copied().unwrap_or_default();
    let healthy_misses_during = results
        .iter()
        .filter(|r| during.contains(&r.0) && !on_victim[r.2] && !r.4)
        .count();
    eprintln!(
        "frozen master {victim} ({frozen_urls} of {URLS} URLs): {} requests, {failed} failed; \
         healthy-shard requests {} before / {} during (slowest {:?} / {:?}, over {BUDGET:?}: {} / {}); \
         frozen-shard requests {} / {} (slowest {:?} / {:?}, over {BUDGET:?}: {} / {})",
        results.len(),
        healthy_before.len(),
        healthy_during.len(),
        slowest(&healthy_before),
        slowest(&healthy_during),
        over_budget(&healthy_before),
        over_budget(&healthy_during),
        frozen_before.len(),
        frozen_during.len(),
        slowest(&frozen_before),
        slowest(&frozen_during),
        over_budget(&frozen_before),
        over_budget(&frozen_during),
    );
    assert!(
        healthy_before.len() > 100,
        "the load ran: {}",
        healthy_before.len()
    );
    // One deadline at most, plus what the machine's load alone costs. (The
    // old code paid a deadline per call, up to three per request, and at
    // least one on every request for the frozen shard's keys.)
    let noise = MARGIN.max(slowest(&healthy_during));
    assert!(
        slowest(&frozen_during) <= BUDGET + noise,
        "a request spent {:?}, more than one Redis deadline ({BUDGET:?}) and {noise:?}",
        slowest(&frozen_during)
    );
    // Only the few calls that open the node's breaker, and one probe per
    // cooldown, pay the deadline.
    assert!(
        over_budget(&frozen_during) <= over_budget(&healthy_during) + frozen_during.len() / 20,
        "{} of {} requests for the frozen shard took over {BUDGET:?}",
        over_budget(&frozen_during),
        frozen_during.len()
    );
    // The goal is 80 % (on a quiet machine this keeps about 100 %); the
    // bound is generous for a loaded 2-core machine, whose load can differ
    // between the windows. Without a breaker per node it fell to about 20 %.
    assert!(
        healthy_during.len() * 10 >= healthy_before.len() * 6,
        "healthy shards kept {} of {} requests",
        healthy_during.len(),
        healthy_before.len()
    );
    assert_eq!(
        healthy_misses_during, 0,
        "keys on healthy shards stay L2 hits"
    );

    // A few deadlines opened the node's breaker; since then its calls are
    // skipped (a probe every cooldown still pays one).
    let victim_series = format!("sidecache_redis_node_open{{node=\"127.0.0.1:{victim}\"}} ");
    assert_eq!(reader.metric(&victim_series).await, 1, "{victim_series}");
    let get_calls =
        |outcome: &str| format!("sidecache_redis_calls_total{{op=\"get\",outcome=\"{outcome}\"}} ");
    let timeouts = reader.metric(&get_calls("timeout")).await;
    let skipped = reader.metric(&get_calls("skipped")).await;
    assert!(
        skipped > 10 * timeouts,
        "{skipped} skipped vs {timeouts} timed out"
    );
    assert_eq!(
        reader.metric("sidecache_redis_breaker_open ").await,
        0,
        "the global breaker stays closed"
    );

    // Thawed, the next probe succeeds and its keys are hits again.
    let c = cluster.clone();
    blocking(move || c.lock().unwrap().node(victim).thaw()).await;
    let victim_url = url(on_victim.iter().position(|on| *on).unwrap());
    eventually(
        "the thawed node to serve again",
        Duration::from_secs(10),
        async || {
            // Requests are what probe the node.
            let hit = get(&reader, &victim_url)
                .await
                .cache_status()
                .contains("hit");
            hit && reader.metric(&victim_series).await == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_frozen_masters_replica_takes_over_its_keys_are_hits_again() {
    const URLS: usize = 30;
    let cluster = blocking(RedisCluster::start).await;
    let origin = Origin::start().await;
    let filler = proxy_on(&origin, &cluster.seeds(), "").await;
    let reader = proxy_on(
        &origin,
        &cluster.seeds(),
        "[cache.memory]\ncapacity = \"0\"\n",
    )
    .await;
    filler.wait_redis_connected().await;
    reader.wait_redis_connected().await;
    let paths: Vec<String> = (0..URLS).map(|i| format!("/r/takeover/{i}")).collect();
    for path in &paths {
        get(&filler, path).await;
    }
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    filled(&cluster, URLS as u64).await;
    // Read from Redis before the freeze: the reader's clients (one per
    // thread that serves requests) are connected and know the old slots.
    for path in &paths {
        assert!(get(&reader, path).await.cache_status().contains("hit"));
    }
    let victim = cluster.lock().unwrap().master_ports()[0];
    let (p, c) = (paths.clone(), cluster.clone());
    let path = blocking(move || {
        // Replicated before the freeze, so the replica has it.
        c.lock().unwrap().wait_ok(Duration::from_secs(10));
        let held = held_by(victim, &p);
        p[held.iter().position(|h| *h).unwrap()].clone()
    })
    .await;

    let c = cluster.clone();
    blocking(move || c.lock().unwrap().freeze_master(victim, true)).await;
    let victim_series = format!("sidecache_redis_node_open{{node=\"127.0.0.1:{victim}\"}} ");
    eventually(
        "the frozen node's breaker to open",
        Duration::from_secs(5),
        async || {
            get(&reader, &path).await;
            reader.metric(&victim_series).await == 1
        },
    )
    .await;
    // The old master stays frozen: only a fresh slot map leads to the new one.
    let mut hit = None;
    eventually(
        "L2 hits from the promoted replica",
        Duration::from_secs(20),
        async || {
            let answer = get(&reader, &path).await;
            let found = answer.cache_status().contains("hit");
            hit = found.then_some(answer);
            found
        },
    )
    .await;
    // The filler's copy, or one this pod stored there since.
    let text = hit.unwrap().text();
    assert!(text.starts_with(&format!("{path} #")), "{text}");
}
