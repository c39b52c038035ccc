//! The cache facade: looks keys up tier by tier (L1 memory, then L2 Redis), backfills, admits fetches (single-flight in the pod and the fleet), and stores complete responses in both.

pub mod coherence;
pub mod decide;
pub mod entry;
pub mod fill;
pub mod flight;
pub mod growing;
pub mod key;
pub mod memory;
pub mod policy;
pub mod purged;
pub mod range;
pub mod redis;
pub mod status;
pub mod tags;
pub mod validation;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::clock::Clock;
use crate::config::{CacheConfig, RedisConfig};
use crate::metrics::Metrics;
use coherence::Coherence;
use entry::{Entry, Forwarded, Stored, Variants};
use flight::{Filled, Flights, Joined, Leader, Role};
use growing::Reader;
use http::{HeaderMap, HeaderName, header};
use key::CacheKey;
use memory::MemoryTier;
use purged::PurgedKeys;
use redis::{Lease, RedisTier};
use tags::{Effect, Purged, TagPurges};

pub use redis::Budget;

/// How often a pod that lost the fleet lease looks for the winner's fill.
const FLEET_POLL: Duration = Duration::from_millis(50);

/// Which tier answered a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "l1",
            Tier::Redis => "l2",
        }
    }
}

/// What a lookup found for a request.
#[derive(Default)]
pub struct Lookup {
    /// The response the request selects, and the tier it came from.
    pub found: Option<(Arc<Entry>, Tier)>,
    /// The URL's variant index, if its responses vary.
    pub variants: Option<Arc<Variants>>,
}

impl Lookup {
    /// What a lookup found, from the object picked for the URL's key and,
    /// when that is a variant index, the one picked for the variant key.
    fn of(url: Option<(Stored, Tier)>, variant: Option<(Stored, Tier)>) -> Lookup {
        match url {
            None => Lookup::default(),
            Some((Stored::Response(entry), tier)) => Lookup {
                found: Some((entry, tier)),
                variants: None,
            },
            Some((Stored::Variants(variants), _)) => Lookup {
                found: match variant {
                    Some((Stored::Response(entry), tier)) => Some((entry, tier)),
                    _ => None,
                },
                variants: Some(variants),
            },
        }
    }
}

/// `entry` as a purge of its tags leaves it (`effect`): as it is, stale
/// since a soft purge, or gone after a hard one.
fn left_by(entry: Arc<Entry>, effect: Effect) -> Option<Arc<Entry>> {
    match effect {
        Effect::Current => Some(entry),
        Effect::StaleSince(since) => Some(Arc::new(tags::staled(&entry, since))),
        Effect::Gone => None,
    }
}

/// Whether the memory tier's object answers without asking L2: a fresh
/// response, or any variant index.
fn settled(local: Option<&Stored>, now: SystemTime) -> bool {
    match local {
        Some(Stored::Response(entry)) => entry.remaining_freshness(now).is_some(),
        Some(Stored::Variants(_)) => true,
        None => false,
    }
}

/// Which tier's object a lookup uses: L1's when it is settled, else the
/// newer of the two (L2's when the ages tie, or when it is the only one).
fn pick(local: Option<Stored>, shared: Option<Stored>, now: SystemTime) -> Option<(Stored, Tier)> {
    if settled(local.as_ref(), now) {
        return local.map(|object| (object, Tier::Memory));
    }
    let newer = match (&shared, &local) {
        (Some(Stored::Response(shared)), Some(Stored::Response(local))) => {
            shared.response_time >= local.response_time
        }
        (Some(_), _) => true,
        (None, _) => false,
    };
    match shared {
        Some(shared) if newer => Some((shared, Tier::Redis)),
        _ => local.map(|object| (object, Tier::Memory)),
    }
}

/// What [`Cache::inspect`] saw.
pub struct Inspection {
    /// What a request's lookup would find now.
    pub lookup: Lookup,
    /// What the tiers hold under the URL's key.
    pub url: Held,
    /// The variant key the request's headers select, and what the tiers
    /// hold there, when the URL's responses vary.
    pub variant: Option<(CacheKey, Held)>,
}

