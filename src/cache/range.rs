//! Byte ranges (RFC 9110 §14): parse `Range`, judge `If-Range`, and cut a stored body into a 206 (one part or multipart) or a 416.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// More ranges than this in one request are answered with the whole body:
/// many tiny overlapping ranges are a known way to make a server work hard.
const MAX_RANGES: usize = 16;

/// What a `Range` header asks of a body of known length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ranges {
    /// Ignore it and send the whole body (unknown unit, bad syntax, too many).
    Whole,
    /// These inclusive byte ranges, all within the body.
    Parts(Vec<(u64, u64)>),
    /// None of the ranges overlaps the body: 416.
    Unsatisfiable,
}

/// Parses a `Range` value against a body of `len` bytes (RFC 9110 §14.1.2).
pub fn parse(value: &str, len: u64) -> Ranges {
    let Some((unit, specs)) = value.split_once('=') else {
        return Ranges::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Whole;
    }
    let specs: Vec<&str> = specs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.is_empty() || specs.len() > MAX_RANGES {
        return Ranges::Whole;
    }
    let mut parts = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Whole;
        };
        let number = |text: &str| text.trim().parse::<u64>().ok();
        let part = match (first.trim().is_empty(), number(first), number(last)) {
            // -N: the last N bytes.
            (true, _, Some(suffix)) => {
                (suffix > 0 && len > 0).then(|| (len - suffix.min(len), len - 1))
            }
            (false, Some(first), None) if last.trim().is_empty() => {
                (first < len).then(|| (first, len - 1))
            }
            (false, Some(first), Some(last)) if first <= last => {
                (first < len).then(|| (first, last.min(len - 1)))
            }
            _ => return Ranges::Whole,
        };
        parts.extend(part);
    }
    if parts.is_empty() {
        Ranges::Unsatisfiable
    } else {
        Ranges::Parts(parts)
    }
}

/// Whether `If-Range` lets the ranges apply to the stored response (RFC 9110
/// §13.1.5): a strong `ETag` match, or exactly its `Last-Modified` date.
pub fn if_range_holds(if_range: &HeaderValue, stored: &HeaderMap) -> bool {
    let Ok(if_range) = if_range.to_str() else {
        return false;
    };
    let if_range = if_range.trim();
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        let etag = stored.get(header::ETAG).and_then(|v| v.to_str().ok());
        return !if_range.starts_with("W/") && etag.is_some_and(|etag| etag == if_range);
    }
    stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|modified| modified == if_range)
}

