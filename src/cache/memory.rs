//! L1: the in-process tier, a moka cache bounded by bytes, each entry expiring with its freshness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use super::entry::Entry;
use super::key::CacheKey;

/// The in-memory tier.
#[derive(Clone)]
pub struct MemoryTier {
    /// `None` when configured with zero capacity: the tier is off.
    entries: Option<Cache<[u8; 32], Stored>>,
}

/// An entry and how long the tier keeps it.
#[derive(Clone)]
struct Stored {
    entry: Arc<Entry>,
    keep_for: Duration,
}

/// Per-entry expiry: each entry leaves when its own freshness ends.
struct KeepFor;

impl Expiry<[u8; 32], Stored> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Stored,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }
}

impl MemoryTier {
    /// A tier holding at most `capacity` bytes of entries; zero turns it off.
    pub fn new(capacity: u64) -> MemoryTier {
        if capacity == 0 {
            return MemoryTier { entries: None };
        }
        let entries = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_key, stored: &Stored| {
                u32::try_from(stored.entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .build();
        MemoryTier {
            entries: Some(entries),
        }
    }

    /// The entry stored under `key`, if its canonical key matches too.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let stored = self.entries.as_ref()?.get(key.hash())?;
        if stored.entry.key.canonical() == key.canonical() {
            Some(stored.entry)
        } else {
            None
        }
    }

    /// Stores `entry` for `keep_for`, replacing any entry under the same key.
    pub fn insert(&self, entry: Arc<Entry>, keep_for: Duration) {
        if let Some(entries) = &self.entries {
            entries.insert(*entry.key.hash(), Stored { entry, keep_for });
        }
    }

    /// Drops the entry stored under `key`, if any.
    pub fn remove(&self, key: &CacheKey) {
        if let Some(entries) = &self.entries {
            entries.invalidate(key.hash());
        }
    }

    /// Bytes held now, as weighed; pending evictions are applied first.
    pub fn bytes(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| {
            entries.run_pending_tasks();
            entries.weighted_size()
        })
    }

    /// Entries held now.
    pub fn entries(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| {
            entries.run_pending_tasks();
            entries.entry_count()
        })
    }
}
