//! The wall clock that ages and freshness are measured by; tests move it forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The system clock, plus however far it has been moved forward (never, in
/// production). Cheap to clone: clones share the offset, so a test that
/// moves the proxy's clock moves it for every part of the proxy at once.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system time.
    ahead_ms: Arc<AtomicU64>,
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `by`: stored responses age at once. For
    /// tests, where freshness running out is the subject, and real time
    /// would only make the suite slower.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(by, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_move_together() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = clock.now();
        other.advance(Duration::from_secs(3600));
        let moved = clock.now().duration_since(before).unwrap();
        assert!(moved >= Duration::from_secs(3600), "{moved:?}");
    }
}
