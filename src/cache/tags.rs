//! Purge by tag: the tags a response carries (`Surrogate-Key`, `Cache-Tag`), when each tag was last purged (hard or soft), and what that makes of a stored entry on read — O(1) in the number of entries, since nothing is enumerated: entries are judged when they are read.
//!
//! A purge stamps the tag with the purging pod's clock. An entry whose
//! fetch was sent no later than the tag's last hard purge is gone; no later
//! than its last soft purge, it is stale (its freshness ended at the purge),
//! so stale-while-revalidate and revalidation apply. The fetch's *request*
//! time counts, not its response time: a response the origin made before
//! the purge but that arrived after it is as outdated as the others.
//!
//! Where the purge times live: with Redis, one hash per tag
//! (`sidecache:tag:{HASH}`, one slot per tag, written with a max-merging
//! script) is the record, and each pod keeps a bounded map of the tags it
//! has looked at, filled from Redis on first use and kept current by the
//! numbered announcements of [`super::coherence`] (a pod that may have
//! missed one clears the map with its memory tier). Without Redis the map
//! is the only record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName};
use moka::notification::RemovalCause;

use super::entry::Entry;
use super::memory::MemoryTier;

/// Default response fields that carry tags: Fastly's and Cloudflare's.
pub const DEFAULT_TAG_HEADERS: [&str; 2] = ["surrogate-key", "cache-tag"];
/// Most tags kept from one response; the rest are ignored (and counted):
/// every tag costs a lookup on each read of the entry.
pub const MAX_TAGS_PER_RESPONSE: usize = 64;
/// Longest tag, in bytes; a longer one is ignored (and counted).
pub const MAX_TAG_LENGTH: usize = 256;
/// Most tags one purge request may name.
pub const MAX_TAGS_PER_PURGE: usize = 64;
/// How long a tag's purge times are remembered. Entries that carry tags are
/// kept at most this long (see [`super::Cache::store`]), so no entry can
/// outlive the record of a purge that concerns it.
pub const TAG_PURGE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Tags whose purge times a pod keeps in memory. With Redis, one that
/// falls out is read again on its next use; without, see [`TagPurges::new`].
const KNOWN_TAGS: u64 = 100_000;

/// The tags of one response, parsed from its tag fields.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Distinct tags, in the order first seen, at most [`MAX_TAGS_PER_RESPONSE`].
    pub tags: Vec<String>,
    /// Tags left out: beyond the count, too long, or not UTF-8.
    pub ignored: usize,
}

/// The tags in `headers`' fields `names` (every line of each): separated by
/// spaces or commas, as Fastly's `Surrogate-Key` (spaces) and Cloudflare's
/// `Cache-Tag` (commas) write them; compared byte for byte.
pub fn parse(headers: &HeaderMap, names: &[HeaderName]) -> Parsed {
    let mut parsed = Parsed::default();
    let values = names.iter().flat_map(|name| headers.get_all(name));
    for value in values {
        let words = value
            .as_bytes()
            .split(|b| matches!(b, b' ' | b',' | b'\t'))
            .filter(|word| !word.is_empty());
        for word in words {
            let Ok(tag) = std::str::from_utf8(word) else {
                parsed.ignored += 1;
                continue;
            };
            if parsed.tags.iter().any(|seen| seen == tag) {
                continue;
            }
            if tag.len() > MAX_TAG_LENGTH || parsed.tags.len() >= MAX_TAGS_PER_RESPONSE {
                parsed.ignored += 1;
                continue;
            }
            parsed.tags.push(tag.to_owned());
        }
    }
    parsed
}

/// Why a tag named in a purge request cannot be one.
pub fn refuse_purge_tag(tag: &str) -> Option<String> {
    if tag.is_empty() {
        return Some("a tag must not be empty".into());
    }
    if tag.len() > MAX_TAG_LENGTH {
        return Some(format!("a tag is at most {MAX_TAG_LENGTH} bytes"));
    }
    if tag.bytes().any(|b| matches!(b, b' ' | b',' | b'\t')) {
        return Some(format!(
            "{tag:?}: spaces and commas separate tags, so no tag contains one"
        ));
    }
    None
}

