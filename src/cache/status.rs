//! The RFC 9211 `Cache-Status` value for each way a request can be answered.

use http::{HeaderValue, StatusCode};

use super::Tier;
use super::policy::NoCacheReason;

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
        }
    }

    /// The `Cache-Status` header value: the cache's name, then its parameters.
    pub fn header_value(&self) -> HeaderValue {
        let mut params: Vec<String> = Vec::with_capacity(3);
        let stored_or_why =
            |params: &mut Vec<String>, not_stored: &Option<NoCacheReason>| match not_stored {
                None => params.push("stored".into()),
                Some(reason) => params.push(format!("detail={}", reason.as_str())),
            };
        match self {
            CacheStatus::Hit { ttl, tier } => {
                params.push("hit".into());
                params.push(format!("ttl={ttl}"));
                // Which tier answered helps when reading a fleet's behaviour.
                if *tier == Tier::Redis {
                    params.push(format!("detail={}", tier.as_str()));
                }
            }
            CacheStatus::Miss { not_stored } => {
                params.push("fwd=miss".into());
                stored_or_why(&mut params, not_stored);
            }
            CacheStatus::VaryMiss { not_stored } => {
                params.push("fwd=vary-miss".into());
                stored_or_why(&mut params, not_stored);
            }
            CacheStatus::Stale {
                fwd_status,
                not_stored,
            } => {
                params.push("fwd=stale".into());
                params.push(format!("fwd-status={}", fwd_status.as_u16()));
                stored_or_why(&mut params, not_stored);
            }
            CacheStatus::WhileRevalidate { ttl } => {
                params.push("hit".into());
                params.push(format!("ttl={ttl}"));
                params.push("detail=stale-while-revalidate".into());
            }
            CacheStatus::IfError { fwd_status } => {
                params.push("fwd=stale".into());
                params.push(format!("fwd-status={}", fwd_status.as_u16()));
                params.push("detail=stale-if-error".into());
            }
            CacheStatus::Collapsed => {
                params.push("fwd=miss".into());
                params.push("collapsed".into());
            }
            CacheStatus::Bypass(detail) => {
                params.push("fwd=bypass".into());
                if let Some(reason) = detail {
                    params.push(format!("detail={}", reason.as_str()));
                }
            }
            CacheStatus::Request(reason) => {
                params.push("fwd=request".into());
                params.push(format!("detail={}", reason.as_str()));
            }
        }
        let text = format!("{CACHE_NAME}; {}", params.join("; "));
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
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
        ];
        for (status, expected) in cases {
            assert_eq!(value(status), expected);
        }
    }
}
