//! Config loading: any text is either refused with messages or yields a config the request path can use without overflowing.
#![no_main]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use sidecache::cache::entry::Entry;
use sidecache::cache::key::CacheKey;
use sidecache::config::{Config, LoadError};

/// Paths looked up in a loaded route table.
const PATHS: [&str; 4] = ["/", "/users/1", "/assets/a/b.css", "/%2e%2e/x"];

fuzz_target!(|data: &[u8]| {
    // Raw text, so that the seeds are config files and the dictionary's
    // keys splice in as they are.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml_with(text, &|_| Some("secret".to_owned())) {
        Ok(config) => config,
        Err(error) => {
            assert!(!error.errors().is_empty(), "a refusal says why");
            assert!(matches!(error, LoadError::Invalid(_)));
            return;
        }
    };
    // What the request path computes from the config: deadlines from
    // now, and how long an entry is kept. A stored entry's lifetime can
    // be as long as a route's ttl or an L2 value's (u64 milliseconds).
    let now = Instant::now();
    let _ = deadline_after(now, config.server.shutdown_grace);
    let _ = deadline_after(now, config.server.shutdown_delay);
    let _ = deadline_after(now, config.origin.timeout);
    let _ = deadline_after(now, config.origin.connect_timeout);
    if let Some(redis) = &config.redis {
        let _ = deadline_after(now, redis.command_timeout);
        let _ = deadline_after(now, redis.connect_timeout);
    }
    // What `start` builds from it: the connection limit and the L2
    // write queue (both panic past tokio's largest semaphore).
    let _ = tokio::sync::Semaphore::new(config.server.max_connections);
    if let Some(redis) = &config.redis {
        let _ = tokio::sync::mpsc::channel::<()>(redis.write_queue);
    }
    let uri = http::Uri::from_static("/");
    for route in config.routes.iter() {
        let _ = deadline_after(now, route.lock_timeout);
        for lifetime in [route.ttl, Duration::from_millis(u64::MAX)] {
            let entry = Entry {
                key: CacheKey::for_url(&config.cache.namespace, "example.com", &uri),
                status: StatusCode::OK,
                headers: http::HeaderMap::new(),
                body: Bytes::new(),
                response_time: UNIX_EPOCH,
                initial_age: Duration::ZERO,
                freshness_lifetime: lifetime,
                request_time: UNIX_EPOCH,
                tags: Vec::new(),
                directives: Default::default(),
            };
            let _ = entry.retention(SystemTime::now(), config.cache.keep_stale);
        }
    }
    for path in PATHS {
        let _ = config.routes.find(path);
    }
});

/// `Instant + Duration` as the request path writes it (it panics on overflow).
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now + timeout
}
