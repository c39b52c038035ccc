//! L1: the in-process tier, a moka cache bounded by bytes, each object expiring when it is no longer worth keeping.

use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

use super::entry::Stored;
use super::key::CacheKey;

/// The in-memory tier.
#[derive(Clone)]
pub struct MemoryTier {
    /// `None` when configured with zero capacity: the tier is off.
    objects: Option<Cache<[u8; 32], Slot>>,
    /// The byte budget: an object weighing more is not kept here (Redis may
    /// hold it), rather than pushing out everything else for nothing.
    capacity: u64,
}

/// An object and how long the tier keeps it.
#[derive(Clone)]
struct Slot {
    object: Stored,
    keep_for: Duration,
}

/// Per-object expiry: each object leaves when its own retention ends.
struct KeepFor;

impl Expiry<[u8; 32], Slot> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        slot: &Slot,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(slot.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &[u8; 32],
        slot: &Slot,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.keep_for)
    }
}

impl MemoryTier {
    /// A tier holding at most `capacity` bytes of objects; zero turns it off.
    pub fn new(capacity: u64) -> MemoryTier {
        if capacity == 0 {
            return MemoryTier {
                objects: None,
                capacity,
            };
        }
        let objects = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_key, slot: &Slot| u32::try_from(slot.object.weight()).unwrap_or(u32::MAX))
            .expire_after(KeepFor)
            .build();
        MemoryTier {
            objects: Some(objects),
            capacity,
        }
    }

    /// The object stored under `key`, if its canonical key matches too.
    pub fn get(&self, key: &CacheKey) -> Option<Stored> {
        let slot = self.objects.as_ref()?.get(key.hash())?;
        (slot.object.key().canonical() == key.canonical()).then_some(slot.object)
    }

    /// Stores `object` for `keep_for`, replacing what its key held; an
    /// object larger than the whole tier is not kept (and what its key held
    /// goes, being older).
    pub fn insert(&self, object: Stored, keep_for: Duration) {
        let Some(objects) = &self.objects else {
            return;
        };
        let hash = *object.key().hash();
        if object.weight() > self.capacity {
            objects.invalidate(&hash);
            return;
        }
        objects.insert(hash, Slot { object, keep_for });
    }

    /// Drops the object stored under `key`, if any.
    pub fn remove(&self, key: &CacheKey) {
        self.remove_hash(key.hash());
    }

    /// Drops the object stored under this key hash (an invalidation from another pod).
    pub fn remove_hash(&self, hash: &[u8; 32]) {
        if let Some(objects) = &self.objects {
            objects.invalidate(hash);
        }
    }

    /// Whether the tier keeps anything (a zero capacity turns it off).
    pub fn enabled(&self) -> bool {
        self.objects.is_some()
    }

    /// Drops every object (when invalidations from other pods may have
    /// been missed: Redis refills what is still valid).
    pub fn clear(&self) {
        if let Some(objects) = &self.objects {
            objects.invalidate_all();
        }
    }

    /// Bytes held now, as weighed; pending evictions are applied first.
    pub fn bytes(&self) -> u64 {
        self.objects.as_ref().map_or(0, |objects| {
            objects.run_pending_tasks();
            objects.weighted_size()
        })
    }

    /// Objects held now.
    pub fn entries(&self) -> u64 {
        self.objects.as_ref().map_or(0, |objects| {
            objects.run_pending_tasks();
            objects.entry_count()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::cache::entry::Entry;

    fn object(body: usize) -> Stored {
        let (parts, ()) = http::Request::get("/big").body(()).unwrap().into_parts();
        Stored::Response(Arc::new(Entry {
            key: CacheKey::for_request("ns", &parts),
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(vec![b'x'; body]),
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
            freshness_lifetime: Duration::from_secs(60),
            request_time: SystemTime::now(),
            tags: Vec::new(),
            directives: Default::default(),
        }))
    }

    #[test]
    fn an_object_larger_than_the_tier_is_not_kept_and_drops_its_older_copy() {
        let tier = MemoryTier::new(64 * 1024);
        let small = object(1024);
        let key = small.key().clone();
        tier.insert(small, Duration::from_secs(60));
        assert!(tier.get(&key).is_some());
        tier.insert(object(100 * 1024), Duration::from_secs(60));
        assert!(tier.get(&key).is_none());
        assert_eq!(tier.entries(), 0);
    }
}
