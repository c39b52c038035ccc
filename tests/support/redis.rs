//! Real Redis for tests: a 3-master/3-replica cluster or one standalone server, started from `redis-server` on free ports and stopped by PID.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{eventually_blocking, lazy_message};

/// The cluster bus of a node listens on its port + 10000.
const BUS_OFFSET: u16 = 10_000;
/// Short, so a killed master's replica takes over within seconds.
const NODE_TIMEOUT_MS: u32 = 1000;

/// One `redis-server` process this harness started.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    cluster: bool,
    /// Stopped by SIGSTOP: its connections stay open, nothing answers.
    frozen: bool,
}

impl RedisNode {
    fn spawn(port: u16, dir: TempDir, cluster: bool) -> RedisNode {
        let mut node = RedisNode {
            port,
            child: None,
            dir,
            cluster,
            frozen: false,
        };
        node.restart();
        node
    }

    /// Starts the process (again), with the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node {} is running", self.port);
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            command
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // A replica always stands in for a dead master, however long
                // its link was down: tests kill masters on purpose.
                .args(["--cluster-replica-validity-factor", "0"]);
        }
        let mut child = command
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        eventually_blocking(
            format!("redis-server on port {} to start", self.port),
            Duration::from_secs(10),
            || cli(self.port, &["ping"]).is_some_and(|r| r == "PONG"),
        );
        // A PONG from a server someone else started on this port would fool the check above.
        assert!(
            child.try_wait().unwrap().is_none(),
            "redis-server exited: port {} taken",
            self.port
        );
        self.child = Some(child);
    }

    /// Stops the process (SIGSTOP, by its PID): like a node hung in a long
    /// command or a paused VM, its sockets stay open and nothing answers.
    pub fn freeze(&mut self) {
        assert!(self.signal("-STOP"), "SIGSTOP to node {}", self.port);
        self.frozen = true;
    }

    /// Lets a frozen process run again (SIGCONT). Never panics: [`Drop`]
    /// calls it, so that no test leaves a node stopped.
    pub fn thaw(&mut self) {
        if self.frozen {
            self.frozen = !self.signal("-CONT");
        }
    }

    /// Sends `signal` to the process by the PID this harness holds.
    fn signal(&self, signal: &str) -> bool {
        self.child.as_ref().is_some_and(|child| {
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .is_ok_and(|status| status.success())
        })
    }

    /// Kills the process (SIGKILL, by the PID this harness holds) and reaps it.
    pub fn kill(&mut self) {
        // A stopped process dies of SIGKILL too; thawing first keeps the
        // order of events plain for anyone watching the node.
        self.thaw();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of 3 masters with one replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

impl RedisCluster {
    /// Ports for a cluster, free now, bus ports included.
    pub fn reserve_ports() -> Vec<u16> {
        free_ports(6)
    }

    pub fn start() -> RedisCluster {
        RedisCluster::start_on(&RedisCluster::reserve_ports())
    }

    /// Starts six nodes on `ports`, creates the cluster and waits until every
    /// node reports `cluster_state:ok`.
    pub fn start_on(ports: &[u16]) -> RedisCluster {
        let nodes: Vec<RedisNode> = ports
            .iter()
            .map(|&port| RedisNode::spawn(port, TempDir::new().unwrap(), true))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node says the cluster is ok and every
    /// replica has synced with its master (so it can take over when killed).
    pub fn wait_ok(&self, limit: Duration) {
        let state = lazy_message(|| {
            let live = self
                .nodes
                .iter()
                .find(|n| n.is_running())
                .map_or(0, |n| n.port);
            format!(
                "cluster_state:ok and synced replicas on every node; as node {live} sees it:\n{}\n{}",
                cli(live, &["cluster", "info"]).unwrap_or_default(),
                cli(live, &["cluster", "nodes"]).unwrap_or_default()
            )
        });
        eventually_blocking(state, limit, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                let ok = cli(node.port, &["cluster", "info"])
                    .is_some_and(|info| info.contains("cluster_state:ok"));
                let replication = cli(node.port, &["info", "replication"]).unwrap_or_default();
                ok && (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
            })
        });
    }

    /// The `nodes = [...]` value for `[redis]`: the first three nodes as seeds.
    pub fn seeds(&self) -> String {
        seeds(&self.nodes.iter().map(|n| n.port).collect::<Vec<_>>())
    }

    /// Ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .filter(|node| cli(node.port, &["role"]).is_some_and(|role| role.starts_with("master")))
            .map(|node| node.port)
            .collect()
    }

    /// Keys held by the node on `port`.
    pub fn dbsize(&self, port: u16) -> u64 {
        cli(port, &["dbsize"])
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Stored objects (responses and variant indexes, `sidecache:{HASH}`;
    /// not leases, tags or purge records) on the masters on `ports`.
    pub fn entries(ports: &[u16]) -> usize {
        ports
            .iter()
            .filter_map(|&port| cli(port, &["--scan", "--pattern", "sidecache:{*}"]))
            .map(|reply| reply.lines().filter(|line| !line.is_empty()).count())
            .sum()
    }

    /// Keys held by all masters together.
    pub fn total_keys(&self) -> u64 {
        self.master_ports()
            .iter()
            .map(|&port| self.dbsize(port))
            .sum()
    }

    /// Freezes the master on `port`; the other masters keep serving their
    /// slots meanwhile. With `failover` its replica takes over after the
    /// `cluster-node-timeout`; without, the master stays frozen as far as
    /// the cluster is concerned (a real cluster before its node timeout, or
    /// one with failover off).
    pub fn freeze_master(&mut self, port: u16, failover: bool) {
        self.allow_failover(failover);
        self.node(port).freeze();
    }

    /// Kills the master on `port` (SIGKILL), with or without failover as
    /// in [`RedisCluster::freeze_master`]: without, it stays in the slot
    /// map, dead.
    pub fn kill_master(&mut self, port: u16, failover: bool) {
        self.allow_failover(failover);
        self.node(port).kill();
    }

    /// The other masters keep serving their slots while one is gone, and
    /// its replica takes over after the `cluster-node-timeout` or never.
    fn allow_failover(&self, failover: bool) {
        let no_failover = if failover { "no" } else { "yes" };
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            for (name, value) in [
                ("cluster-require-full-coverage", "no"),
                ("cluster-replica-no-failover", no_failover),
            ] {
                assert_eq!(
                    cli(node.port, &["config", "set", name, value]).as_deref(),
                    Some("OK"),
                    "{name} on {}",
                    node.port
                );
            }
        }
    }

    /// The port of the master that owns `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.master_ports()[0];
        let slot: u16 = cli(port, &["cluster", "keyslot", key])
            .and_then(|slot| slot.parse().ok())
            .unwrap();
        // `CLUSTER NODES` lines: id host:port@bus flags master ... slot ranges.
        let nodes = cli(port, &["cluster", "nodes"]).unwrap();
        nodes
            .lines()
            .filter(|line| line.contains("master"))
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let owns = fields.iter().skip(8).any(|range| {
                    let (first, last) = range.split_once('-').unwrap_or((range, range));
                    matches!((first.parse::<u16>(), last.parse::<u16>()),
                        (Ok(first), Ok(last)) if (first..=last).contains(&slot))
                });
                let address = fields.get(1)?.split('@').next()?;
                owns.then(|| address.rsplit(':').next()?.parse().ok())?
            })
            .unwrap()
    }

    pub fn node(&mut self, port: u16) -> &mut RedisNode {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}

