//! The cache facade: looks keys up in the tiers and stores complete responses.

pub mod entry;
pub mod fill;
pub mod key;
pub mod memory;
pub mod policy;
pub mod status;

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::CacheConfig;
use entry::Entry;
use key::CacheKey;
use memory::MemoryTier;

/// The tiers, in lookup order. Cheap to clone: tiers share their storage.
#[derive(Clone)]
pub struct Cache {
    memory: MemoryTier,
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        Cache {
            memory: MemoryTier::new(config.memory.capacity),
        }
    }

    /// The stored response for `key`, fresh or not; the caller judges freshness.
    pub fn lookup(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.memory.get(key)
    }

    /// Stores a complete response for as long as it stays fresh.
    pub fn store(&self, entry: Entry, now: SystemTime) {
        if let Some(keep_for) = entry.remaining_freshness(now) {
            self.memory.insert(Arc::new(entry), keep_for);
        }
    }

    /// The in-memory tier, for its gauges.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }
}
