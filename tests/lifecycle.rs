//! Admin probes, metrics, graceful shutdown, the binary's `--check` and signals, and the shipped `proxy.toml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use sidecache::config::Config;
use support::{Origin, ProxyConfig, Reply, eventually, routes};

const BINARY: &str = env!("CARGO_BIN_EXE_sidecache");

#[tokio::test]
async fn admin_port_serves_probes_and_metrics() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin).with(routes::USERS).start().await;
    assert_eq!(proxy.admin("/healthz").await.status, 200);
    assert_eq!(proxy.admin("/readyz").await.status, 200);
    assert_eq!(proxy.admin("/nope").await.status, 404);

    proxy.get("/users/1").await;
    proxy.get("/users/1").await;
    proxy.get("/other").await;
    let metrics = proxy.admin("/metrics").await;
    assert!(
        metrics
            .header("content-type")
            .starts_with("application/openmetrics-text")
    );
    let text = metrics.text();
    for line in [
        "sidecache_requests_total{route=\"users\",cache_status=\"miss\"} 1",
        "sidecache_requests_total{route=\"users\",cache_status=\"hit\"} 1",
        "sidecache_requests_total{route=\"unrouted\",cache_status=\"bypass\"} 1",
        "sidecache_origin_duration_seconds_count{route=\"users\"} 1",
        "sidecache_cache_memory_entries 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sidecache_cache_memory_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 0);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let origin = Origin::start().await;
    origin.on(
        "/slow",
        Reply::ok().body("done").delay(Duration::from_millis(800)),
    );
    let proxy = ProxyConfig::new(&origin).start().await;
    let url = proxy.url("/slow");
    let admin = proxy.admin_url("/readyz");
    let in_flight = tokio::spawn(async move {
        let response = support::client()
            .request(http::Request::get(url).body(Default::default()).unwrap())
            .await
            .unwrap();
        support::read(response).await
    });
    origin.wait_for_hits("/slow", 1).await;

    let addr = proxy.running.addr();
    let shutdown = tokio::spawn(proxy.running.shutdown());
    // Not ready while draining, and no new connections.
    eventually(
        "the listener to refuse connections during shutdown",
        Duration::from_secs(5),
        async || tokio::net::TcpStream::connect(addr).await.is_err(),
    )
    .await;
    let ready = support::read(
        support::client()
            .request(http::Request::get(admin).body(Default::default()).unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ready.status, 503);

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "done");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
}

/// Threads of this process whose name starts with `prefix` (Linux truncates
/// names to 15 bytes).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn every_worker_thread_serves_and_drains_at_shutdown() {
    let origin = Origin::start().await;
    origin.on(
        "/slow",
        Reply::ok().body("done").delay(Duration::from_millis(500)),
    );
    let proxy = ProxyConfig::new(&origin).workers(4).start().await;
    // This test's own proxy: the other tests run in other processes. A
    // thread names itself once it runs.
    eventually(
        "three worker threads besides this one",
        Duration::from_secs(5),
        async || threads_named("sidecache-work") == 3,
    )
    .await;
    // A client each: sixteen connections, spread over the four listeners.
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let url = proxy.url("/slow");
            tokio::spawn(async move {
                let request = http::Request::get(url).body(Default::default()).unwrap();
                support::read(support::client().request(request).await.unwrap()).await
            })
        })
        .collect();
    origin.wait_for_hits("/slow", 16).await;
    tokio::time::timeout(Duration::from_secs(5), proxy.running.shutdown())
        .await
        .unwrap();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.text().as_str()),
            (200, "done")
        );
    }
    eventually(
        "the worker threads to end",
        Duration::from_secs(5),
        async || threads_named("sidecache-work") == 0,
    )
    .await;
}

