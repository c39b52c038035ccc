//! URL purges against fetches in flight: when this pod last heard of a purge or invalidation of each key, so that a response fetched before it is not stored after it.
//!
//! A request misses, its fetch goes out, the URL is purged (here or in
//! another pod), then the fetch completes: what it brings may be what the
//! purge was meant to remove, and storing it would serve it for its whole
//! freshness. So every purge or invalidation this pod makes or hears is
//! noted with the time by this pod's clock, and a response whose request
//! looked the URL up or sent its fetch at or before that time is not taken
//! into the memory tier (it still answers the request that sent the fetch,
//! and those already reading its body).
//! The lookup counts too: a request that found the URL's variant index
//! before the purge would store that index again with its fill, and with
//! it every old variant. Redis keeps its own record, next to the entry
//! (`STORE` in [`super::redis`]), since the pod that stores may not have
//! heard yet.
//!
//! Hand-written rather than a moka cache: a record that leaves the bounded
//! map must raise the floor in the same step (under one lock), or a fill
//! checked in between would find neither and be stored; moka notifies
//! evictions after the fact.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use super::tags::micros;

/// Purges a pod remembers one by one; beyond, the oldest are folded into
/// one time before which every fetch counts as purged (a fetch that old is
/// rare: this many purges take place while it is under way).
pub const KNOWN_PURGES: usize = 100_000;

/// When this pod last heard of a purge of each key hash, as far back as
/// [`KNOWN_PURGES`] purges. Cheap to clone: clones share the record.
#[derive(Clone, Default)]
pub struct PurgedKeys {
    record: Arc<Mutex<Record>>,
}

#[derive(Default)]
struct Record {
    /// The latest purge time of each key, in microseconds since the epoch.
    at: HashMap<[u8; 32], u64>,
    /// Purges in the order heard, to forget the oldest first; a key purged
    /// again appears again (its older line is skipped when it comes up).
    order: VecDeque<([u8; 32], u64)>,
    /// Every fetch sent at or before this time counts as purged: the time
    /// of the latest purge forgotten, or of a flush of the memory tier.
    floor: u64,
}

impl PurgedKeys {
    /// Notes a purge or invalidation of the key with this `hash` at `at`.
    pub fn heard(&self, hash: [u8; 32], at: SystemTime) {
        let at = micros(at);
        let mut record = self.record();
        let latest = record.at.entry(hash).or_insert(at);
        *latest = (*latest).max(at);
        record.order.push_back((hash, at));
        while record.order.len() > KNOWN_PURGES {
            let Some((hash, at)) = record.order.pop_front() else {
                break;
            };
            // Only the key's latest purge leaves the map: a later one of
            // the same key is still in line.
            if record.at.get(&hash) == Some(&at) {
                record.at.remove(&hash);
                record.floor = record.floor.max(at);
            }
        }
    }

    /// Counts every fetch sent up to `at` as purged: the pod may have
    /// missed invalidations (its memory tier was cleared for it).
    pub fn everything(&self, at: SystemTime) {
        let mut record = self.record();
        record.floor = record.floor.max(micros(at));
    }

    /// Whether what a request for the key `hash` made at `since` (its
    /// lookup or fetch) brought is too old: a purge of it was heard at or
    /// after that time.
    pub fn covers(&self, hash: &[u8; 32], since: SystemTime) -> bool {
        let since = micros(since);
        let record = self.record();
        since <= record.floor || record.at.get(hash).is_some_and(|&at| since <= at)
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        // Every change leaves the record whole: a panic elsewhere cannot tear it.
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(us: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us)
    }

    #[test]
    fn a_fetch_sent_up_to_a_purge_of_its_key_is_covered_and_one_sent_after_is_not() {
        let purged = PurgedKeys::default();
        let (key, other) = ([1; 32], [2; 32]);
        purged.heard(key, at(100));
        assert!(purged.covers(&key, at(99)));
        assert!(purged.covers(&key, at(100)));
        assert!(!purged.covers(&key, at(101)));
        assert!(!purged.covers(&other, at(99)), "another key");
        // A purge heard late never moves the time back.
        purged.heard(key, at(50));
        assert!(purged.covers(&key, at(100)));
    }

    #[test]
    fn forgotten_purges_and_flushes_count_for_every_key() {
        let purged = PurgedKeys::default();
        // The first key is purged twice: its older line is the first to
        // leave, and changes nothing, since the later purge is still known.
        purged.heard([0; 32], at(1));
        purged.heard([0; 32], at(5));
        for n in 1..KNOWN_PURGES as u64 {
            purged.heard(*blake3::hash(&n.to_be_bytes()).as_bytes(), at(10 + n));
        }
        assert!(!purged.covers(&[9; 32], at(2)), "nothing forgotten yet");
        assert!(purged.covers(&[0; 32], at(5)));
        // One more: the first key's purge at 5 is forgotten, and covers all.
        purged.heard([7; 32], at(1_000_000));
        assert_eq!(purged.record().at.len(), KNOWN_PURGES);
        assert!(purged.covers(&[9; 32], at(5)));
        assert!(!purged.covers(&[9; 32], at(6)));
        purged.everything(at(500));
        assert!(purged.covers(&[9; 32], at(500)));
        assert!(!purged.covers(&[9; 32], at(501)));
    }
}
