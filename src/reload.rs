//! Config reload on SIGHUP or a change to the config file: new routes apply at once, an invalid file keeps the running config.
//!
//! The file's directory is watched rather than the file, because Kubernetes
//! updates a mounted ConfigMap by swapping a `..data` symlink: the file
//! itself is never written to. Settings that need new sockets or clients
//! (listeners, origin, cache sizes, Redis) are reported and wait for a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{CacheConfig, Config, LoadError, OriginConfig, RedisConfig, ServerConfig};
use crate::proxy::Proxy;

/// Quiet time after a file event before reading: one ConfigMap update is
/// several events (new directory, symlink swap, old directory removed).
const SETTLE: Duration = Duration::from_millis(200);

/// Reloads one config file into a running proxy.
pub struct Reloader {
    path: PathBuf,
    proxy: Arc<Proxy>,
    /// The settings only a restart changes, as running.
    fixed: RestartOnly,
    /// The text last loaded, so that unrelated events in the directory do
    /// not reload (and log) for nothing.
    loaded: Mutex<String>,
}

/// The settings a reload cannot change: they are built into sockets and
/// clients at start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RestartOnly {
    server: ServerConfig,
    origin: OriginConfig,
    cache: CacheConfig,
    redis: Option<RedisConfig>,
}

impl RestartOnly {
    pub(crate) fn of(config: &Config) -> RestartOnly {
        RestartOnly {
            server: config.server.clone(),
            origin: config.origin.clone(),
            cache: CacheConfig {
                // Copied into every route, so it applies with them on reload.
                targeted_fields: Vec::new(),
                ..config.cache.clone()
            },
            redis: config.redis.clone(),
        }
    }
}

/// Listens for SIGHUP. Call it before the proxy says it is listening, so a
/// SIGHUP sent as soon as it is up reloads instead of killing it (SIGHUP's
/// default action).
pub fn hangup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP");
            None
        }
    }
}

impl Reloader {
    pub(crate) fn new(path: PathBuf, proxy: Arc<Proxy>, fixed: RestartOnly) -> Reloader {
        let loaded = std::fs::read_to_string(&path).unwrap_or_default();
        Reloader {
            path,
            proxy,
            fixed,
            loaded: Mutex::new(loaded),
        }
    }

    /// Reads the file and applies its routes; an invalid file changes nothing.
    pub fn reload(&self) -> Result<(), LoadError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| LoadError::Read {
            path: self.path.clone(),
            source,
        })?;
        let config = Config::from_toml(&text)?;
        if RestartOnly::of(&config) != self.fixed {
            tracing::warn!(
                path = %self.path.display(),
                "server, origin, cache or redis settings changed: they apply at the next restart"
            );
        }
        let routes = config.routes.len();
        self.proxy.set_routes(config.routes);
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = text;
        }
        tracing::info!(path = %self.path.display(), routes, "config reloaded");
        Ok(())
    }

    /// Reloads when the file's text differs from what was loaded last.
    fn reload_if_changed(&self) {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let changed = self
            .loaded
            .lock()
            .map(|loaded| *loaded != text)
            .unwrap_or(true);
        if changed {
            self.report(self.reload());
        }
    }

    fn report(&self, result: Result<(), LoadError>) {
        if let Err(error) = result {
            tracing::error!(
                path = %self.path.display(),
                errors = ?error.errors(),
                "config not reloaded; the running config stays"
            );
        }
    }

    /// Reloads on `hangup` (see [`hangup`]) and whenever the file's
    /// directory changes, until the returned task is aborted.
    pub fn spawn(self: Arc<Self>, mut hangup: Option<Signal>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let (events, mut changed) = mpsc::channel::<()>(16);
            let watcher = notify::recommended_watcher(move |_event| {
                // A full channel already means "look again".
                let _ = events.try_send(());
            });
            let _watcher = match watcher {
                Ok(mut watcher) => {
                    let directory = self
                        .path
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .map_or_else(|| PathBuf::from("."), PathBuf::from);
                    if let Err(error) = watcher.watch(&directory, RecursiveMode::NonRecursive) {
                        tracing::warn!(%error, "cannot watch the config directory; reload with SIGHUP");
                    }
                    Some(watcher)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot watch files; reload with SIGHUP");
                    None
                }
            };
            loop {
                tokio::select! {
                    Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => None } } => {
                        self.report(self.reload());
                    }
                    Some(()) = changed.recv() => {
                        tokio::time::sleep(SETTLE).await;
                        while changed.try_recv().is_ok() {}
                        self.reload_if_changed();
                    }
                    else => break,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[origin]\nurl = \"http://127.0.0.1:3000\"\n\
                        [redis]\nnodes = [\"10.0.0.1:6379\"]\npassword_env = \"REDIS_PASSWORD\"\n";

    fn restart_only(text: &str, password: &str) -> RestartOnly {
        let env = |name: &str| (name == "REDIS_PASSWORD").then(|| password.to_owned());
        RestartOnly::of(&Config::from_toml_with(text, &env).unwrap())
    }

    #[test]
    fn only_changes_to_restart_only_settings_need_a_restart() {
        let running = restart_only(BASE, "first-secret");
        assert_eq!(restart_only(BASE, "first-secret"), running, "same file");
        assert_eq!(
            restart_only(
                &format!("{BASE}[[routes]]\npath = \"/a\"\n"),
                "first-secret"
            ),
            running,
            "routes apply on reload"
        );
        assert_eq!(
            restart_only(
                &format!("[cache]\ntargeted_fields = [\"X-My-CC\"]\n{BASE}"),
                "first-secret"
            ),
            running,
            "targeted fields apply with the routes"
        );
        assert_ne!(
            restart_only(
                &format!("{BASE}command_timeout = \"20ms\"\n"),
                "first-secret"
            ),
            running,
            "a redis setting"
        );
        assert_ne!(
            restart_only(&format!("{BASE}tls = true\n"), "first-secret"),
            running,
            "redis TLS"
        );
        assert_ne!(
            restart_only(BASE, "second-secret"),
            running,
            "the redis password"
        );
        assert_ne!(
            restart_only(&BASE.replace("3000", "3001"), "first-secret"),
            running,
            "the origin"
        );
        assert!(!format!("{running:?}").contains("first-secret"));
    }
}
