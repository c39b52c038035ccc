//! Streams an origin body to the client while keeping its chunks, and stores it once it is complete.
//!
//! Hand-written because the rule is specific to a cache: the body is stored
//! only if it ended cleanly, matched its `Content-Length` and stayed under
//! the size limit. A body the origin cuts short (an error frame), or that
//! every reader abandons (the body is dropped before its end), is never
//! stored. The chunks kept are the ones the requests waiting on the fetch
//! read as they arrive ([`StoringBody::share`]), so they cost no extra copy.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::header;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::Cache;
use super::entry::{Entry, Variants};
use super::flight::{Filled, Leader};
use super::growing::{Growing, Reader};
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
    /// When the request looked the URL up (see [`super::Cache::store`]).
    looked_up: Option<SystemTime>,
    /// The flight this fetch leads, told when the body starts to arrive (if
    /// shared) and when the entry is stored; dropped with the fill
    /// otherwise, which sends the followers still waiting to the origin.
    leader: Option<Leader>,
    /// The body so far, which readers of the shared fetch follow.
    body: Growing,
    limit: u64,
}

impl Fill {
    /// Prepares to store `entry` (its body is ignored) in `cache`, if the body stays within `limit` bytes.
    pub fn new(
        cache: Cache,
        entry: Entry,
        variants: Option<Arc<Variants>>,
        looked_up: Option<SystemTime>,
        leader: Option<Leader>,
        limit: u64,
    ) -> Fill {
        Fill {
            cache,
            entry,
            variants,
            looked_up,
            leader,
            body: Growing::default(),
            limit,
        }
    }

    /// The response to be stored, its body still empty.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The body length the origin declared.
    fn declared(&self) -> Option<usize> {
        self.entry
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
    }

    /// Whether the requests waiting on this fetch may read its body as it
    /// arrives: it leads a flight, and its length is declared (so known to
    /// fit the size limit, which the decision to store checked). A body of
    /// unknown length might outgrow the limit after they started; its
    /// waiters get the stored entry once it is complete, or fetch themselves.
    fn shares(&self) -> bool {
        self.leader.is_some() && self.declared().is_some()
    }

    /// Keeps one chunk; gives up (returns `Err`) when over the limit. The
    /// `last` one reaches the readers only with the end, after the store:
    /// a client that has the whole body finds it stored, as it would if it
    /// read the origin's body itself.
    fn push(&mut self, data: &Bytes, last: bool) -> Result<(), NoCacheReason> {
        if (self.body.received() + data.len()) as u64 > self.limit {
            return Err(NoCacheReason::TooLarge);
        }
        self.body.push(data.clone(), !last);
        Ok(())
    }

    fn finish(mut self) -> Result<(), NoCacheReason> {
        if self
            .declared()
            .is_some_and(|len| len != self.body.received())
        {
            return Err(NoCacheReason::Incomplete);
        }
        self.entry.body = self.body.contiguous();
        let now = self.cache.now();
        self.cache
            .store(self.entry, self.variants, self.looked_up, self.leader, now);
        // Readers end their bodies only now: never complete unless whole.
        self.body.complete();
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

    /// Reads the body to its end in a task of its own (to be spawned), for
    /// the client and the requests waiting on the fetch alike, each reading
    /// as it arrives at its own pace: the task, and the client's reader.
    /// The task stops, storing nothing, once nobody reads (every client went
    /// away). `Err` gives the body back when it is not to be shared
    /// ([`Fill::shares`]).
    // The body comes back by value once per fill; boxing it would cost an
    // allocation on every one.
    #[allow(clippy::result_large_err)]
    pub fn share(self) -> Result<(impl Future<Output = ()> + Send + 'static, Reader), Self>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
    {
        let Some(fill) = self.fill.as_ref().filter(|fill| fill.shares()) else {
            return Err(self);
        };
        let reader = fill.body.reader();
        let unread = fill.body.unread();
        if let Some(leader) = &fill.leader {
            let head = Filled {
                entry: Arc::new(fill.entry.clone()),
                variants: fill.variants.clone(),
            };
            leader.arriving(head, fill.body.joining());
        }
        let mut body = self;
        let task = async move {
            let mut unread = std::pin::pin!(unread);
            // Until the fill is done or given up (then the body is dropped,
            // which closes the origin connection if it is not at its end).
            while body.fill.is_some() {
                tokio::select! {
                    frame = body.frame() => if !matches!(frame, Some(Ok(_))) { break },
                    () = &mut unread => break,
                }
            }
        };
        Ok((task, reader))
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
        let ended = this.inner.is_end_stream();
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(fill)) = (frame.data_ref(), this.fill.as_mut())
                    && let Err(reason) = fill.push(data, ended)
                {
                    this.give_up(reason);
                }
            }
            Some(Err(_)) => this.give_up(NoCacheReason::Incomplete),
            None => this.finish(),
        }
        // hyper stops polling once a body of known length has been written in
        // full, so the end is noticed here rather than waiting for `None`.
        if ended {
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
