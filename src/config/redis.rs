//! `[redis]`: the shared L2 tier's servers, credentials and deadlines, as plain settings; the client is built in `cache::redis`.

use std::fmt;
use std::time::Duration;

use fred::prelude::{Config as ClientConfig, ServerConfig as Servers};
use serde::Deserialize;

use super::{Environment, MAX_COUNT, Problems, parse_positive_duration};

/// Default deadline for every Redis call: a miss costs at most this much.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);
/// Default deadline for connecting to a Redis node.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of L2 writes waiting to be sent; beyond it writes are dropped.
pub const DEFAULT_REDIS_WRITE_QUEUE: usize = 1024;
/// Default for `redis.mode` when no URL is given.
const DEFAULT_MODE: &str = "cluster";

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawRedis {
    url: Option<String>,
    mode: Option<String>,
    nodes: Option<Vec<String>>,
    service_name: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    tls: Option<bool>,
    command_timeout: Option<String>,
    connect_timeout: Option<String>,
    write_queue: Option<usize>,
    coherence: Option<String>,
}

/// The shared Redis tier (L2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Servers, username and database, as fred takes them. The password and
    /// TLS are kept out of it (below), so that this prints and compares
    /// without the secret and holds no TLS state.
    pub client: ClientConfig,
    /// From `redis.password_env`, or from the URL.
    pub password: Option<Password>,
    /// Connect with TLS (rustls, system roots): `redis.tls` or a `rediss` URL.
    pub tls: bool,
    /// Deadline for every cache call; past it the call is a miss.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// L2 writes waiting to be sent, off the response path.
    pub write_queue: usize,
    /// `redis.coherence = "strict"`: a pod that has not confirmed, within
    /// the coherence bound, that it heard every invalidation serves nothing
    /// from its memory tier (the default, `"fail-open"`, keeps serving it).
    pub strict_coherence: bool,
}

/// The Redis password: its `Debug` prints no secret, so a config can be
/// logged; [`Password::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself, for the client that authenticates with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// URL schemes fred understands (`rediss` is TLS).
const REDIS_URL_SCHEMES: [&str; 5] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
];

/// The URL without its TLS `s` (`rediss://` to `redis://`), and whether it
/// had one: fred would build a TLS connector while parsing a `rediss` URL,
/// and validation builds none.
fn without_tls(url: &str) -> (String, bool) {
    match url.strip_prefix("rediss") {
        Some(rest) => (format!("redis{rest}"), true),
        None => (url.to_owned(), false),
    }
}

/// `host:port` of a Redis node.
fn parse_node(text: &str) -> Result<(String, u16), String> {
    text.rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .map(|(host, port)| {
            (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
            )
        })
        .ok_or_else(|| format!("invalid node {text:?}; use HOST:PORT, e.g. \"10.0.0.1:6379\""))
}

impl RawRedis {
    pub(super) fn validate(self, env: Environment<'_>, p: &mut Problems) -> Option<RedisConfig> {
        let errors_before = p.0.len();
        let mut tls = self.tls == Some(true);
        let mut client = match (&self.url, self.mode.as_deref()) {
            (Some(url), None)
                if self.nodes.is_none()
                    && !REDIS_URL_SCHEMES.iter().any(|s| url.starts_with(s)) =>
            {
                p.push(
                    "redis.url",
                    format!(
                        "{url:?}: use redis://, rediss://, redis-cluster:// or redis-sentinel://"
                    ),
                );
                ClientConfig::default()
            }
            (Some(url), None) if self.nodes.is_none() => {
                let (plain, url_tls) = without_tls(url);
                tls |= url_tls;
                match ClientConfig::from_url(&plain) {
                    Ok(client) => client,
                    Err(e) => {
                        p.push("redis.url", format!("invalid Redis URL: {}", e.details()));
                        ClientConfig::default()
                    }
                }
            }
            (Some(_), _) => {
                p.push("redis.url", "give either url, or mode and nodes, not both");
                ClientConfig::default()
            }
            (None, mode) => ClientConfig {
                server: self.servers(mode.unwrap_or(DEFAULT_MODE), p),
                ..ClientConfig::default()
            },
        };
        // Seeds are not the only way in: when they are down, reconnect through
        // the nodes of the last known routing table.
        if let Servers::Clustered { policy, .. } = &mut client.server {
            *policy = fred::types::config::ClusterDiscoveryPolicy::UseCache;
        }
        if self.service_name.is_some() && self.mode.as_deref() != Some("sentinel") {
            p.push("redis.service_name", "only used with mode = \"sentinel\"");
        }
        if let Some(username) = self.username {
            client.username = Some(username);
        }
        let mut password = client.password.take().map(Password);
        if let Some(var) = self.password_env {
            match env(&var) {
                Some(value) => password = Some(Password(value)),
                None => p.push(
                    "redis.password_env",
                    format!("environment variable {var} is not set"),
                ),
            }
        }
        let command_timeout = p.parse(
            "redis.command_timeout",
            self.command_timeout.as_deref(),
            DEFAULT_REDIS_COMMAND_TIMEOUT,
            parse_positive_duration,
        );
        let connect_timeout = p.parse(
            "redis.connect_timeout",
            self.connect_timeout.as_deref(),
            DEFAULT_REDIS_CONNECT_TIMEOUT,
            parse_positive_duration,
        );
        let write_queue = self.write_queue.unwrap_or(DEFAULT_REDIS_WRITE_QUEUE);
        if write_queue == 0 {
            p.push("redis.write_queue", "must be at least 1");
        } else if write_queue > MAX_COUNT {
            p.push("redis.write_queue", format!("must be at most {MAX_COUNT}"));
        }
        let strict_coherence = match self.coherence.as_deref() {
            None | Some("fail-open") => false,
            Some("strict") => true,
            Some(other) => {
                p.push(
                    "redis.coherence",
                    format!("unknown value {other:?}; use \"fail-open\" or \"strict\""),
                );
                false
            }
        };
        (p.0.len() == errors_before).then_some(RedisConfig {
            client,
            password,
            tls,
            command_timeout,
            connect_timeout,
            write_queue,
            strict_coherence,
        })
    }

