//! The RFC 9211 `Cache-Status` value for each way a request can be answered.

use std::time::Duration;

use http::HeaderValue;

use super::Tier;
use super::policy::NoCacheReason;

/// The cache's name in `Cache-Status`.
const CACHE_NAME: &str = "sidecache";

/// How the cache took part in answering one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from a fresh stored response with `ttl` left.
    Hit { ttl: Duration, tier: Tier },
    /// Nothing usable was stored; forwarded, and stored unless a reason says why not.
    Miss { not_stored: Option<NoCacheReason> },
    /// The configuration keeps the cache out of this request.
    Bypass,
    /// The request itself rules out a shared answer.
    Request(NoCacheReason),
}

impl CacheStatus {
    /// Short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheStatus::Hit { .. } => "hit",
            CacheStatus::Miss { .. } => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Request(_) => "request",
        }
    }

    /// The `Cache-Status` header value.
    pub fn header_value(&self) -> HeaderValue {
        let text = match self {
            CacheStatus::Hit {
                ttl,
                tier: Tier::Memory,
            } => {
                format!("{CACHE_NAME}; hit; ttl={}", ttl.as_secs())
            }
            // Which tier answered helps when reading a fleet's behaviour.
            CacheStatus::Hit { ttl, tier } => {
                format!(
                    "{CACHE_NAME}; hit; ttl={}; detail={}",
                    ttl.as_secs(),
                    tier.as_str()
                )
            }
            CacheStatus::Miss { not_stored: None } => format!("{CACHE_NAME}; fwd=miss; stored"),
            CacheStatus::Miss {
                not_stored: Some(reason),
            } => {
                format!("{CACHE_NAME}; fwd=miss; detail={}", reason.as_str())
            }
            CacheStatus::Bypass => format!("{CACHE_NAME}; fwd=bypass"),
            CacheStatus::Request(reason) => {
                format!("{CACHE_NAME}; fwd=request; detail={}", reason.as_str())
            }
        };
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_follow_rfc_9211() {
        let value = |s: CacheStatus| s.header_value().to_str().unwrap().to_owned();
        let ttl = Duration::from_millis(59_900);
        assert_eq!(
            value(CacheStatus::Hit {
                ttl,
                tier: Tier::Memory
            }),
            "sidecache; hit; ttl=59"
        );
        assert_eq!(
            value(CacheStatus::Hit {
                ttl,
                tier: Tier::Redis
            }),
            "sidecache; hit; ttl=59; detail=l2"
        );
        assert_eq!(
            value(CacheStatus::Miss { not_stored: None }),
            "sidecache; fwd=miss; stored"
        );
        assert_eq!(
            value(CacheStatus::Miss {
                not_stored: Some(NoCacheReason::NoStore)
            }),
            "sidecache; fwd=miss; detail=no-store"
        );
        assert_eq!(value(CacheStatus::Bypass), "sidecache; fwd=bypass");
        assert_eq!(
            value(CacheStatus::Request(NoCacheReason::Authorization)),
            "sidecache; fwd=request; detail=authorization"
        );
    }
}
