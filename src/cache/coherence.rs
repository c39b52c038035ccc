//! Coherent memory tiers: each pod follows the fleet's invalidation sequence in Redis and clears its memory tier when it may have missed an invalidation, so a purge made through another pod stops being served from memory within [`CHECK_INTERVAL`] + `redis.command_timeout` + [`DELIVERY_GRACE`].
//!
//! Every invalidation or purge is numbered by one Redis counter and
//! announced with its number (see `ANNOUNCE` in [`super::redis`]). A pod
//! remembers up to which number it has applied them all. It has missed one
//! when a message skips a number (`gap`), when the counter, read every
//! [`CHECK_INTERVAL`], stays ahead of it for longer than a message takes to
//! arrive (`behind`: a subscriber that was disconnected, or stalled without
//! noticing), or when the counter went back (`reset`: a failover lost
//! acknowledged writes, or Redis was flushed). Then it cannot know which
//! keys it missed, so it clears its whole memory tier (and what it knows
//! of tag purges, which are numbered in the same sequence): Redis is the source
//! of truth and refills it, while clearing only on evidence of a miss keeps
//! a reconnect after a plain Redis outage (nothing invalidated meanwhile)
//! from sending every pod to Redis and the origin at once.
//!
//! While this pod cannot read the counter (Redis unreachable from here), it
//! cannot know, and keeps serving its memory tier (the cache fails open);
//! the first read that succeeds catches up, within the same bound. While
//! the counter's node is down, invalidations and tag purges cannot be
//! numbered: the pod that makes one announces it bare meanwhile
//! (`Writer::tell` in [`super::redis`]), which this pod applies like any
//! other. In a cluster both go through a plain connection per master, so
//! one dead or frozen master silences no pod.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::memory::MemoryTier;
use super::purged::PurgedKeys;
use super::redis::{Announced, Heard, RedisTier};
use super::tags::TagPurges;
use crate::clock::Clock;
use crate::metrics::Metrics;

/// How often a pod reads the invalidation counter to confirm it has applied
/// every invalidation; the main term of the staleness bound. One GET of one
/// key per pod per interval.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long an announcement may take to arrive after the counter shows it,
/// before the pod counts it missed. Pub/sub delivers within a millisecond
/// on a healthy cluster; the margin keeps a loaded one from clearing
/// memory tiers for messages that are merely late.
pub const DELIVERY_GRACE: Duration = Duration::from_millis(250);

/// The coherence bound: how long after an invalidation is counted in Redis
/// a pod that missed its announcement may still serve its memory copy,
/// when Redis answers that pod.
pub fn bound(command_timeout: Duration) -> Duration {
    CHECK_INTERVAL + command_timeout + DELIVERY_GRACE
}

/// Why a pod cleared its memory tier (the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// A message skipped numbers: those invalidations were missed.
    Gap,
    /// The counter is ahead and its messages did not come.
    Behind,
    /// The counter went back: invalidations it had counted were lost.
    Reset,
    /// The first read of the counter, with entries taken in before it
    /// (Redis was unreachable when the pod started).
    Start,
}

impl Flush {
    pub fn as_str(self) -> &'static str {
        match self {
            Flush::Gap => "gap",
            Flush::Behind => "behind",
            Flush::Reset => "reset",
            Flush::Start => "start",
        }
    }
}

/// How far this pod has followed the fleet's invalidation sequence.
#[derive(Debug, Default)]
struct Sequence {
    /// Every invalidation numbered up to this one has been applied here
    /// (one by one, or by a flush); `None` until the counter is first read.
    applied: Option<u64>,
}

/// What a read of the counter says about this pod.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// Nothing missed.
    Current,
    /// The counter is at this number, ahead of what arrived: wait for the
    /// messages, then [`Sequence::settle`].
    Waiting(u64),
    /// Clear the memory tier now.
    Flush(Flush),
}

impl Sequence {
    /// An announcement numbered `seq` arrived (its key is dropped anyway).
    fn received(&mut self, seq: u64) -> Option<Flush> {
        let applied = self.applied?;
        if seq <= applied {
            // Late (a flush covered it) or from a counter that went back,
            // which the next read notices.
            return None;
        }
        self.applied = Some(seq);
        (seq > applied + 1).then_some(Flush::Gap)
    }

