//! What the tiers store — a response (status, headers, body, the times its freshness comes from) or a URL's variant index — and its versioned binary encoding.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::key::CacheKey;
use super::policy::{self, CacheControl, StoreRules};
use super::validation;

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
    /// When the request it answers (or the 304 that last validated it) was
    /// sent: a tag purge at or after this time purges it, since the origin
    /// may have made it before the purge ([`super::tags`]).
    pub request_time: SystemTime,
    /// Its tags, from the fields `cache.tag_headers` names; set by
    /// [`super::Cache::store`], the one way into the tiers.
    pub tags: Vec<String>,
    /// `headers`' directives, read once: every hit consults them. Valid
    /// because an entry's headers never change once it is made (a refresh
    /// makes a new entry).
    pub directives: Directives,
}

/// A response's directives as this cache reads them, parsed on first use
/// and kept with the targeted fields (`cache.targeted_fields`) they were
/// read by, which a reload may change.
#[derive(Clone, Debug, Default)]
pub struct Directives(OnceLock<(Vec<HeaderName>, CacheControl)>);

impl Directives {
    /// `directives`, already read from the entry's headers with `targeted`.
    pub fn read(targeted: &[HeaderName], directives: CacheControl) -> Directives {
        Directives(OnceLock::from((targeted.to_vec(), directives)))
    }

    /// The directives of `headers` (the entry's own), read with `targeted`.
    pub fn of(&self, headers: &HeaderMap, targeted: &[HeaderName]) -> Cow<'_, CacheControl> {
        let (read_with, directives) = self.0.get_or_init(|| {
            let directives = CacheControl::parse_response(headers, targeted);
            (targeted.to_vec(), directives)
        });
        match read_with.as_slice() == targeted {
            true => Cow::Borrowed(directives),
            false => Cow::Owned(CacheControl::parse_response(headers, targeted)),
        }
    }
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

    /// How long a tier should keep this entry from `now`: while fresh, plus
    /// `keep_stale` so that it can still be revalidated, or served stale
    /// where a request allows it. `None`: not worth keeping.
    pub fn retention(&self, now: SystemTime, keep_stale: Duration) -> Option<Duration> {
        let keep = self.freshness_lifetime.saturating_sub(self.age(now)) + keep_stale;
        (!keep.is_zero()).then_some(keep)
    }

    /// Bytes this entry holds, for the memory tier's budget: its bytes, and
    /// what holding them costs (the header map's slots, the tier's own
    /// bookkeeping), so that the budget bounds the process's memory.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
            .sum();
        let tags: usize = self.tags.iter().map(|tag| tag.len() + TAG_OVERHEAD).sum();
        (self.body.len() + headers + tags + self.key.canonical().len() + ENTRY_OVERHEAD) as u64
    }
}

/// What one header line costs beyond its name and value: its slot in the
/// map (hash, links, name and value handles) and its index.
const HEADER_OVERHEAD: usize = 112;
/// What one tag costs beyond its bytes: its `String` and allocation.
const TAG_OVERHEAD: usize = 40;
/// What one stored object costs beyond its fields' heap bytes: the entry
/// itself, its `Arc`, the memory tier's node, expiry and eviction records,
/// and allocator headers. With this and [`HEADER_OVERHEAD`], 1 KiB
/// responses filled from nginx weigh about what they add to the process's
/// resident memory (`bench/compare.sh`'s fill cell, 130k entries).
const ENTRY_OVERHEAD: usize = 640;

