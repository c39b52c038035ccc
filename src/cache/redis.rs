//! L2: the shared Redis tier through fred; a request's calls share one deadline, breakers skip a failing cluster node (or all of Redis), and any trouble is a miss.
//!
//! Every call on a request's path goes through one [`Gate`]: it skips the
//! call when the request has no Redis time left ([`Budget`]) or when the
//! [`Breaker`] of the cluster node that owns the key's slot is open (without
//! a cluster, the one breaker of all of Redis); otherwise it bounds the call
//! by what is left of the budget and records what came of it. Writes are
//! queued and sent off the request path, each with its own deadline,
//! through the same breakers.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    ClientLike, ClusterInterface, Config as ClientConfig, Expiration, HashesInterface,
    KeysInterface, ReconnectPolicy, ServerConfig, SetOptions, TcpConfig,
};
use fred::prelude::{EventInterface, LuaInterface, PubsubInterface};
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Server, UnresponsiveConfig};
use fred::types::{Builder, Value};
use thread_local::ThreadLocal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::entry::Stored;
use super::key::CacheKey;
use super::tags::{Purged, TAG_PURGE_RETENTION, micros};
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use side::Side;

mod side;

/// Consecutive failed calls that open the breaker.
const BREAKER_THRESHOLD: u32 = 5;
/// Consecutive failed calls to one cluster node that open its breaker: a
/// frozen node costs this many deadlines, then only probes.
const NODE_BREAKER_THRESHOLD: u32 = 3;
/// How long an open breaker skips Redis before letting one probe call through.
const BREAKER_COOLDOWN: Duration = Duration::from_millis(500);
/// Pause between reconnect attempts; attempts never stop, because a client
/// that gives up stays dead even after Redis is back.
const RECONNECT_DELAY_MS: u32 = 100;
/// Commands fred may hold while reconnecting; beyond it they fail at once
/// instead of piling up (fred's default is unbounded).
const COMMAND_BUFFER: usize = 1024;
/// Messages fred holds for a subscriber's listener (fred's default is
/// 32): a node that thaws delivers what it queued while frozen at once,
/// and a burst beyond this is lost (seen in the soak: 44 at once).
const MESSAGE_BUFFER: usize = 1024;
/// How often fred checks connections for unanswered commands.
const UNRESPONSIVE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the slot map is checked for a failover while a node's breaker
/// is open.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

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

/// Records a tag purge (`ARGV`: hard and soft purge times in ms, 0 for
/// none, and the record's lifetime) in the tag's one key, keeping the later
/// of each time, so that purges sent twice or out of order never move a
/// tag's times back; returns the times now recorded.
const PURGE_TAG: &str = "local h = tonumber(redis.call('HGET', KEYS[1], 'hard') or '0') \
    local s = tonumber(redis.call('HGET', KEYS[1], 'soft') or '0') \
    h = math.max(h, tonumber(ARGV[1])) \
    s = math.max(s, tonumber(ARGV[2])) \
    redis.call('HSET', KEYS[1], 'hard', string.format('%d', h), 'soft', string.format('%d', s)) \
    redis.call('PEXPIRE', KEYS[1], ARGV[3]) \
    return {h, s}";

/// How long Redis remembers when a URL was purged (`sidecache:{HASH}:purged`,
/// in the entry's slot), to refuse entries fetched before: as long as a
/// request made before a purge may still be completing its fill, not as
/// long as entries are kept (that has no bound, and every invalidating
/// POST leaves a record), so the records stay bounded by the purge rate.
const PURGE_RECORD_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A fill whose request looked the URL up longer ago than this is not
/// written to Redis (counted as `op="set",outcome="too-old"`): a purge
/// record that concerned it may have expired. The margin over [`PURGE_RECORD_LIFETIME`] covers
/// the write queue and clock differences between pods.
pub const PURGE_CHECKABLE: Duration = Duration::from_secs(10 * 60);

/// Stores an entry (`KEYS[1]`; `ARGV`: the encoded value and its lifetime
/// in ms) unless its URL's purge record (`KEYS[2]`, same slot) shows a
/// purge at or after the time its request looked the URL up or sent its
/// fetch (`ARGV[3]`, µs, the earlier): whether it did.
/// One script, so no purge can come between the check and the write.
const STORE: &str = "local purged = redis.call('GET', KEYS[2]) \
    if purged and tonumber(ARGV[3]) <= tonumber(purged) then return 0 end \
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
    return 1";

/// Deletes an entry (`KEYS[1]`) and records its purge time (`ARGV[1]`, µs,
/// the later of it and any recorded) in its purge record (`KEYS[2]`) for
/// `ARGV[2]` ms: [`STORE`] refuses what was fetched before.
const INVALIDATE: &str = "local t = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[1])) \
    redis.call('SET', KEYS[2], string.format('%d', t), 'PX', ARGV[2]) \
    return redis.call('DEL', KEYS[1])";

/// An announcement heard on the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// Its number in the fleet's sequence; `None` from a pod that announces
    /// bare hashes (a version from before the sequence, during a rollout).
    pub seq: Option<u64>,
    pub what: Announced,
}

/// What an announcement is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announced {
    /// The hash of an invalidated key.
    Key([u8; 32]),
    /// A tag's purge times, as recorded in Redis after a purge.
    Tag { tag: [u8; 32], purged: Purged },
}

impl Heard {
    /// Parses `"SEQ HASH"`, `"SEQ tag HASH HARD SOFT"` (a tag purge), or
    /// either without its number: from an older pod, or told while the
    /// counter's node is down ([`Writer::tell`]). A number is digits, so a
    /// bare tag purge is told apart by its first word.
    fn parse(message: &str) -> Option<Heard> {
        let (seq, rest) = match message.split_once(' ') {
            _ if message.starts_with("tag ") => (None, message),
            Some((seq, rest)) => (Some(seq.parse().ok()?), rest),
            None => (None, message),
        };
        let hash = |hex: &str| {
            blake3::Hash::from_hex(hex.as_bytes())
                .ok()
                .map(|h| *h.as_bytes())
        };
        let what = match rest.strip_prefix("tag ") {
            Some(tag) => {
                let mut words = tag.split(' ');
                let tag = hash(words.next()?)?;
                let hard = words.next()?.parse().ok()?;
                let soft = words.next()?.parse().ok()?;
                if words.next().is_some() {
                    return None;
                }
                Announced::Tag {
                    tag,
                    purged: Purged { hard, soft },
                }
            }
            _ => Announced::Key(hash(rest)?),
        };
        Some(Heard { seq, what })
    }
}

