//! Input types the fuzz targets share: header fields as a client or an origin could send them, and times.
//!
//! Structured inputs (`arbitrary`) let the fuzzer spend its mutations on
//! the values the parsers read rather than on spelling header names; a
//! field with a name or value hyper would refuse is dropped, as it never
//! reaches the library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Most fields in one head: hyper's default limit for HTTP/1.
pub const MAX_FIELDS: usize = 100;

/// A header name: one the library reads, or any other.
#[derive(Arbitrary, Debug, Clone)]
pub enum Name {
    CacheControl,
    Pragma,
    Expires,
    Date,
    LastModified,
    Age,
    Vary,
    ETag,
    SetCookie,
    SidecacheCacheControl,
    CdnCacheControl,
    IfNoneMatch,
    IfModifiedSince,
    IfMatch,
    IfUnmodifiedSince,
    IfRange,
    Range,
    Accept,
    AcceptLanguage,
    AcceptCharset,
    AcceptEncoding,
    Cookie,
    Host,
    Authorization,
    ContentLength,
    ContentType,
    Connection,
    XForwardedProto,
    Other(String),
}

impl Name {
    pub fn header(&self) -> Option<HeaderName> {
        let name = match self {
            Name::CacheControl => "cache-control",
            Name::Pragma => "pragma",
            Name::Expires => "expires",
            Name::Date => "date",
            Name::LastModified => "last-modified",
            Name::Age => "age",
            Name::Vary => "vary",
            Name::ETag => "etag",
            Name::SetCookie => "set-cookie",
            Name::SidecacheCacheControl => "sidecache-cache-control",
            Name::CdnCacheControl => "cdn-cache-control",
            Name::IfNoneMatch => "if-none-match",
            Name::IfModifiedSince => "if-modified-since",
            Name::IfMatch => "if-match",
            Name::IfUnmodifiedSince => "if-unmodified-since",
            Name::IfRange => "if-range",
            Name::Range => "range",
            Name::Accept => "accept",
            Name::AcceptLanguage => "accept-language",
            Name::AcceptCharset => "accept-charset",
            Name::AcceptEncoding => "accept-encoding",
            Name::Cookie => "cookie",
            Name::Host => "host",
            Name::Authorization => "authorization",
            Name::ContentLength => "content-length",
            Name::ContentType => "content-type",
            Name::Connection => "connection",
            Name::XForwardedProto => "x-forwarded-proto",
            Name::Other(name) => return HeaderName::from_bytes(name.as_bytes()).ok(),
        };
        Some(HeaderName::from_static(name))
    }
}

/// A field value: raw bytes, or an HTTP-date assembled from parts, which
/// byte mutations alone would seldom spell.
#[derive(Arbitrary, Debug, Clone)]
pub enum Value {
    Bytes(Vec<u8>),
    Date(DateText),
}

impl Value {
    pub fn header(&self) -> Option<HeaderValue> {
        match self {
            Value::Bytes(bytes) => HeaderValue::from_bytes(bytes).ok(),
            Value::Date(date) => HeaderValue::from_str(&date.text()).ok(),
        }
    }
}

/// One header line.
#[derive(Arbitrary, Debug, Clone)]
pub struct Field {
    pub name: Name,
    pub value: Value,
}

/// The fields as a header map, repeated names as repeated lines; fields
/// hyper would refuse are left out, and at most [`MAX_FIELDS`] are kept.
pub fn header_map(fields: &[Field]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for field in fields.iter().take(MAX_FIELDS) {
        if let (Some(name), Some(value)) = (field.name.header(), field.value.header()) {
            map.append(name, value);
        }
    }
    map
}

/// An HTTP-date in one of RFC 9110's three forms, from parts that may be
/// out of range, in any case.
#[derive(Arbitrary, Debug, Clone)]
pub struct DateText {
    form: u8,
    weekday: u8,
    day: u8,
    month: u8,
    year: u16,
    hour: u8,
    minute: u8,
    second: u8,
    uppercase: bool,
}

impl DateText {
    pub fn text(&self) -> String {
        const DAYS: [&str; 8] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Xyz"];
        const LONG: [&str; 8] = [
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
            "Someday",
        ];
        const MONTHS: [&str; 13] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            "Foo",
        ];
        let day_index = usize::from(self.weekday) % DAYS.len();
        let month = MONTHS[usize::from(self.month) % MONTHS.len()];
        let time = format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second);
        let text = match self.form % 3 {
            0 => format!(
                "{}, {:02} {month} {:04} {time} GMT",
                DAYS[day_index], self.day, self.year
            ),
            1 => format!(
                "{}, {:02}-{month}-{:02} {time} GMT",
                LONG[day_index],
                self.day,
                self.year % 100
            ),
            _ => format!(
                "{} {month} {:>2} {time} {:04}",
                DAYS[day_index], self.day, self.year
            ),
        };
        if self.uppercase {
            text.to_ascii_uppercase()
        } else {
            text
        }
    }
}

/// A point in time: near a fixed "now" (2023-11-14), or anywhere a u64
/// of milliseconds since the epoch reaches (what an L2 entry can carry).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Time {
    Near(i32),
    Far(u64),
}

impl Time {
    pub fn at(self) -> SystemTime {
        let base = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        match self {
            Time::Near(offset) if offset >= 0 => {
                base + Duration::from_secs(offset.unsigned_abs().into())
            }
            Time::Near(offset) => base - Duration::from_secs(offset.unsigned_abs().into()),
            Time::Far(millis) => UNIX_EPOCH + Duration::from_millis(millis),
        }
    }
}
