//! Targeted cache control (RFC 9213): `CDN-Cache-Control` and fields like it, read as Structured Field Dictionaries into the directives they stand for.

use http::{HeaderMap, HeaderName};
use sfv::{BareItem, Dictionary, Item, ListEntry, Parser};

use super::{CacheControl, MAX_DELTA_SECONDS, field_names};

/// The field addressed to sidecache alone: the most specific target, and
/// removed from every response before it leaves the proxy.
pub const SIDECACHE_CACHE_CONTROL: &str = "sidecache-cache-control";
/// The field for CDN caches (RFC 9213 §3), sidecache among them; passed on
/// untouched for the caches downstream.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// The directives in the field `name`, or `None` when it is absent, empty,
/// or not a valid Dictionary: such a field is ignored as if it were not
/// there (§2.2).
pub(super) fn directives(headers: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
    // Field lines combine into one comma-separated value (RFC 9651 §4.2).
    let lines: Vec<&[u8]> = headers
        .get_all(name)
        .iter()
        .map(|line| line.as_bytes().trim_ascii())
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let dictionary: Dictionary = Parser::new(&lines.join(&b", "[..])).parse().ok()?;
    (!dictionary.is_empty()).then(|| from_dictionary(&dictionary))
}

/// Maps members to `Cache-Control` directives of the same name (§2.1):
/// integers for seconds, booleans for flags, strings or inner lists for the
/// field names of `private` and `no-cache`. Parameters and unknown members
/// are ignored.
fn from_dictionary(dictionary: &Dictionary) -> CacheControl {
    let mut cc = CacheControl {
        targeted: true,
        ..CacheControl::default()
    };
    for (name, member) in dictionary {
        match name.as_str() {
            "no-store" => cc.no_store = is_set(member),
            "no-cache" => match qualified(member) {
                Qualified::Off => {}
                Qualified::All => cc.no_cache = true,
                Qualified::Fields(fields) => cc.no_cache_fields = fields,
            },
            "private" => match qualified(member) {
                Qualified::Off => {}
                Qualified::All => cc.private = true,
                Qualified::Fields(fields) => cc.private_fields = fields,
            },
            "public" => cc.public = is_set(member),
            "must-revalidate" => cc.must_revalidate = is_set(member),
            "proxy-revalidate" => cc.proxy_revalidate = is_set(member),
            "immutable" => cc.immutable = is_set(member),
            "max-age" => cc.max_age = Some(delta_seconds(member)),
            "s-maxage" => cc.s_maxage = Some(delta_seconds(member)),
            "stale-while-revalidate" => cc.stale_while_revalidate = Some(delta_seconds(member)),
            "stale-if-error" => cc.stale_if_error = Some(delta_seconds(member)),
            _ => {}
        }
    }
    cc
}

/// A flag is on unless it says `?0`: any other value still names the
/// directive, as `no-store=1` would in `Cache-Control`.
fn is_set(member: &ListEntry) -> bool {
    !matches!(
        member,
        ListEntry::Item(Item {
            bare_item: BareItem::Boolean(false),
            ..
        })
    )
}

/// `private` or `no-cache`: for the whole response, for some fields, or off.
enum Qualified {
    Off,
    All,
    Fields(Vec<HeaderName>),
}

/// A string (`"a, b"`), a token, or an inner list of them names fields; a
/// value of another type cannot, so it counts as the unqualified directive,
/// the side that stores less.
fn qualified(member: &ListEntry) -> Qualified {
    let names = |item: &Item| match &item.bare_item {
        BareItem::String(list) => Some(field_names(list.as_str()).collect::<Vec<_>>()),
        BareItem::Token(name) => Some(field_names(name.as_str()).collect()),
        _ => None,
    };
    match member {
        ListEntry::Item(Item {
            bare_item: BareItem::Boolean(on),
            ..
        }) => {
            if *on {
                Qualified::All
            } else {
                Qualified::Off
            }
        }
        ListEntry::Item(item) => names(item).map_or(Qualified::All, Qualified::Fields),
        ListEntry::InnerList(list) => list
            .items
            .iter()
            .map(names)
            .collect::<Option<Vec<_>>>()
            .map_or(Qualified::All, |lists| {
                Qualified::Fields(lists.into_iter().flatten().collect())
            }),
    }
}

