//! L2: the shared Redis tier through fred; every call has a deadline, a circuit breaker skips Redis while it is down, and any trouble is a miss.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    ClientLike, Expiration, KeysInterface, ReconnectPolicy, SetOptions, TcpConfig,
};
use fred::prelude::{EventInterface, LuaInterface, PubsubInterface};
use fred::types::Builder;
use fred::types::config::UnresponsiveConfig;
use tokio::sync::{mpsc, oneshot};

use super::entry::Stored;
use super::key::CacheKey;
use crate::config::RedisConfig;
use crate::metrics::Metrics;

/// Consecutive failed calls that open the breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker skips Redis before letting one probe call through.
const BREAKER_COOLDOWN: Duration = Duration::from_millis(500);
/// Pause between reconnect attempts; attempts never stop, because a client
/// that gives up stays dead even after Redis is back.
const RECONNECT_DELAY_MS: u32 = 100;
/// Commands fred may hold while reconnecting; beyond it they fail at once
/// instead of piling up (fred's default is unbounded).
const COMMAND_BUFFER: usize = 1024;
/// How often fred checks connections for unanswered commands.
const UNRESPONSIVE_INTERVAL: Duration = Duration::from_millis(100);

/// The pub/sub channel on which pods announce invalidated keys.
const INVALIDATIONS: &str = "sidecache:invalidations";
/// Pause between attempts at the first subscription while Redis is away.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(500);
/// The fleet's invalidation counter: one key, so one slot and one order for
/// every invalidation any pod announces (see [`super::coherence`]).
const SEQUENCE: &str = "sidecache:invalidations:seq";
/// Numbers an invalidation and announces it as `"SEQ HASH"` in one step, so
/// that messages leave the counter's node in counter order and no reader
/// of the counter can see a number whose message was not sent. Redis
/// Cluster forwards a PUBLISH from any node (scripts included) to all nodes.
const ANNOUNCE: &str = "local seq = redis.call('INCR', KEYS[1]) \
    redis.call('PUBLISH', ARGV[1], seq .. ' ' .. ARGV[2]) \
    return seq";

/// An invalidation heard on the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// Its number in the fleet's sequence; `None` from a pod that announces
    /// bare hashes (a version from before the sequence, during a rollout).
    pub seq: Option<u64>,
    /// The hash of the invalidated key.
    pub hash: [u8; 32],
}

impl Heard {
    /// Parses `"SEQ HASH"`, or a bare `"HASH"` from an older pod.
    fn parse(message: &str) -> Option<Heard> {
        let (seq, hex) = match message.split_once(' ') {
            Some((seq, hex)) => (Some(seq.parse().ok()?), hex),
            None => (None, message),
        };
        let hash = blake3::Hash::from_hex(hex.as_bytes()).ok()?;
        Some(Heard {
            seq,
            hash: *hash.as_bytes(),
        })
    }
}

/// A pending write to L2, done by the writer task, off the response path.
enum Write {
    /// Encode and store the entry for `keep_for`.
    Set { object: Stored, keep_for: Duration },
    /// Delete the object (an invalidation or purge).
    Delete { key: String },
    /// Number the invalidation of this key hash in the fleet's sequence and
    /// tell every pod to drop it from its memory tier.
    Invalidate { hash: String },
}

/// What the writer task's queue carries.
enum Queued {
    Write(Write),
    /// Answer once every write queued before this has been sent (shutdown).
    Flush(oneshot::Sender<()>),
}