/// The identity of a tag in Redis and in the pods' maps: `namespace` keeps
/// fleets that share a Redis apart, and a fixed size keeps announcements
/// and keys small whatever the tag.
pub fn tag_hash(namespace: &str, tag: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(namespace.len() as u64).to_be_bytes());
    hasher.update(namespace.as_bytes());
    hasher.update(tag.as_bytes());
    *hasher.finalize().as_bytes()
}

/// When a tag was last purged, in microseconds since the epoch by the
/// purging pod's clock; 0 for never. Microseconds, because a purge and a
/// fetch sent just after it (on loopback) may fall in one millisecond, and
/// a fetch sent at the very time of a purge counts as purged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub hard: u64,
    pub soft: u64,
}

impl Purged {
    /// A purge at `at`, hard or soft.
    pub fn at(at: SystemTime, soft: bool) -> Purged {
        let us = micros(at);
        if soft {
            Purged { hard: 0, soft: us }
        } else {
            Purged { hard: us, soft: 0 }
        }
    }

    /// The later of each time: purges only ever move forward, whatever
    /// order pods hear of them in.
    pub fn merge(self, other: Purged) -> Purged {
        Purged {
            hard: self.hard.max(other.hard),
            soft: self.soft.max(other.soft),
        }
    }

    fn ever(self) -> bool {
        self != Purged::default()
    }
}

/// What a tag purge makes of a stored entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Untouched: fetched after every purge of its tags.
    Current,
    /// Soft-purged: stale since this time.
    StaleSince(SystemTime),
    /// Hard-purged: not to be used.
    Gone,
}

/// What `purged` (the merged purge times of an entry's tags) makes of an
/// entry whose fetch was sent at `request_time`.
pub fn effect(request_time: SystemTime, purged: Purged) -> Effect {
    let fetched = micros(request_time);
    if fetched <= purged.hard {
        Effect::Gone
    } else if fetched <= purged.soft {
        Effect::StaleSince(UNIX_EPOCH + Duration::from_micros(purged.soft))
    } else {
        Effect::Current
    }
}

/// `entry` as stale from `since` on: its freshness ends at the age it had
/// then (at once, for a response that arrived after it), so the RFC 5861
/// windows count from the purge.
pub fn staled(entry: &Entry, since: SystemTime) -> Entry {
    let mut staled = entry.clone();
    staled.freshness_lifetime = entry.freshness_lifetime.min(entry.age(since));
    staled
}

/// This pod's knowledge of tag purge times.
#[derive(Clone)]
pub struct TagPurges {
    known: moka::sync::Cache<[u8; 32], Purged>,
}

impl TagPurges {
    /// An empty map. `memory` is the tier to clear when a purge record has
    /// to leave a full map while nothing else holds it (no Redis): entries
    /// it purged must not come back.
    pub fn new(memory: MemoryTier, sole_record: bool) -> TagPurges {
        let mut builder = moka::sync::Cache::builder()
            .max_capacity(KNOWN_TAGS)
            .time_to_live(TAG_PURGE_RETENTION);
        if sole_record {
            builder = builder.eviction_listener(move |_tag, purged: Purged, cause| {
                if cause == RemovalCause::Size && purged.ever() {
                    tracing::warn!("too many purged tags to remember; memory tier cleared");
                    memory.clear();
                }
            });
        }
        TagPurges {
            known: builder.build(),
        }
    }

    /// The purge times known here for a tag, if it has been looked at or
    /// purged since the map was last cleared.
    pub fn known(&self, tag: &[u8; 32]) -> Option<Purged> {
        self.known.get(tag)
    }

    /// Records purge times for a tag, merged with what is known: a purge
    /// heard while its tag was being read from Redis is kept.
    pub fn learn(&self, tag: [u8; 32], purged: Purged) {
        self.known.entry(tag).and_upsert_with(|known| {
            known.map_or(purged, |known| known.into_value().merge(purged))
        });
    }

