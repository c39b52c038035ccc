//! A stored response: status, headers, body, and the times its freshness is computed from.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::key::CacheKey;
use super::policy;

/// A complete response as stored in a tier.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Compared with the request's key on read, so a hash collision is a miss.
    pub key: CacheKey,
    pub status: StatusCode,
    /// End-to-end headers as the origin sent them, without `Age`, which is
    /// recomputed on every answer.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the response arrived; resident time counts from here.
    pub response_time: SystemTime,
    /// Age the response already had on arrival (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// How long it is fresh, counted from age zero.
    pub freshness_lifetime: Duration,
}

impl Entry {
    /// Current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        policy::current_age(self.initial_age, self.response_time, now)
    }

    /// Freshness left, or `None` once stale.
    pub fn remaining_freshness(&self, now: SystemTime) -> Option<Duration> {
        self.freshness_lifetime
            .checked_sub(self.age(now))
            .filter(|left| !left.is_zero())
    }

    /// Bytes this entry holds, for the memory tier's budget.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        (self.body.len() + headers + self.key.canonical().len() + std::mem::size_of::<Entry>())
            as u64
    }
}
