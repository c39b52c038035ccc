//! Cache keys: the request parts that pick a stored response, length-prefixed and hashed.
//!
//! Each part is written as a 4-byte big-endian length and its bytes, so no
//! choice of values can make two different requests produce the same
//! canonical key. The canonical bytes are kept in the stored entry and
//! compared on read, so even a hash collision cannot serve the wrong object.

use std::borrow::Cow;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, Uri};

/// Bumped whenever the canonical form changes, so old entries stop matching.
const KEY_VERSION: &str = "sidecache-key-v2";

/// Written instead of a length for a key header the request does not carry,
/// so "absent" and "empty" are different keys.
const ABSENT: u32 = u32::MAX;

/// The identity of a cached object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    hash: [u8; 32],
    canonical: Bytes,
}

impl CacheKey {
    /// The key of a request's URL: what a response without variants is
    /// stored under, or the index of its variants.
    pub fn for_request(namespace: &str, request: &Parts) -> CacheKey {
        Self::for_request_to(namespace, &request_host(request), request)
    }

    /// [`CacheKey::for_request`] with the host known already, in key form
    /// (as [`request_host`] reads it: lowercased, without the default port).
    pub fn for_request_to(namespace: &str, host: &str, request: &Parts) -> CacheKey {
        KeyWriter::url(namespace, host, &request.method, &request.uri).finish()
    }

    /// The key a GET of `uri` on `host` is stored under: what an unsafe
    /// request to that URL invalidates.
    pub fn for_url(namespace: &str, host: &str, uri: &Uri) -> CacheKey {
        KeyWriter::url(namespace, host, &Method::GET, uri).finish()
    }

    /// The key of one variant of this URL key: the index's generation, then
    /// each selecting header's name and lines as the origin gets them (RFC
    /// 9111 §4.1), or a marker when the request does not carry it. The
    /// request model has already put the fields whose syntax it knows
    /// (`Accept-*`) into one canonical line; any other field is compared
    /// byte for byte, since only its syntax could say what is equivalent.
    pub fn variant(&self, generation: u64, names: &[HeaderName], request: &HeaderMap) -> CacheKey {
        let mut key = KeyWriter(self.canonical.to_vec());
        key.part(b"variant");
        key.part(&generation.to_be_bytes());
        for name in names {
            key.field(request, name);
        }
        key.finish()
    }

    /// The identity of a fetch: this URL key and the values of the headers
    /// known to select its answer (`names`, in a fixed order). Requests
    /// with equal flight keys are likely to get the same answer, so they
    /// wait for one fetch; whether its answer really selects each of them
    /// is checked when it is handed over.
    pub fn flight<'a>(
        &self,
        names: impl IntoIterator<Item = &'a HeaderName>,
        forwarded: &HeaderMap,
    ) -> [u8; 32] {
        let mut names: Vec<&HeaderName> = names.into_iter().collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        let mut key = KeyWriter(self.canonical.to_vec());
        key.part(b"flight");
        for name in names {
            key.field(forwarded, name);
        }
        *blake3::hash(&key.0).as_bytes()
    }

    /// BLAKE3 of the canonical key: what the tiers index by.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The length-prefixed parts, compared on read.
    pub fn canonical(&self) -> &Bytes {
        &self.canonical
    }

    /// The first parts of the canonical bytes, as written by
    /// [`KeyWriter::url`] (key version, namespace, scheme, host, method
    /// class, path, query), read back rather than rebuilt so that
    /// `/explain` shows what the key holds; `None` if the bytes end early.
    pub fn url_parts(&self) -> Option<[String; URL_PARTS]> {
        let mut rest: &[u8] = &self.canonical;
        let mut parts: [String; URL_PARTS] = Default::default();
        for part in &mut parts {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            let (bytes, tail) = (tail.get(..len)?, tail.get(len..)?);
            *part = String::from_utf8_lossy(bytes).into_owned();
            rest = tail;
        }
        Some(parts)
    }

    /// Lowercase hex of the hash, for logs and tier keys.
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }
}