/// The shared Redis tier.
pub struct RedisTier {
    client: fred::prelude::Client,
    /// Deadline for every call.
    timeout: Duration,
    breaker: Arc<Breaker>,
    /// Writes happen off the response path, in order, through this queue.
    writes: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

impl RedisTier {
    /// Creates the client and starts connecting in the background: the proxy
    /// serves (without L2) while Redis is unreachable and picks it up when it
    /// appears. `invalidated` hears every invalidation or purge announced
    /// by any pod, this one included.
    pub fn start(
        config: &RedisConfig,
        metrics: Arc<Metrics>,
        invalidated: impl Fn(Heard) + Send + 'static,
    ) -> Result<RedisTier, fred::error::Error> {
        let mut client_config = config.client.clone();
        client_config.password = config.password.as_ref().map(|p| p.expose().to_owned());
        if config.tls {
            client_config.tls = Some(fred::prelude::TlsConnector::default_rustls()?.into());
        }
        // Keep retrying the first connection too, instead of failing start-up.
        client_config.fail_fast = false;
        let mut builder = Builder::from_config(client_config);
        builder
            .with_performance_config(|perf| perf.default_command_timeout = config.command_timeout)
            .with_connection_config(|conn| {
                conn.connection_timeout = config.connect_timeout;
                conn.internal_command_timeout = config.connect_timeout;
                // A failed call is a miss; retrying only adds latency.
                conn.max_command_attempts = 1;
                conn.max_command_buffer_len = COMMAND_BUFFER;
                conn.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(config.connect_timeout),
                    interval: UNRESPONSIVE_INTERVAL,
                };
                conn.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .set_policy(ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS));
        let client = builder.build()?;
        tokio::spawn(listen_for_invalidations(
            builder.build_subscriber_client()?,
            invalidated,
        ));
        // The connection task runs for the client's lifetime; its handle is
        // not needed because the client reconnects on its own.
        drop(client.connect());
        let breaker = Arc::new(Breaker::default());
        let (writes, queue) = mpsc::channel(config.write_queue);
        tokio::spawn(write_loop(
            queue,
            client.clone(),
            config.command_timeout,
            breaker.clone(),
            metrics.clone(),
        ));
        Ok(RedisTier {
            client,
            timeout: config.command_timeout,
            breaker,
            writes,
            metrics,
        })
    }

