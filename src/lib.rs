//! sidecache: a caching reverse proxy that runs as a sidecar in front of one origin.
//!
//! # Layout
//! One request flows through these modules, in this order:
//! - [`server`]: accept loops, connection limit, bounds on request heads
//!   and slow clients, graceful shutdown; one loop per worker thread
//!   (`server.workers`), each on its own single-threaded runtime and
//!   `SO_REUSEPORT` listener.
//! - [`proxy`]: the pipeline; the only module that calls the others in order.
//!   Its outer handler matches the route and writes `Cache-Status`, metrics
//!   and the access log from the [`proxy::Served`] the inner one returns.
//!   Shadow routes take their own path through it (`proxy::shadow`): forwarded
//!   as if uncached, looked up and stored beside.
//! - [`route`]: the first route whose path pattern matches decides caching.
//! - [`request`]: the request model: what a cacheable request sends the
//!   origin (all end-to-end headers but the guard list; cookies, query and
//!   host as the route and `cache.host` say), which is what `Vary` keys by;
//!   built when a variant index or a fetch first needs it.
//! - [`cache::key`]: canonical, length-prefixed, hashed cache keys.
//! - [`cache`]: the tiers facade: lookup ([`cache::memory`] is L1,
//!   [`cache::redis`] the shared L2: one Redis budget per request, a
//!   breaker per cluster node, a client per worker thread, pub/sub through
//!   a plain connection per master), `admit`
//!   (single-flight in the pod, [`cache::flight`], and in the fleet, a Redis
//!   lease), and `store`, the one way in. [`cache::coherence`] keeps each
//!   pod's memory tier from serving, for longer than a bound, what another
//!   pod invalidated: it follows the fleet's invalidation sequence in Redis.
//!   [`cache::tags`] judges entries by the purges of their tags (purge by
//!   tag: per-tag purge times in Redis, announced in the same sequence).
//!   [`cache::purged`] keeps a fetch sent before a URL purge from being
//!   stored after it (Redis checks its own record in the store script).
//! - [`cache::decide`]: what a lookup, a response head or an origin failure
//!   means for the request (`on_lookup`, `on_head`, `on_error`), pure; built
//!   on [`cache::policy`] (RFC 9111 rules, with RFC 9213's targeted fields)
//!   and [`cache::validation`].
//! - [`origin`]: the HTTP/1.1 upstream client (a connection pool per worker
//!   thread), deadlines, hop-by-hop and forwarding headers.
//! - [`cache::fill`] stores a streamed body once it is complete, its chunks
//!   in a [`cache::growing`] body that the requests collapsed onto the fetch
//!   read as it arrives; [`respond`] makes answers from a stored
//!   [`cache::entry`] (304, 206/416, HEAD), or from one still arriving.
//! - [`cache::status`]: the RFC 9211 `Cache-Status` header.
//!
//! Around them: [`config`] (TOML to validated settings, a module per
//! section), [`reload`], [`admin`] (probes, metrics and purge port),
//! [`explain`] (the admin port's account of what the cache holds for a URL
//! and what its next request would get, from the pipeline's own pieces).
//! Leaves that anything may use and that use nothing of ours: [`metrics`]
//! (Prometheus), [`body`] (response body types) and [`clock`] (the time
//! ages are measured by; tests move it).
//!
//! [`start`] runs everything on the current tokio runtime and returns the
//! bound addresses, so tests run the real proxy on port 0.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod explain;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod respond;
pub mod route;
pub mod server;

/// Helpers shared by unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// A header map from name/value pairs; repeated names become repeated lines.
    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::cache::Cache;
use crate::clock::Clock;

use crate::config::{ClientLimits, Config};
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::proxy::Proxy;
use crate::server::Limits;

/// Connections the admin port serves at once; probes and scrapes are few.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Least time the queued L2 writes get at shutdown, even when the requests
/// used up the grace: an invalidation this pod accepted should reach the
/// fleet. Each write has its own deadline (`redis.command_timeout`).
pub const MIN_FLUSH: Duration = Duration::from_secs(1);
/// Time admin connections get to finish after the proxy has drained.
const ADMIN_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key})")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the Redis client")]
    Redis(#[source] fred::error::Error),
}