/// How many parts [`KeyWriter::url`] writes.
pub const URL_PARTS: usize = 7;

#[derive(Default)]
struct KeyWriter(Vec<u8>);

impl KeyWriter {
    /// The parts every key starts with: version, namespace, scheme, host,
    /// method class, path and query.
    fn url(namespace: &str, host: &str, method: &Method, uri: &Uri) -> KeyWriter {
        let mut key = KeyWriter::default();
        key.part(KEY_VERSION.as_bytes());
        key.part(namespace.as_bytes());
        key.part(b"http");
        key.part(host.as_bytes());
        key.part(method_class(method).as_bytes());
        key.part(normalise_path(uri.path()).as_bytes());
        key.part(canonical_query(uri.query().unwrap_or("")).as_bytes());
        key
    }

    fn part(&mut self, bytes: &[u8]) {
        // Parts are request fields bounded by hyper's head limits, far below 4 GiB.
        let len = u32::try_from(bytes.len()).unwrap_or(ABSENT - 1);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    /// A header's name, then its number of lines and each line, or a
    /// marker for "absent" (which differs from one empty line).
    fn field(&mut self, headers: &HeaderMap, name: &HeaderName) {
        self.part(name.as_str().as_bytes());
        let lines = headers.get_all(name);
        let count = lines.iter().count();
        if count == 0 {
            self.0.extend_from_slice(&ABSENT.to_be_bytes());
            return;
        }
        // Bounded by hyper's header count limit, far below u32::MAX.
        self.part(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
        for line in lines {
            self.part(line.as_bytes());
        }
    }

    fn finish(self) -> CacheKey {
        CacheKey {
            hash: *blake3::hash(&self.0).as_bytes(),
            canonical: Bytes::from(self.0),
        }
    }
}

/// GET and HEAD share stored responses: HEAD is answered from a stored GET.
fn method_class(method: &Method) -> &str {
    if method == Method::HEAD {
        Method::GET.as_str()
    } else {
        method.as_str()
    }
}

/// The request's host, lowercased, without the default port: from the URI
/// (HTTP/2 and absolute-form) or else the `Host` header.
pub fn request_host(request: &Parts) -> String {
    host_of(&request.uri, &request.headers)
}

/// The host of a target URI, else of a `Host` header, lowercased, without the default port.
fn host_of(uri: &Uri, headers: &HeaderMap) -> String {
    let raw = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let host = raw.strip_suffix(":80").unwrap_or(raw);
    host.to_ascii_lowercase()
}

/// RFC 3986 §6.2.2 normalisation that never changes what the origin sees:
/// percent-encodings are uppercased and unreserved characters decoded.
/// Dot segments are left alone because the origin receives the raw path; if
/// the key resolved `..` and the origin did not, one URL could fill another's
/// entry. A path with a `%` that starts no escape is not a valid URI
/// (§2.1) and is keyed as sent: decoding around it could make a new escape
/// (`%a%61` would read as `%aa`).
pub fn normalise_path(path: &str) -> Cow<'_, str> {
    let mut escapes = path.match_indices('%').map(|(at, _)| escape(path, at));
    if !path.contains('%') || escapes.any(|escape| escape.is_none()) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        // What precedes the escape is copied as it is: an h2 `:path` or an
        // HTTP/1 target may hold UTF-8, which stays the bytes the origin gets.
        out.push_str(&rest[..at]);
        match escape(rest, at) {
            Some(decoded) if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) => {
                out.push(char::from(decoded));
            }
            _ => out.push_str(&rest[at..at + 3].to_ascii_uppercase()),
        }
        // Two hex digits are ASCII, so this is a character boundary.
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The byte a `%` at `at` encodes, if two hex digits follow it.
fn escape(text: &str, at: usize) -> Option<u8> {
    let hex = text.as_bytes().get(at + 1..at + 3)?;
    Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Query pairs sorted by name so that parameter order does not split the
/// cache. The sort is stable: repeated names keep their relative order
/// (`a=1&a=2` and `a=2&a=1` may mean different things to the origin).
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(normalise_path)
        .collect();
    // By the name the origin decodes: `?` and `%3F` name one parameter, so
    // their pairs keep their order, as any repeated name's do.
    pairs.sort_by_cached_key(|pair| {
        percent_encoding::percent_decode_str(pair_name(pair)).collect::<Vec<u8>>()
    });
    pairs.join("&")
}

/// The name of a `name=value` query pair.
pub fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// The same-host target a `Location` or `Content-Location` value points at
/// (RFC 9111 §4.4 invalidates only those), as a URI with path and query.
pub fn same_host_target(value: &str, host: &str) -> Option<Uri> {
    let uri: Uri = value.trim().parse().ok()?;
    if uri.authority().is_some() && host_of(&uri, &HeaderMap::new()) != host {
        return None;
    }
    uri.path_and_query()
        .filter(|p| p.as_str().starts_with('/'))
        .and_then(|p| Uri::try_from(p.as_str()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with(method: &str, uri: &str, headers: &[(&str, &str)]) -> CacheKey {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        CacheKey::for_request("ns", &parts)
    }

    fn key(uri: &str) -> CacheKey {
        key_with("GET", uri, &[("host", "example.com")])
    }

    use crate::testing::headers;

    fn header_name(name: &'static str) -> HeaderName {
        HeaderName::from_static(name)
    }

    #[test]
    fn url_parts_read_back_what_the_key_holds() {
        let parts = key_with("HEAD", "/a%7e?b=2&a=1", &[("host", "Example.com:80")])
            .url_parts()
            .unwrap();
        assert_eq!(
            parts,
            [
                KEY_VERSION,
                "ns",
                "http",
                "example.com",
                "GET",
                "/a~",
                "a=1&b=2"
            ]
            .map(String::from)
        );
    }

    #[test]
    fn query_order_does_not_matter_but_repeated_names_keep_theirs() {
        assert_eq!(key("/a?x=1&y=2"), key("/a?y=2&x=1"));
        assert_eq!(key("/a?x=1&&y=2&"), key("/a?y=2&x=1"));
        assert_ne!(key("/a?x=1&x=2"), key("/a?x=2&x=1"));
        assert_eq!(canonical_query("b=2&a=1&b=1"), "a=1&b=2&b=1");
    }

    #[test]
    fn repeated_names_keep_their_order_however_they_are_spelt() {
        // Found by fuzz target key: pairs were sorted by their spelling,
        // so `?=1&%3F=2` and `%3F=2&?=1` (one name, two orders) shared a key.
        assert_ne!(key("/a?%3F=1&?=2"), key("/a??=2&%3F=1"));
        assert_ne!(key("/a??=1&%3F=2"), key("/a?%3F=2&?=1"));
        assert_eq!(canonical_query("b=1&%3F=2&?=3"), "%3F=2&?=3&b=1");
    }

    #[test]
    fn percent_encoding_is_normalised_without_resolving_dot_segments() {
        assert_eq!(normalise_path("/%7euser/%2f%41"), "/~user/%2FA");
        assert_eq!(normalise_path("/%2e%2e/admin"), "/../admin");
        assert_eq!(key("/%7Euser"), key("/~user"));
        assert_ne!(key("/a/../b"), key("/b"));
        assert_eq!(normalise_path("/100%"), "/100%");
    }

    #[test]
    fn utf8_beside_an_escape_stays_as_sent() {
        // Found by `url_keys_are_shared_only_by_what_the_origin_reads_alike`:
        // bytes were copied one by one as Latin-1 characters, so `/é%41`
        // (UTF-8 C3 A9) was keyed as `/Ã©A` and shared a key with that path.
        assert_eq!(normalise_path("/%61é"), "/aé");
        assert_eq!(normalise_path("/é%41"), "/éA");
        assert_ne!(key("/é%41"), key("/Ã©A"));
    }

    #[test]
    fn a_stray_percent_keeps_the_path_as_sent() {
        // Found by the same property: `%a%61` was keyed as `/%aa`, which
        // the origin decodes to another byte.
        assert_eq!(normalise_path("/%a%61"), "/%a%61");
        assert_ne!(key("/%a%61"), key("/%aa"));
        assert_eq!(normalise_path("/%%61"), "/%%61");
        assert_eq!(normalise_path("/é%zz%41"), "/é%zz%41");
    }

    #[test]
    fn host_method_class_and_namespace_are_in_the_key() {
        let get = key_with("GET", "/a", &[("host", "Example.com:80")]);
        assert_eq!(get, key_with("HEAD", "/a", &[("host", "example.com")]));
        assert_ne!(get, key_with("GET", "/a", &[("host", "other.com")]));
        assert_ne!(
            get,
            key_with("GET", "http://other.com/a", &[("host", "example.com")])
        );
        let uri: Uri = "/a".parse().unwrap();
        assert_eq!(get, CacheKey::for_url("ns", "example.com", &uri));
        assert_ne!(get, CacheKey::for_url("other-ns", "example.com", &uri));
    }

    #[test]
    fn variant_keys_rfc9111_4_1() {
        let url = key("/a");
        let names = [HeaderName::from_static("accept-language")];
        let variant =
            |generation, pairs: &[(&str, &str)]| url.variant(generation, &names, &headers(pairs));
        let absent = variant(1, &[]);
        let empty = variant(1, &[("accept-language", "")]);
        let en = variant(1, &[("accept-language", "en, de")]);
        assert_ne!(absent, empty);
        assert_ne!(empty, en);
        assert_ne!(url, absent);
        // Compared byte for byte: only the request model knows which
        // fields' spellings are equivalent, and it forwards one of them.
        assert_ne!(en, variant(1, &[("accept-language", "en,de")]));
        let mut two_lines = headers(&[("accept-language", "en")]);
        two_lines.append("accept-language", "de".parse().unwrap());
        assert_ne!(en, url.variant(1, &names, &two_lines));
        assert_ne!(en, variant(1, &[("accept-language", "en, de, ")]));
        // Another generation is another key: old variants are orphaned.
        assert_ne!(en, variant(2, &[("accept-language", "en, de")]));
    }

    #[test]
    fn flights_differ_only_by_the_selecting_headers() {
        let url = key("/a");
        let lang = header_name("accept-language");
        let flight = |pairs: &[(&str, &str)]| url.flight([&lang], &headers(pairs));
        let fr = flight(&[("accept-language", "fr"), ("traceparent", "1")]);
        assert_eq!(
            fr,
            flight(&[("accept-language", "fr"), ("traceparent", "2")])
        );
        assert_ne!(fr, flight(&[("accept-language", "en")]));
        assert_ne!(fr, flight(&[]));
        assert_ne!(&fr, url.hash(), "a flight is not the object's own key");
    }

    #[test]
    fn invalidation_targets_are_same_host_only_rfc9111_4_4() {
        let target = |v| same_host_target(v, "shop.example").map(|u| u.to_string());
        assert_eq!(target("/items/1?x=1").as_deref(), Some("/items/1?x=1"));
        assert_eq!(
            target("http://shop.example/items/2").as_deref(),
            Some("/items/2")
        );
        assert_eq!(
            target("http://Shop.Example:80/items/3").as_deref(),
            Some("/items/3")
        );
        assert_eq!(target("http://other.example/items/4"), None);
        assert_eq!(target("items/5"), None);
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::option;
        use proptest::prelude::*;

        /// What an origin decodes from a path or a query pair.
        fn decoded(text: &str) -> Vec<u8> {
            percent_encoding::percent_decode_str(text).collect()
        }

        /// A query as the key means it: its pairs decoded, stably sorted by
        /// the decoded name (split at the first raw `=`).
        fn query_meaning(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| (decoded(pair_name(pair)), decoded(pair)))
                .collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs
        }

        /// Targets from a small alphabet, so that different spellings of
        /// one path often meet: case, escapes of unreserved and reserved
        /// characters, a non-ASCII letter.
        fn target() -> impl Strategy<Value = Uri> {
            (
                vec(
                    prop::sample::select(
                        &["a", "A", "/", "%61", "%41", "%2F", "%2f", "%", "é", "."][..],
                    ),
                    0..6,
                ),
                option::of(vec(
                    prop::sample::select(&["a", "b", "=", "&", "%61", "%3D", "%5B", "[", "1"][..]),
                    0..6,
                )),
            )
                .prop_filter_map("a valid target", |(path, query)| {
                    let mut target = format!("/{}", path.concat());
                    if let Some(query) = query {
                        target.push('?');
                        target.push_str(&query.concat());
                    }
                    target.parse().ok()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn parts_never_run_together(
                a in vec(vec(any::<u8>(), 0..6), 0..5),
                b in vec(vec(any::<u8>(), 0..6), 0..5),
            ) {
                let write = |parts: &[Vec<u8>]| {
                    let mut key = KeyWriter::default();
                    for part in parts {
                        key.part(part);
                    }
                    key.finish()
                };
                prop_assert_eq!(write(&a) == write(&b), a == b);
            }

            #[test]
            fn variant_keys_differ_when_the_selecting_lines_do(
                a in vec(option::of(vec("[ -~]{0,3}", 0..3)), 2),
                b in vec(option::of(vec("[ -~]{0,3}", 0..3)), 2),
            ) {
                let names = [header_name("accept-language"), header_name("x-a")];
                let request = |lines: &[Option<Vec<String>>]| {
                    let mut map = HeaderMap::new();
                    for (name, lines) in names.iter().zip(lines) {
                        for line in lines.iter().flatten() {
                            map.append(name.clone(), line.parse().unwrap());
                        }
                    }
                    map
                };
                // An empty list of lines is an absent field.
                let present = |lines: &[Option<Vec<String>>]| -> Vec<Vec<String>> {
                    lines.iter().map(|l| l.clone().unwrap_or_default()).collect()
                };
                let url = key("/a");
                let (key_a, key_b) = (
                    url.variant(7, &names, &request(&a)),
                    url.variant(7, &names, &request(&b)),
                );
                prop_assert_eq!(key_a == key_b, present(&a) == present(&b));
            }

            #[test]
            fn url_keys_are_shared_only_by_what_the_origin_reads_alike(
                a in target(),
                b in target(),
                host_a in "[aB]{0,2}",
                host_b in "[aB]{0,2}",
            ) {
                let key_a = CacheKey::for_url("ns", &host_a.to_ascii_lowercase(), &a);
                let key_b = CacheKey::for_url("ns", &host_b.to_ascii_lowercase(), &b);
                let meaning = |host: &str, uri: &Uri| {
                    (
                        host.to_ascii_lowercase(),
                        decoded(uri.path()),
                        query_meaning(uri.query().unwrap_or("")),
                    )
                };
                if key_a == key_b {
                    prop_assert_eq!(meaning(&host_a, &a), meaning(&host_b, &b), "{} and {}", a, b);
                }
                let normal = normalise_path(a.path());
                prop_assert_eq!(decoded(&normal), decoded(a.path()));
                prop_assert_eq!(normalise_path(&normal), normal.clone());
            }
        }
    }

    #[test]
    fn length_prefixes_keep_parts_apart() {
        // Without prefixes "/a" + "b=1" and "/ab" + "=1" could run together.
        assert_ne!(key("/a?b=1"), key("/ab?=1"));
        assert_eq!(key("/a").hex().len(), 64);
    }
}
