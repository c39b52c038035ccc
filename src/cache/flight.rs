//! Single-flight in one process: the first miss for a key fetches, concurrent requests for it wait for that fetch's stored result.
//!
//! Hand-written on a `tokio::sync::watch` per key because the rules are a
//! cache's: followers get the leader's response only if it was stored (a
//! private or failed answer is never shared: they fetch for themselves), and
//! a leader that is dropped — its client went away — releases them at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::watch;

use super::entry::{Entry, Variants};

/// A stored response as a fetch hands it to the requests that waited for it.
#[derive(Clone, Debug)]
pub struct Filled {
    pub entry: Arc<Entry>,
    /// The index it was stored under, if it is one variant of its URL.
    pub variants: Option<Arc<Variants>>,
}

impl Filled {
    /// Whether it is the response a request with these (forwarded) headers
    /// selects: requests wait on a fetch before its `Vary` is known, so
    /// one that varies on what they differ in is not theirs.
    pub fn selects(&self, request: &HeaderMap) -> bool {
        self.variants
            .as_ref()
            .is_none_or(|index| index.key_for(request) == self.entry.key)
    }
}

/// What followers learn when the leader is done.
#[derive(Clone, Debug)]
enum Outcome {
    Pending,
    /// The leader's response was stored: followers answer from it.
    Stored(Filled),
    /// Not stored, failed, or the leader went away: followers fetch themselves.
    Released,
}

/// The flights in progress, by key.
#[derive(Clone, Default)]
pub struct Flights {
    pending: Arc<Mutex<HashMap<[u8; 32], watch::Receiver<Outcome>>>>,
}

/// A request's part in the flight for its key.
pub enum Role {
    /// Fetch, then report through the guard.
    Leader(Leader),
    /// Wait for the leader.
    Follower(Follower),
}

impl Flights {
    /// Joins the flight for `key`, leading it if there is none.
    pub fn join(&self, key: [u8; 32]) -> Role {
        let Ok(mut pending) = self.pending.lock() else {
            // A poisoned map only costs the coalescing, never the request.
            return Role::Leader(Leader::detached());
        };
        if let Some(receiver) = pending.get(&key) {
            return Role::Follower(Follower {
                receiver: receiver.clone(),
            });
        }
        let (sender, receiver) = watch::channel(Outcome::Pending);
        pending.insert(key, receiver);
        Role::Leader(Leader {
            flight: Some((self.clone(), key, sender)),
            on_finish: None,
        })
    }

    /// Whether a flight for `key` is under way.
    pub fn in_flight(&self, key: &[u8; 32]) -> bool {
        self.pending
            .lock()
            .map(|p| p.contains_key(key))
            .unwrap_or(false)
    }
}

/// The leader's handle: reports the stored entry, or releases the followers
/// when dropped without one.
pub struct Leader {
    flight: Option<(Flights, [u8; 32], watch::Sender<Outcome>)>,
    /// Runs when the flight ends, stored or not (releases a fleet lease).
    on_finish: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Leader {
    fn detached() -> Leader {
        Leader {
            flight: None,
            on_finish: None,
        }
    }

    /// Runs `hook` when the flight ends, however it ends.
    pub fn on_finish(&mut self, hook: impl FnOnce() + Send + Sync + 'static) {
        self.on_finish = Some(Box::new(hook));
    }

    /// The response was stored: followers answer from it if it selects them.
    pub fn stored(mut self, filled: Filled) {
        self.finish(Outcome::Stored(filled));
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(hook) = self.on_finish.take() {
            hook();
        }
        if let Some((flights, key, sender)) = self.flight.take() {
            if let Ok(mut pending) = flights.pending.lock() {
                pending.remove(&key);
            }
            sender.send_replace(outcome);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.finish(Outcome::Released);
    }
}

/// A follower's handle on the leader's result.
pub struct Follower {
    receiver: watch::Receiver<Outcome>,
}

impl Follower {
    /// Waits at most `timeout` for the leader: `Some` when it stored a
    /// response, `None` when the follower should fetch for itself.
    pub async fn wait(mut self, timeout: Duration) -> Option<Filled> {
        let done = self
            .receiver
            .wait_for(|outcome| !matches!(outcome, Outcome::Pending));
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(outcome)) => match &*outcome {
                Outcome::Stored(filled) => Some(filled.clone()),
                _ => None,
            },
            // Timed out, or the sender vanished without a word.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn entry() -> Filled {
        let (parts, ()) = http::Request::get("/x").body(()).unwrap().into_parts();
        let entry = Arc::new(Entry {
            key: crate::cache::key::CacheKey::for_request("ns", &parts),
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"x"),
            response_time: SystemTime::now(),
            initial_age: Duration::ZERO,
            freshness_lifetime: Duration::from_secs(60),
            request_time: SystemTime::now(),
            tags: Vec::new(),
        });
        Filled {
            entry,
            variants: None,
        }
    }

    #[tokio::test]
    async fn followers_get_the_stored_entry_and_the_flight_ends() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join([1; 32]) else {
            panic!("leader")
        };
        let Role::Follower(follower) = flights.join([1; 32]) else {
            panic!("follower")
        };
        assert!(
            matches!(flights.join([2; 32]), Role::Leader(_)),
            "other keys fly alone"
        );
        let waiting = tokio::spawn(follower.wait(Duration::from_secs(5)));
        leader.stored(entry());
        assert!(waiting.await.unwrap().is_some());
        assert!(!flights.in_flight(&[1; 32]));
        assert!(
            matches!(flights.join([1; 32]), Role::Leader(_)),
            "a new flight after the end"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let flights = Flights::default();
        let Role::Leader(leader) = flights.join([1; 32]) else {
            panic!("leader")
        };
        let Role::Follower(follower) = flights.join([1; 32]) else {
            panic!("follower")
        };
        drop(leader);
        assert!(follower.wait(Duration::from_secs(5)).await.is_none());
        assert!(!flights.in_flight(&[1; 32]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_stops_waiting_after_the_lock_timeout() {
        let flights = Flights::default();
        let Role::Leader(_leader) = flights.join([1; 32]) else {
            panic!("leader")
        };
        let Role::Follower(follower) = flights.join([1; 32]) else {
            panic!("follower")
        };
        assert!(follower.wait(Duration::from_secs(5)).await.is_none());
    }
}