/// A pending write to L2, done by the writer task, off the response path.
enum Write {
    /// Encode and store the entry for `keep_for`, unless its URL was
    /// purged at or after `since` (µs: when its request looked the URL up
    /// or sent its fetch, the earlier).
    Set {
        object: Stored,
        keep_for: Duration,
        since: u64,
    },
    /// Delete a key (a lease).
    Delete { key: String },
    /// An invalidation or purge: delete the object, then number it in the
    /// fleet's sequence and tell every pod to drop it from its memory tier.
    /// Retried until Redis takes it (see [`write_loop`]). `at` (µs) is
    /// recorded next to the key, so that fills made before it are refused
    /// however late they come.
    Invalidate { key: String, hash: String, at: u64 },
    /// A tag purge: record it in the tag's key, then number it and tell
    /// every pod the tag's times. Retried like an invalidation.
    PurgeTag { tag: [u8; 32], purged: Purged },
}

impl Write {
    /// The unnumbered announcement of an invalidation (`HASH`) or tag purge
    /// (`tag HASH HARD SOFT`, the purge's own times: pods merge them with
    /// what they know), for [`Writer::tell`]; `None` for other writes.
    fn bare(&self) -> Option<String> {
        match self {
            Write::Invalidate { hash, .. } => Some(hash.clone()),
            Write::PurgeTag { tag, purged } => Some(tag_message(tag, *purged)),
            Write::Set { .. } | Write::Delete { .. } => None,
        }
    }
}

/// `tag HASH HARD SOFT`: a tag purge's announcement, numbered or not.
fn tag_message(tag: &[u8; 32], purged: Purged) -> String {
    format!(
        "tag {} {} {}",
        blake3::Hash::from_bytes(*tag).to_hex(),
        purged.hard,
        purged.soft
    )
}

/// What the writer task's queue carries.
enum Queued {
    Write(Write),
    /// Answer once every write queued before this has been sent (shutdown).
    Flush(oneshot::Sender<()>),
}

/// The request path's clients, one per thread ([`RedisTier::reader`]), each
/// with the thread it was made on.
type Readers = ThreadLocal<(ThreadId, fred::prelude::Client)>;