    /// Forgets everything (purges may have been missed: Redis tells again).
    pub fn clear(&self) {
        self.known.invalidate_all();
    }
}

/// `at` in microseconds since the epoch, as purge times and entries'
/// request times are compared and stored.
pub fn micros(at: SystemTime) -> u64 {
    u64::try_from(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::headers;

    fn names() -> Vec<HeaderName> {
        DEFAULT_TAG_HEADERS.map(HeaderName::from_static).to_vec()
    }

    #[test]
    fn tags_are_split_on_spaces_and_commas_across_fields_and_lines_without_duplicates() {
        let parsed = parse(
            &headers(&[
                ("surrogate-key", "product-1  product-2 all"),
                ("cache-tag", "all,product-3, product-1"),
                ("cache-tag", "home"),
                ("x-other", "ignored"),
            ]),
            &names(),
        );
        assert_eq!(
            parsed.tags,
            ["product-1", "product-2", "all", "product-3", "home"]
        );
        assert_eq!(parsed.ignored, 0);
        assert_eq!(
            parse(&headers(&[("cache-tag", " , ")]), &names()),
            Parsed::default()
        );
    }

    #[test]
    fn tags_beyond_the_bounds_are_ignored_and_counted() {
        let many = (0..70)
            .map(|n| format!("t{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let long = "x".repeat(MAX_TAG_LENGTH + 1);
        let parsed = parse(
            &headers(&[("surrogate-key", &format!("{long} {many} t0"))]),
            &names(),
        );
        assert_eq!(parsed.tags.len(), MAX_TAGS_PER_RESPONSE);
        assert_eq!(parsed.tags[0], "t0");
        // The long one and the six past the count; a duplicate is no loss.
        assert_eq!(parsed.ignored, 7);
    }

    #[test]
    fn purge_tags_are_refused_when_no_stored_tag_could_match() {
        assert_eq!(refuse_purge_tag("product-1"), None);
        assert_eq!(refuse_purge_tag("").unwrap(), "a tag must not be empty");
        assert_eq!(
            refuse_purge_tag(&"x".repeat(MAX_TAG_LENGTH + 1)).unwrap(),
            "a tag is at most 256 bytes"
        );
        assert_eq!(
            refuse_purge_tag("a,b").unwrap(),
            "\"a,b\": spaces and commas separate tags, so no tag contains one"
        );
    }

    #[test]
    fn a_fetch_sent_up_to_a_purge_is_purged_and_one_sent_after_is_not() {
        let at = |us| UNIX_EPOCH + Duration::from_micros(us);
        let purged = Purged { hard: 100, soft: 0 }.merge(Purged {
            hard: 50,
            soft: 200,
        });
        assert_eq!(
            purged,
            Purged {
                hard: 100,
                soft: 200
            }
        );
        assert_eq!(effect(at(99), purged), Effect::Gone);
        assert_eq!(effect(at(100), purged), Effect::Gone);
        assert_eq!(effect(at(101), purged), Effect::StaleSince(at(200)));
        assert_eq!(effect(at(200), purged), Effect::StaleSince(at(200)));
        assert_eq!(effect(at(201), purged), Effect::Current);
        assert_eq!(effect(at(5), Purged::default()), Effect::Current);
    }

    #[test]
    fn learning_keeps_the_later_times() {
        let purges = TagPurges::new(MemoryTier::new(0), false);
        let tag = tag_hash("ns", "a");
        purges.learn(tag, Purged { hard: 10, soft: 30 });
        purges.learn(tag, Purged { hard: 20, soft: 0 });
        assert_eq!(purges.known(&tag), Some(Purged { hard: 20, soft: 30 }));
        assert_ne!(tag, tag_hash("other", "a"), "namespaces keep tags apart");
        purges.clear();
        assert_eq!(purges.known(&tag), None);
    }
}
