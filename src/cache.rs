//! The cache facade: looks keys up tier by tier (L1 memory, then L2 Redis), backfills, and stores complete responses in both.

pub mod entry;
pub mod fill;
pub mod key;
pub mod memory;
pub mod policy;
pub mod redis;
pub mod status;
pub mod validation;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::CacheConfig;
use entry::Entry;
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

/// The tiers, in lookup order. Cheap to clone: tiers share their storage.
#[derive(Clone)]
pub struct Cache {
    memory: MemoryTier,
    /// The shared tier; `None` in memory-only mode.
    redis: Option<Arc<RedisTier>>,
    /// How long entries are kept once stale.
    keep_stale: Duration,
}

impl Cache {
    pub fn new(config: &CacheConfig, redis: Option<RedisTier>) -> Cache {
        Cache {
            memory: MemoryTier::new(config.memory.capacity),
            redis: redis.map(Arc::new),
            keep_stale: config.keep_stale,
        }
    }

    /// The stored response for `key` and the tier it came from, fresh or
    /// not: the caller decides how it may be used. A stale L1 entry is
    /// looked up in L2 too, where another pod may have refreshed it; an L2
    /// hit is copied into L1 for as long as it is worth keeping.
    pub async fn lookup(&self, key: &CacheKey, now: SystemTime) -> Option<(Arc<Entry>, Tier)> {
        let local = self.memory.get(key);
        if let Some(entry) = local
            .as_ref()
            .filter(|e| e.remaining_freshness(now).is_some())
        {
            return Some((entry.clone(), Tier::Memory));
        }
        let shared = match &self.redis {
            Some(redis) => redis.get(key).await,
            None => None,
        };
        match (shared, local) {
            (Some(shared), local)
                if local
                    .as_ref()
                    .is_none_or(|local| shared.response_time >= local.response_time) =>
            {
                let shared = Arc::new(shared);
                if let Some(keep_for) = shared.retention(now, self.keep_stale) {
                    self.memory.insert(shared.clone(), keep_for);
                }
                Some((shared, Tier::Redis))
            }
            (_, local) => local.map(|entry| (entry, Tier::Memory)),
        }
    }

    /// Stores a complete response in every tier for as long as it is worth
    /// keeping; the L2 write is queued, never awaited.
    pub fn store(&self, entry: Entry, now: SystemTime) {
        let Some(keep_for) = entry.retention(now, self.keep_stale) else {
            return;
        };
        let entry = Arc::new(entry);
        if let Some(redis) = &self.redis {
            redis.store(entry.clone(), keep_for);
        }
        self.memory.insert(entry, keep_for);
    }

    /// Removes what is stored under `key` from every tier (the L2 delete is
    /// queued behind any pending write of the same key).
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
    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_deref()
    }
}