/// The shared Redis tier.
pub struct RedisTier {
    /// The writer's, the background reads', and the request path's on a
    /// thread whose own is not connected (yet).
    client: fred::prelude::Client,
    /// The request path's clients, one per thread that serves requests
    /// ([`RedisTier::reader`]).
    readers: Arc<Readers>,
    /// Breakers, budgets and outcome metrics of the request-path calls
    /// (the write queue shares its breakers).
    gate: Arc<Gate>,
    /// Writes happen off the response path, in order, through this queue.
    writes: mpsc::Sender<Queued>,
    /// Invalidations and purges: a lane of their own, which the writer
    /// empties before it takes the next fill, so that other pods hear of a
    /// purge without waiting for every fill queued before it (a fill of the
    /// purged URL that comes after is refused by [`STORE`] anyway).
    purges: mpsc::Sender<Write>,
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
        invalidated: impl Fn(Heard) + Send + Sync + 'static,
    ) -> Result<RedisTier, fred::error::Error> {
        let invalidated: side::Listener = Arc::new(invalidated);
        let mut client_config = config.client.clone();
        client_config.password = config.password.as_ref().map(|p| p.expose().to_owned());
        if config.tls {
            client_config.tls = Some(fred::prelude::TlsConnector::default_rustls()?.into());
        }
        // Keep retrying the first connection too, instead of failing start-up.
        client_config.fail_fast = false;
        let clustered = matches!(client_config.server, ServerConfig::Clustered { .. });
        let side = Arc::new(Side::new(
            client_config.clone(),
            config.command_timeout,
            config.connect_timeout,
            invalidated.clone(),
        ));
        let builder = builder(
            client_config,
            config.command_timeout,
            config.connect_timeout,
        );
        let client = builder.build()?;
        // fred prefixes its own log lines with this name.
        tracing::debug!(client = %client.id(), "redis client");
        // In a cluster the side connections subscribe, one per master (see
        // [`side`]); otherwise one subscriber on the one server.
        if !clustered {
            let subscriber = builder.build_subscriber_client()?;
            tokio::spawn(listen_for_invalidations(
                subscriber,
                invalidated,
                Arc::default(),
            ));
        }
        // The connection task runs for the client's lifetime; its handle is
        // not needed because the client reconnects on its own.
        drop(client.connect());
        let gate = Arc::new(Gate::new(config.command_timeout, metrics.clone()));
        let (writes, queue) = mpsc::channel(config.write_queue);
        let (purges, purge_queue) = mpsc::channel(config.write_queue);
        let writer = Writer {
            client: client.clone(),
            timeout: config.command_timeout,
            gate: gate.clone(),
            side: side.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(write_loop(purge_queue, queue, writer));
        let readers: Arc<Readers> = Arc::default();
        tokio::spawn(follow_failovers(
            client.clone(),
            readers.clone(),
            side,
            Arc::downgrade(&gate),
            config.command_timeout,
            config.connect_timeout,
        ));
        Ok(RedisTier {
            client,
            readers,
            gate,
            writes,
            purges,
            metrics,
        })
    }

    /// Looks `key` up within what is left of the request's `budget`; any
    /// error, timeout, skip, or undecodable value is a miss.
    pub async fn get(&self, key: &CacheKey, budget: &Budget) -> Option<Stored> {
        let redis_key = redis_key(key);
        let node = self.node_of(&redis_key);
        let get = || self.reader().get::<Option<Bytes>, _>(&redis_key);
        let value = self.gate.call("get", node, budget, get).await?;
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

    /// What `key` holds, for an operator's look (`/explain`): within what
    /// is left of `budget` and never through an open breaker, like a
    /// lookup, but it changes nothing: no outcome metric, no breaker
    /// accounting (nor its probe), no removal of an unusable value.
    pub async fn peek(&self, key: &CacheKey, budget: &Budget) -> Peeked {
        let redis_key = redis_key(key);
        let node = self.node_of(&redis_key);
        let get = self.reader().get::<Option<Bytes>, _>(&redis_key);
        match self.gate.peek(node, budget, get).await {
            Err(why) => Peeked::Unavailable(why),
            Ok(None) => Peeked::Absent,
            Ok(Some(value)) => match Stored::decode(value, key) {
                Ok(object) => Peeked::Found(object),
                Err(error) => Peeked::Unusable(error.to_string()),
            },
        }
    }

    /// Queues `object` to be written with a lifetime of `keep_for`, unless
    /// Redis records a purge of its URL at or after `since` (when its
    /// request looked the URL up or sent its fetch); a full queue drops the
    /// write rather than delay anyone.
    pub fn store(&self, object: Stored, keep_for: Duration, since: SystemTime) {
        let write = Write::Set {
            object,
            keep_for,
            since: micros(since),
        };
        if self.writes.try_send(Queued::Write(write)).is_err() {
            self.metrics.redis_call("set", "dropped");
        }
    }

    /// Queues the deletion of `key`, purged `at`, and tells the other pods
    /// to drop it from their memory tiers; writes of it fetched before `at`
    /// are refused from then on, even those already queued.
    pub fn remove(&self, key: &CacheKey, at: SystemTime) {
        let write = Write::Invalidate {
            key: redis_key(key),
            hash: key.hex(),
            at: micros(at),
        };
        if self.purges.try_send(write).is_err() {
            self.metrics.redis_call("publish", "dropped");
        }
    }

    /// The purge times recorded for a tag, within what is left of the
    /// request's `budget`; `None` when Redis cannot say.
    pub async fn tag_purges(&self, tag: &[u8; 32], budget: &Budget) -> Option<Purged> {
        let key = tag_key(tag);
        let node = self.node_of(&key);
        let read = || {
            self.reader()
                .hmget::<Vec<Option<u64>>, _, _>(&key, vec!["hard", "soft"])
        };
        let times = self.gate.call("tag", node, budget, read).await?;
        self.metrics.redis_call("tag", "done");
        let time = |n: usize| times.get(n).copied().flatten().unwrap_or(0);
        Some(Purged {
            hard: time(0),
            soft: time(1),
        })
    }

    /// Queues a tag purge: recorded in Redis, then announced to every pod
    /// (this one included) in the invalidation sequence.
    pub fn purge_tag(&self, tag: [u8; 32], purged: Purged) {
        let write = Write::PurgeTag { tag, purged };
        if self.purges.try_send(write).is_err() {
            self.metrics.redis_call("publish", "dropped");
        }
    }

    /// Tries to become the one pod in the fleet that fetches `flight`: a
    /// `SET NX PX` lease that expires by itself after `ttl`.
    pub async fn lease(&self, flight: &[u8; 32], ttl: Duration, budget: &Budget) -> Lease {
        let px = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let key = lease_key(flight);
        let node = self.node_of(&key);
        let set = || {
            self.reader().set::<Option<String>, _, _>(
                &key,
                "1",
                Some(Expiration::PX(px)),
                Some(SetOptions::NX),
                false,
            )
        };
        match self.gate.call("lease", node, budget, set).await {
            Some(Some(_)) => {
                self.metrics.redis_call("lease", "won");
                Lease::Won
            }
            Some(None) => {
                self.metrics.redis_call("lease", "lost");
                Lease::Lost
            }
            None => Lease::Unavailable,
        }
    }

    /// Whether another pod still holds the lease on `flight`; `None` when
    /// Redis cannot say (within what is left of `budget`).
    pub async fn lease_held(&self, flight: &[u8; 32], budget: &Budget) -> Option<bool> {
        let key = lease_key(flight);
        let node = self.node_of(&key);
        let exists = || self.reader().exists::<i64, _>(&key);
        let count = self.gate.call("lease", node, budget, exists).await?;
        Some(count > 0)
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
        let read = tokio::time::timeout(
            self.gate.timeout,
            self.client.get::<Option<u64>, _>(SEQUENCE),
        );
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
                tracing::debug!("invalidation sequence read timed out");
                self.metrics.redis_call("seq", "timeout");
                None
            }
        }
    }

    /// Waits, until `deadline` at most, for the writes queued so far (fills,
    /// deletes, invalidation broadcasts) to be sent; `false` if time ran out.
    /// The writer takes the purges' lane first, so the purges queued before
    /// are sent by the time it comes to this.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> bool {
        let (done, flushed) = oneshot::channel();
        let queued = tokio::time::timeout_at(deadline, self.writes.send(Queued::Flush(done)));
        matches!(queued.await, Ok(Ok(())))
            && matches!(tokio::time::timeout_at(deadline, flushed).await, Ok(Ok(())))
    }

    /// Whether all of Redis is skipped (every node's breaker is open).
    pub fn breaker_open(&self) -> bool {
        self.gate.all_open()
    }

    /// The cluster nodes calls have gone to, as `host:port`, and whether
    /// each one's breaker is skipping it.
    pub fn nodes_open(&self) -> Vec<(String, bool)> {
        self.gate.nodes_open()
    }

    /// The client this thread's request-path calls go through: one of its
    /// own once connected (made and connected on its first call), the
    /// shared one until then and whenever it is not connected.
    ///
    /// fred runs a client's connections in tasks on the runtime that
    /// connected it, and every worker thread has a runtime of its own:
    /// through one shared client, each Redis hit on another worker's thread
    /// cost two cross-thread wake-ups, an eventfd write and a trip through
    /// the other thread's epoll each. Its own client has no command timeout
    /// of fred's: every request-path call is bounded by [`Gate`], and a
    /// second timer per call made tokio write its own eventfd (its timer
    /// wakes the driver when a timer is added to an empty wheel). Threads
    /// that serve requests live as long as the proxy; should one end, a
    /// later thread that `ThreadLocal` hands its value (it reuses its ids)
    /// uses the shared client rather than one whose runtime is gone.
    fn reader(&self) -> &fred::prelude::Client {
        let (thread, own) = self.readers.get_or(|| {
            let own = self.client.clone_new();
            let mut perf = own.perf_config();
            perf.default_command_timeout = Duration::ZERO;
            own.update_perf_config(perf);
            // Its connection task runs on this thread's runtime, and
            // reconnects on its own, like the shared client's.
            drop(own.connect());
            (std::thread::current().id(), own)
        });
        if own.is_connected() && *thread == std::thread::current().id() {
            own
        } else {
            &self.client
        }
    }

    /// The node that owns `redis_key`'s slot ([`node_of`]).
    fn node_of(&self, redis_key: &str) -> Option<String> {
        node_of(&self.client, redis_key)
    }

    /// Whether fred has its connections up.
    pub fn connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Deletes a bad value in the background, within the deadline.
    fn delete_now(&self, redis_key: String) {
        let client = self.client.clone();
        let timeout = self.gate.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, client.del::<i64, _>(redis_key)).await;
        });
    }
}

/// A fred client builder with this tier's settings: `command_timeout` for
/// every command, `connect_timeout` for connecting, one attempt per
/// command, a bounded buffer while reconnecting, reconnect attempts that
/// never stop.
fn builder(config: ClientConfig, command_timeout: Duration, connect_timeout: Duration) -> Builder {
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| {
            perf.default_command_timeout = command_timeout;
            perf.broadcast_channel_capacity = MESSAGE_BUFFER;
        })
        .with_connection_config(|conn| {
            conn.connection_timeout = connect_timeout;
            conn.internal_command_timeout = connect_timeout;
            // A failed call is a miss; retrying only adds latency.
            conn.max_command_attempts = 1;
            conn.max_command_buffer_len = COMMAND_BUFFER;
            // fred would drop a connection that stops answering and
            // reconnect the whole client, which cannot finish while one
            // node accepts connections but never answers (frozen): all
            // of Redis would be gone for as long. The call deadlines and
            // the node breakers handle such a node instead, and
            // `follow_failovers` notices when its replica takes over.
            conn.unresponsive = UnresponsiveConfig {
                max_timeout: None,
                interval: UNRESPONSIVE_INTERVAL,
            };
            conn.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
        })
        .set_policy(ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS));
    builder
}

