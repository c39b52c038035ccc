//! Streams an origin body to the client while keeping its chunks, and stores it once it is complete.
//!
//! Hand-written because the rule is specific to a cache: the body is stored
//! only if it ended cleanly, matched its `Content-Length` and stayed under
//! the size limit. A body the origin cuts short (an error frame), or that
//! every reader abandons (the body is dropped before its end), is never
//! stored. The chunks kept are the ones the requests waiting on the fetch
//! read as they arrive ([`StoringBody::share`]), so they cost no extra copy;
//! until one of them joins, the fetching client reads the origin through
//! the fill itself, and the first to join moves it into a task of its own.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::header;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use super::Cache;
use super::entry::{Entry, Variants};
use super::flight::{Filled, Leader};
use super::growing::{Broken, Growing, Reader};
use super::policy::NoCacheReason;
use crate::body::BoxError;

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

    /// Lets the requests waiting on the fetch read the body as it arrives,
    /// each at its own pace, the client included: the returned body is the
    /// client's. While the client is its only reader it reads the origin
    /// straight through this fill; when another request first joins, the
    /// fill moves into a task of its own on `tasks` (on this thread's
    /// runtime, where the origin connection lives) and the client reads
    /// what arrives like the others, so one that stops reading holds back
    /// nobody. The task stops, storing nothing, once nobody reads. `Err`
    /// gives the body back when it is not to be shared ([`Fill::shares`]).
    // The body comes back by value once per fill; boxing it would cost an
    // allocation on every one.
    #[allow(clippy::result_large_err)]
    pub fn share(self, tasks: &TaskTracker) -> Result<SharedFill<B>, Self>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Send,
    {
        let Some(fill) = self.fill.as_ref().filter(|fill| fill.shares()) else {
            return Err(self);
        };
        let Ok(runtime) = Handle::try_current() else {
            return Err(self);
        };
        let head = Filled {
            entry: Arc::new(fill.entry.clone()),
            variants: fill.variants.clone(),
        };
        let joining = fill.body.joining();
        let driving = Arc::new(Mutex::new(Driving {
            body: None,
            client: None,
            handed: None,
        }));
        let hand_over = {
            let driving = Arc::downgrade(&driving);
            let tasks = tasks.clone();
            move || {
                if let Some(driving) = driving.upgrade() {
                    hand_over(&driving, &tasks, &runtime);
                }
            }
        };
        fill.body.when_joined(hand_over);
        // Announced only once a request that joins can move the fill: the
        // move waits for this lock.
        let mut slot = lock(&driving);
        let body = slot.body.insert(self);
        if let Some(Fill {
            leader: Some(leader),
            ..
        }) = &body.fill
        {
            leader.arriving(head, joining);
        }
        drop(slot);
        Ok(SharedFill {
            driving,
            reader: None,
        })
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

/// The client's body of a fill the requests waiting on it may join
/// ([`StoringBody::share`]).
pub struct SharedFill<B> {
    driving: Arc<Mutex<Driving<B>>>,
    /// Once the fill has moved into its own task: the client's place in it.
    reader: Option<Reader>,
}

/// Who reads the origin body.
struct Driving<B> {
    /// The fill, while the client reads it straight through; `None` once
    /// it has moved into a task of its own.
    body: Option<StoringBody<B>>,
    /// The client's task when its last read had to wait: woken when the
    /// fill moves, since the origin then wakes the fill's task instead.
    client: Option<Waker>,
    /// Left for the client by the move: its place in what has arrived.
    handed: Option<Reader>,
}

fn lock<B>(driving: &Mutex<Driving<B>>) -> MutexGuard<'_, Driving<B>> {
    // Poisoned only by a panic mid-poll, which leaves nothing half-done.
    driving.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Moves a fill that another request joined into a task of its own, which
/// reads the origin body to its end or until nobody reads.
fn hand_over<B>(driving: &Mutex<Driving<B>>, tasks: &TaskTracker, runtime: &Handle)
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    let mut driving = lock(driving);
    // A fill that is done or given up has nothing left to share.
    let Some(StoringBody {
        fill: Some(fill), ..
    }) = &driving.body
    else {
        return;
    };
    // Every chunk so far went to the client as it was kept.
    let (handed, unread) = (fill.body.reader_from_here(), fill.body.unread());
    let Some(mut body) = driving.body.take() else {
        return;
    };
    driving.handed = Some(handed);
    let client = driving.client.take();
    drop(driving);
    if let Some(client) = client {
        client.wake();
    }
    tasks.spawn_on(
        async move {
            let mut unread = std::pin::pin!(unread);
            // Until the fill is done or given up (then the body is dropped,
            // which closes the origin connection if it is not at its end).
            while body.fill.is_some() {
                tokio::select! {
                    frame = body.frame() => if !matches!(frame, Some(Ok(_))) { break },
                    () = &mut unread => break,
                }
            }
        },
        runtime,
    );
}

impl<B> Body for SharedFill<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.reader.is_none() {
            let mut driving = lock(&this.driving);
            if let Some(body) = &mut driving.body {
                let frame = Pin::new(body).poll_frame(cx);
                if frame.is_pending() {
                    match &mut driving.client {
                        Some(waker) => waker.clone_from(cx.waker()),
                        client => *client = Some(cx.waker().clone()),
                    }
                }
                return frame.map_err(Into::into);
            }
            let Some(reader) = driving.handed.take() else {
                return Poll::Ready(Some(Err(Broken.into())));
            };
            this.reader = Some(reader);
        }
        match &mut this.reader {
            Some(reader) => Pin::new(reader).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
            && lock(&self.driving)
                .body
                .as_ref()
                .is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &lock(&self.driving).body {
            Some(body) => body.size_hint(),
            None => SizeHint::default(),
        }
    }
}