/// What each tier holds under one key.
pub struct Held {
    pub memory: Option<Stored>,
    pub redis: Shared,
}

/// What the Redis tier holds under one key, as far as it can say.
pub enum Shared {
    /// No Redis is configured.
    Off,
    Found(Stored),
    Absent,
    /// A value a lookup would treat as a miss (and remove): why.
    Unusable(String),
    /// Redis did not answer in time, or its breaker is open: why.
    Unavailable(&'static str),
}

impl Shared {
    /// The object a lookup would get from Redis.
    fn found(&self) -> Option<Stored> {
        match self {
            Shared::Found(object) => Some(object.clone()),
            _ => None,
        }
    }
}

/// One fetch that concurrent requests may share: the same URL, and the same
/// values of the headers known to select its answer before it arrives.
#[derive(Clone, Copy)]
pub struct Flight<'a> {
    id: [u8; 32],
    url_key: &'a CacheKey,
    /// The headers the origin gets, which also select among variants.
    forwarded: &'a HeaderMap,
    /// Longest wait for another request's fetch (and the fleet lease's life).
    lock_timeout: Duration,
}

impl<'a> Flight<'a> {
    /// The fetch of `url_key` for a request the origin gets as `forwarded`:
    /// requests that agree on the `selecting` headers (the route's key
    /// headers, and those the URL's stored variants vary on) and on their
    /// credentials share it; one its answer turns out not to select fetches
    /// for itself.
    pub fn new(
        url_key: &'a CacheKey,
        forwarded: &'a HeaderMap,
        selecting: impl IntoIterator<Item = &'a HeaderName>,
        lock_timeout: Duration,
    ) -> Flight<'a> {
        let names = selecting.into_iter().chain([&header::AUTHORIZATION]);
        Flight {
            id: url_key.flight(names, forwarded),
            url_key,
            forwarded,
            lock_timeout,
        }
    }
}

/// A request's part in the fetch of what it asks for.
pub enum Admission {
    /// Fetch, and report through the leader handle: a fill that shares its
    /// body hands it to the waiting requests as it arrives, storing with it
    /// hands them the entry, dropping it releases them.
    Lead(Leader),
    /// Another request's fetch (in this pod or another) stored this.
    Collapsed(Arc<Entry>),
    /// Another request's fetch in this pod is storing this response (`head`
    /// has no body): its `body` is read as it arrives.
    Streaming { head: Arc<Entry>, body: Reader },
    /// Fetch without leading: the fetch waited for stored nothing, or took
    /// longer than the lock timeout.
    Alone,
}

/// The tiers, in lookup order. Cheap to clone: tiers share their storage.
#[derive(Clone)]
pub struct Cache {
    memory: MemoryTier,
    /// The shared tier; `None` in memory-only mode.
    redis: Option<Arc<RedisTier>>,
    /// This pod's following of the fleet's invalidations (with `redis`).
    coherence: Option<Arc<Coherence>>,
    /// How long entries are kept once stale.
    keep_stale: Duration,
    /// Fetches under way in this process, for collapsing concurrent misses.
    flights: Flights,
    metrics: Arc<Metrics>,
    /// What ages are measured by.
    clock: Clock,
    /// The purge times of the tags this pod has looked at ([`tags`]).
    tags: TagPurges,
    /// When this pod last heard of a purge of each URL key ([`purged`]).
    purged: PurgedKeys,
    /// The response fields tags are read from.
    tag_headers: Arc<[HeaderName]>,
    /// Part of every tag's identity, as of every key's.
    namespace: Arc<str>,
}