    /// The servers named by `mode` and `nodes`.
    fn servers(&self, mode: &str, p: &mut Problems) -> Servers {
        let nodes: Vec<(String, u16)> = match &self.nodes {
            None => {
                p.push(
                    "redis.nodes",
                    "missing; e.g. [\"10.0.0.1:6379\"] (or give redis.url)",
                );
                vec![]
            }
            Some(nodes) if nodes.is_empty() => {
                p.push("redis.nodes", "must not be empty");
                vec![]
            }
            Some(nodes) => nodes
                .iter()
                .filter_map(|node| parse_node(node).map_err(|e| p.push("redis.nodes", e)).ok())
                .collect(),
        };
        match mode {
            "cluster" => Servers::new_clustered(nodes),
            "standalone" => match nodes.as_slice() {
                [(host, port)] => Servers::new_centralized(host.clone(), *port),
                _ => {
                    if !nodes.is_empty() {
                        p.push("redis.nodes", "standalone mode takes exactly one node");
                    }
                    Servers::default()
                }
            },
            "sentinel" => match &self.service_name {
                Some(name) => Servers::new_sentinel(nodes, name.clone()),
                None => {
                    p.push(
                        "redis.service_name",
                        "missing; sentinel mode needs the monitored master's name",
                    );
                    Servers::default()
                }
            },
            other => {
                p.push(
                    "redis.mode",
                    format!(
                        "unknown mode {other:?}; use \"cluster\", \"standalone\" or \"sentinel\""
                    ),
                );
                Servers::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::{MINIMAL, config, with_minimal};

    #[test]
    fn redis_section_is_optional_and_parsed() {
        assert!(config(MINIMAL).unwrap().redis.is_none());
        let parsed = config(&format!(
            "{MINIMAL}[redis]\nnodes = [\"10.0.0.1:6379\", \"redis-1:6380\"]\ncommand_timeout = \"20ms\"\n"
        ))
        .unwrap();
        let redis = parsed.redis.unwrap();
        assert_eq!(redis.command_timeout, Duration::from_millis(20));
        assert_eq!(redis.connect_timeout, DEFAULT_REDIS_CONNECT_TIMEOUT);
        assert_eq!(redis.write_queue, DEFAULT_REDIS_WRITE_QUEUE);
        assert!(!redis.strict_coherence);
        let strict = config(&format!(
            "{MINIMAL}[redis]\nnodes = [\"a:1\"]\ncoherence = \"strict\"\n"
        ))
        .unwrap();
        assert!(strict.redis.unwrap().strict_coherence);
        let Servers::Clustered { hosts, .. } = redis.client.server else {
            panic!("cluster")
        };
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].port, 6380);

        let standalone = |extra: &str| {
            config(&format!(
                "{MINIMAL}[redis]\nmode = \"standalone\"\nnodes = [\"127.0.0.1:7000\"]\n{extra}"
            ))
        };
        assert!(matches!(
            standalone("").unwrap().redis.unwrap().client.server,
            Servers::Centralized { .. }
        ));
        let url = config(&format!(
            "{MINIMAL}[redis]\nurl = \"redis-cluster://a:7000?node=b:7001\"\n"
        ))
        .unwrap();
        assert!(matches!(
            url.redis.unwrap().client.server,
            Servers::Clustered { .. }
        ));
    }

    #[test]
    fn redis_validation_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "[redis]\n",
                "redis.nodes: missing; e.g. [\"10.0.0.1:6379\"] (or give redis.url)",
            ),
            ("[redis]\nnodes = []", "redis.nodes: must not be empty"),
            (
                "[redis]\nnodes = [\"redis\"]",
                "redis.nodes: invalid node \"redis\"; use HOST:PORT, e.g. \"10.0.0.1:6379\"",
            ),
            (
                "[redis]\nmode = \"ring\"\nnodes = [\"a:1\"]",
                "redis.mode: unknown mode \"ring\"; use \"cluster\", \"standalone\" or \"sentinel\"",
            ),
            (
                "[redis]\nmode = \"standalone\"\nnodes = [\"a:1\", \"b:2\"]",
                "redis.nodes: standalone mode takes exactly one node",
            ),
            (
                "[redis]\nmode = \"sentinel\"\nnodes = [\"a:1\"]",
                "redis.service_name: missing; sentinel mode needs the monitored master's name",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\nservice_name = \"m\"",
                "redis.service_name: only used with mode = \"sentinel\"",
            ),
            (
                "[redis]\nurl = \"redis://a:1\"\nnodes = [\"a:1\"]",
                "redis.url: give either url, or mode and nodes, not both",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\npassword_env = \"SIDECACHE_TEST_SURELY_UNSET\"",
                "redis.password_env: environment variable SIDECACHE_TEST_SURELY_UNSET is not set",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\ncommand_timeout = \"0ms\"",
                "redis.command_timeout: must be greater than zero",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\nwrite_queue = 0",
                "redis.write_queue: must be at least 1",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\ncoherence = \"eventual\"",
                "redis.coherence: unknown value \"eventual\"; use \"fail-open\" or \"strict\"",
            ),
            (
                "[redis]\nnodes = [\"a:1\"]\nwrite_queue = 4611686018427387904",
                "redis.write_queue: must be at most 1073741824",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                with_minimal(text),
                vec![expected.to_string()],
                "for {text:?}"
            );
        }
        assert_eq!(
            with_minimal("[redis]\nurl = \"http://nope\""),
            vec![
                "redis.url: \"http://nope\": use redis://, rediss://, redis-cluster:// or redis-sentinel://"
            ]
        );
        let url = with_minimal("[redis]\nurl = \"redis-cluster://\"");
        assert!(
            url[0].starts_with("redis.url: invalid Redis URL"),
            "{url:?}"
        );
        assert_eq!(
            with_minimal("[redis]\nurl = \"rediss://\""),
            vec!["redis.url: invalid Redis URL: Invalid or missing host."]
        );
    }

    /// The `[redis]` section of `extra`, validated with `REDIS_PASSWORD` set
    /// to `password` and nothing else in the environment.
    fn redis_with_password(extra: &str, password: &str) -> RedisConfig {
        let env = |name: &str| (name == "REDIS_PASSWORD").then(|| password.to_owned());
        Config::from_toml_with(&format!("{MINIMAL}[redis]\n{extra}"), &env)
            .unwrap()
            .redis
            .unwrap()
    }

    #[test]
    fn the_password_comes_from_the_given_environment_and_never_prints() {
        let redis = redis_with_password(
            "nodes = [\"a:1\"]\npassword_env = \"REDIS_PASSWORD\"\nusername = \"app\"",
            "hunter2",
        );
        assert_eq!(
            redis.password.as_ref().map(Password::expose),
            Some("hunter2")
        );
        assert_eq!(redis.client.username.as_deref(), Some("app"));
        assert_eq!(redis.client.password, None);
        let printed = format!("{redis:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");

        // A password in the URL is kept apart the same way; the
        // environment's wins when both are given.
        let from_url = redis_with_password("url = \"redis://app:inurl@a:1\"", "unused");
        assert_eq!(
            from_url.password.as_ref().map(Password::expose),
            Some("inurl")
        );
        assert!(!format!("{from_url:?}").contains("inurl"));
        let both = redis_with_password(
            "url = \"redis://app:inurl@a:1\"\npassword_env = \"REDIS_PASSWORD\"",
            "fromenv",
        );
        assert_eq!(
            both.password.as_ref().map(Password::expose),
            Some("fromenv")
        );
    }

    #[test]
    fn tls_is_a_setting_not_a_connector() {
        let tls = |extra: &str| redis_with_password(extra, "").tls;
        assert!(!tls("nodes = [\"a:1\"]"));
        assert!(tls("nodes = [\"a:1\"]\ntls = true"));
        assert!(tls("url = \"rediss://a:1/2\""));
        assert!(tls("url = \"rediss-cluster://a:1?node=b:2\"\ntls = false"));
        assert!(!tls("url = \"redis://a:1\""));

        let url = redis_with_password("url = \"rediss://a:1/2\"", "");
        assert!(url.client.tls.is_none());
        assert_eq!(url.client.database, Some(2));
        assert!(matches!(url.client.server, Servers::Centralized { .. }));
        let cluster = redis_with_password("url = \"rediss-cluster://a:1?node=b:2\"", "");
        assert!(matches!(cluster.client.server, Servers::Clustered { .. }));
    }
}