    /// The counter read `counter`; `asked` is what was applied when the
    /// read was sent (messages may have arrived meanwhile).
    fn read(&mut self, asked: Option<u64>, counter: u64) -> Standing {
        let Some(asked) = asked else {
            // Nothing known before: whatever the tier holds may predate
            // invalidations; from here on, messages and reads tell.
            self.applied = Some(counter);
            return Standing::Flush(Flush::Start);
        };
        if counter < asked {
            self.applied = Some(counter);
            return Standing::Flush(Flush::Reset);
        }
        match self.applied {
            Some(applied) if applied >= counter => Standing::Current,
            _ => Standing::Waiting(counter),
        }
    }

    /// [`DELIVERY_GRACE`] after a read of `counter` found this pod behind:
    /// the messages up to it came, or they were missed.
    fn settle(&mut self, counter: u64) -> Option<Flush> {
        if self.applied.is_some_and(|applied| applied >= counter) {
            return None;
        }
        self.applied = Some(counter);
        Some(Flush::Behind)
    }
}

/// This pod's side of coherence: applies what the subscriber hears and
/// checks the counter, clearing the memory tier on evidence of a miss.
pub struct Coherence {
    sequence: Mutex<Sequence>,
    /// When the latest read of the counter was sent that found this pod
    /// current (or made it so, by a flush); `None` before the first.
    confirmed: Mutex<Option<Instant>>,
    /// With `redis.coherence = "strict"`, the bound: past it without a
    /// confirmation the memory tier is not served ([`Coherence::unconfirmed`]).
    strict: Option<Duration>,
    memory: MemoryTier,
    /// The tag purge times this pod knows, kept current like the memory
    /// tier and cleared with it.
    tags: TagPurges,
    /// When each invalidated key was heard of, so that fetches under way
    /// then are not stored after ([`super::purged`]).
    purged: PurgedKeys,
    /// What those times are read from: the clock fetch times are taken by.
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Coherence {
    pub fn new(
        memory: MemoryTier,
        tags: TagPurges,
        purged: PurgedKeys,
        clock: Clock,
        metrics: Arc<Metrics>,
        strict: Option<Duration>,
    ) -> Arc<Coherence> {
        Arc::new(Coherence {
            sequence: Mutex::default(),
            confirmed: Mutex::default(),
            strict,
            memory,
            tags,
            purged,
            clock,
            metrics,
        })
    }

    /// An invalidation or tag purge announced by some pod: drop its key
    /// here or learn the tag's times, and clear everything if its number
    /// shows that others were missed.
    pub fn heard(&self, heard: Heard) {
        match heard.what {
            Announced::Key(hash) => {
                // Noted before the copy goes, as `Cache::remove` does.
                self.purged.heard(hash, self.clock.now());
                self.memory.remove_hash(&hash);
            }
            Announced::Tag { tag, purged } => self.tags.learn(tag, purged),
        }
        tracing::debug!(seq = ?heard.seq, "invalidation heard");
        let flush = heard.seq.and_then(|seq| self.sequence().received(seq));
        if let Some(flush) = flush {
            self.flush(flush);
        }
    }

    /// Reads the counter every [`CHECK_INTERVAL`] until the Redis tier is
    /// gone (the proxy stopped).
    pub async fn watch(self: Arc<Self>, redis: Weak<RedisTier>) {
        let mut ticks = tokio::time::interval(CHECK_INTERVAL);
        // A slow read delays the next one instead of bunching them up.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(redis) = redis.upgrade() else {
                return;
            };
            self.check(&redis).await;
        }
    }

    /// Whether, in strict mode, this pod has gone longer than the bound
    /// without confirming that it applied every invalidation (Redis
    /// unreachable from here, or it never was): then its memory tier may
    /// hold what another pod purged, and is not to be served. Always
    /// `false` in the default fail-open mode.
    pub fn unconfirmed(&self) -> bool {
        let Some(bound) = self.strict else {
            return false;
        };
        let confirmed = *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        confirmed.is_none_or(|at| at.elapsed() > bound)
    }

    /// One read of the counter and what follows from it.
    async fn check(&self, redis: &RedisTier) {
        let asked = self.sequence().applied;
        let sent = Instant::now();
        let Some(counter) = redis.invalidation_sequence().await else {
            // Cannot confirm: keep serving (see the module doc), unless
            // strict (`unconfirmed`).
            return;
        };
        let standing = self.sequence().read(asked, counter);
        let flush = match standing {
            Standing::Current => None,
            Standing::Flush(flush) => Some(flush),
            Standing::Waiting(counter) => {
                tracing::debug!(counter, ?asked, "behind the invalidation counter");
                tokio::time::sleep(DELIVERY_GRACE).await;
                self.sequence().settle(counter)
            }
        };
        if let Some(flush) = flush {
            self.flush(flush);
        }
        // Every invalidation counted when the read was sent is applied now
        // (one by one, or by the flush).
        *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sent);
    }

    fn flush(&self, reason: Flush) {
        // Tag purges may have been missed too: they are read again from Redis.
        self.tags.clear();
        // And so may URL purges that fetches under way now came before.
        self.purged.everything(self.clock.now());
        // A pod that starts with Redis up has nothing to clear; only one
        // that served without it has, and that is worth reporting.
        if !self.memory.enabled() || (reason == Flush::Start && self.memory.entries() == 0) {
            return;
        }
        self.memory.clear();
        self.metrics.memory_flush(reason.as_str());
        tracing::warn!(
            reason = reason.as_str(),
            "memory tier cleared: invalidations from other pods may have been missed"
        );
    }

    fn sequence(&self) -> MutexGuard<'_, Sequence> {
        // The state is a number: a panic elsewhere cannot leave it torn.
        self.sequence.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(applied: u64) -> Sequence {
        Sequence {
            applied: Some(applied),
        }
    }

    #[test]
    fn messages_in_order_advance_and_a_skipped_number_is_a_gap() {
        let mut sequence = at(4);
        assert_eq!(sequence.received(5), None);
        assert_eq!(sequence.received(6), None);
        assert_eq!(sequence.received(9), Some(Flush::Gap));
        assert_eq!(sequence.applied, Some(9));
        // Once cleared, the missing numbers arriving late change nothing.
        assert_eq!(sequence.received(7), None);
        assert_eq!(sequence.received(10), None);
        assert_eq!(sequence.applied, Some(10));
    }

    #[test]
    fn before_the_first_read_messages_are_applied_but_not_counted() {
        let mut sequence = Sequence::default();
        assert_eq!(sequence.received(7), None);
        assert_eq!(sequence.applied, None);
        assert_eq!(sequence.read(None, 7), Standing::Flush(Flush::Start));
        assert_eq!(sequence.received(8), None);
        assert_eq!(sequence.applied, Some(8));
    }

    #[test]
    fn a_counter_at_or_behind_what_arrived_is_current() {
        let mut sequence = at(5);
        assert_eq!(sequence.read(Some(5), 5), Standing::Current);
        // Messages 6 and 7 arrived while the read was out.
        sequence.received(6);
        sequence.received(7);
        assert_eq!(sequence.read(Some(5), 6), Standing::Current);
        assert_eq!(sequence.applied, Some(7));
    }

    #[test]
    fn a_counter_ahead_waits_for_its_messages_then_flushes_if_they_did_not_come() {
        let mut sequence = at(5);
        assert_eq!(sequence.read(Some(5), 7), Standing::Waiting(7));
        sequence.received(6);
        sequence.received(7);
        assert_eq!(sequence.settle(7), None);

        assert_eq!(sequence.read(Some(7), 9), Standing::Waiting(9));
        sequence.received(8);
        assert_eq!(sequence.settle(9), Some(Flush::Behind));
        assert_eq!(sequence.applied, Some(9));
        // Late message 9: already covered; 10 follows on.
        assert_eq!(sequence.received(9), None);
        assert_eq!(sequence.received(10), None);
    }

    #[test]
    fn a_counter_below_what_was_applied_when_asked_is_a_reset() {
        let mut sequence = at(57);
        assert_eq!(sequence.read(Some(57), 2), Standing::Flush(Flush::Reset));
        assert_eq!(sequence.applied, Some(2));
        assert_eq!(sequence.received(3), None);
        assert_eq!(sequence.read(Some(3), 3), Standing::Current);
    }
}