/// A stored response refreshed by a 304 (RFC 9111 §4.3.4): merged headers,
/// the stored body, and age and freshness counted from the 304.
pub fn refreshed(
    stored: &Entry,
    update: &HeaderMap,
    rules: StoreRules<'_>,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Entry {
    let merged = validation::merge_not_modified(&stored.headers, update);
    let (headers, directives) = storable(
        &merged,
        CacheControl::parse_response(&merged, rules.targeted),
        rules.targeted,
    );
    let cc = directives.of(&headers, rules.targeted);
    let freshness_lifetime =
        policy::freshness_lifetime(stored.status, &headers, &cc, rules, response_time)
            .unwrap_or(Duration::ZERO);
    Entry {
        key: stored.key.clone(),
        status: stored.status,
        headers,
        body: stored.body.clone(),
        response_time,
        initial_age: policy::corrected_initial_age(update, request_time, response_time),
        freshness_lifetime,
        request_time,
        tags: Vec::new(),
        directives,
    }
}

/// The response fields that go into the store: not `Age` (recomputed on
/// every answer), nor fields named by `private="..."` or `no-cache="..."`
/// (RFC 9111 §5.2.2.4, §5.2.2.7) in `directives`, those of `headers` as
/// this cache acts on them (read with `targeted`). With them, the stored
/// fields' directives: `directives` themselves, unless removing fields may
/// have changed what they are read from (then read again on first use).
pub fn storable(
    headers: &HeaderMap,
    directives: CacheControl,
    targeted: &[HeaderName],
) -> (HeaderMap, Directives) {
    let mut stored = compact(headers);
    stored.remove(header::AGE);
    validation::strip_fields(&mut stored, &directives.private_fields);
    validation::strip_fields(&mut stored, &directives.no_cache_fields);
    let unchanged = directives.private_fields.is_empty()
        && directives.no_cache_fields.is_empty()
        && !targeted.contains(&header::AGE);
    let directives = match unchanged {
        true => Directives::read(targeted, directives),
        false => Directives::default(),
    };
    (stored, directives)
}

/// A copy of `headers` whose values live in one allocation of their own.
/// hyper parses header values as slices of the connection's read buffer
/// (8 KiB and more): a stored copy that kept those slices would pin a whole
/// buffer per entry, many times what the cache weighs it at.
fn compact(headers: &HeaderMap) -> HeaderMap {
    let total = headers.values().map(HeaderValue::len).sum();
    let mut buffer = BytesMut::with_capacity(total);
    for value in headers.values() {
        buffer.extend_from_slice(value.as_bytes());
    }
    let mut values = buffer.freeze();
    let mut compacted = HeaderMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        let own = values.split_to(value.len());
        // The bytes were a valid value a moment ago; keep the original
        // (and its sharing) in the impossible case they are not.
        let mut own = HeaderValue::from_maybe_shared(own).unwrap_or_else(|_| value.clone());
        own.set_sensitive(value.is_sensitive());
        compacted.append(name.clone(), own);
    }
    compacted
}

/// What one tier key holds: a response, or the index of a URL's variants.
#[derive(Clone, Debug)]
pub enum Stored {
    Response(Arc<Entry>),
    Variants(Arc<Variants>),
}

/// The headers a request sends the origin, which a variant index selects
/// by (RFC 9111 §4.1). A trait so that a request can build them when an
/// index first asks: a hit on a URL without variants never needs them.
pub trait Forwarded: Sync {
    fn headers(&self) -> &HeaderMap;
}

impl Forwarded for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }
}

/// The variants of one URL (RFC 9111 §4.1): which request headers select
/// among them (the response's `Vary` plus the route's `key_headers`), and the
/// generation their keys carry. Stored under the URL's own key, so a variant
/// costs one extra lookup, and removing the index (a purge or invalidation)
/// orphans every variant at once: a new index gets a new generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variants {
    /// The URL's key.
    pub key: CacheKey,
    /// Lowercase header names, sorted, without duplicates.
    pub names: Vec<HeaderName>,
    pub generation: u64,
}

impl Variants {
    /// A new index for `key`, selecting by `names`, with a fresh generation.
    pub fn new(key: CacheKey, names: Vec<HeaderName>) -> Variants {
        let names = sorted_names(names);
        Variants {
            key,
            names,
            generation: fresh_generation(),
        }
    }