/// Invalidations Redis did not take yet (a node down, its breaker open),
/// kept to be sent again: one that is lost would leave the old copy in
/// Redis, and in every pod's memory tier for its whole freshness, since no
/// pod could see a gap in a sequence it never entered. Beyond this many the
/// oldest are dropped, and counted.
const PENDING_INVALIDATIONS: usize = 4096;
/// Side connections one unnumbered announcement tries, at most: a frozen
/// node costs a deadline each.
const TELL_ATTEMPTS: usize = 2;
/// Pause between attempts at the pending invalidations.
const INVALIDATION_RETRY: Duration = Duration::from_millis(250);

/// Sends queued writes one after another, each call within the deadline
/// and through its node's breaker, purges first; invalidations that fail
/// are sent again every [`INVALIDATION_RETRY`], however busy the queue,
/// until Redis takes them.
async fn write_loop(
    mut purges: mpsc::Receiver<Write>,
    mut queue: mpsc::Receiver<Queued>,
    writer: Writer,
) {
    let mut pending: VecDeque<Unsent> = VecDeque::new();
    // When the pending invalidations are tried next: a deadline, not a
    // pause after the last queued write, because fills keep the queue busy
    // and a retry that waited for a quiet moment came only seconds (up to
    // the entries' freshness) after Redis was back.
    let mut retry_at = Instant::now();
    loop {
        let queued = tokio::select! {
            // Purges before fills; a retry only when it is due.
            biased;
            Some(purge) = purges.recv() => Queued::Write(purge),
            () = tokio::time::sleep_until(retry_at), if !pending.is_empty() => {
                writer.retry(&mut pending).await;
                retry_at = Instant::now() + INVALIDATION_RETRY;
                continue;
            }
            queued = queue.recv() => match queued {
                Some(queued) => queued,
                None => return,
            },
        };
        match queued {
            Queued::Flush(done) => {
                // At shutdown: one more try at what is still pending.
                writer.retry(&mut pending).await;
                let _ = done.send(());
            }
            Queued::Write(write) => {
                if writer.send(&write).await {
                    continue;
                }
                // Invalidations and tag purges are kept to be sent again,
                // and told to the pods meanwhile; a fill or a lease's
                // release that fails is a miss later, nothing more.
                let Some(bare) = write.bare() else {
                    continue;
                };
                let told = writer.tell(&bare).await;
                if pending.is_empty() {
                    retry_at = Instant::now() + INVALIDATION_RETRY;
                }
                let since = Instant::now();
                writer.keep(&mut pending, Unsent { write, told, since });
            }
        }
    }
}

/// An invalidation Redis did not take yet.
struct Unsent {
    write: Write,
    /// When it was first tried, for the log of how long it waited.
    since: Instant,
    /// Whether the pods were told of it already, unnumbered
    /// ([`Writer::tell`]).
    told: bool,
}

/// What the writer task sends with.
struct Writer {
    client: fred::prelude::Client,
    timeout: Duration,
    gate: Arc<Gate>,
    /// What [`Writer::tell`] publishes through in a cluster.
    side: Arc<Side>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Sends `write`; whether Redis took it.
    async fn send(&self, write: &Write) -> bool {
        match write {
            Write::Set {
                object,
                keep_for,
                since,
            } => {
                let key = redis_key(object.key());
                let px = i64::try_from(keep_for.as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1);
                let args: Vec<Value> = vec![
                    object.encode().into(),
                    px.into(),
                    i64::try_from(*since).unwrap_or(i64::MAX).into(),
                ];
                let keys = vec![key.clone(), purge_record_key(&key)];
                let set = self.client.eval::<i64, _, _, _>(STORE, keys, args);
                let stored = self.call("set", node_of(&self.client, &key), set).await;
                if stored == Some(0) {
                    self.metrics.purged_fill("redis");
                }
                stored.is_some()
            }
            Write::Delete { key } => {
                let del = async { self.client.del::<i64, _>(key).await.map(drop) };
                self.call("del", node_of(&self.client, key), del)
                    .await
                    .is_some()
            }
            Write::Invalidate { key, hash, at } => {
                // The copy in Redis goes first: a pod told to drop its own
                // copy must not find the old one in Redis.
                let keys = vec![key.clone(), purge_record_key(key)];
                let args: Vec<Value> = vec![
                    i64::try_from(*at).unwrap_or(i64::MAX).into(),
                    millis(PURGE_RECORD_LIFETIME).into(),
                ];
                let del = async {
                    self.client
                        .eval::<i64, _, _, _>(INVALIDATE, keys, args)
                        .await
                        .map(drop)
                };
                if self
                    .call("del", node_of(&self.client, key), del)
                    .await
                    .is_none()
                {
                    return false;
                }
                let announce = async {
                    self.client
                        .eval::<i64, _, _, _>(ANNOUNCE, SEQUENCE, vec![INVALIDATIONS, hash])
                        .await
                        .map(drop)
                };
                self.call("publish", None, announce).await.is_some()
            }
            Write::PurgeTag { tag, purged } => {
                let key = tag_key(tag);
                let args = vec![
                    purged.hard.to_string(),
                    purged.soft.to_string(),
                    TAG_PURGE_RETENTION.as_millis().to_string(),
                ];
                let record = self
                    .client
                    .eval::<Vec<u64>, _, _, _>(PURGE_TAG, key.as_str(), args);
                let Some(times) = self.call("tag", node_of(&self.client, &key), record).await
                else {
                    return false;
                };
                // What Redis now holds: an earlier purge may be later.
                let recorded = match times[..] {
                    [hard, soft] => Purged { hard, soft },
                    _ => *purged,
                };
                let message = tag_message(tag, recorded);
                let announce = async {
                    self.client
                        .eval::<i64, _, _, _>(ANNOUNCE, SEQUENCE, vec![INVALIDATIONS, &message])
                        .await
                        .map(drop)
                };
                self.call("publish", None, announce).await.is_some()
            }
        }
    }