    /// Looks `key` up; any error, timeout, or undecodable value is a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<Stored> {
        if !self.breaker.allow(Instant::now()) {
            self.metrics.redis_call("get", "skipped");
            return None;
        }
        let redis_key = redis_key(key);
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.timeout,
            self.client.get::<Option<Bytes>, _>(&redis_key),
        )
        .await;
        self.metrics.redis_duration("get", started.elapsed());
        let value = match result {
            Ok(Ok(value)) => {
                self.breaker.success();
                value
            }
            Ok(Err(error)) => {
                self.failed("get", "error", &error.to_string());
                return None;
            }
            Err(_) => {
                self.failed("get", "timeout", "deadline passed");
                return None;
            }
        };
        let Some(value) = value else {
            self.metrics.redis_call("get", "miss");
            return None;
        };
        match Stored::decode(value, key) {
            Ok(object) => {
                self.metrics.redis_call("get", "hit");
                Some(object)
            }
            Err(error) => {
                tracing::warn!(key = %redis_key, %error, "unusable L2 value; removed");
                self.delete_now(redis_key);
                self.metrics.redis_call("get", "corrupt");
                None
            }
        }
    }

    /// Queues `object` to be written with a lifetime of `keep_for`; a full
    /// queue drops the write rather than delay anyone.
    pub fn store(&self, object: Stored, keep_for: Duration) {
        if self
            .writes
            .try_send(Queued::Write(Write::Set { object, keep_for }))
            .is_err()
        {
            self.metrics.redis_call("set", "dropped");
        }
    }

    /// Queues the deletion of `key`, after any write of it already queued,
    /// and tells the other pods to drop it from their memory tiers.
    pub fn remove(&self, key: &CacheKey) {
        for write in [
            Write::Delete {
                key: redis_key(key),
            },
            Write::Invalidate { hash: key.hex() },
        ] {
            if self.writes.try_send(Queued::Write(write)).is_err() {
                self.metrics.redis_call("del", "dropped");
            }
        }
    }

    /// Tries to become the one pod in the fleet that fetches `flight`: a
    /// `SET NX PX` lease that expires by itself after `ttl`.
    pub async fn lease(&self, flight: &[u8; 32], ttl: Duration) -> Lease {
        if !self.breaker.allow(Instant::now()) {
            return Lease::Unavailable;
        }
        let px = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let set = self.client.set::<Option<String>, _, _>(
            lease_key(flight),
            "1",
            Some(Expiration::PX(px)),
            Some(SetOptions::NX),
            false,
        );
        match tokio::time::timeout(self.timeout, set).await {
            Ok(Ok(Some(_))) => {
                self.breaker.success();
                self.metrics.redis_call("lease", "won");
                Lease::Won
            }
            Ok(Ok(None)) => {
                self.breaker.success();
                self.metrics.redis_call("lease", "lost");
                Lease::Lost
            }
            Ok(Err(error)) => {
                self.failed("lease", "error", &error.to_string());
                Lease::Unavailable
            }
            Err(_) => {
                self.failed("lease", "timeout", "deadline passed");
                Lease::Unavailable
            }
        }
    }

    /// Whether another pod still holds the lease on `flight`; `None` when
    /// Redis cannot say.
    pub async fn lease_held(&self, flight: &[u8; 32]) -> Option<bool> {
        if !self.breaker.allow(Instant::now()) {
            return None;
        }
        let exists = self.client.exists::<i64, _>(lease_key(flight));
        match tokio::time::timeout(self.timeout, exists).await {
            Ok(Ok(count)) => {
                self.breaker.success();
                Some(count > 0)
            }
            Ok(Err(error)) => {
                self.failed("lease", "error", &error.to_string());
                None
            }
            Err(_) => {
                self.failed("lease", "timeout", "deadline passed");
                None
            }
        }
    }

    /// Gives the lease back, queued after the fill's own writes so that
    /// waiting pods find the entry before they see the lease gone.
    pub fn release_lease(&self, flight: &[u8; 32]) {
        if self
            .writes
            .try_send(Queued::Write(Write::Delete {
                key: lease_key(flight),
            }))
            .is_err()
        {
            self.metrics.redis_call("del", "dropped");
        }
    }

    /// The fleet's invalidation counter: the number of the latest
    /// invalidation announced (0 before the first); `None` when Redis
    /// cannot say within the deadline. Called in the background only, so it
    /// bypasses the breaker: a failed read means "cannot confirm", not a
    /// miss, and one read a second costs nothing worth skipping.
    pub async fn invalidation_sequence(&self) -> Option<u64> {
        let started = Instant::now();
        let read = tokio::time::timeout(self.timeout, self.client.get::<Option<u64>, _>(SEQUENCE));
        let result = read.await;
        self.metrics.redis_duration("seq", started.elapsed());
        match result {
            Ok(Ok(counter)) => {
                self.metrics.redis_call("seq", "done");
                Some(counter.unwrap_or(0))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot read the invalidation sequence");
                self.metrics.redis_call("seq", "error");
                None
            }
            Err(_) => {
                self.metrics.redis_call("seq", "timeout");
                None
            }
        }
    }

    /// Waits, until `deadline` at most, for the writes queued so far (fills,
    /// deletes, invalidation broadcasts) to be sent; `false` if time ran out.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> bool {
        let (done, flushed) = oneshot::channel();
        let queued = tokio::time::timeout_at(deadline, self.writes.send(Queued::Flush(done)));
        matches!(queued.await, Ok(Ok(())))
            && matches!(tokio::time::timeout_at(deadline, flushed).await, Ok(Ok(())))
    }

    /// Whether the breaker is letting calls through.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Whether fred has its connections up.
    pub fn connected(&self) -> bool {
        self.client.is_connected()
    }

    fn failed(&self, op: &'static str, outcome: &'static str, error: &str) {
        self.metrics.redis_call(op, outcome);
        tracing::debug!(op, error, "redis call failed");
        self.breaker.failure(Instant::now());
    }

    /// Deletes a bad value in the background, within the deadline.
    fn delete_now(&self, redis_key: String) {
        let client = self.client.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, client.del::<i64, _>(redis_key)).await;
        });
    }
}