    /// Whether this index selects by exactly these names.
    pub fn selects_by(&self, names: &[HeaderName]) -> bool {
        self.names == sorted_names(names.to_vec())
    }

    /// The key of the variant that a request with these headers selects.
    pub fn key_for(&self, request: &HeaderMap) -> CacheKey {
        self.key.variant(self.generation, &self.names, request)
    }
}

fn sorted_names(mut names: Vec<HeaderName>) -> Vec<HeaderName> {
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// A generation no other index is likely to have: std's per-process random
/// hash seed, mixed with the clock. (Saves a dependency on `rand`.)
fn fresh_generation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// First bytes of every encoded value: a magic tag and the format version.
/// A value with another version is a miss, so a rolling upgrade that
/// changes the format never misreads what older pods stored.
const MAGIC: &[u8; 3] = b"SCE";
const FORMAT_VERSION: u8 = 3;
const KIND_RESPONSE: u8 = 0;
const KIND_VARIANTS: u8 = 1;

/// Why stored bytes are not the object that was looked up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a sidecache entry")]
    Magic,
    #[error("unknown entry format version {0}")]
    Version(u8),
    #[error("entry truncated or malformed")]
    Malformed,
    #[error("entry belongs to another key (hash collision)")]
    OtherKey,
}

// The format is written by hand rather than through a serde codec: it is
// small, its layout is pinned by a version byte that this file controls, and
// the body is sliced out of the value without a copy.
//
// magic(3) version(1) kind(1) key_len(u32) key, then for a response:
//   status(u16) response_time_ms(u64) initial_age_ms(u64) freshness_ms(u64)
//   request_time_us(u64) tag_count(u16) { tag_len(u16) tag }*
//   header_count(u32) { name_len(u16) name value_len(u32) value }* body(rest)
// and for variants:
//   generation(u64) name_count(u16) { name_len(u16) name }*
impl Stored {
    /// The key this object was stored under.
    pub fn key(&self) -> &CacheKey {
        match self {
            Stored::Response(entry) => &entry.key,
            Stored::Variants(variants) => &variants.key,
        }
    }

    /// Bytes this object holds, for the memory tier's budget.
    pub fn weight(&self) -> u64 {
        match self {
            Stored::Response(entry) => entry.weight(),
            Stored::Variants(variants) => {
                let names: usize = variants.names.iter().map(|n| n.as_str().len()).sum();
                (names + variants.key.canonical().len() + std::mem::size_of::<Variants>()) as u64
            }
        }
    }

    /// The object as one binary value.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.weight() as usize);
        out.put_slice(MAGIC);
        out.put_u8(FORMAT_VERSION);
        match self {
            Stored::Response(entry) => {
                out.put_u8(KIND_RESPONSE);
                put_bytes32(&mut out, entry.key.canonical());
                out.put_u16(entry.status.as_u16());
                out.put_u64(since_epoch(entry.response_time));
                out.put_u64(millis(entry.initial_age));
                out.put_u64(millis(entry.freshness_lifetime));
                out.put_u64(super::tags::micros(entry.request_time));
                out.put_u16(u16::try_from(entry.tags.len()).unwrap_or(u16::MAX));
                for tag in &entry.tags {
                    put_bytes16(&mut out, tag.as_bytes());
                }
                out.put_u32(u32::try_from(entry.headers.len()).unwrap_or(u32::MAX));
                for (name, value) in &entry.headers {
                    put_bytes16(&mut out, name.as_str().as_bytes());
                    put_bytes32(&mut out, value.as_bytes());
                }
                out.put_slice(&entry.body);
            }
            Stored::Variants(variants) => {
                out.put_u8(KIND_VARIANTS);
                put_bytes32(&mut out, variants.key.canonical());
                out.put_u64(variants.generation);
                out.put_u16(u16::try_from(variants.names.len()).unwrap_or(u16::MAX));
                for name in &variants.names {
                    put_bytes16(&mut out, name.as_str().as_bytes());
                }
            }
        }
        out.freeze()
    }

    /// Decodes a value written by [`Stored::encode`] that was looked up
    /// under `key`; a value stored under another key is an error.
    pub fn decode(mut data: Bytes, key: &CacheKey) -> Result<Stored, DecodeError> {
        if data.len() < 5 || &data[..3] != MAGIC {
            return Err(DecodeError::Magic);
        }
        if data[3] != FORMAT_VERSION {
            return Err(DecodeError::Version(data[3]));
        }
        let kind = data[4];
        data.advance(5);
        if get_bytes32(&mut data)? != key.canonical() {
            return Err(DecodeError::OtherKey);
        }
        match kind {
            KIND_RESPONSE => {
                decode_response(data, key.clone()).map(|e| Stored::Response(Arc::new(e)))
            }
            KIND_VARIANTS => {
                let generation = get_u64(&mut data)?;
                let count = get_u16(&mut data)?;
                let names = (0..count)
                    .map(|_| get_name16(&mut data))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Stored::Variants(Arc::new(Variants {
                    key: key.clone(),
                    names,
                    generation,
                })))
            }
            _ => Err(DecodeError::Malformed),
        }
    }
}

