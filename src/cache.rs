//! The cache facade: looks keys up tier by tier (L1 memory, then L2 Redis), backfills, and stores complete responses in both.

pub mod entry;
pub mod fill;
pub mod key;
pub mod memory;
pub mod policy;
pub mod redis;
pub mod status;

use std::sync::Arc;
use std::time::SystemTime;

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
}

impl Cache {
    pub fn new(config: &CacheConfig, redis: Option<RedisTier>) -> Cache {
        Cache {
            memory: MemoryTier::new(config.memory.capacity),
            redis: redis.map(Arc::new),
        }
    }

    /// A fresh stored response for `key`, and the tier it came from. An L2
    /// hit is copied into L1 for the freshness it has left.
    pub async fn lookup(&self, key: &CacheKey, now: SystemTime) -> Option<(Arc<Entry>, Tier)> {
        if let Some(entry) = self.memory.get(key)
            && entry.remaining_freshness(now).is_some()
        {
            return Some((entry, Tier::Memory));
        }
        let entry = self.redis.as_ref()?.get(key).await?;
        let keep_for = entry.remaining_freshness(now)?;
        let entry = Arc::new(entry);
        self.memory.insert(entry.clone(), keep_for);
        Some((entry, Tier::Redis))
    }

    /// Stores a complete response in every tier for as long as it stays
    /// fresh; the L2 write is queued, never awaited.
    pub fn store(&self, entry: Entry, now: SystemTime) {
        let Some(keep_for) = entry.remaining_freshness(now) else {
            return;
        };
        let entry = Arc::new(entry);
        if let Some(redis) = &self.redis {
            redis.store(entry.clone(), keep_for);
        }
        self.memory.insert(entry, keep_for);
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