/// Sends queued writes one after another, each within the deadline.
async fn write_loop(
    mut queue: mpsc::Receiver<Queued>,
    client: fred::prelude::Client,
    timeout: Duration,
    breaker: Arc<Breaker>,
    metrics: Arc<Metrics>,
) {
    while let Some(queued) = queue.recv().await {
        let write = match queued {
            Queued::Write(write) => write,
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let op = match write {
            Write::Set { .. } => "set",
            Write::Delete { .. } => "del",
            Write::Invalidate { .. } => "publish",
        };
        if !breaker.allow(Instant::now()) {
            metrics.redis_call(op, "skipped");
            continue;
        }
        let started = Instant::now();
        let result = match write {
            Write::Set { object, keep_for } => {
                let px = i64::try_from(keep_for.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1);
                let set = client.set::<(), _, _>(
                    redis_key(object.key()),
                    object.encode(),
                    Some(Expiration::PX(px)),
                    None,
                    false,
                );
                tokio::time::timeout(timeout, set).await
            }
            Write::Delete { key } => {
                tokio::time::timeout(timeout, async { client.del::<i64, _>(key).await.map(drop) })
                    .await
            }
            Write::Invalidate { hash } => {
                let announce = async {
                    client
                        .eval::<i64, _, _, _>(ANNOUNCE, SEQUENCE, vec![INVALIDATIONS, &hash])
                        .await
                        .map(drop)
                };
                tokio::time::timeout(timeout, announce).await
            }
        };
        metrics.redis_duration(op, started.elapsed());
        match result {
            Ok(Ok(())) => {
                breaker.success();
                metrics.redis_call(op, "done");
            }
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "redis write failed");
                metrics.redis_call(op, "error");
                breaker.failure(Instant::now());
            }
            Err(_) => {
                metrics.redis_call(op, "timeout");
                breaker.failure(Instant::now());
            }
        }
    }
}

