//! The L2 entry decoder: bytes from Redis are not trusted. Whatever decodes must be usable by the request path (ages, retention, answers, the memory tier) and encode back to itself.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sidecache::cache::entry::Stored;
use sidecache::cache::key::CacheKey;
use sidecache::cache::memory::MemoryTier;
use sidecache::respond;
use sidecache_fuzz::{Field, Time, header_map};

static KEY: LazyLock<CacheKey> = LazyLock::new(|| {
    let uri = http::Uri::from_static("/entry?a=1");
    CacheKey::for_url("fuzz", "example.com", &uri)
});

static MEMORY: LazyLock<MemoryTier> = LazyLock::new(|| MemoryTier::new(1 << 20));

/// The value as Redis would hand it over.
#[derive(Arbitrary, Debug)]
enum Value {
    /// Any bytes at all.
    Raw(Vec<u8>),
    /// The right magic, version and key, then any bytes: what a corrupted
    /// or hostile value that gets past the first checks looks like.
    AfterKey { kind: u8, rest: Vec<u8> },
    /// A response whose header records repeat, each name made distinct
    /// by a number when `distinct`: sizes the fuzzer's input length would
    /// not reach otherwise.
    Repeated {
        status: u16,
        times: [u64; 4],
        count: u32,
        name: Vec<u8>,
        value: Vec<u8>,
        distinct: bool,
        repeat: u16,
        body: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    value: Value,
    request: Vec<Field>,
    head: bool,
    now: Time,
    keep_stale: u32,
}

fn prefix(kind: u8) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(b"SCE\x03");
    out.put_u8(kind);
    out.put_u32(u32::try_from(KEY.canonical().len()).unwrap_or(u32::MAX));
    out.put_slice(KEY.canonical());
    out
}

fuzz_target!(|input: Input| {
    let data = match input.value {
        Value::Raw(bytes) => Bytes::from(bytes),
        Value::AfterKey { kind, rest } => {
            let mut out = prefix(kind % 3);
            out.put_slice(&rest);
            out.freeze()
        }
        Value::Repeated {
            status,
            times,
            count,
            name,
            value,
            distinct,
            repeat,
            body,
        } => {
            let mut out = prefix(0);
            out.put_u16(status);
            for time in times {
                out.put_u64(time);
            }
            // No tags: the headers are what this shape exercises.
            out.put_u16(0);
            out.put_u32(count);
            for n in 0..repeat {
                let mut name = name.clone();
                if distinct {
                    name.extend_from_slice(n.to_string().as_bytes());
                }
                out.put_u16(u16::try_from(name.len()).unwrap_or(u16::MAX));
                out.put_slice(&name);
                out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
                out.put_slice(&value);
            }
            out.put_slice(&body);
            out.freeze()
        }
    };
    let Ok(stored) = Stored::decode(data, &KEY) else {
        return;
    };
    assert_eq!(stored.key(), &*KEY);
    let again = Stored::decode(stored.encode(), &KEY).unwrap_or_else(|e| panic!("re-decode: {e}"));
    assert_eq!(
        again.encode(),
        stored.encode(),
        "encode(decode(x)) is stable"
    );

    let now = input.now.at();
    let keep_stale = Duration::from_secs(input.keep_stale.into());
    let _ = stored.weight();
    if let Stored::Response(entry) = &stored {
        let _ = entry.age(now);
        let _ = entry.remaining_freshness(now);
        if let Some(keep_for) = entry.retention(now, keep_stale) {
            MEMORY.insert(stored.clone(), keep_for);
        }
        let request = header_map(&input.request);
        let response = respond::answer(entry, &request, input.head, now);
        assert!(
            response.status().as_u16() >= 200,
            "a stored answer is final"
        );
    }
});