/// A started proxy: its bound addresses and the handle to stop it.
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    ready: Arc<AtomicBool>,
    /// Time between readiness going off and the listener closing.
    shutdown_delay: Duration,
    /// Time the in-flight work gets once the listener has closed.
    shutdown_grace: Duration,
    /// For shutdown: the queued L2 writes to send before leaving.
    cache: Cache,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    /// The other worker threads' accept loops (`server.workers` - 1).
    workers: Vec<oneshot::Receiver<()>>,
    admin_task: JoinHandle<()>,
    /// For reloads: the handler whose routes are swapped.
    proxy: Arc<Proxy>,
    /// The settings only a restart changes, as started.
    fixed_settings: reload::RestartOnly,
}

impl Running {
    /// Where the proxy listens (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin endpoints listen.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A reloader that applies `path`'s routes to this proxy (on demand, or
    /// on SIGHUP and file changes once spawned).
    pub fn reloader(&self, path: std::path::PathBuf) -> Arc<reload::Reloader> {
        Arc::new(reload::Reloader::new(
            path,
            self.proxy.clone(),
            self.fixed_settings.clone(),
        ))
    }

    /// Shuts down: readiness off at once; requests still served for
    /// `server.shutdown_delay` (while endpoints elsewhere learn this pod is
    /// going); then no new connections, and in-flight requests run on for
    /// the grace period, as do the background refreshes and then the queued
    /// L2 writes and invalidation broadcasts (at least [`MIN_FLUSH`] for
    /// those); then the admin port closes.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        if !self.shutdown_delay.is_zero() {
            tracing::info!(delay = ?self.shutdown_delay, "not ready; still serving before draining");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        let grace_over = tokio::time::Instant::now() + self.shutdown_grace;
        self.stop_proxy.send_replace(true);
        if let Err(error) = self.proxy_task.await {
            tracing::error!(%error, "proxy listener task failed");
        }
        for worker in self.workers {
            // An error only says the worker thread is gone already.
            let _ = worker.await;
        }
        let refreshes = self.proxy.background_done();
        if tokio::time::timeout_at(grace_over, refreshes)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over before the background refreshes finished");
        }
        let flush_by = grace_over.max(tokio::time::Instant::now() + MIN_FLUSH);
        self.cache.flush(flush_by).await;
        self.stop_admin.send_replace(true);
        if let Err(error) = self.admin_task.await {
            tracing::error!(%error, "admin listener task failed");
        }
    }
}