impl Cache {
    /// The tiers: memory, and Redis when configured (it starts connecting in
    /// the background, and listens for other pods' invalidations, which
    /// keep the memory tier coherent with theirs: [`coherence`]).
    pub fn new(
        config: &CacheConfig,
        redis: Option<&RedisConfig>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Cache, fred::error::Error> {
        let memory = MemoryTier::new(config.memory.capacity);
        let tags = TagPurges::new(memory.clone(), redis.is_none());
        let purged = PurgedKeys::default();
        let (redis, coherence) = match redis {
            Some(redis) => {
                // Other pods' purges and invalidations drop this pod's
                // copies, or all of them when some may have been missed.
                let strict = redis
                    .strict_coherence
                    .then(|| coherence::bound(redis.command_timeout));
                let coherence = Coherence::new(
                    memory.clone(),
                    tags.clone(),
                    purged.clone(),
                    clock.clone(),
                    metrics.clone(),
                    strict,
                );
                let heard = coherence.clone();
                let invalidated = move |invalidation| heard.heard(invalidation);
                let redis = Arc::new(RedisTier::start(redis, metrics.clone(), invalidated)?);
                tokio::spawn(coherence.clone().watch(Arc::downgrade(&redis)));
                (Some(redis), Some(coherence))
            }
            None => (None, None),
        };
        Ok(Cache {
            memory,
            redis,
            coherence,
            keep_stale: config.keep_stale,
            flights: Flights::default(),
            metrics,
            clock,
            tags,
            purged,
            tag_headers: config.tag_headers.clone().into(),
            namespace: config.namespace.as_str().into(),
        })
    }

    /// What is stored for a request's URL `key`: the response it selects
    /// (fresh or not: the caller decides how to use it) and, if the URL has
    /// variants, their index. `request` holds the request headers as the
    /// origin would see them, which select the variant. At most two objects
    /// are looked up: the URL's, then the variant's, both within the
    /// request's Redis `budget`. A response one of whose tags was purged
    /// since it was fetched is not found (hard purge) or found stale (soft).
    pub async fn lookup(
        &self,
        key: &CacheKey,
        request: &dyn Forwarded,
        now: SystemTime,
        budget: &Budget,
    ) -> Lookup {
        // Most hits are settled by memory alone. Answering them before the
        // path that may ask Redis is built keeps that path's future (large:
        // it holds Redis calls) out of every request's, where it would be
        // copied whole as the request's future moves.
        if let Some(lookup) = self.lookup_in_memory(key, request, now) {
            return lookup;
        }
        Box::pin(self.lookup_in_tiers(key, request, now, budget)).await
    }

    /// The lookup when the memory tier settles every object it needs
    /// ([`settled`]) and no known tag purge touches them: what
    /// [`Cache::lookup_in_tiers`] would find, found without waiting.
    fn lookup_in_memory(
        &self,
        key: &CacheKey,
        request: &dyn Forwarded,
        now: SystemTime,
    ) -> Option<Lookup> {
        if self.memory_unconfirmed() {
            return None;
        }
        let current = |key: &CacheKey| {
            let object = self.memory.get(key).filter(|o| settled(Some(o), now))?;
            if let Stored::Response(entry) = &object
                && self.known_tag_effect(entry)? != Effect::Current
            {
                return None;
            }
            Some((object, Tier::Memory))
        };
        let url = current(key)?;
        let variant = match &url.0 {
            Stored::Variants(variants) => Some(current(&variants.key_for(request.headers()))?),
            Stored::Response(_) => None,
        };
        Some(Lookup::of(Some(url), variant))
    }

    async fn lookup_in_tiers(
        &self,
        key: &CacheKey,
        request: &dyn Forwarded,
        now: SystemTime,
        budget: &Budget,
    ) -> Lookup {
        let url = self.get(key, now, budget).await;
        let url = self.judged(key, url, now, budget).await;
        let variant = match &url {
            Some((Stored::Variants(variants), _)) => {
                let key = variants.key_for(request.headers());
                let variant = self.get(&key, now, budget).await;
                self.judged(&key, variant, now, budget).await
            }
            _ => None,
        };
        Lookup::of(url, variant)
    }

    /// The object `key`'s lookup found, as its tags' purges leave a
    /// response: as it is, stale since a soft purge, or, after a hard one,
    /// dropped from memory and looked for in Redis, where another pod may
    /// have stored a copy fetched since.
    async fn judged(
        &self,
        key: &CacheKey,
        mut found: Option<(Stored, Tier)>,
        now: SystemTime,
        budget: &Budget,
    ) -> Option<(Stored, Tier)> {
        loop {
            let Some((Stored::Response(entry), tier)) = found else {
                return found;
            };
            let effect = self.tag_effect(&entry, budget).await;
            match effect {
                Effect::Current => {}
                Effect::StaleSince(_) => self.metrics.tag_purged_read("stale"),
                Effect::Gone => self.metrics.tag_purged_read("gone"),
            }
            if let Some(entry) = left_by(entry, effect) {
                return Some((Stored::Response(entry), tier));
            }
            if tier == Tier::Redis {
                return None;
            }
            self.memory.remove(key);
            // With the memory copy gone, this asks Redis (once: its answer
            // is judged as Redis's).
            found = self.get(key, now, budget).await;
        }
    }

    /// Whether the fetch of `entry` (stored, or its head still arriving and
    /// its tags not yet read) was sent after every purge of its tags.
    async fn fetched_since_purges(&self, entry: &Entry, budget: &Budget) -> bool {
        if entry.tags.is_empty() {
            let tags = tags::parse(&entry.headers, &self.tag_headers).tags;
            let mut purged = Purged::default();
            for tag in &tags {
                purged = purged.merge(self.tag_purges(tag, budget).await);
            }
            return tags::effect(entry.request_time, purged) == Effect::Current;
        }
        self.tag_effect(entry, budget).await == Effect::Current
    }

    /// What the purges of `entry`'s tags make of it, if this pod knows
    /// them all without asking Redis.
    fn known_tag_effect(&self, entry: &Entry) -> Option<Effect> {
        let mut purged = Purged::default();
        for tag in &entry.tags {
            purged = purged.merge(self.tags.known(&tags::tag_hash(&self.namespace, tag))?);
        }
        Some(tags::effect(entry.request_time, purged))
    }

    /// What the purges of `entry`'s tags make of it.
    async fn tag_effect(&self, entry: &Entry, budget: &Budget) -> Effect {
        if let Some(effect) = self.known_tag_effect(entry) {
            return effect;
        }
        let mut purged = Purged::default();
        for tag in &entry.tags {
            purged = purged.merge(self.tag_purges(tag, budget).await);
        }
        tags::effect(entry.request_time, purged)
    }

    /// When `tag` was last purged: as known here, else as Redis records it
    /// (then known here, and kept current by the announcements). Redis
    /// unable to say means "never" (fail open), counted as a `tag` call.
    async fn tag_purges(&self, tag: &str, budget: &Budget) -> Purged {
        let hash = tags::tag_hash(&self.namespace, tag);
        if let Some(known) = self.tags.known(&hash) {
            return known;
        }
        let Some(redis) = &self.redis else {
            return Purged::default();
        };
        match redis.tag_purges(&hash, budget).await {
            Some(recorded) => {
                self.tags.learn(hash, recorded);
                self.tags.known(&hash).unwrap_or(recorded)
            }
            None => Purged::default(),
        }
    }

    /// Purges every stored response tagged with one of `tags`, in every
    /// tier and every pod: hard (gone) or `soft` (stale, so it may be
    /// served stale or revalidated). Effective here at once; in other pods
    /// when the announcement arrives, within the coherence bound. Nothing
    /// is enumerated: entries are judged as they are read.
    pub fn purge_tags(&self, tags: &[String], soft: bool) {
        let purged = Purged::at(self.clock.now(), soft);
        for tag in tags {
            let hash = tags::tag_hash(&self.namespace, tag);
            self.tags.learn(hash, purged);
            if let Some(redis) = &self.redis {
                redis.purge_tag(hash, purged);
            }
        }
    }

    /// Whether strict coherence keeps the memory tier out of lookups now
    /// (this pod has not lately confirmed it heard every invalidation).
    fn memory_unconfirmed(&self) -> bool {
        self.coherence
            .as_ref()
            .is_some_and(|coherence| coherence.unconfirmed())
    }

    /// One object from the tiers. A fresh L1 response (or any L1 index)
    /// answers at once; otherwise L2 is asked too, where another pod may
    /// have stored a newer copy, and its object is copied into L1.
    async fn get(
        &self,
        key: &CacheKey,
        now: SystemTime,
        budget: &Budget,
    ) -> Option<(Stored, Tier)> {
        // Strict coherence, not confirmed lately: the memory copy may be one
        // another pod purged (Redis, and the origin, are asked instead).
        let local = if self.memory_unconfirmed() {
            self.metrics.memory_unconfirmed();
            None
        } else {
            self.memory.get(key)
        };
        if settled(local.as_ref(), now) {
            return local.map(|object| (object, Tier::Memory));
        }
        // A copy read before a purge of its key is not kept after it.
        let asked = self.clock.now();
        let shared = match &self.redis {
            Some(redis) => redis.get(key, budget).await,
            None => None,
        };
        let picked = pick(local, shared, now);
        if let Some((shared, Tier::Redis)) = &picked {
            let keep_for = match shared {
                Stored::Response(entry) => entry.retention(now, self.keep_stale),
                Stored::Variants(_) => Some(self.keep_stale),
            };
            if let Some(keep_for) = keep_for {
                self.keep_in_memory(shared.clone(), keep_for, key.hash(), asked);
            }
        }
        picked
    }

    /// What each tier holds for a request's URL `key` and the variant its
    /// headers select, and what a lookup would find from it (the same
    /// [`pick`] and [`Lookup::of`]), for `/explain`. It changes nothing: no
    /// copy into L1, no metric, no repair; L2 is asked within `budget`.
    pub async fn inspect(
        &self,
        key: &CacheKey,
        request: &HeaderMap,
        now: SystemTime,
        budget: &Budget,
    ) -> Inspection {
        let url = self.look(key, budget).await;
        let url_found = self.seen_as_lookup(&url, now, budget).await;
        let variant = match &url_found {
            Some((Stored::Variants(variants), _)) => {
                let key = variants.key_for(request);
                let held = self.look(&key, budget).await;
                Some((key, held))
            }
            _ => None,
        };
        let variant_found = match &variant {
            Some((_, held)) => self.seen_as_lookup(held, now, budget).await,
            None => None,
        };
        Inspection {
            lookup: Lookup::of(url_found, variant_found),
            url,
            variant,
        }
    }

    /// What a lookup would take from `held`: the tier [`pick`] chooses, as
    /// its tags' purges leave it; a memory copy a hard purge makes a lookup
    /// drop gives way to Redis's, as [`Cache::judged`] does (which this
    /// mirrors without its side effects).
    async fn seen_as_lookup(
        &self,
        held: &Held,
        now: SystemTime,
        budget: &Budget,
    ) -> Option<(Stored, Tier)> {
        let found = pick(held.memory.clone(), held.redis.found(), now);
        let from_memory = matches!(found, Some((_, Tier::Memory)));
        match self.as_tags_leave(found, budget).await {
            None if from_memory => {
                let shared = held.redis.found().map(|object| (object, Tier::Redis));
                self.as_tags_leave(shared, budget).await
            }
            seen => seen,
        }
    }

    /// `found` as its tags' purges leave it: as it is, stale since a soft
    /// purge, or `None` after a hard one.
    async fn as_tags_leave(
        &self,
        found: Option<(Stored, Tier)>,
        budget: &Budget,
    ) -> Option<(Stored, Tier)> {
        let Some((Stored::Response(entry), tier)) = found else {
            return found;
        };
        let effect = self.tag_effect(&entry, budget).await;
        left_by(entry, effect).map(|entry| (Stored::Response(entry), tier))
    }

    /// Both tiers' objects under `key`, without side effects (the memory
    /// tier counts a read for its eviction order: moka has no peek).
    async fn look(&self, key: &CacheKey, budget: &Budget) -> Held {
        let redis = match &self.redis {
            Some(redis) => match redis.peek(key, budget).await {
                redis::Peeked::Found(object) => Shared::Found(object),
                redis::Peeked::Absent => Shared::Absent,
                redis::Peeked::Unusable(why) => Shared::Unusable(why),
                redis::Peeked::Unavailable(why) => Shared::Unavailable(why),
            },
            None => Shared::Off,
        };
        Held {
            memory: self.memory.get(key),
            redis,
        }
    }

    /// Stores a complete response in every tier for as long as it is worth
    /// keeping, with the index of its URL's variants if it is one of them,
    /// and hands it to the requests waiting on `leader`'s fetch. This is the
    /// one way in, for fills, 304 refreshes and background refreshes alike.
    /// The L2 writes are queued, never awaited. A response whose request
    /// looked the URL up (`looked_up`) or sent its fetch before a purge of
    /// the URL is not kept ([`purged`]): what it brings, or the variant
    /// index it found, may be what the purge removed. This pod's memory
    /// tier refuses it if the purge was heard here, Redis if it was
    /// recorded there. Returns the entry, or `None` when it was not worth
    /// keeping (the waiters are then released).
    pub fn store(
        &self,
        mut entry: Entry,
        variants: Option<Arc<Variants>>,
        looked_up: Option<SystemTime>,
        leader: Option<Leader>,
        now: SystemTime,
    ) -> Option<Arc<Entry>> {
        let parsed = tags::parse(&entry.headers, &self.tag_headers);
        if parsed.ignored > 0 {
            self.metrics.tags_ignored(parsed.ignored);
        }
        entry.tags = parsed.tags;
        let mut keep_for = entry.retention(now, self.keep_stale)?;
        if !entry.tags.is_empty() {
            // No entry may outlive the record of its tags' purges.
            keep_for = keep_for.min(tags::TAG_PURGE_RETENTION);
        }
        let entry = Arc::new(entry);
        // From when what is stored is known current: the lookup, or the fetch.
        let since = looked_up.map_or(entry.request_time, |at| at.min(entry.request_time));
        // Purges name the URL's key: a variant is reached only through the
        // index stored there, so refusing the index is refusing the variant.
        let url = *variants
            .as_ref()
            .map_or(&entry.key, |index| &index.key)
            .hash();
        let purged = self.purged.covers(&url, since);
        if purged {
            self.metrics.purged_fill("memory");
        }
        // Redis compares that time with its record of the URL's purge,
        // which lasts only so long: a request made before that could slip
        // past a purge the record forgot.
        let checkable = now.duration_since(since).unwrap_or_default() < redis::PURGE_CHECKABLE;
        let variants_for_followers = variants.clone();
        // The index lives as long as its latest variant.
        let objects = variants
            .map(Stored::Variants)
            .into_iter()
            .chain([Stored::Response(entry.clone())]);
        for object in objects {
            // Redis refuses or takes it by its own record of purges, which
            // may know of one this pod has not heard of yet.
            match &self.redis {
                Some(redis) if checkable => redis.store(object.clone(), keep_for, since),
                Some(_) => self.metrics.redis_call("set", "too-old"),
                None => {}
            }
            if !purged {
                self.keep_in_memory(object, keep_for, &url, since);
            }
        }
        if let Some(leader) = leader {
            leader.stored(Filled {
                entry: entry.clone(),
                variants: variants_for_followers,
            });
        }
        Some(entry)
    }

    /// Puts `object` in the memory tier unless the URL `url` it belongs to
    /// was purged at or after `since` (when the object was fetched, or read
    /// from Redis). Checked again once it is in: a purge heard in between
    /// noted its time before it dropped the URL's copies, so either this
    /// check sees it or the purge removes the object.
    fn keep_in_memory(
        &self,
        object: Stored,
        keep_for: Duration,
        url: &[u8; 32],
        since: SystemTime,
    ) {
        if self.purged.covers(url, since) {
            return;
        }
        let key = object.key().clone();
        self.memory.insert(object, keep_for);
        if self.purged.covers(url, since) {
            self.memory.remove(&key);
        }
    }

    /// Joins the fetch of `flight`: in this process the first request leads
    /// and the others wait for what it stores (or read its body as it
    /// arrives, once its head is decided storable); across the fleet, the leader
    /// takes a Redis lease, or waits for the pod that holds it (its Redis
    /// calls drawing on the request's `budget`).
    pub async fn admit(&self, flight: Flight<'_>, budget: &Budget) -> Admission {
        match self.flights.join(flight.id) {
            Role::Follower(follower) => {
                // A fetch sent before a purge of its tags is no answer for
                // the requests that waited for it (the one that sent it
                // still gets it).
                let joined = match follower.wait(flight.lock_timeout).await {
                    Some(Joined::Stored(filled)) if filled.selects(flight.forwarded) => {
                        Admission::Collapsed(filled.entry)
                    }
                    Some(Joined::Arriving(head, body)) if head.selects(flight.forwarded) => {
                        Admission::Streaming {
                            head: head.entry,
                            body,
                        }
                    }
                    _ => return Admission::Alone,
                };
                let fetched = match &joined {
                    Admission::Collapsed(entry) | Admission::Streaming { head: entry, .. } => {
                        entry.clone()
                    }
                    _ => return joined,
                };
                // Nor is one sent before a purge of the URL: requests that
                // joined it after the purge must not get what it removed.
                let url = flight.url_key.hash();
                if !self.purged.covers(url, fetched.request_time)
                    && self.fetched_since_purges(&fetched, budget).await
                {
                    joined
                } else {
                    Admission::Alone
                }
            }
            Role::Leader(mut leader) => match self.lead_in_fleet(flight, &mut leader, budget).await
            {
                Some(filled) => {
                    let entry = filled.entry.clone();
                    leader.stored(filled);
                    Admission::Collapsed(entry)
                }
                None => Admission::Lead(leader),
            },
        }
    }

    /// Whether a fetch of `flight` is under way in this process.
    pub fn in_flight(&self, flight: Flight<'_>) -> bool {
        self.flights.in_flight(&flight.id)
    }

    /// The fleet-wide part of single-flight, for this process's leader: take
    /// the Redis lease and fetch (the lease is given back when the flight
    /// ends), or, when another pod holds it, poll L2 for that pod's fill
    /// until it lands, the lease goes away, or `lock_timeout` passes.
    /// `Some` is the other pod's entry; `None` means fetch. Redis trouble
    /// means fetch, never wait.
    async fn lead_in_fleet(
        &self,
        flight: Flight<'_>,
        leader: &mut Leader,
        budget: &Budget,
    ) -> Option<Filled> {
        let redis = self.redis.as_ref()?.clone();
        let id = flight.id;
        match redis.lease(&id, flight.lock_timeout, budget).await {
            Lease::Won => {
                leader.on_finish(move || redis.release_lease(&id));
                None
            }
            Lease::Unavailable => None,
            Lease::Lost => {
                let deadline = Instant::now() + flight.lock_timeout;
                while Instant::now() < deadline {
                    // The winner's fill may be where this request cannot
                    // read it (a node skipped, the budget spent): fetch.
                    if budget.troubled() {
                        return None;
                    }
                    tokio::time::sleep(FLEET_POLL).await;
                    if let Some(filled) = self.fresh(flight, budget).await {
                        return Some(filled);
                    }
                    if redis.lease_held(&id, budget).await != Some(true) {
                        // The holder stores before it lets go: its fill may
                        // have landed since the look above.
                        return self.fresh(flight, budget).await;
                    }
                }
                self.metrics.redis_call("lease", "expired");
                None
            }
        }
    }

    /// A fresh response for `flight`'s request, if one is stored now.
    async fn fresh(&self, flight: Flight<'_>, budget: &Budget) -> Option<Filled> {
        let now = self.clock.now();
        let lookup = self
            .lookup(flight.url_key, flight.forwarded, now, budget)
            .await;
        let (entry, _) = lookup
            .found
            .filter(|(entry, _)| entry.remaining_freshness(now).is_some())?;
        let variants = lookup.variants;
        Some(Filled { entry, variants })
    }

    /// Removes what is stored under a URL's `key` from every tier: its
    /// response, or its variant index, which orphans all its variants (the
    /// L2 delete is queued behind any pending write of the same key).
    pub fn remove(&self, key: &CacheKey) {
        let now = self.clock.now();
        // Noted before the copy goes: see `keep_in_memory`.
        self.purged.heard(*key.hash(), now);
        self.memory.remove(key);
        if let Some(redis) = &self.redis {
            redis.remove(key, now);
        }
    }

    /// The time by the clock ages are measured by.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Waits, until `deadline` at most, for the queued L2 writes and
    /// invalidation broadcasts to be sent: at shutdown, an invalidation this
    /// pod has accepted must still reach the other pods.
    pub async fn flush(&self, deadline: tokio::time::Instant) {
        if let Some(redis) = &self.redis
            && !redis.flush(deadline).await
        {
            tracing::warn!("shutdown grace over before the queued Redis writes were sent");
        }
    }

    /// The in-memory tier, for its gauges.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The Redis tier, for its gauges.
    pub fn redis(&self) -> Option<&Arc<RedisTier>> {
        self.redis.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// A stored response that arrived `ago` before [`now`], fresh for `lifetime`.
    fn response(ago: u64, lifetime: u64) -> Stored {
        let (parts, ()) = http::Request::get("http://example.com/x")
            .body(())
            .unwrap()
            .into_parts();
        Stored::Response(Arc::new(Entry {
            key: CacheKey::for_request("ns", &parts),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
            response_time: now() - Duration::from_secs(ago),
            initial_age: Duration::ZERO,
            freshness_lifetime: Duration::from_secs(lifetime),
            request_time: now() - Duration::from_secs(ago),
            tags: Vec::new(),
            directives: Default::default(),
        }))
    }

    fn tier(picked: Option<(Stored, Tier)>) -> Option<(Tier, SystemTime)> {
        picked.map(|(object, tier)| match object {
            Stored::Response(entry) => (tier, entry.response_time),
            Stored::Variants(_) => (tier, SystemTime::UNIX_EPOCH),
        })
    }

    #[test]
    fn a_fresh_memory_copy_wins_else_the_newer_copy_with_redis_on_ties() {
        let at = |ago| now() - Duration::from_secs(ago);
        // Fresh in memory: Redis's copy is not even weighed.
        let fresh = pick(Some(response(5, 60)), Some(response(1, 60)), now());
        assert_eq!(tier(fresh), Some((Tier::Memory, at(5))));
        // Stale in memory: the newer copy, Redis's when they arrived together.
        let newer = pick(Some(response(90, 60)), Some(response(10, 60)), now());
        assert_eq!(tier(newer), Some((Tier::Redis, at(10))));
        let tie = pick(Some(response(90, 60)), Some(response(90, 60)), now());
        assert_eq!(tier(tie), Some((Tier::Redis, at(90))));
        let older = pick(Some(response(70, 60)), Some(response(90, 60)), now());
        assert_eq!(tier(older), Some((Tier::Memory, at(70))));
        // One tier only.
        assert_eq!(
            tier(pick(None, Some(response(3, 60)), now())),
            Some((Tier::Redis, at(3)))
        );
        assert_eq!(
            tier(pick(Some(response(90, 60)), None, now())),
            Some((Tier::Memory, at(90)))
        );
        assert!(pick(None, None, now()).is_none());
    }
}