    /// One call through `node`'s breaker (the global one for `None`),
    /// within the deadline, counted; its answer if it succeeded.
    async fn call<T>(
        &self,
        op: &'static str,
        node: Option<String>,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Option<T> {
        // A write to a node that keeps failing would hold up the writes
        // queued behind it for a deadline each.
        let Some(breaker) = self.gate.breaker(node, Instant::now()) else {
            self.metrics.redis_call(op, "skipped");
            return None;
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call).await;
        self.metrics.redis_duration(op, started.elapsed());
        match result {
            Ok(Ok(answer)) => {
                breaker.success();
                self.metrics.redis_call(op, "done");
                Some(answer)
            }
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "redis write failed");
                self.metrics.redis_call(op, "error");
                breaker.failure(Instant::now());
                None
            }
            Err(_) => {
                self.metrics.redis_call(op, "timeout");
                breaker.failure(Instant::now());
                None
            }
        }
    }

    /// Tells every pod of an invalidation or tag purge now, without a
    /// number (`bare`, see [`Write::bare`]), through a node that answers.
    /// An invalidation is numbered on
    /// the counter's node (and its copy deleted on the key's): while either
    /// is down or failing over, which takes seconds, the numbered
    /// announcement waits in the pending list, and without this every other
    /// pod would serve its memory copy all that time. In a cluster every pod
    /// is subscribed on every master, so all hear this at once through the
    /// live ones; the numbered announcement still follows, so one that
    /// missed both sees the gap. Whether a node took it.
    async fn tell(&self, bare: &str) -> bool {
        if self.client.cached_cluster_state().is_none() {
            // Not a cluster: the one server, the counter's too, is failing.
            let publish = async {
                self.client
                    .publish::<(), _, _>(INVALIDATIONS, bare)
                    .await
                    .map(drop)
            };
            return self.call("tell", None, publish).await.is_some();
        }
        // Through the side connections, not the cluster client: that one
        // is down as a whole while a master is dead (see [`side`]), and its
        // breakers are all open then. Nodes whose breaker is open (frozen)
        // and the counter's node are tried last, and at most
        // [`TELL_ATTEMPTS`] of them, each within the deadline.
        let mut last: Vec<String> = self
            .gate
            .nodes_open()
            .into_iter()
            .filter_map(|(node, open)| open.then_some(node))
            .collect();
        last.extend(node_of(&self.client, SEQUENCE));
        let up = self.side.up(&last);
        if up.is_empty() {
            self.metrics.redis_call("tell", "skipped");
            return false;
        }
        for (node, via) in up.into_iter().take(TELL_ATTEMPTS) {
            let started = Instant::now();
            let publish = via.publish::<(), _, _>(INVALIDATIONS, bare);
            let result = tokio::time::timeout(self.timeout, publish).await;
            self.metrics.redis_duration("tell", started.elapsed());
            match result {
                Ok(Ok(())) => {
                    self.metrics.redis_call("tell", "done");
                    return true;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%node, %error, "tell failed");
                    self.metrics.redis_call("tell", "error");
                }
                Err(_) => self.metrics.redis_call("tell", "timeout"),
            }
        }
        false
    }

    /// Keeps an invalidation or tag purge Redis did not take, to send it again.
    fn keep(&self, pending: &mut VecDeque<Unsent>, unsent: Unsent) {
        if pending.len() >= PENDING_INVALIDATIONS {
            pending.pop_front();
            self.metrics.redis_call("publish", "dropped");
        }
        pending.push_back(unsent);
        tracing::debug!(
            pending = pending.len(),
            told = pending.back().is_some_and(|unsent| unsent.told),
            "invalidation pending"
        );
    }

    /// Sends the pending invalidations and tag purges again, oldest first,
    /// until one fails; then tells the pods of those still pending that
    /// they were not told of yet (Redis was wholly away when they came).
    async fn retry(&self, pending: &mut VecDeque<Unsent>) {
        while let Some(unsent) = pending.front() {
            if !self.send(&unsent.write).await {
                break;
            }
            tracing::debug!(
                waited_ms = unsent.since.elapsed().as_millis(),
                left = pending.len() - 1,
                "pending invalidation sent"
            );
            pending.pop_front();
        }
        for unsent in pending.iter_mut().filter(|unsent| !unsent.told) {
            let Some(bare) = unsent.write.bare() else {
                continue;
            };
            if !self.tell(&bare).await {
                return;
            }
            unsent.told = true;
        }
    }
}

/// A primary that owns slots and whose breaker is closed: where a command
/// that any node can run goes while some node is failing (fred would pick
/// any, the failing one included).
fn answering_node(routing: &ClusterRouting, gate: &Gate) -> Option<Server> {
    let open = gate.nodes_open();
    routing.unique_primary_nodes().into_iter().find(|server| {
        let name = server.to_string();
        !open.iter().any(|(node, open)| *open && *node == name)
    })
}

/// While a node's breaker is open, checks every [`TOPOLOGY_CHECK`] whether
/// the cluster moved its slots (its replica took over) and, if so, has fred
/// follow, in the shared client and in each thread's own: fred no longer
/// gives up on a connection that stops answering, so without this it would
/// keep routing those slots to the failed node. Every
/// tick also keeps the side connections on the masters of the slot map.
/// Ends with the tier.
async fn follow_failovers(
    client: fred::prelude::Client,
    readers: Arc<Readers>,
    side: Arc<Side>,
    gate: std::sync::Weak<Gate>,
    timeout: Duration,
    sync_timeout: Duration,
) {
    // The side connections are wanted from the start (a master may die
    // before the first tick); the ticks take over if Redis is not there.
    let connected = tokio::time::timeout(TOPOLOGY_CHECK, client.wait_for_connect());
    if matches!(connected.await, Ok(Ok(())))
        && let Some(known) = client.cached_cluster_state()
    {
        side.follow(&known.unique_primary_nodes());
    }
    let mut every = tokio::time::interval(TOPOLOGY_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(gate) = gate.upgrade() else { return };
        if let Some(known) = client.cached_cluster_state() {
            side.follow(&known.unique_primary_nodes());
        }
        let nodes = gate.nodes_open();
        if !nodes.iter().any(|(_, open)| *open) {
            continue;
        }
        let Some(known) = client.cached_cluster_state() else {
            continue;
        };
        let Some(answering) = answering_node(&known, &gate) else {
            continue;
        };
        let ask = client.with_cluster_node(answering);
        let asked = tokio::time::timeout(timeout, ask.cluster_slots::<fred::types::Value>());
        let Ok(Ok(slots)) = asked.await else {
            continue;
        };
        let Ok(current) = ClusterRouting::from_cluster_slots(slots, "") else {
            continue;
        };
        // The shared client, and each thread's own (`RedisTier::reader`):
        // every one has a slot map of its own, and sends to the failed node
        // until it is told.
        let moved = owners(&current);
        let is_behind = |c: &fred::prelude::Client| {
            c.cached_cluster_state()
                .is_none_or(|map| owners(&map) != moved)
        };
        let behind: Vec<&fred::prelude::Client> = std::iter::once(&client)
            .chain(readers.iter().map(|(_, reader)| reader))
            .filter(|c| is_behind(c))
            .collect();
        if behind.is_empty() {
            continue;
        }
        tracing::info!("cluster slots moved while a node was failing; following them");
        for behind in behind {
            let _ = tokio::time::timeout(sync_timeout, behind.sync_cluster()).await;
        }
        if is_behind(&client) {
            continue;
        }
        // Breakers of nodes that no longer own slots would read as open forever.
        let primaries: Vec<String> = current
            .unique_primary_nodes()
            .iter()
            .map(ToString::to_string)
            .collect();
        gate.keep_nodes(&primaries);
    }
}

