//! The cache facade: looks keys up tier by tier (L1 memory, then L2 Redis), backfills, and stores complete responses in both.

pub mod entry;
pub mod fill;
pub mod flight;
pub mod key;
pub mod memory;
pub mod policy;
pub mod range;
pub mod redis;
pub mod status;
pub mod validation;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{CacheConfig, RedisConfig};
use crate::metrics::Metrics;
use entry::{Entry, Stored, Variants};
use flight::Flights;
use http::HeaderMap;
use key::CacheKey;
use memory::MemoryTier;
use redis::RedisTier;

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

/// The tiers, in lookup order. Cheap to clone: tiers share their storage.
#[derive(Clone)]
pub struct Cache {
    memory: MemoryTier,
    /// The shared tier; `None` in memory-only mode.
    redis: Option<Arc<RedisTier>>,
    /// How long entries are kept once stale.
    keep_stale: Duration,
    /// Fetches under way in this process, for collapsing concurrent misses.
    flights: Flights,
}

impl Cache {
    /// The tiers: memory, and Redis when configured (it starts connecting in
    /// the background, and listens for other pods' invalidations).
    pub fn new(
        config: &CacheConfig,
        redis: Option<&RedisConfig>,
        metrics: Arc<Metrics>,
    ) -> Result<Cache, fred::error::Error> {
        let memory = MemoryTier::new(config.memory.capacity);
        let redis = match redis {
            Some(redis) => Some(Arc::new(RedisTier::start(redis, metrics, memory.clone())?)),
            None => None,
        };
        Ok(Cache {
            memory,
            redis,
            keep_stale: config.keep_stale,
            flights: Flights::default(),
        })
    }

    /// What is stored for a request's URL `key`: the response it selects
    /// (fresh or not: the caller decides how to use it) and, if the URL has
    /// variants, their index. `request` holds the request headers as the
    /// origin would see them, which select the variant. At most two objects
    /// are looked up: the URL's, then the variant's.
    pub async fn lookup(&self, key: &CacheKey, request: &HeaderMap, now: SystemTime) -> Lookup {
        match self.get(key, now).await {
            None => Lookup::default(),
            Some((Stored::Response(entry), tier)) => Lookup {
                found: Some((entry, tier)),
                variants: None,
            },
            Some((Stored::Variants(variants), _)) => {
                let found = match self.get(&variants.key_for(request), now).await {
                    Some((Stored::Response(entry), tier)) => Some((entry, tier)),
                    _ => None,
                };
                Lookup {
                    found,
                    variants: Some(variants),
                }
            }
        }
    }

    /// One object from the tiers. A fresh L1 response (or any L1 index)
    /// answers at once; otherwise L2 is asked too, where another pod may
    /// have stored a newer copy, and its object is copied into L1.
    async fn get(&self, key: &CacheKey, now: SystemTime) -> Option<(Stored, Tier)> {
        let local = self.memory.get(key);
        let settled = match &local {
            Some(Stored::Response(entry)) => entry.remaining_freshness(now).is_some(),
            Some(Stored::Variants(_)) => true,
            None => false,
        };
        if settled {
            return local.map(|object| (object, Tier::Memory));
        }
        let shared = match &self.redis {
            Some(redis) => redis.get(key).await,
            None => None,
        };
        let newer = match (&shared, &local) {
            (Some(Stored::Response(shared)), Some(Stored::Response(local))) => {
                shared.response_time >= local.response_time
            }
            (Some(_), _) => true,
            (None, _) => false,
        };
        match shared {
            Some(shared) if newer => {
                let keep_for = match &shared {
                    Stored::Response(entry) => entry.retention(now, self.keep_stale),
                    Stored::Variants(_) => Some(self.keep_stale),
                };
                if let Some(keep_for) = keep_for {
                    self.memory.insert(shared.clone(), keep_for);
                }
                Some((shared, Tier::Redis))
            }
            _ => local.map(|object| (object, Tier::Memory)),
        }
    }

    /// Stores a complete response in every tier for as long as it is worth
    /// keeping, with the index of its URL's variants if it is one of them;
    /// the L2 writes are queued, never awaited. Returns the stored entry,
    /// or `None` when it was not worth keeping.
    pub fn store(
        &self,
        entry: Entry,
        variants: Option<Arc<Variants>>,
        now: SystemTime,
    ) -> Option<Arc<Entry>> {
        let keep_for = entry.retention(now, self.keep_stale)?;
        let entry = Arc::new(entry);
        // The index lives as long as its latest variant.
        let objects = variants
            .map(Stored::Variants)
            .into_iter()
            .chain([Stored::Response(entry.clone())]);
        for object in objects {
            if let Some(redis) = &self.redis {
                redis.store(object.clone(), keep_for);
            }
            self.memory.insert(object, keep_for);
        }
        Some(entry)
    }

    /// The fetches under way in this process.
    pub fn flights(&self) -> &Flights {
        &self.flights
    }

    /// Removes what is stored under a URL's `key` from every tier: its
    /// response, or its variant index, which orphans all its variants (the
    /// L2 delete is queued behind any pending write of the same key).
    pub fn remove(&self, key: &CacheKey) {
        self.memory.remove(key);
        if let Some(redis) = &self.redis {
            redis.remove(key);
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
