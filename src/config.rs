//! `proxy.toml`: parsing, unknown keys and the shared value parsers; each section validates in its own module.
//!
//! Validation collects every problem instead of stopping at the first, and
//! each message names the key it is about (`routes[1].ttl: ...`), so a user
//! fixes a file in one go. It reads nothing from outside the text: the
//! environment (for `redis.password_env`) is passed in.
//!
//! Sections: `server` (`[server]`, `[origin]`, `[cache]`), `redis`
//! (`[redis]`) and `routes` (`[[routes]]`); each keeps its raw struct,
//! its defaults and its validated struct together.

mod redis;
mod routes;
mod server;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use crate::route::RouteTable;

pub use redis::{
    DEFAULT_REDIS_COMMAND_TIMEOUT, DEFAULT_REDIS_CONNECT_TIMEOUT, DEFAULT_REDIS_WRITE_QUEUE,
    Password, RedisConfig,
};
pub use routes::DEFAULT_LOCK_TIMEOUT;
#[cfg(test)]
pub(crate) use routes::{compile_path, test_route};
pub use server::{
    CacheConfig, ClientLimits, DEFAULT_ADMIN_LISTEN, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_H2_MAX_CONCURRENT_STREAMS, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_KEEP_STALE, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_OBJECT_SIZE, DEFAULT_MEMORY_CAPACITY, DEFAULT_NAMESPACE,
    DEFAULT_ORIGIN_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, DEFAULT_TARGETED_FIELDS, MemoryConfig,
    OriginConfig, ServerConfig,
};

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub origin: OriginConfig,
    pub cache: CacheConfig,
    /// The shared L2 tier; `None` runs with the memory tier only.
    pub redis: Option<RedisConfig>,
    pub routes: RouteTable,
}

/// One problem in a config file, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `routes[1].ttl`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    /// Every problem found, one per key.
    pub fn errors(&self) -> Vec<String> {
        match self {
            LoadError::Read { .. } => vec![self.to_string()],
            LoadError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Looks up an environment variable by name; `None` when it is unset (or not
/// UTF-8). Validation takes one so that tests need not touch the process
/// environment, which is shared by every test thread.
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as the running proxy reads it.
pub fn process_environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Reads and validates a config file against the process environment.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates config text against the process environment.
    pub fn from_toml(text: &str) -> Result<Config, LoadError> {
        Config::from_toml_with(text, &process_environment)
    }

    /// Parses and validates config text, looking variables up in `env`.
    pub fn from_toml_with(text: &str, env: Environment<'_>) -> Result<Config, LoadError> {
        let (raw, mut errors) = parse(text).map_err(LoadError::Invalid)?;
        match raw.validate(env) {
            Ok(config) if errors.is_empty() => Ok(config),
            Ok(_) => Err(LoadError::Invalid(errors)),
            Err(invalid) => {
                errors.extend(invalid);
                Err(LoadError::Invalid(errors))
            }
        }
    }
}

// Raw structs: every field optional so that validation, not serde, decides
// defaults and can name a missing key. Unknown keys are collected with
// `serde_ignored` rather than `deny_unknown_fields`, which stops at the first
// one and reports it without its path.

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    origin: Option<server::RawOrigin>,
    #[serde(default)]
    cache: server::RawCache,
    redis: Option<redis::RawRedis>,
    #[serde(default)]
    routes: Vec<routes::RawRoute>,
}

impl RawConfig {
    fn validate(self, env: Environment<'_>) -> Result<Config, Vec<ConfigError>> {
        let mut problems = Problems::default();
        let p = &mut problems;
        let server = self.server.validate(p);
        let origin = self.origin.unwrap_or_default().validate(p);
        // Objects too large for the memory tier can still live in Redis.
        let cache = self.cache.validate(self.redis.is_some(), p);
        let redis = self.redis.and_then(|raw| raw.validate(env, p));
        let routes = routes::validate(self.routes, &cache, p);
        if problems.0.is_empty() {
            Ok(Config {
                server,
                origin,
                cache,
                redis,
                routes: RouteTable::new(routes),
            })
        } else {
            Err(problems.0)
        }
    }
}

/// TOML text to raw structs plus the unknown keys found on the way; syntax
/// and type errors stop parsing.
fn parse(text: &str) -> Result<(RawConfig, Vec<ConfigError>), Vec<ConfigError>> {
    let document = toml::Deserializer::parse(text).map_err(|e| {
        vec![ConfigError {
            key: "toml".into(),
            message: e.to_string().trim_end().to_owned(),
        }]
    })?;
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| {
        unknown.push(ConfigError {
            key: key_path(&path),
            message: "unknown key".into(),
        })
    };
    let ignoring = serde_ignored::Deserializer::new(document, &mut record_unknown);
    let raw = serde_path_to_error::deserialize(ignoring).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().trim_end().to_owned();
        vec![ConfigError { key, message }]
    });
    match raw {
        Ok(raw) => Ok((raw, unknown)),
        Err(mut errors) => {
            errors.extend(unknown);
            Err(errors)
        }
    }
}