/// One Redis server, not clustered.
pub struct RedisStandalone {
    pub node: RedisNode,
}

impl RedisStandalone {
    pub fn start() -> RedisStandalone {
        RedisStandalone {
            node: RedisNode::spawn(free_ports(1)[0], TempDir::new().unwrap(), false),
        }
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.node.port, args)
    }
}

/// The `nodes = [...]` TOML value for these ports (at most three seeds).
pub fn seeds(ports: &[u16]) -> String {
    let seeds: Vec<String> = ports
        .iter()
        .take(3)
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!("[{}]", seeds.join(", "))
}

/// Runs `redis-cli -p PORT ARGS...`; `None` when it fails.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// Free ports whose +10000 twin (the cluster bus) is free too. Both stay
/// below Linux's ephemeral range (32768+), so the port-0 listeners of other
/// tests cannot take them between this check and redis-server's bind.
fn free_ports(count: usize) -> Vec<u16> {
    const FIRST: u16 = 21_000;
    const LAST: u16 = 32_767 - BUS_OFFSET;
    let mut ports = Vec::with_capacity(count);
    // Start at a point that differs between test processes, and far apart
    // for processes started one after another (nextest runs each test in
    // its own, with consecutive PIDs): from neighbouring points, two tests
    // starting together checked the same ports at the same time, both found
    // them free, and one's redis-server could not bind.
    let spread = u64::from(std::process::id()).wrapping_mul(2_654_435_761);
    let mut candidate = FIRST + (spread % u64::from(LAST - FIRST)) as u16;
    while ports.len() < count {
        candidate = if candidate >= LAST {
            FIRST
        } else {
            candidate + 1
        };
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(candidate) && free(candidate + BUS_OFFSET) && !ports.contains(&candidate) {
            ports.push(candidate);
        }
    }
    ports
}
