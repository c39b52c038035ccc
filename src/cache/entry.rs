//! A stored response: status, headers, body, the times its freshness is computed from, and its versioned binary encoding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

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

    /// How long a tier should keep this entry from `now`: while fresh, plus
    /// `keep_stale` so that it can still be revalidated, or served stale
    /// where a request allows it. `None`: not worth keeping.
    pub fn retention(&self, now: SystemTime, keep_stale: Duration) -> Option<Duration> {
        let keep = self.freshness_lifetime.saturating_sub(self.age(now)) + keep_stale;
        (!keep.is_zero()).then_some(keep)
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

/// First bytes of every encoded entry: a magic tag and the format version.
/// An entry with another version is a miss, so a rolling upgrade that
/// changes the format never misreads what older pods stored.
const MAGIC: &[u8; 3] = b"SCE";
const FORMAT_VERSION: u8 = 1;

/// Why stored bytes are not an entry.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a sidecache entry")]
    Magic,
    #[error("unknown entry format version {0}")]
    Version(u8),
    #[error("entry truncated or malformed")]
    Malformed,
}

// The format is written by hand rather than through a serde codec: it is
// small, its layout is pinned by a version byte that this file controls, and
// the body is sliced out of the value without a copy.
//
// magic(3) version(1) status(u16) response_time_ms(u64) initial_age_ms(u64)
// freshness_ms(u64) key_len(u32) key header_count(u32)
// { name_len(u16) name value_len(u32) value }* body(rest)
impl Entry {
    /// The entry as one binary value.
    pub fn encode(&self) -> Bytes {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum();
        let mut out =
            BytesMut::with_capacity(40 + self.key.canonical().len() + headers + self.body.len());
        out.put_slice(MAGIC);
        out.put_u8(FORMAT_VERSION);
        out.put_u16(self.status.as_u16());
        out.put_u64(millis(
            self.response_time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        ));
        out.put_u64(millis(self.initial_age));
        out.put_u64(millis(self.freshness_lifetime));
        put_bytes32(&mut out, self.key.canonical());
        out.put_u32(u32::try_from(self.headers.len()).unwrap_or(u32::MAX));
        for (name, value) in &self.headers {
            let name = name.as_str().as_bytes();
            out.put_u16(u16::try_from(name.len()).unwrap_or(u16::MAX));
            out.put_slice(name);
            put_bytes32(&mut out, value.as_bytes());
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Decodes a value written by [`Entry::encode`] into its canonical key
    /// and the rest; the caller compares the key with the one it looked up.
    pub fn decode(mut data: Bytes) -> Result<(Bytes, EntryWithoutKey), DecodeError> {
        if data.len() < 4 || &data[..3] != MAGIC {
            return Err(DecodeError::Magic);
        }
        if data[3] != FORMAT_VERSION {
            return Err(DecodeError::Version(data[3]));
        }
        data.advance(4);
        let status =
            StatusCode::from_u16(get_u16(&mut data)?).map_err(|_| DecodeError::Malformed)?;
        let response_time = UNIX_EPOCH + Duration::from_millis(get_u64(&mut data)?);
        let initial_age = Duration::from_millis(get_u64(&mut data)?);
        let freshness_lifetime = Duration::from_millis(get_u64(&mut data)?);
        let canonical_key = get_bytes32(&mut data)?;
        let count = get_u32(&mut data)?;
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let len = usize::from(get_u16(&mut data)?);
            let name = take(&mut data, len)?;
            let value = get_bytes32(&mut data)?;
            headers.append(
                HeaderName::from_bytes(&name).map_err(|_| DecodeError::Malformed)?,
                HeaderValue::from_maybe_shared(value).map_err(|_| DecodeError::Malformed)?,
            );
        }
        Ok((
            canonical_key,
            EntryWithoutKey {
                status,
                headers,
                body: data,
                response_time,
                initial_age,
                freshness_lifetime,
            },
        ))
    }
}

/// A decoded entry before its key has been checked against the request's.
#[derive(Debug)]
pub struct EntryWithoutKey {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub response_time: SystemTime,
    pub initial_age: Duration,
    pub freshness_lifetime: Duration,
}

impl EntryWithoutKey {
    pub fn with_key(self, key: CacheKey) -> Entry {
        Entry {
            key,
            status: self.status,
            headers: self.headers,
            body: self.body,
            response_time: self.response_time,
            initial_age: self.initial_age,
            freshness_lifetime: self.freshness_lifetime,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
        let route = crate::route::test_route("r", "/**", &[]);
        let mut headers = HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        Entry {
            key: CacheKey::for_request("ns", &route, &parts),
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello body"),
            response_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            initial_age: Duration::from_secs(3),
            freshness_lifetime: Duration::from_secs(60),
        }
    }

    #[test]
    fn encoding_round_trips() {
        let entry = sample();
        let (key, decoded) = Entry::decode(entry.encode()).unwrap();
        assert_eq!(&key, entry.key.canonical());
        let decoded = decoded.with_key(entry.key.clone());
        assert_eq!(decoded.status, entry.status);
        assert_eq!(decoded.headers, entry.headers);
        assert_eq!(decoded.body, entry.body);
        assert_eq!(decoded.response_time, entry.response_time);
        assert_eq!(decoded.initial_age, entry.initial_age);
        assert_eq!(decoded.freshness_lifetime, entry.freshness_lifetime);
    }

    #[test]
    fn foreign_old_and_broken_values_are_refused() {
        let encoded = sample().encode();
        assert_eq!(
            Entry::decode(Bytes::from_static(b"garbage")).unwrap_err(),
            DecodeError::Magic
        );
        let mut other_version = encoded.to_vec();
        other_version[3] = 99;
        assert_eq!(
            Entry::decode(other_version.into()).unwrap_err(),
            DecodeError::Version(99)
        );
        for cut in [4, 10, 30, 50] {
            assert_eq!(
                Entry::decode(encoded.slice(..cut)).unwrap_err(),
                DecodeError::Malformed,
                "cut at {cut}"
            );
        }
    }
}