/// `routes[1].tll` from serde_ignored's path, whose own Display writes `routes.1.tll`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => match key_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

/// Collects errors while validating, so every problem is reported at once.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Parses an optional value, recording an error under `key` on failure.
    fn parse<T>(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T
    where
        T: Clone,
    {
        match raw.map(parse) {
            None => default,
            Some(Ok(value)) => value,
            Some(Err(message)) => {
                self.push(key, message);
                default
            }
        }
    }
}

/// Longest duration any key takes: 2^31 seconds (68 years), RFC 9111's cap
/// on delta-seconds. The proxy adds durations to clocks and to each other
/// (deadlines, retention), where a longer one could overflow and panic.
const MAX_DURATION: Duration = Duration::from_secs(1 << 31);

/// Most of anything counted that the proxy sizes a tokio semaphore or
/// queue by (connections, queued writes): far beyond what a process can
/// use, and below tokio's own limit (2^61), past which it panics.
const MAX_COUNT: usize = 1 << 30;

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); use e.g. \"250ms\", \"30s\", \"5m\"")
    })?;
    if duration > MAX_DURATION {
        return Err(format!(
            "duration {text:?} is longer than the longest taken, 2^31 seconds (68 years)"
        ));
    }
    Ok(duration)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be greater than zero".into()),
        duration => Ok(duration),
    }
}

fn parse_header_names(problems: &mut Problems, key: &str, names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(|name| match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                problems.push(key, format!("invalid header name {name:?}"));
                None
            }
        })
        .collect()
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("invalid size {text:?}; use e.g. \"512KiB\", \"8MiB\", \"1GiB\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid file: only the origin has no default.
    pub(super) const MINIMAL: &str = "[origin]\nurl = \"http://127.0.0.1:3000\"\n";

    /// An environment in which no variable is set.
    pub(super) fn empty_environment(_name: &str) -> Option<String> {
        None
    }

    /// `text` validated without touching the process environment.
    pub(super) fn config(text: &str) -> Result<Config, LoadError> {
        Config::from_toml_with(text, &empty_environment)
    }

    pub(super) fn errors(text: &str) -> Vec<String> {
        config(text).unwrap_err().errors()
    }

    pub(super) fn with_minimal(extra: &str) -> Vec<String> {
        errors(&format!("{MINIMAL}{extra}"))
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("8MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("512 KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("100"), Ok(100));
    }

    #[test]
    fn unknown_keys_are_all_named_with_their_path() {
        assert_eq!(
            with_minimal(
                "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/b\"\ntll = \"1s\"\n[sever]\nlisten = \"x\"\n"
            ),
            vec!["routes[1].tll: unknown key", "sever: unknown key"]
        );
        assert_eq!(
            with_minimal("[cache.memory]\ncapacty = \"1MiB\"\n"),
            vec!["cache.memory.capacty: unknown key"]
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            with_minimal("[[routes]]\npath = \"/a\"\nttl = 60\n"),
            vec!["routes[0].ttl: invalid type: integer `60`, expected a string"]
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let errors = errors("[origin\nurl = 1");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("toml: "), "{errors:?}");
        assert!(errors[0].contains("line 1"), "{errors:?}");
    }

    #[test]
    fn unknown_keys_and_invalid_values_are_reported_together() {
        assert_eq!(
            errors(
                "[origin]\nurl = \"http://a:1\"\ntimeout = \"0s\"\n[[routes]]\npath = \"/a\"\ntll = \"1s\"\n"
            ),
            vec![
                "routes[0].tll: unknown key",
                "origin.timeout: must be greater than zero"
            ]
        );
    }

    #[test]
    fn durations_longer_than_68_years_are_refused() {
        // Found by review while writing the fuzz target config's oracle: a
        // duration near u64::MAX seconds loaded, and the first request to
        // store (retention: lifetime + keep_stale) or to wait for a fetch
        // (now + lock_timeout) panicked on overflow.
        assert_eq!(
            with_minimal("[cache]\nkeep_stale = \"18446744073709551615s\"\n"),
            vec![
                "cache.keep_stale: duration \"18446744073709551615s\" is longer than the longest taken, 2^31 seconds (68 years)"
            ]
        );
        assert!(
            config(&format!(
                "{MINIMAL}[cache]\nkeep_stale = \"{}s\"\n",
                1u64 << 31
            ))
            .is_ok()
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let errors =
            errors("[server]\nmax_connections = 0\n[[routes]]\npath = \"x\"\nttl = \"?\"\n");
        assert_eq!(errors.len(), 4, "{errors:?}");
    }
}