/// Seconds from an Integer; anything else, or a negative number, reads as
/// 0, so the response is stale (as an invalid `max-age` is, RFC 9111 §4.2.1).
fn delta_seconds(member: &ListEntry) -> u64 {
    match member {
        ListEntry::Item(Item {
            bare_item: BareItem::Integer(seconds),
            ..
        }) => u64::try_from(i64::from(*seconds)).map_or(0, |s| s.min(MAX_DELTA_SECONDS)),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use http::StatusCode;

    use super::*;
    use crate::cache::policy::{DEFAULT_CACHE_STATUSES, StoreRules, freshness_lifetime};
    use crate::testing::headers;

    const SIDECACHE: &str = SIDECACHE_CACHE_CONTROL;
    const CDN: &str = CDN_CACHE_CONTROL;

    fn targeted(value: &str) -> Option<CacheControl> {
        directives(
            &headers(&[(SIDECACHE, value)]),
            &HeaderName::from_static(SIDECACHE),
        )
    }

    /// Why; the target list; response fields; what counts: (targeted,
    /// max-age, no-store, private).
    type PrecedenceRow<'a> = (
        &'a str,
        &'a [HeaderName],
        &'a [(&'a str, &'a str)],
        (bool, Option<u64>, bool, bool),
    );

    fn names(list: &[&'static str]) -> Vec<HeaderName> {
        list.iter().map(|n| HeaderName::from_static(n)).collect()
    }

    #[test]
    fn members_map_to_cache_control_directives_rfc9213_2_1() {
        let cc = |build: fn(&mut CacheControl)| {
            let mut cc = CacheControl {
                targeted: true,
                ..CacheControl::default()
            };
            build(&mut cc);
            Some(cc)
        };
        #[rustfmt::skip]
        let rows: &[(&str, Option<CacheControl>)] = &[
            ("max-age=60", cc(|c| c.max_age = Some(60))),
            ("s-maxage=30, stale-while-revalidate=5, stale-if-error=7", cc(|c| {
                c.s_maxage = Some(30);
                c.stale_while_revalidate = Some(5);
                c.stale_if_error = Some(7);
            })),
            ("no-store", cc(|c| c.no_store = true)),
            ("no-store=?0", cc(|_| {})),
            ("no-store=1", cc(|c| c.no_store = true)),
            ("public, must-revalidate, proxy-revalidate, immutable", cc(|c| {
                c.public = true;
                c.must_revalidate = true;
                c.proxy_revalidate = true;
                c.immutable = true;
            })),
            ("private", cc(|c| c.private = true)),
            ("private=?0", cc(|_| {})),
            ("private=\"x-a, Set-Cookie\"", cc(|c| c.private_fields = names(&["x-a", "set-cookie"]))),
            ("private=(x-a \"x-b\")", cc(|c| c.private_fields = names(&["x-a", "x-b"]))),
            ("private=5", cc(|c| c.private = true)),
            ("private=(x-a 5)", cc(|c| c.private = true)),
            ("no-cache", cc(|c| c.no_cache = true)),
            ("no-cache=set-cookie", cc(|c| c.no_cache_fields = names(&["set-cookie"]))),
            // Invalid seconds read as 0: stale.
            ("max-age=-1", cc(|c| c.max_age = Some(0))),
            ("max-age=1.5", cc(|c| c.max_age = Some(0))),
            ("max-age=\"60\"", cc(|c| c.max_age = Some(0))),
            ("max-age", cc(|c| c.max_age = Some(0))),
            ("max-age=999999999999999", cc(|c| c.max_age = Some(MAX_DELTA_SECONDS))),
            // Parameters, unknown members and request-only directives are ignored.
            ("max-age=60;foo=bar, x-other=1", cc(|c| c.max_age = Some(60))),
            ("max-stale=5, min-fresh=3, only-if-cached", cc(|_| {})),
            // A repeated key: the last one counts in a Dictionary (RFC 9651 §4.2.2).
            ("max-age=10, max-age=20", cc(|c| c.max_age = Some(20))),
            // Not a Dictionary, or empty: the field is ignored (§2.2).
            ("", None),
            ("max-age=", None),
            ("a=1,,", None),
            ("max-age=60,", None),
            ("Max-Age=60", None),
            ("max-age=60, private=\"x-a", None),
        ];
        for (value, expected) in rows {
            assert_eq!(targeted(value), *expected, "{value:?}");
        }
    }

    #[test]
    fn field_lines_combine_into_one_dictionary() {
        let h = headers(&[(CDN, "max-age=60"), (CDN, ""), (CDN, "no-store")]);
        let cc = directives(&h, &HeaderName::from_static(CDN)).unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert!(cc.no_store);
    }

    #[test]
    fn first_valid_targeted_field_overrides_cache_control_rfc9213_2_2() {
        let both = names(&[SIDECACHE, CDN]);
        let reversed = names(&[CDN, SIDECACHE]);
        #[rustfmt::skip]
        let rows: &[PrecedenceRow] = &[
            ("no targeted field: Cache-Control", &both, &[("cache-control", "no-store")], (false, None, true, false)),
            ("sidecache's over no-store", &both, &[(SIDECACHE, "max-age=60"), ("cache-control", "no-store")], (true, Some(60), false, false)),
            ("CDN's over private", &both, &[(CDN, "max-age=60"), ("cache-control", "private")], (true, Some(60), false, false)),
            ("a targeted no-store over max-age", &both, &[(SIDECACHE, "no-store"), ("cache-control", "max-age=60")], (true, None, true, false)),
            ("sidecache's over CDN's", &both, &[(SIDECACHE, "max-age=10"), (CDN, "max-age=20, private")], (true, Some(10), false, false)),
            ("the list's order decides", &reversed, &[(SIDECACHE, "max-age=10"), (CDN, "max-age=20")], (true, Some(20), false, false)),
            ("an invalid field falls to the next", &both, &[(SIDECACHE, "max-age="), (CDN, "max-age=20")], (true, Some(20), false, false)),
            ("an invalid field falls to Cache-Control", &both, &[(SIDECACHE, "a=1,,"), ("cache-control", "private")], (false, None, false, true)),
            ("an empty field falls to Cache-Control", &both, &[(SIDECACHE, ""), ("cache-control", "max-age=5")], (false, Some(5), false, false)),
            ("no list: Cache-Control only", &[], &[(CDN, "max-age=60"), ("cache-control", "private")], (false, None, false, true)),
        ];
        for (why, fields, pairs, expected) in rows {
            let cc = CacheControl::parse_response(&headers(pairs), fields);
            assert_eq!(
                (cc.targeted, cc.max_age, cc.no_store, cc.private),
                *expected,
                "{why}"
            );
        }
    }

    #[test]
    fn a_targeted_field_overrides_expires_too_rfc9213_2_2() {
        let response_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let expires = httpdate::fmt_http_date(response_time + Duration::from_secs(100));
        let date = httpdate::fmt_http_date(response_time);
        let fields = names(&[SIDECACHE, CDN]);
        let rules = StoreRules {
            ttl: Duration::ZERO,
            statuses: &DEFAULT_CACHE_STATUSES,
            heuristic: false,
            targeted: &fields,
        };
        let lifetime = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            let cc = CacheControl::parse_response(&h, &fields);
            freshness_lifetime(StatusCode::OK, &h, &cc, rules, response_time)
        };
        let secs = |s| Some(Duration::from_secs(s));
        let timed: &[(&str, &str)] = &[("date", &date), ("expires", &expires)];
        assert_eq!(lifetime(timed), secs(100), "Expires counts without one");
        let with = |field: (&'static str, &'static str)| {
            let mut pairs = timed.to_vec();
            pairs.push(field);
            lifetime(&pairs)
        };
        assert_eq!(with((CDN, "public")), secs(0), "not fresh by Expires");
        assert_eq!(with((CDN, "max-age=30")), secs(30));
        assert_eq!(
            with((CDN, "max-age=")),
            secs(100),
            "an invalid field changes nothing"
        );
    }
}
