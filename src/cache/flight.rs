//! Single-flight in one process: the first miss for a key fetches, concurrent requests for it share that fetch's response once it is to be stored.
//!
//! Hand-written on a `tokio::sync::watch` per key because the rules are a
//! cache's: followers get the leader's response only if it is being stored (a
//! private or failed answer is never shared: they fetch for themselves) —
//! its body as it arrives when the fill shares it ([`super::growing`]), else
//! the stored entry — and a leader that is dropped without storing (the fill
//! failed, or nobody reads it any more) releases the ones still waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::watch;

use super::entry::{Entry, Variants};
use super::growing::{Joining, Reader};

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
    /// The leader's response is being stored, its body still arriving:
    /// followers read it as it grows (the entry has no body yet).
    Arriving(Filled, Joining),
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

    /// The response is being stored and its body arrives through
    /// `joining`: followers read it if it selects them. The flight goes on
    /// until the fill is stored or given up.
    pub fn arriving(&self, head: Filled, joining: Joining) {
        if let Some((_, _, sender)) = &self.flight {
            sender.send_replace(Outcome::Arriving(head, joining));
        }
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

/// What a follower shares of the leader's fetch.
pub enum Joined {
    /// The stored response.
    Stored(Filled),
    /// The response being stored (no body in the entry), and a reader of
    /// its body from the first byte.
    Arriving(Filled, Reader),
}

impl Follower {
    /// Waits at most `timeout` for the leader's response to be known:
    /// `Some` when it is stored or being stored, `None` when the follower
    /// should fetch for itself.
    pub async fn wait(mut self, timeout: Duration) -> Option<Joined> {
        let done = self
            .receiver
            .wait_for(|outcome| !matches!(outcome, Outcome::Pending));
        // The outcome is copied out of the channel before anything is done
        // with it: joining may have to wait for the fill, which may be
        // storing, which sends on this channel.
        let outcome = match tokio::time::timeout(timeout, done).await {
            Ok(Ok(outcome)) => outcome.clone(),
            // Timed out, or the sender vanished without a word.
            _ => return None,
        };
        match outcome {
            Outcome::Stored(filled) => Some(Joined::Stored(filled)),
            // `None` if the fill ended since: it then stored nothing.
            Outcome::Arriving(head, joining) => joining
                .reader()
                .map(|reader| Joined::Arriving(head, reader)),
            Outcome::Pending | Outcome::Released => None,
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
            directives: Default::default(),
        });
        Filled {
            entry,
            variants: None,
        }
    }

    /// The leader and a follower of the flight for key `[1; 32]`.
    fn leader_and_follower(flights: &Flights) -> (Leader, Follower) {
        let Role::Leader(leader) = flights.join([1; 32]) else {
            panic!("leader")
        };
        let Role::Follower(follower) = flights.join([1; 32]) else {
            panic!("follower")
        };
        (leader, follower)
    }

    #[tokio::test]
    async fn followers_get_the_stored_entry_and_the_flight_ends() {
        let flights = Flights::default();
        let (leader, follower) = leader_and_follower(&flights);
        assert!(
            matches!(flights.join([2; 32]), Role::Leader(_)),
            "other keys fly alone"
        );
        let waiting = tokio::spawn(follower.wait(Duration::from_secs(5)));
        leader.stored(entry());
        assert!(matches!(waiting.await.unwrap(), Some(Joined::Stored(_))));
        assert!(!flights.in_flight(&[1; 32]));
        assert!(
            matches!(flights.join([1; 32]), Role::Leader(_)),
            "a new flight after the end"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let flights = Flights::default();
        let (leader, follower) = leader_and_follower(&flights);
        drop(leader);
        assert!(follower.wait(Duration::from_secs(5)).await.is_none());
        assert!(!flights.in_flight(&[1; 32]));
    }

    #[tokio::test]
    async fn followers_read_a_body_as_it_arrives_until_it_is_stored() {
        use http_body_util::BodyExt;
        let flights = Flights::default();
        let (leader, before) = leader_and_follower(&flights);
        let growing = crate::cache::growing::Growing::default();
        growing.push(bytes::Bytes::from_static(b"x"), true);
        leader.arriving(entry(), growing.joining());
        let Some(Joined::Arriving(_, reader)) = before.wait(Duration::from_secs(5)).await else {
            panic!("arriving")
        };
        let Role::Follower(after) = flights.join([1; 32]) else {
            panic!("still in flight while the body arrives")
        };
        let Some(Joined::Arriving(_, late)) = after.wait(Duration::from_secs(5)).await else {
            panic!("arriving")
        };
        growing.complete();
        leader.stored(entry());
        assert_eq!(reader.collect().await.unwrap().to_bytes(), "x");
        assert_eq!(late.collect().await.unwrap().to_bytes(), "x");
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
