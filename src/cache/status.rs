//! The RFC 9211 `Cache-Status` value for each way a request can be answered.

use std::fmt::Write as _;

use http::{HeaderName, HeaderValue, StatusCode};

use super::Tier;
use super::policy::NoCacheReason;

/// The response field (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache's name in `Cache-Status`.
const CACHE_NAME: &str = "sidecache";

/// How the cache took part in answering one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from a stored response with `ttl` seconds of freshness left
    /// (negative: served stale, as the request allowed).
    Hit { ttl: i64, tier: Tier },
    /// Nothing usable was stored; forwarded, and stored unless a reason says why not.
    Miss { not_stored: Option<NoCacheReason> },
    /// Served stale at once while a background fetch refreshes it (RFC 5861 §3).
    WhileRevalidate { ttl: i64 },
    /// The origin failed (`fwd_status`: its 5xx, or 502/504 for no answer)
    /// and a stale response stood in (RFC 5861 §4).
    IfError { fwd_status: StatusCode },
    /// Waited for another request's fetch of the same thing and answered
    /// from what it stored (RFC 9211 `collapsed`).
    Collapsed,
    /// The URL has stored variants, but not the one this request selects.
    VaryMiss { not_stored: Option<NoCacheReason> },
    /// A stale stored response was forwarded to be validated (or, without
    /// validators, fetched again); the origin answered `fwd_status` (304:
    /// the stored one was refreshed and served).
    Stale {
        fwd_status: StatusCode,
        not_stored: Option<NoCacheReason>,
    },
    /// The configuration keeps the cache out of this request (`detail`: a
    /// rule that applied to this request, such as its cookies).
    Bypass(Option<NoCacheReason>),
    /// The request itself rules out a shared answer.
    Request(NoCacheReason),
    /// A shadow route forwarded the request as if it did not cache; `would`
    /// is how the cache would have answered it.
    Shadow { would: Would },
}

/// How the cache would have answered a request a shadow route forwarded:
/// the `cache_status` it would have had, and so the same words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Would {
    /// From a fresh stored response (or a stale one the request accepts).
    Hit,
    /// From a stale stored response, refreshed in the background (RFC 5861 §3).
    WhileRevalidate,
    /// Forwarded to validate (or fetch again) a stale stored response.
    Stale,
    /// Forwarded: nothing usable was stored.
    Miss,
}

impl Would {
    pub fn as_str(self) -> &'static str {
        match self {
            Would::Hit => "hit",
            Would::WhileRevalidate => "stale-while-revalidate",
            Would::Stale => "stale",
            Would::Miss => "miss",
        }
    }
}

impl CacheStatus {
    /// Short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheStatus::Hit { .. } => "hit",
            CacheStatus::Miss { .. } | CacheStatus::VaryMiss { .. } => "miss",
            CacheStatus::Stale { .. } => "stale",
            CacheStatus::Collapsed => "collapsed",
            CacheStatus::WhileRevalidate { .. } => "stale-while-revalidate",
            CacheStatus::IfError { .. } => "stale-if-error",
            CacheStatus::Bypass(_) => "bypass",
            CacheStatus::Request(_) => "request",
            CacheStatus::Shadow { .. } => "shadow",
        }
    }

    /// The `Cache-Status` header value: the cache's name, then its parameters.
    pub fn header_value(&self) -> HeaderValue {
        let mut params = Params::new();
        match self {
            CacheStatus::Hit { ttl, tier } => {
                params.add(format_args!("hit"));
                params.add(format_args!("ttl={ttl}"));
                // Which tier answered helps when reading a fleet's behaviour.
                if *tier == Tier::Redis {
                    params.add(format_args!("detail={}", tier.as_str()));
                }
            }
            CacheStatus::Miss { not_stored } => {
                params.add(format_args!("fwd=miss"));
                params.stored_or_why(not_stored);
            }
            CacheStatus::VaryMiss { not_stored } => {
                params.add(format_args!("fwd=vary-miss"));
                params.stored_or_why(not_stored);
            }
            CacheStatus::Stale {
                fwd_status,
                not_stored,
            } => {
                params.add(format_args!("fwd=stale"));
                params.add(format_args!("fwd-status={}", fwd_status.as_u16()));
                params.stored_or_why(not_stored);
            }
            CacheStatus::WhileRevalidate { ttl } => {
                params.add(format_args!("hit"));
                params.add(format_args!("ttl={ttl}"));
                params.add(format_args!("detail=stale-while-revalidate"));
            }
            CacheStatus::IfError { fwd_status } => {
                params.add(format_args!("fwd=stale"));
                params.add(format_args!("fwd-status={}", fwd_status.as_u16()));
                params.add(format_args!("detail=stale-if-error"));
            }
            CacheStatus::Collapsed => {
                params.add(format_args!("fwd=miss"));
                params.add(format_args!("collapsed"));
            }
            CacheStatus::Bypass(detail) => {
                params.add(format_args!("fwd=bypass"));
                if let Some(reason) = detail {
                    params.add(format_args!("detail={}", reason.as_str()));
                }
            }
            CacheStatus::Request(reason) => {
                params.add(format_args!("fwd=request"));
                params.add(format_args!("detail={}", reason.as_str()));
            }
            // Forwarded, as the client's answer says; the detail says what
            // the cache would have done, in one token (RFC 9211 has one
            // `detail`), so that it reads as `fwd=bypass` to any tool.
            CacheStatus::Shadow { would } => {
                params.add(format_args!("fwd=bypass"));
                params.add(format_args!("detail=shadow-{}", would.as_str()));
            }
        }
        HeaderValue::try_from(params.0).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
    }
}