/// Subscribes to invalidations from other pods (purges and RFC 9111 §4.4
/// invalidations) and passes each one to `invalidated`. The first
/// subscription is retried until Redis is there; after that fred
/// re-subscribes on every reconnect. What is missed in between shows as a
/// gap in the sequence, or to the periodic read of the counter.
async fn listen_for_invalidations(subscriber: SubscriberClient, invalidated: impl Fn(Heard)) {
    drop(subscriber.connect());
    let _resubscribe = subscriber.manage_subscriptions();
    let mut messages = subscriber.message_rx();
    // Waits as long as Redis is away; nothing else waits on this task.
    if let Err(error) = subscriber.wait_for_connect().await {
        tracing::debug!(%error, "invalidation subscriber not connected");
    }
    while let Err(error) = subscriber.subscribe(INVALIDATIONS).await {
        tracing::debug!(%error, "cannot subscribe to invalidations yet");
        tokio::time::sleep(SUBSCRIBE_RETRY).await;
    }
    tracing::debug!("subscribed to invalidations");
    loop {
        match messages.recv().await {
            Ok(message) => {
                if let Some(heard) = message.value.as_str().and_then(|m| Heard::parse(&m)) {
                    invalidated(heard);
                }
            }
            // The next message's number, or the counter, tells the pod it
            // missed these.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "invalidation messages missed");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// What [`RedisTier::lease`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// This pod fetches.
    Won,
    /// Another pod is fetching: wait for its fill.
    Lost,
    /// Redis cannot say: fetch, as without Redis.
    Unavailable,
}

/// `sidecache:{flight}:lease`, in the flight's own slot.
fn lease_key(flight: &[u8; 32]) -> String {
    format!(
        "sidecache:{{{}}}:lease",
        blake3::Hash::from_bytes(*flight).to_hex()
    )
}

/// `sidecache:{hash}`: the braces make the hash the cluster hash tag, so any
/// future per-object keys land in the object's slot while objects spread
/// over all slots.
fn redis_key(key: &CacheKey) -> String {
    format!("sidecache:{{{}}}", key.hex())
}

/// Circuit breaker: after enough consecutive failures, calls skip Redis for
/// a cooldown instead of each paying the deadline; then one probe call goes
/// through, and its result closes or reopens the breaker.
///
/// Hand-written because it is a dozen lines of state that must fit the
/// fail-open rules here (a probe that is cancelled must not wedge it).
#[derive(Debug, Default)]
struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    #[default]
    Closed,
    /// Counting consecutive failures.
    Failing(u32),
    /// Skipping Redis until the instant, then probing.
    Open { until: Instant },
    /// One probe is out; another may go if it has not reported by `until`.
    Probing { until: Instant },
}

impl Breaker {
    fn allow(&self, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        match *state {
            BreakerState::Closed | BreakerState::Failing(_) => true,
            BreakerState::Open { until } | BreakerState::Probing { until } if now >= until => {
                *state = BreakerState::Probing {
                    until: now + BREAKER_COOLDOWN,
                };
                true
            }
            BreakerState::Open { .. } | BreakerState::Probing { .. } => false,
        }
    }

    fn success(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if matches!(
            *state,
            BreakerState::Open { .. } | BreakerState::Probing { .. }
        ) {
            tracing::info!("redis is answering again; L2 back in use");
        }
        *state = BreakerState::Closed;
    }

    fn failure(&self, now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let failures = match *state {
            BreakerState::Closed => 1,
            BreakerState::Failing(n) => n + 1,
            BreakerState::Open { .. } => return,
            BreakerState::Probing { .. } => BREAKER_THRESHOLD,
        };
        if failures >= BREAKER_THRESHOLD {
            if !matches!(*state, BreakerState::Probing { .. }) {
                tracing::warn!(
                    failures,
                    cooldown = ?BREAKER_COOLDOWN,
                    "redis failing; skipping L2 (serving from memory and origin)"
                );
            }
            *state = BreakerState::Open {
                until: now + BREAKER_COOLDOWN,
            };
        } else {
            *state = BreakerState::Failing(failures);
        }
    }

    fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| matches!(*s, BreakerState::Open { .. } | BreakerState::Probing { .. }))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let breaker = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            breaker.failure(t0);
            assert!(breaker.allow(t0));
        }
        // A success in between resets the count.
        breaker.success();
        for _ in 0..BREAKER_THRESHOLD {
            assert!(breaker.allow(t0));
            breaker.failure(t0);
        }
        assert!(breaker.is_open());
        assert!(!breaker.allow(t0 + BREAKER_COOLDOWN / 2));

        // After the cooldown exactly one probe goes through.
        let t1 = t0 + BREAKER_COOLDOWN;
        assert!(breaker.allow(t1));
        assert!(!breaker.allow(t1));
        // A failed probe reopens; a later successful one closes.
        breaker.failure(t1);
        assert!(!breaker.allow(t1));
        let t2 = t1 + BREAKER_COOLDOWN;
        assert!(breaker.allow(t2));
        breaker.success();
        assert!(!breaker.is_open());
        assert!(breaker.allow(t2));
    }

    #[test]
    fn a_probe_that_never_reports_does_not_wedge_the_breaker() {
        let breaker = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..BREAKER_THRESHOLD {
            breaker.failure(t0);
        }
        let t1 = t0 + BREAKER_COOLDOWN;
        assert!(breaker.allow(t1), "probe");
        // The probe's caller was cancelled: no success, no failure.
        assert!(!breaker.allow(t1 + BREAKER_COOLDOWN / 2));
        assert!(breaker.allow(t1 + BREAKER_COOLDOWN), "next probe");
    }

    #[test]
    fn announcements_parse_with_their_number_or_bare_from_older_pods() {
        let hash = blake3::hash(b"k");
        let hex = hash.to_hex();
        let expected = |seq| {
            Some(Heard {
                seq,
                hash: *hash.as_bytes(),
            })
        };
        assert_eq!(Heard::parse(&format!("42 {hex}")), expected(Some(42)));
        assert_eq!(Heard::parse(hex.as_str()), expected(None));
        assert_eq!(Heard::parse(&format!("x {hex}")), None);
        assert_eq!(Heard::parse("42 beef"), None);
    }

    #[test]
    fn redis_keys_carry_the_object_hash_as_hash_tag() {
        let (parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
        let key = CacheKey::for_request("ns", &parts);
        assert_eq!(redis_key(&key), format!("sidecache:{{{}}}", key.hex()));
    }
}