/// Which node owns which slots.
fn owners(routing: &ClusterRouting) -> Vec<(u16, u16, String)> {
    routing
        .slots()
        .iter()
        .map(|range| (range.start, range.end, range.primary.to_string()))
        .collect()
}

/// Subscribes to invalidations from other pods (purges and RFC 9111 §4.4
/// invalidations) and passes each one to `invalidated`. The first
/// subscription is retried until Redis is there, or until `gone` (a side
/// connection's node is no longer a master); after that fred re-subscribes
/// on every reconnect. What is missed in between shows as a gap in the
/// sequence, or to the periodic read of the counter.
async fn listen_for_invalidations(
    subscriber: SubscriberClient,
    invalidated: side::Listener,
    gone: Arc<AtomicBool>,
) {
    drop(subscriber.connect());
    let _resubscribe = subscriber.manage_subscriptions();
    let mut messages = subscriber.message_rx();
    // Waits as long as Redis is away (nothing else waits on this task), a
    // while at a time, to stop if its node is gone meanwhile.
    loop {
        if gone.load(Ordering::Relaxed) {
            return;
        }
        let connected = tokio::time::timeout(SUBSCRIBE_RETRY, subscriber.wait_for_connect()).await;
        match connected {
            Err(_) => continue,
            Ok(Err(error)) => tracing::debug!(%error, "invalidation subscriber not connected"),
            Ok(Ok(())) => match subscriber.subscribe(INVALIDATIONS).await {
                Ok(()) => break,
                Err(error) => tracing::debug!(%error, "cannot subscribe to invalidations yet"),
            },
        }
        tokio::time::sleep(SUBSCRIBE_RETRY).await;
    }
    tracing::debug!("subscribed to invalidations");
    loop {
        match messages.recv().await {
            Ok(message) => {
                if let Some(heard) = message.value.as_str().and_then(|m| Heard::parse(&m)) {
                    invalidated.as_ref()(heard);
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

/// What [`RedisTier::peek`] found.
#[derive(Debug)]
pub enum Peeked {
    Found(Stored),
    Absent,
    /// A value a lookup would remove as a miss (the reason).
    Unusable(String),
    /// No answer: why (breaker open, out of time, an error).
    Unavailable(&'static str),
}

/// `sidecache:{flight}:lease`, in the flight's own slot.
fn lease_key(flight: &[u8; 32]) -> String {
    format!(
        "sidecache:{{{}}}:lease",
        blake3::Hash::from_bytes(*flight).to_hex()
    )
}

/// `sidecache:{hash}:purged`: when the entry under `redis_key` was last
/// purged, in its slot, so that one script can check it and store.
fn purge_record_key(redis_key: &str) -> String {
    format!("{redis_key}:purged")
}

/// `duration` in whole milliseconds, as Redis takes lifetimes.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `sidecache:tag:{hash}`: one key, so one slot, per tag.
fn tag_key(tag: &[u8; 32]) -> String {
    format!(
        "sidecache:tag:{{{}}}",
        blake3::Hash::from_bytes(*tag).to_hex()
    )
}

/// `sidecache:{hash}`: the braces make the hash the cluster hash tag, so any
/// future per-object keys land in the object's slot while objects spread
/// over all slots.
fn redis_key(key: &CacheKey) -> String {
    // Built by hand: every Redis call makes one, and `format!` over a
    // `String` from `hex()` was two allocations and the formatting machinery.
    let hex = blake3::Hash::from_bytes(*key.hash()).to_hex();
    let mut redis_key = String::with_capacity("sidecache:{}".len() + hex.len());
    redis_key.push_str("sidecache:{");
    redis_key.push_str(&hex);
    redis_key.push('}');
    redis_key
}

/// The Redis time one request may still spend, shared by all its calls on
/// the request path (lookup, variant lookup, lease, the checks while waiting
/// for another pod's fill): however many calls a request makes and however
/// many of them hang, Redis costs it at most one `command_timeout`.
///
/// It counts time spent in calls rather than setting a deadline at the first
/// one, because a request that waits for another pod's fill sleeps between
/// its checks, and that wait is bounded by the route's `lock_timeout`, not
/// by Redis.
///
/// It also remembers whether Redis failed this request once (a call skipped,
/// failed or out of time): waiting for another pod's fill is pointless when
/// this request may not be able to read it.
#[derive(Debug, Default)]
pub struct Budget {
    /// Nanoseconds spent in calls so far.
    spent: AtomicU64,
    /// A call of this request got no answer from Redis.
    troubled: AtomicBool,
}

impl Budget {
    /// Whether a call of this request got no answer from Redis.
    pub fn troubled(&self) -> bool {
        self.troubled.load(Ordering::Relaxed)
    }

    /// What is left of `limit`.
    fn left(&self, limit: Duration) -> Duration {
        limit.saturating_sub(Duration::from_nanos(self.spent.load(Ordering::Relaxed)))
    }

    fn spend(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.spent.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The one place a request-path call is admitted, bounded and accounted:
/// the budget, the breaker of the key's node (or of all of Redis), the
/// deadline, and the `sidecache_redis_calls_total` outcome of a call that
/// did not answer (the caller counts the answers: hit, miss, won, ...).
struct Gate {
    /// The budget of a request, and the deadline of each background call.
    timeout: Duration,
    /// The breaker of calls whose node is not known (not a cluster).
    breaker: Arc<Breaker>,
    /// One breaker per cluster node (`host:port`) calls have been routed to,
    /// so that one frozen node stops costing deadlines while the others
    /// serve. Nodes are few; a node leaves when a failover moves its slots.
    nodes: Mutex<HashMap<String, Arc<Breaker>>>,
    metrics: Arc<Metrics>,
}

impl Gate {
    fn new(timeout: Duration, metrics: Arc<Metrics>) -> Gate {
        Gate {
            timeout,
            breaker: Arc::new(Breaker::new("redis", BREAKER_THRESHOLD)),
            nodes: Mutex::default(),
            metrics,
        }
    }

    /// Runs `command` (sent to `node`, when known) within what is left of
    /// `budget`: `None` when it was skipped, failed or timed out.
    async fn call<T, F>(
        &self,
        op: &'static str,
        node: Option<String>,
        budget: &Budget,
        command: impl FnOnce() -> F,
    ) -> Option<T>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        let left = budget.left(self.timeout);
        if left.is_zero() {
            budget.troubled.store(true, Ordering::Relaxed);
            self.metrics.redis_call(op, "no-budget");
            return None;
        }
        let started = Instant::now();
        let Some(breaker) = self.breaker(node, started) else {
            budget.troubled.store(true, Ordering::Relaxed);
            self.metrics.redis_call(op, "skipped");
            return None;
        };
        let result = tokio::time::timeout(left, command()).await;
        let elapsed = started.elapsed();
        budget.spend(elapsed);
        self.metrics.redis_duration(op, elapsed);
        match result {
            Ok(Ok(value)) => {
                breaker.success();
                return Some(value);
            }
            // fred's own deadline (the same `command_timeout`) may fire first.
            Ok(Err(error)) if *error.kind() == fred::error::ErrorKind::Timeout => {
                self.metrics.redis_call(op, "timeout");
            }
            Ok(Err(error)) => {
                self.metrics.redis_call(op, "error");
                tracing::debug!(op, %error, "redis call failed");
            }
            Err(_) => self.metrics.redis_call(op, "timeout"),
        }
        budget.troubled.store(true, Ordering::Relaxed);
        breaker.failure(Instant::now());
        None
    }

    /// Runs `command` for a look that must change nothing: bounded by what
    /// is left of `budget` and skipped when the node's breaker (or all of
    /// Redis's) is open, like [`Gate::call`], but it records no metric and
    /// no success or failure, and never takes an open breaker's probe.
    async fn peek<T>(
        &self,
        node: Option<String>,
        budget: &Budget,
        command: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, &'static str> {
        let left = budget.left(self.timeout);
        if left.is_zero() {
            return Err("no time left");
        }
        let open = match node {
            Some(node) => self
                .nodes
                .lock()
                .ok()
                .and_then(|nodes| nodes.get(&node).map(|breaker| breaker.is_open()))
                .unwrap_or(false),
            None => self.breaker.is_open(),
        };
        if open {
            budget.troubled.store(true, Ordering::Relaxed);
            return Err("breaker open");
        }
        let started = Instant::now();
        let result = tokio::time::timeout(left, command).await;
        budget.spend(started.elapsed());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if *error.kind() == fred::error::ErrorKind::Timeout => {
                budget.troubled.store(true, Ordering::Relaxed);
                Err("timeout")
            }
            Ok(Err(_)) => {
                budget.troubled.store(true, Ordering::Relaxed);
                Err("error")
            }
            Err(_) => {
                budget.troubled.store(true, Ordering::Relaxed);
                Err("timeout")
            }
        }
    }

    /// The breaker a call to `node` answers to, or `None` when it skips the
    /// call: the node's in a cluster, the global one otherwise (standalone,
    /// Sentinel, or no slot map yet). One breaker per call, because a
    /// frozen node's failures must not open the breaker of nodes that
    /// answer: a burst of its timeouts would otherwise skip all of Redis,
    /// and each of its failed probes reopen it. When all of a cluster is
    /// gone, every node's breaker opens.
    fn breaker(&self, node: Option<String>, now: Instant) -> Option<Arc<Breaker>> {
        let breaker = match node {
            Some(node) => self.node(node),
            None => self.breaker.clone(),
        };
        breaker.allow(now).then_some(breaker)
    }

    /// Whether all of Redis is skipped: in a cluster, every node's breaker
    /// is open; otherwise the one breaker.
    fn all_open(&self) -> bool {
        let nodes = self.nodes_open();
        if nodes.is_empty() {
            self.breaker.is_open()
        } else {
            nodes.iter().all(|(_, open)| *open)
        }
    }

    /// The breaker of `node`, made on its first call.
    fn node(&self, node: String) -> Arc<Breaker> {
        let Ok(mut nodes) = self.nodes.lock() else {
            // A poisoned map only costs the per-node skipping.
            return Arc::new(Breaker::new(node, NODE_BREAKER_THRESHOLD));
        };
        nodes
            .entry(node)
            .or_insert_with_key(|node| {
                Arc::new(Breaker::new(node.as_str(), NODE_BREAKER_THRESHOLD))
            })
            .clone()
    }

    /// Forgets the breakers of nodes not in `nodes`.
    fn keep_nodes(&self, nodes: &[String]) {
        if let Ok(mut breakers) = self.nodes.lock() {
            breakers.retain(|node, _| nodes.contains(node));
        }
    }

    fn nodes_open(&self) -> Vec<(String, bool)> {
        self.nodes.lock().map_or_else(
            |_| Vec::new(),
            |nodes| {
                nodes
                    .iter()
                    .map(|(node, breaker)| (node.clone(), breaker.is_open()))
                    .collect()
            },
        )
    }
}

/// The cluster node (`host:port` of the master) that owns `redis_key`'s
/// slot in fred's cached slot map; `None` when Redis is not a cluster (the
/// global breaker is then the node's) or the map is not known yet.
fn node_of(client: &fred::prelude::Client, redis_key: &str) -> Option<String> {
    let routing = client.cached_cluster_state()?;
    let slot = ClusterRouting::hash_key(redis_key.as_bytes());
    routing.get_server(slot).map(ToString::to_string)
}

/// Circuit breaker: after enough consecutive failures, calls skip Redis for
/// a cooldown instead of each paying the deadline; then one probe call goes
/// through, and its result closes or reopens the breaker.
///
/// Hand-written because it is a dozen lines of state that must fit the
/// fail-open rules here (a probe that is cancelled must not wedge it).
#[derive(Debug)]
struct Breaker {
    /// What it guards, for the log lines: `redis`, or a node's `host:port`.
    scope: String,
    /// Consecutive failures that open it.
    threshold: u32,
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
    fn new(scope: impl Into<String>, threshold: u32) -> Breaker {
        Breaker {
            scope: scope.into(),
            threshold,
            state: Mutex::default(),
        }
    }

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
            tracing::info!(scope = %self.scope, "redis is answering again; L2 back in use");
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
            BreakerState::Probing { .. } => self.threshold,
        };
        if failures >= self.threshold {
            if !matches!(*state, BreakerState::Probing { .. }) {
                tracing::warn!(
                    scope = %self.scope,
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
        let breaker = Breaker::new("redis", BREAKER_THRESHOLD);
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
        let breaker = Breaker::new("redis", BREAKER_THRESHOLD);
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

    const LIMIT: Duration = Duration::from_millis(100);

    fn gate() -> (Gate, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (Gate::new(LIMIT, metrics.clone()), metrics)
    }

    /// A node that never answers (frozen).
    async fn hangs() -> Result<(), fred::error::Error> {
        std::future::pending().await
    }

    /// A node that answers after `delay`.
    async fn answers_after(delay: Duration) -> Result<(), fred::error::Error> {
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn calls(metrics: &Metrics, op: &str, outcome: &str) -> u64 {
        let series = format!("sidecache_redis_calls_total{{op=\"{op}\",outcome=\"{outcome}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0)
    }

    fn node(name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_spends_at_most_one_deadline_however_many_calls_hang() {
        let (gate, metrics) = gate();
        let budget = Budget::default();
        let started = Instant::now();
        assert!(
            gate.call("get", node("a:1"), &budget, hangs)
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), LIMIT);
        // The variant lookup and the lease are misses without a wait.
        assert!(
            gate.call("get", node("b:1"), &budget, hangs)
                .await
                .is_none()
        );
        assert!(
            gate.call("lease", node("b:1"), &budget, hangs)
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), LIMIT);
        assert_eq!(calls(&metrics, "get", "timeout"), 1);
        assert_eq!(calls(&metrics, "get", "no-budget"), 1);
        assert_eq!(calls(&metrics, "lease", "no-budget"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_gets_only_what_the_earlier_ones_left() {
        let (gate, metrics) = gate();
        let budget = Budget::default();
        let started = Instant::now();
        let slow = || answers_after(Duration::from_millis(60));
        assert!(gate.call("get", node("a:1"), &budget, slow).await.is_some());
        assert!(
            gate.call("lease", node("a:1"), &budget, hangs)
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), LIMIT, "40 ms were left for the lease");
        assert_eq!(calls(&metrics, "lease", "timeout"), 1);
        // Another request has a budget of its own.
        let fresh = Budget::default();
        let quick = || answers_after(Duration::from_millis(1));
        assert!(gate.call("get", node("a:1"), &fresh, quick).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_node_is_skipped_while_the_others_serve_until_a_probe_succeeds() {
        let (gate, metrics) = gate();
        let quick = || answers_after(Duration::from_millis(1));
        for _ in 0..NODE_BREAKER_THRESHOLD {
            // Healthy nodes succeed in between: the global breaker stays closed.
            assert!(
                gate.call("get", node("b:1"), &Budget::default(), quick)
                    .await
                    .is_some()
            );
            assert!(
                gate.call("get", node("a:1"), &Budget::default(), hangs)
                    .await
                    .is_none()
            );
        }
        let started = Instant::now();
        assert!(
            gate.call("get", node("a:1"), &Budget::default(), hangs)
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "skipped, not waited for");
        assert_eq!(calls(&metrics, "get", "skipped"), 1);
        assert!(
            gate.call("get", node("b:1"), &Budget::default(), quick)
                .await
                .is_some()
        );
        assert!(!gate.breaker.is_open());
        assert_eq!(
            gate.nodes_open()
                .into_iter()
                .filter(|(_, open)| *open)
                .collect::<Vec<_>>(),
            vec![("a:1".to_owned(), true)]
        );

        // After the cooldown one probe goes through; a failed one reopens...
        tokio::time::advance(BREAKER_COOLDOWN).await;
        assert!(
            gate.call("get", node("a:1"), &Budget::default(), hangs)
                .await
                .is_none()
        );
        assert_eq!(
            calls(&metrics, "get", "timeout"),
            u64::from(NODE_BREAKER_THRESHOLD) + 1
        );
        assert!(
            gate.call("get", node("a:1"), &Budget::default(), quick)
                .await
                .is_none()
        );
        assert_eq!(calls(&metrics, "get", "skipped"), 2);
        // ...and a successful one closes it.
        tokio::time::advance(BREAKER_COOLDOWN).await;
        assert!(
            gate.call("get", node("a:1"), &Budget::default(), quick)
                .await
                .is_some()
        );
        assert!(
            gate.call("get", node("a:1"), &Budget::default(), quick)
                .await
                .is_some()
        );
        assert!(gate.nodes_open().iter().all(|(_, open)| !open));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_timeouts_on_one_node_skips_no_other_node() {
        let (gate, _) = gate();
        // Concurrent requests all waiting on the node when it froze: as
        // many timeouts in a row as open the breaker of all of Redis.
        let call = || async {
            gate.call("get", node("a:1"), &Budget::default(), hangs)
                .await
        };
        let burst = tokio::join!(call(), call(), call(), call(), call());
        assert_eq!(burst, (None, None, None, None, None));
        let quick = || answers_after(Duration::from_millis(1));
        assert!(
            gate.call("get", node("b:1"), &Budget::default(), quick)
                .await
                .is_some()
        );
        assert!(!gate.all_open());
        // A failed probe of the frozen node costs the others nothing either.
        tokio::time::advance(BREAKER_COOLDOWN).await;
        assert!(
            gate.call("get", node("a:1"), &Budget::default(), hangs)
                .await
                .is_none()
        );
        assert!(
            gate.call("get", node("b:1"), &Budget::default(), quick)
                .await
                .is_some()
        );
        // When every node fails, all of Redis is skipped.
        for _ in 0..NODE_BREAKER_THRESHOLD {
            gate.call("get", node("b:1"), &Budget::default(), hangs)
                .await;
        }
        assert!(gate.all_open());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_cluster_the_global_breaker_is_the_only_one() {
        let (gate, metrics) = gate();
        for _ in 0..BREAKER_THRESHOLD {
            assert!(
                gate.call("get", None, &Budget::default(), hangs)
                    .await
                    .is_none()
            );
        }
        assert!(gate.breaker.is_open());
        let quick = || answers_after(Duration::from_millis(1));
        assert!(
            gate.call("get", None, &Budget::default(), quick)
                .await
                .is_none()
        );
        assert_eq!(calls(&metrics, "get", "skipped"), 1);
        assert!(gate.nodes_open().is_empty());
    }

    #[test]
    fn announcements_parse_with_their_number_or_bare_from_older_pods() {
        let hash = blake3::hash(b"k");
        let hex = hash.to_hex();
        let expected = |seq| {
            Some(Heard {
                seq,
                what: Announced::Key(*hash.as_bytes()),
            })
        };
        assert_eq!(Heard::parse(&format!("42 {hex}")), expected(Some(42)));
        assert_eq!(Heard::parse(hex.as_str()), expected(None));
        assert_eq!(Heard::parse(&format!("x {hex}")), None);
        assert_eq!(Heard::parse("42 beef"), None);
        // A tag purge.
        assert_eq!(
            Heard::parse(&format!("43 tag {hex} 100 200")),
            Some(Heard {
                seq: Some(43),
                what: Announced::Tag {
                    tag: *hash.as_bytes(),
                    purged: Purged {
                        hard: 100,
                        soft: 200
                    },
                },
            })
        );
        // Told while the counter's node is down: no number.
        assert_eq!(
            Heard::parse(&format!("tag {hex} 100 200")),
            Some(Heard {
                seq: None,
                what: Announced::Tag {
                    tag: *hash.as_bytes(),
                    purged: Purged {
                        hard: 100,
                        soft: 200
                    },
                },
            })
        );
        assert_eq!(Heard::parse(&format!("tag {hex} 100")), None);
        assert_eq!(Heard::parse(&format!("x tag {hex} 100 200")), None);
        assert_eq!(Heard::parse(&format!("43 tag {hex} 100")), None);
        assert_eq!(Heard::parse(&format!("43 tag {hex} 100 200 9")), None);
        assert_eq!(Heard::parse(&format!("43 tag {hex} x 200")), None);
    }

    #[test]
    fn redis_keys_carry_the_object_hash_as_hash_tag() {
        let (parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
        let key = CacheKey::for_request("ns", &parts);
        assert_eq!(redis_key(&key), format!("sidecache:{{{}}}", key.hex()));
    }
}