/// The header value being written, in one buffer: this runs for every response.
struct Params(String);

impl Params {
    fn new() -> Params {
        let mut text = String::with_capacity(64);
        text.push_str(CACHE_NAME);
        Params(text)
    }

    fn add(&mut self, param: std::fmt::Arguments<'_>) {
        self.0.push_str("; ");
        // Writing to a String cannot fail.
        let _ = self.0.write_fmt(param);
    }

    fn stored_or_why(&mut self, not_stored: &Option<NoCacheReason>) {
        match not_stored {
            None => self.add(format_args!("stored")),
            Some(reason) => self.add(format_args!("detail={}", reason.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_follow_rfc_9211() {
        let value = |s: CacheStatus| s.header_value().to_str().unwrap().to_owned();
        let cases = [
            (
                CacheStatus::Hit {
                    ttl: 59,
                    tier: Tier::Memory,
                },
                "sidecache; hit; ttl=59",
            ),
            (
                CacheStatus::Hit {
                    ttl: 59,
                    tier: Tier::Redis,
                },
                "sidecache; hit; ttl=59; detail=l2",
            ),
            (
                CacheStatus::Hit {
                    ttl: -3,
                    tier: Tier::Memory,
                },
                "sidecache; hit; ttl=-3",
            ),
            (
                CacheStatus::Miss { not_stored: None },
                "sidecache; fwd=miss; stored",
            ),
            (
                CacheStatus::Miss {
                    not_stored: Some(NoCacheReason::NoStore),
                },
                "sidecache; fwd=miss; detail=no-store",
            ),
            (
                CacheStatus::Miss {
                    not_stored: Some(NoCacheReason::OriginTimeout),
                },
                "sidecache; fwd=miss; detail=origin-timeout",
            ),
            (
                CacheStatus::VaryMiss { not_stored: None },
                "sidecache; fwd=vary-miss; stored",
            ),
            (
                CacheStatus::Stale {
                    fwd_status: StatusCode::NOT_MODIFIED,
                    not_stored: None,
                },
                "sidecache; fwd=stale; fwd-status=304; stored",
            ),
            (CacheStatus::Bypass(None), "sidecache; fwd=bypass"),
            (
                CacheStatus::Bypass(Some(NoCacheReason::Cookie)),
                "sidecache; fwd=bypass; detail=cookie",
            ),
            (CacheStatus::Collapsed, "sidecache; fwd=miss; collapsed"),
            (
                CacheStatus::WhileRevalidate { ttl: -4 },
                "sidecache; hit; ttl=-4; detail=stale-while-revalidate",
            ),
            (
                CacheStatus::IfError {
                    fwd_status: StatusCode::BAD_GATEWAY,
                },
                "sidecache; fwd=stale; fwd-status=502; detail=stale-if-error",
            ),
            (
                CacheStatus::Request(NoCacheReason::Precondition),
                "sidecache; fwd=request; detail=precondition",
            ),
            (
                CacheStatus::Shadow { would: Would::Hit },
                "sidecache; fwd=bypass; detail=shadow-hit",
            ),
            (
                CacheStatus::Shadow { would: Would::Miss },
                "sidecache; fwd=bypass; detail=shadow-miss",
            ),
            (
                CacheStatus::Shadow {
                    would: Would::WhileRevalidate,
                },
                "sidecache; fwd=bypass; detail=shadow-stale-while-revalidate",
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(value(status), expected);
        }
    }
}