/// Connections waiting to be accepted, per listener.
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr` that other sockets may share (SO_REUSEPORT).
fn reusable_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Serves `socket` on a thread of its own with a single-threaded runtime,
/// until `stopped`; the receiver resolves when the thread's connections
/// have drained and its background refreshes are done. Requests stay on
/// the thread that accepted them: no work stealing, no cross-thread
/// wake-ups (one runtime per core, as Pingora measured).
fn spawn_worker(
    number: usize,
    socket: TcpSocket,
    proxy: Arc<Proxy>,
    limits: Limits,
    stopped: watch::Receiver<bool>,
) -> oneshot::Receiver<()> {
    let (done, finished) = oneshot::channel();
    let work = move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, number, "cannot start a worker runtime");
                return;
            }
        };
        runtime.block_on(async move {
            match socket.listen(LISTEN_BACKLOG) {
                Ok(listener) => {
                    let serving = proxy.clone();
                    let handler = move |request, client| serving.clone().handle(request, client);
                    server::serve(listener, handler, limits, stopped).await;
                }
                Err(error) => tracing::error!(%error, number, "worker cannot listen"),
            }
            // Refreshes this thread started run on its runtime: let them end.
            proxy.background_done().await;
        });
        let _ = done.send(());
    };
    let spawned = std::thread::Builder::new()
        .name(format!("sidecache-worker-{number}"))
        .spawn(work);
    if let Err(error) = spawned {
        tracing::error!(%error, number, "cannot start a worker thread");
    }
    finished
}

/// Binds the listeners and starts serving: on the current tokio runtime,
/// and on `server.workers` - 1 more threads with a runtime each.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with_clock(config, Clock::default()).await
}

/// [`start`], with ages and freshness measured by `clock`: tests move it
/// forward instead of waiting for responses to go stale.
pub async fn start_with_clock(config: Config, clock: Clock) -> Result<Running, StartError> {
    let fixed_settings = reload::RestartOnly::of(&config);
    let Config {
        server,
        origin,
        cache: cache_config,
        redis,
        routes,
    } = config;
    let bind_error = |key, addr| move |source| StartError::Bind { key, addr, source };
    let listen_error = bind_error("server.listen", server.listen);
    // One socket per worker, all on one port: the kernel spreads the
    // connections over them (SO_REUSEPORT).
    let first = reusable_socket(server.listen).map_err(listen_error)?;
    let addr = first.local_addr().map_err(listen_error)?;
    let others = (1..server.workers)
        .map(|_| reusable_socket(addr))
        .collect::<Result<Vec<_>, _>>()
        .map_err(listen_error)?;
    let listener = first.listen(LISTEN_BACKLOG).map_err(listen_error)?;
    let admin_error = bind_error("server.admin_listen", server.admin_listen);
    let admin_listener = TcpListener::bind(server.admin_listen)
        .await
        .map_err(admin_error)?;
    let admin_addr = admin_listener.local_addr().map_err(admin_error)?;

    let metrics = Arc::new(Metrics::new());
    let cache = Cache::new(&cache_config, redis.as_ref(), metrics.clone(), clock)
        .map_err(StartError::Redis)?;
    let proxy = Arc::new(Proxy::new(
        routes,
        Origin::new(&origin),
        cache.clone(),
        &cache_config,
        metrics.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let admin_cache = cache.clone();
    let admin = Arc::new(Admin {
        ready: ready.clone(),
        metrics: metrics.clone(),
        cache,
        proxy: proxy.clone(),
    });

    let (stop_proxy, proxy_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(server.max_connections));
    let limits = || Limits {
        connections: connections.clone(),
        shutdown_grace: server.shutdown_grace,
        client: server.client,
        metrics: metrics.clone(),
    };
    let workers = others
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            spawn_worker(
                index + 1,
                socket,
                proxy.clone(),
                limits(),
                proxy_stopped.clone(),
            )
        })
        .collect();
    let proxy_task = tokio::spawn(server::serve(
        listener,
        {
            let proxy = proxy.clone();
            move |request, client| proxy.clone().handle(request, client)
        },
        limits(),
        proxy_stopped,
    ));
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        move |request, _client| {
            let admin = admin.clone();
            async move { admin.serve(request).await }
        },
        Limits {
            connections: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
            shutdown_grace: ADMIN_SHUTDOWN_GRACE,
            // Probes and scrapes need no more than the defaults allow.
            client: ClientLimits::default(),
            metrics: metrics.clone(),
        },
        admin_stopped,
    ));
    ready.store(true, Ordering::Release);
    tracing::info!(%addr, %admin_addr, origin = %origin.url, "sidecache listening");
    Ok(Running {
        addr,
        admin_addr,
        ready,
        shutdown_delay: server.shutdown_delay,
        shutdown_grace: server.shutdown_grace,
        cache: admin_cache,
        stop_proxy,
        stop_admin,
        proxy_task,
        workers,
        admin_task,
        proxy,
        fixed_settings,
    })
}

/// The listeners, origin and route table of a config, as `--check` prints them.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "listen {}  admin {}  origin {}",
        config.server.listen, config.server.admin_listen, config.origin.url
    );
    let _ = match &config.redis {
        None => writeln!(
            out,
            "cache: memory {} bytes, no Redis (memory tier only)",
            config.cache.memory.capacity
        ),
        Some(redis) => writeln!(
            out,
            "cache: memory {} bytes, Redis {}, command timeout {:?}",
            config.cache.memory.capacity,
            describe_redis(&redis.client.server),
            redis.command_timeout
        ),
    };
    if config.routes.is_empty() {
        let _ = writeln!(
            out,
            "no routes: every request is forwarded, nothing is cached"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{:<3} {:<20} {:<24} {:<10} {:<6} ttl",
        "#", "name", "path", "methods", "cache"
    );
    for (index, route) in config.routes.iter().enumerate() {
        let methods: Vec<&str> = route.methods.iter().map(|m| m.as_str()).collect();
        let _ = writeln!(
            out,
            "{:<3} {:<20} {:<24} {:<10} {:<6} {}",
            index,
            route.name,
            route.path,
            methods.join(","),
            match (route.cache, route.shadow) {
                (true, true) => "shadow",
                (true, false) => "yes",
                (false, _) => "no",
            },
            humantime::format_duration(route.ttl),
        );
    }
    out
}

fn describe_redis(servers: &fred::prelude::ServerConfig) -> String {
    use fred::prelude::ServerConfig as S;
    let list = |hosts: &[fred::prelude::Server]| {
        hosts
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port))
            .collect::<Vec<_>>()
            .join(",")
    };
    match servers {
        S::Centralized { server } => format!("standalone {}:{}", server.host, server.port),
        S::Clustered { hosts, .. } => format!("cluster {}", list(hosts)),
        S::Sentinel {
            hosts,
            service_name,
            ..
        } => format!("sentinel {} ({service_name})", list(hosts)),
    }
}