#[test]
fn shipped_proxy_toml_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let config = Config::load(std::path::Path::new(path)).unwrap();
    assert_eq!(config.origin.url, "http://127.0.0.1:3000");
    assert_eq!(config.server.listen.port(), 8080);
    let route = config.routes.find("/users/1").unwrap();
    assert_eq!(route.name, "users");
    assert!(route.cache);
}

#[test]
fn shipped_redis_example_is_valid_when_uncommented() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    // Example settings are commented out as "#key"; prose as "# text".
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.contains("\n[redis]\n"));
    let config = Config::from_toml(&uncommented).unwrap();
    let redis = config.redis.unwrap();
    assert_eq!(redis.command_timeout, Duration::from_millis(50));
    assert_eq!(redis.write_queue, 1024);
}

#[test]
fn check_prints_the_route_table_and_exits_0() {
    let output = Command::new(BINARY)
        .args([
            "--check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("/users/*"), "{stdout}");
    assert!(stdout.contains("config OK"), "{stdout}");
}

#[test]
fn check_prints_every_error_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[origin]\nurl = \"ftp://x\"\n[[routes]]\npath = \"/a\"\ntll = \"1s\"\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("routes[0].tll: unknown key"), "{stderr}");

    // Running (not only checking) refuses a bad config the same way, and a
    // missing file is a config error too.
    std::fs::write(&path, "[server]\nmax_connections = 0\n").unwrap();
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr.contains("server.max_connections: must be at least 1"),
        "{stderr}"
    );
    assert!(stderr.contains("origin.url: missing"), "{stderr}");
    let output = Command::new(BINARY)
        .env("SIDECACHE_CONFIG", dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));
}

/// The real binary on loopback port 0 with JSON logs, once its "listening"
/// line is out (so its signal handlers are installed); its log lines follow.
struct Binary {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn start() -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://127.0.0.1:9\"\n",
        )
        .unwrap();
        let mut child = Command::new(BINARY)
            .arg("--config")
            .arg(&path)
            .args(["--log-format", "json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("sidecache listening"));
        assert!(
            listening.is_some_and(|l| l.starts_with('{')),
            "no JSON listening line"
        );
        Binary {
            child,
            lines,
            _dir: dir,
        }
    }

    /// Sends a signal to the process this test started, by its PID.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.unwrap().success());
    }

    /// Its remaining log lines and exit code, after it has stopped.
    fn finish(mut self) -> (Vec<String>, Option<i32>) {
        let rest = self.lines.by_ref().map_while(Result::ok).collect();
        (rest, self.child.wait().unwrap().code())
    }
}

#[test]
fn sigterm_stops_the_binary_with_status_0() {
    let binary = Binary::start();
    binary.signal("TERM");
    assert_eq!(binary.finish().1, Some(0));
}

#[tokio::test]
async fn shutdown_delay_keeps_serving_while_not_ready() {
    let origin = Origin::start().await;
    let proxy = ProxyConfig::new(&origin).shutdown_delay("3s").start().await;
    let url = proxy.url("/during");
    let ready_url = proxy.admin_url("/readyz");
    let addr = proxy.running.addr();
    let shutdown = tokio::spawn(proxy.running.shutdown());
    let client = support::client();
    let get = |url: String| {
        let request = http::Request::get(url).body(Default::default()).unwrap();
        client.request(request)
    };
    // Not ready at once, but new requests are still answered.
    eventually(
        "/readyz to answer 503 once shutdown starts",
        Duration::from_secs(1),
        async || {
            support::read(get(ready_url.clone()).await.unwrap())
                .await
                .status
                == 503
        },
    )
    .await;
    assert_eq!(support::read(get(url).await.unwrap()).await.status, 200);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn sighup_reloads_the_config_file() {
    let binary = Binary::start();
    // The file is unchanged, so only the signal can cause a reload.
    binary.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    binary.signal("TERM");
    let (rest, code) = binary.finish();
    assert!(
        rest.iter().any(|l| l.contains("config reloaded")),
        "{rest:?}"
    );
    assert_eq!(code, Some(0));
}