/// A 206 or 416 cut from a complete body: status, the headers to add or
/// replace, and the body to send.
pub struct Partial {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Builds the 206 for `parts` of `body` (one part: `Content-Range`; several:
/// `multipart/byteranges`, RFC 9110 §14.6), or the 416 for none.
pub fn partial(
    body: &Bytes,
    parts: &Ranges,
    content_type: Option<&HeaderValue>,
) -> Option<Partial> {
    let len = body.len() as u64;
    let mut headers = HeaderMap::new();
    let range_value =
        |first: u64, last: u64| HeaderValue::try_from(format!("bytes {first}-{last}/{len}"));
    match parts {
        Ranges::Whole => None,
        Ranges::Unsatisfiable => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes */{len}")).ok()?,
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            Some(Partial {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                body: Bytes::new(),
            })
        }
        Ranges::Parts(parts) => {
            let slice = |first: u64, last: u64| {
                let (first, last) = (usize::try_from(first).ok()?, usize::try_from(last).ok()?);
                body.get(first..=last).map(|_| body.slice(first..=last))
            };
            let body = match parts.as_slice() {
                [(first, last)] => {
                    headers.insert(header::CONTENT_RANGE, range_value(*first, *last).ok()?);
                    slice(*first, *last)?
                }
                _ => {
                    // Derived from the body, so it cannot occur in it by chance.
                    let boundary = format!("sidecache-{}", &blake3::hash(body).to_hex()[..16]);
                    let mut out = BytesMut::new();
                    for (first, last) in parts {
                        out.put_slice(format!("\r\n--{boundary}\r\n").as_bytes());
                        if let Some(content_type) = content_type {
                            out.put_slice(b"content-type: ");
                            out.put_slice(content_type.as_bytes());
                            out.put_slice(b"\r\n");
                        }
                        out.put_slice(
                            format!("content-range: bytes {first}-{last}/{len}\r\n\r\n").as_bytes(),
                        );
                        out.put_slice(&slice(*first, *last)?);
                    }
                    out.put_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::try_from(format!("multipart/byteranges; boundary={boundary}"))
                            .ok()?,
                    );
                    out.freeze()
                }
            };
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            Some(Partial {
                status: StatusCode::PARTIAL_CONTENT,
                headers,
                body,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_specs_rfc9110_14_1_2() {
        let cases: &[(&str, Ranges)] = &[
            ("bytes=0-4", Ranges::Parts(vec![(0, 4)])),
            ("bytes=5-", Ranges::Parts(vec![(5, 9)])),
            ("bytes=-3", Ranges::Parts(vec![(7, 9)])),
            ("bytes=-30", Ranges::Parts(vec![(0, 9)])),
            ("bytes=8-100", Ranges::Parts(vec![(8, 9)])),
            ("bytes=0-0, 2-3", Ranges::Parts(vec![(0, 0), (2, 3)])),
            ("bytes=10-20", Ranges::Unsatisfiable),
            ("bytes=-0", Ranges::Unsatisfiable),
            ("bytes=5-2", Ranges::Whole),
            ("bytes=x-2", Ranges::Whole),
            ("items=0-1", Ranges::Whole),
            ("bytes=", Ranges::Whole),
        ];
        for (value, expected) in cases {
            assert_eq!(parse(value, 10), *expected, "{value}");
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(parse(&many, 10), Ranges::Whole);
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// A `Range` value from the grammar's pieces, valid or not: numbers
        /// near the body's length and at u64's ends, separators, junk.
        fn range_value() -> impl Strategy<Value = String> {
            let number = prop_oneof![0u64..40, Just(u64::MAX), Just(u64::MAX - 1), Just(1 << 53),]
                .prop_map(|n| n.to_string());
            let spec = (
                proptest::option::of(number.clone()),
                proptest::option::of(number),
                prop::sample::select(&["-", "", "--", " - "][..]),
            )
                .prop_map(|(first, last, dash)| {
                    format!(
                        "{}{dash}{}",
                        first.unwrap_or_default(),
                        last.unwrap_or_default()
                    )
                });
            (
                prop::sample::select(&["bytes=", "BYTES =", "bytes", "items=", "=", ""][..]),
                vec(spec, 0..20),
                prop::sample::select(&[",", ", ", ",,", " "][..]),
            )
                .prop_map(|(unit, specs, separator)| format!("{unit}{}", specs.join(separator)))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn ranges_stay_within_the_body(value in range_value(), len in 0usize..40) {
                let body = Bytes::from(vec![b'x'; len]);
                let ranges = parse(&value, len as u64);
                let answer = partial(&body, &ranges, Some(&HeaderValue::from_static("text/plain")));
                match (&ranges, answer) {
                    (Ranges::Whole, None) => {}
                    (Ranges::Unsatisfiable, Some(answer)) => {
                        prop_assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE);
                    }
                    (Ranges::Parts(parts), Some(answer)) => {
                        prop_assert!(!parts.is_empty() && parts.len() <= MAX_RANGES);
                        for (first, last) in parts {
                            prop_assert!(first <= last && *last < len as u64, "{first}-{last}/{len}");
                        }
                        let payload: u64 = parts.iter().map(|(first, last)| last - first + 1).sum();
                        prop_assert!(answer.body.len() as u64 >= payload);
                        prop_assert_eq!(
                            &answer.headers[header::CONTENT_LENGTH],
                            &answer.body.len().to_string()
                        );
                    }
                    (ranges, answer) => {
                        prop_assert!(false, "{ranges:?} answered {:?}", answer.map(|a| a.status));
                    }
                }
            }
        }
    }

    #[test]
    fn if_range_needs_a_strong_match_rfc9110_13_1_5() {
        let stored: HeaderMap = [
            (header::ETAG, HeaderValue::from_static("\"v1\"")),
            (
                header::LAST_MODIFIED,
                HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
            ),
        ]
        .into_iter()
        .collect();
        let holds = |v: &'static str| if_range_holds(&HeaderValue::from_static(v), &stored);
        assert!(holds("\"v1\""));
        assert!(!holds("W/\"v1\""));
        assert!(!holds("\"v2\""));
        assert!(holds("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert!(!holds("Wed, 15 Nov 2023 22:13:20 GMT"));
    }

    #[test]
    fn partial_answers_rfc9110_14_6() {
        let body = Bytes::from_static(b"0123456789");
        let one = partial(&body, &Ranges::Parts(vec![(2, 4)]), None).unwrap();
        assert_eq!(one.status, 206);
        assert_eq!(one.headers["content-range"], "bytes 2-4/10");
        assert_eq!(one.body, "234");
        let none = partial(&body, &Ranges::Unsatisfiable, None).unwrap();
        assert_eq!(none.status, 416);
        assert_eq!(none.headers["content-range"], "bytes */10");
        let text = HeaderValue::from_static("text/plain");
        let two = partial(&body, &Ranges::Parts(vec![(0, 1), (8, 9)]), Some(&text)).unwrap();
        let content_type = two.headers["content-type"].to_str().unwrap();
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap();
        let text = String::from_utf8(two.body.to_vec()).unwrap();
        assert!(
            text.contains("content-range: bytes 0-1/10\r\n\r\n01"),
            "{text}"
        );
        assert!(
            text.contains("content-range: bytes 8-9/10\r\n\r\n89"),
            "{text}"
        );
        assert!(text.contains("content-type: text/plain"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert_eq!(two.headers["content-length"], two.body.len().to_string());
        assert!(partial(&body, &Ranges::Whole, None).is_none());
    }
}
