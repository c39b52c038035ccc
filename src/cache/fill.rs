//! Streams an origin body to the client while copying it aside, and stores it once it is complete.
//!
//! Hand-written because the rule is specific to a cache: the copy is stored
//! only if the body ended cleanly, matched its `Content-Length` and stayed
//! under the size limit. A body the origin cuts short (an error frame), or
//! that the client abandons (the body is dropped before its end), is never
//! stored.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header;
use http_body::{Body, Frame, SizeHint};

use super::Cache;
use super::entry::{Entry, Variants};
use super::flight::Leader;
use super::policy::NoCacheReason;

/// A response body that fills the cache when it ends.
pub struct StoringBody<B> {
    inner: B,
    /// `None` once storing was given up or done.
    fill: Option<Fill>,
}

/// What is needed to store the response once its body is complete.
pub struct Fill {
    cache: Cache,
    /// The stored response with an empty body, waiting for the real one.
    entry: Entry,
    /// The index of its URL's variants, when it is one of them.
    variants: Option<Arc<Variants>>,
    /// The flight this fetch leads, told when the entry is stored; dropped
    /// with the fill otherwise, which sends the followers to the origin.
    leader: Option<Leader>,
    buffer: BytesMut,
    limit: u64,
}

impl Fill {
    /// Prepares to store `entry` (its body is ignored) in `cache`, if the body stays within `limit` bytes.
    pub fn new(
        cache: Cache,
        entry: Entry,
        variants: Option<Arc<Variants>>,
        leader: Option<Leader>,
        limit: u64,
    ) -> Fill {
        Fill {
            cache,
            entry,
            variants,
            leader,
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// The response to be stored, its body still empty.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Copies one chunk; gives up (returns `Err`) when over the limit.
    fn push(&mut self, data: &Bytes) -> Result<(), NoCacheReason> {
        if (self.buffer.len() + data.len()) as u64 > self.limit {
            return Err(NoCacheReason::TooLarge);
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    fn finish(mut self) -> Result<(), NoCacheReason> {
        let declared = self
            .entry
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len != self.buffer.len()) {
            return Err(NoCacheReason::Incomplete);
        }
        self.entry.body = self.buffer.freeze();
        let now = self.cache.now();
        self.cache
            .store(self.entry, self.variants, self.leader, now);
        Ok(())
    }
}

impl<B> StoringBody<B> {
    pub fn new(inner: B, fill: Fill) -> StoringBody<B> {
        StoringBody {
            inner,
            fill: Some(fill),
        }
    }

    fn finish(&mut self) {
        if let Some(fill) = self.fill.take()
            && let Err(reason) = fill.finish()
        {
            tracing::debug!(reason = reason.as_str(), "response not stored");
        }
    }

    fn give_up(&mut self, reason: NoCacheReason) {
        if let Some(fill) = self.fill.take() {
            tracing::debug!(key = %fill.entry.key.hex(), reason = reason.as_str(), "response not stored");
        }
    }
}

impl<B> Body for StoringBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(fill)) = (frame.data_ref(), this.fill.as_mut())
                    && let Err(reason) = fill.push(data)
                {
                    this.give_up(reason);
                }
            }
            Some(Err(_)) => this.give_up(NoCacheReason::Incomplete),
            None => this.finish(),
        }
        // hyper stops polling once a body of known length has been written in
        // full, so the end is noticed here rather than waiting for `None`.
        if this.inner.is_end_stream() {
            this.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Until the fill is done the body must be polled to its end, even an
        // empty one, or the store would never happen.
        self.fill.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for StoringBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away mid-body.
        self.give_up(NoCacheReason::Incomplete);
    }
}