fn decode_response(mut data: Bytes, key: CacheKey) -> Result<Entry, DecodeError> {
    // Only final statuses are ever stored (`cache_status` allows 200-599);
    // a 1xx would be sent as if it were the answer.
    let status = StatusCode::from_u16(get_u16(&mut data)?)
        .ok()
        .filter(|status| (200..600).contains(&status.as_u16()))
        .ok_or(DecodeError::Malformed)?;
    let response_time = UNIX_EPOCH + Duration::from_millis(get_u64(&mut data)?);
    let initial_age = Duration::from_millis(get_u64(&mut data)?);
    let freshness_lifetime = Duration::from_millis(get_u64(&mut data)?);
    let request_time = UNIX_EPOCH + Duration::from_micros(get_u64(&mut data)?);
    let tag_count = get_u16(&mut data)?;
    // The count is Redis's word: the bound is the one responses get.
    if usize::from(tag_count) > super::tags::MAX_TAGS_PER_RESPONSE {
        return Err(DecodeError::Malformed);
    }
    let tags = (0..tag_count)
        .map(|_| {
            let len = usize::from(get_u16(&mut data)?);
            String::from_utf8(take(&mut data, len)?.to_vec()).map_err(|_| DecodeError::Malformed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = get_u32(&mut data)?;
    // Sized once for the usual few dozen fields; the count is Redis's word,
    // so it only hints (a map that large would panic).
    let mut headers = HeaderMap::with_capacity(usize::try_from(count.min(64)).unwrap_or(64));
    for _ in 0..count {
        let name = get_name16(&mut data)?;
        let value = get_bytes32(&mut data)?;
        // `try_append`: a map holds at most 32,768 names, and `append`
        // panics past them.
        headers
            .try_append(
                name,
                HeaderValue::from_maybe_shared(value).map_err(|_| DecodeError::Malformed)?,
            )
            .map_err(|_| DecodeError::Malformed)?;
    }
    Ok(Entry {
        key,
        status,
        headers,
        body: data,
        response_time,
        initial_age,
        freshness_lifetime,
        request_time,
        tags,
        directives: Default::default(),
    })
}

fn since_epoch(at: SystemTime) -> u64 {
    millis(at.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn put_bytes16(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
}

fn put_bytes32(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn take(data: &mut Bytes, len: usize) -> Result<Bytes, DecodeError> {
    if data.remaining() < len {
        return Err(DecodeError::Malformed);
    }
    Ok(data.split_to(len))
}

fn get_u16(data: &mut Bytes) -> Result<u16, DecodeError> {
    data.try_get_u16().map_err(|_| DecodeError::Malformed)
}

fn get_u32(data: &mut Bytes) -> Result<u32, DecodeError> {
    data.try_get_u32().map_err(|_| DecodeError::Malformed)
}

fn get_u64(data: &mut Bytes) -> Result<u64, DecodeError> {
    data.try_get_u64().map_err(|_| DecodeError::Malformed)
}

/// A field name written by `put_bytes16`. Read in place: a standard name
/// needs no bytes of its own, and slicing `data` would count its shared
/// buffer's reference up and down.
fn get_name16(data: &mut Bytes) -> Result<HeaderName, DecodeError> {
    let len = usize::from(get_u16(data)?);
    let name = HeaderName::from_bytes(data.get(..len).ok_or(DecodeError::Malformed)?)
        .map_err(|_| DecodeError::Malformed)?;
    data.advance(len);
    Ok(name)
}

fn get_bytes32(data: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::try_from(get_u32(data)?).map_err(|_| DecodeError::Malformed)?;
    take(data, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::CacheKey;

    fn sample() -> Entry {
        let (parts, ()) = http::Request::get("/a?b=1")
            .header("host", "h")
            .body(())
            .unwrap()
            .into_parts();
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        Entry {
            key: CacheKey::for_request("ns", &parts),
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello body"),
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            initial_age: Duration::from_secs(3),
            freshness_lifetime: Duration::from_secs(60),
            request_time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_100_042),
            tags: vec!["product-1".into(), "all".into()],
            directives: Default::default(),
        }
    }

    #[test]
    fn stored_headers_do_not_pin_the_buffer_they_were_parsed_from() {
        // As hyper parses them: values are slices of the read buffer.
        let buffer = Bytes::from(vec![b'a'; 8192]);
        let mut parsed = HeaderMap::new();
        parsed.insert(
            "etag",
            HeaderValue::from_maybe_shared(buffer.slice(0..4)).unwrap(),
        );
        parsed.append(
            "x-a",
            HeaderValue::from_maybe_shared(buffer.slice(4..6)).unwrap(),
        );
        parsed.append("x-a", HeaderValue::from_static("b"));
        let (stored, _) = storable(&parsed, CacheControl::default(), &[]);
        assert_eq!(stored, parsed);
        let within = |value: &HeaderValue| {
            let at = value.as_bytes().as_ptr() as usize;
            let start = buffer.as_ptr() as usize;
            (start..start + buffer.len()).contains(&at)
        };
        assert!(stored.values().all(|value| !within(value)));
    }

    #[test]
    fn a_stored_responses_directives_are_those_of_the_fields_it_keeps() {
        let store = |cache_control: &'static str| {
            let response = HeaderMap::from_iter([
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static(cache_control),
                ),
                (header::AGE, HeaderValue::from_static("5")),
            ]);
            let (kept, directives) =
                storable(&response, CacheControl::parse_response(&response, &[]), &[]);
            directives.of(&kept, &[]).max_age
        };
        // Handed over as the response's: storing keeps what they are read from.
        assert_eq!(store("max-age=60"), Some(60));
        // `private="cache-control"` leaves the field itself out of the store:
        // the entry says nothing of max-age, as a read of it would.
        assert_eq!(store("max-age=60, private=\"cache-control\""), None);
    }

    #[test]
    fn directives_are_read_once_and_again_for_other_targeted_fields() {
        let mut entry = sample();
        entry.headers = HeaderMap::from_iter([
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=10"),
            ),
            (
                HeaderName::from_static("cdn-cache-control"),
                HeaderValue::from_static("max-age=99"),
            ),
        ]);
        let cdn = [HeaderName::from_static("cdn-cache-control")];
        let read = |targeted: &[HeaderName]| entry.directives.of(&entry.headers, targeted).max_age;
        assert_eq!(read(&[]), Some(10));
        assert!(
            matches!(entry.directives.of(&entry.headers, &[]), Cow::Borrowed(_)),
            "kept from the first read"
        );
        assert_eq!(read(&cdn), Some(99), "a reload's targeted fields count");
        assert_eq!(read(&[]), Some(10));
    }

    #[test]
    fn encoding_round_trips() {
        let entry = sample();
        let Stored::Response(decoded) = Stored::decode(
            Stored::Response(Arc::new(entry.clone())).encode(),
            &entry.key,
        )
        .unwrap() else {
            panic!("a response")
        };
        assert_eq!(decoded.status, entry.status);
        assert_eq!(decoded.headers, entry.headers);
        assert_eq!(decoded.body, entry.body);
        assert_eq!(decoded.response_time, entry.response_time);
        assert_eq!(decoded.initial_age, entry.initial_age);
        assert_eq!(decoded.freshness_lifetime, entry.freshness_lifetime);
        assert_eq!(decoded.request_time, entry.request_time);
        assert_eq!(decoded.tags, entry.tags);

        let variants = Variants::new(
            entry.key.clone(),
            vec![
                HeaderName::from_static("accept-language"),
                HeaderName::from_static("accept"),
            ],
        );
        assert_eq!(variants.names[0], "accept", "sorted");
        let Stored::Variants(decoded) = Stored::decode(
            Stored::Variants(Arc::new(variants.clone())).encode(),
            &entry.key,
        )
        .unwrap() else {
            panic!("variants")
        };
        assert_eq!(*decoded, variants);
    }

    #[test]
    fn foreign_old_broken_and_misplaced_values_are_refused() {
        let entry = sample();
        let encoded = Stored::Response(Arc::new(entry.clone())).encode();
        let decode = |data: Bytes| Stored::decode(data, &entry.key).map(|_| ()).unwrap_err();
        assert_eq!(decode(Bytes::from_static(b"garbage")), DecodeError::Magic);
        let mut other_version = encoded.to_vec();
        other_version[3] = 99;
        assert_eq!(decode(other_version.into()), DecodeError::Version(99));
        // What pods before tags stored: a miss, refilled in the new format.
        let mut before_tags = encoded.to_vec();
        before_tags[3] = 2;
        assert_eq!(decode(before_tags.into()), DecodeError::Version(2));
        for cut in [6, 10, 40, 60] {
            assert_eq!(
                decode(encoded.slice(..cut)),
                DecodeError::Malformed,
                "cut at {cut}"
            );
        }
        let (parts, ()) = http::Request::get("/other").body(()).unwrap().into_parts();
        let other = CacheKey::for_request("ns", &parts);
        assert_eq!(
            Stored::decode(encoded, &other).map(|_| ()).unwrap_err(),
            DecodeError::OtherKey
        );
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn header() -> impl Strategy<Value = (HeaderName, HeaderValue)> {
            (
                "[a-z][a-z0-9-]{0,12}",
                vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..24),
            )
                .prop_map(|(name, value)| {
                    (
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_bytes(&value).unwrap(),
                    )
                })
        }

        fn entry() -> impl Strategy<Value = Entry> {
            (
                200u16..600,
                vec(header(), 0..8),
                vec(any::<u8>(), 0..256),
                any::<[u64; 4]>(),
                "/[a-z%0-9]{0,8}",
                vec("[!-+--~]{1,20}", 0..4),
            )
                .prop_map(
                    |(status, fields, body, [response, age, fresh, request], path, tags)| {
                        let uri: http::Uri = path.parse().unwrap();
                        Entry {
                            key: CacheKey::for_url("ns", "h", &uri),
                            status: StatusCode::from_u16(status).unwrap(),
                            headers: fields.into_iter().collect(),
                            body: body.into(),
                            response_time: UNIX_EPOCH + Duration::from_millis(response),
                            initial_age: Duration::from_millis(age),
                            freshness_lifetime: Duration::from_millis(fresh),
                            request_time: UNIX_EPOCH + Duration::from_micros(request),
                            tags,
                            directives: Default::default(),
                        }
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn responses_round_trip(entry in entry()) {
                let encoded = Stored::Response(Arc::new(entry.clone())).encode();
                let Ok(Stored::Response(decoded)) = Stored::decode(encoded.clone(), &entry.key) else {
                    panic!("a response");
                };
                prop_assert_eq!(&decoded.key, &entry.key);
                prop_assert_eq!(decoded.status, entry.status);
                prop_assert_eq!(&decoded.headers, &entry.headers);
                prop_assert_eq!(&decoded.body, &entry.body);
                prop_assert_eq!(decoded.response_time, entry.response_time);
                prop_assert_eq!(decoded.initial_age, entry.initial_age);
                prop_assert_eq!(decoded.freshness_lifetime, entry.freshness_lifetime);
                prop_assert_eq!(decoded.request_time, entry.request_time);
                prop_assert_eq!(&decoded.tags, &entry.tags);
                // Cut anywhere before the body, it is malformed; never a panic.
                let body_at = encoded.len() - entry.body.len();
                for cut in 5..body_at {
                    prop_assert_eq!(
                        Stored::decode(encoded.slice(..cut), &entry.key).map(|_| ()),
                        Err(DecodeError::Malformed)
                    );
                }
            }

            #[test]
            fn variant_indexes_round_trip(
                names in vec("[a-z][a-z0-9-]{0,12}", 0..8),
                generation in any::<u64>(),
            ) {
                let names = names.iter().map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap());
                let mut variants = Variants::new(sample().key, names.collect());
                variants.generation = generation;
                let encoded = Stored::Variants(Arc::new(variants.clone())).encode();
                let Ok(Stored::Variants(decoded)) = Stored::decode(encoded, &variants.key) else {
                    panic!("variants");
                };
                prop_assert_eq!(&*decoded, &variants);
            }
        }
    }

    /// An L2 value for `key` with `rest` after the key, as the fuzz
    /// target `entry_decode` builds it.
    fn value_after_key(key: &CacheKey, kind: u8, rest: &[u8]) -> Bytes {
        let mut value = BytesMut::new();
        value.put_slice(b"SCE\x03");
        value.put_u8(kind);
        put_bytes32(&mut value, key.canonical());
        value.put_slice(rest);
        value.freeze()
    }

    #[test]
    fn a_value_with_an_informational_status_is_refused() {
        // Found by fuzz target entry_decode: status 137 decoded, and the
        // stored "answer" would have been a 1xx.
        let key = sample().key;
        // status 137, response time, initial age, freshness, no headers.
        let rest = b"\x00\x89\x36\xc2\x0e\x64\x01\x00\x00\x00\x00\x00\x00\x00\x00\x0e\x0e\x0e\
            \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(
            Stored::decode(value_after_key(&key, KIND_RESPONSE, rest), &key).map(|_| ()),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn a_value_with_more_header_names_than_a_map_holds_is_refused() {
        // Found by review after the entry_decode run: HeaderMap::append
        // panics past 32,768 names; hyper never makes a response with that
        // many, but a value in Redis may hold them.
        let key = sample().key;
        let mut rest = BytesMut::new();
        rest.put_u16(200);
        // Three times and a lifetime, no tags.
        rest.put_bytes(0, 34);
        rest.put_u32(40_000);
        for n in 0..40_000u32 {
            let name = format!("x{n}");
            put_bytes16(&mut rest, name.as_bytes());
            rest.put_u32(0);
        }
        assert_eq!(
            Stored::decode(value_after_key(&key, KIND_RESPONSE, &rest), &key).map(|_| ()),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn generations_differ() {
        let key = sample().key;
        assert_ne!(
            Variants::new(key.clone(), vec![]).generation,
            Variants::new(key, vec![]).generation
        );
    }
}
