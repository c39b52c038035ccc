//! The body type of every response sidecache writes, and the two bodies it makes itself (bytes in hand, nothing).

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Error type of response bodies: origin stream errors, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of every response the proxy and the admin port write.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body of bytes already in hand.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response body with nothing in it (HEAD, 304, a bodiless request upstream).
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A streamed body (the origin's, or the client's on its way up), boxed.
pub fn stream<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
