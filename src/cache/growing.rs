//! A body still arriving from the origin, read as it grows by every request sharing its fetch (read-while-writer).
//!
//! Hand-written on a `tokio::sync::watch` over the chunks received so far,
//! because the rules are a cache's: each reader keeps its own place and takes
//! clones of the chunks (`Bytes`: shared, never copied), so a slow reader only
//! holds on to chunks and never holds back the fill or the other readers; the
//! body is complete only when the writer says so, and a writer dropped before
//! that (the origin broke the body, the fill gave up) ends every reader's
//! body as broken.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::sync::watch;

/// What has arrived of the body so far.
#[derive(Debug, Default)]
struct Arrived {
    chunks: Vec<Bytes>,
    /// Their total length.
    len: usize,
    /// The writer saw the body's clean end.
    complete: bool,
}

/// What the writer and the requests joining it share.
struct Shared {
    sender: watch::Sender<Arrived>,
    /// Run by the first request that joins: until then the fill need not
    /// be read apart from the leader's client (see [`Growing::when_joined`]).
    on_join: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// The writing end, owned by the fill: dropping it before [`Growing::complete`]
/// breaks the readers' bodies.
pub struct Growing {
    /// Shared with [`Joining`] handles only weakly, so that it is dropped
    /// with the fill; readers hold receivers, which the fill counts.
    shared: Arc<Shared>,
}

impl Default for Growing {
    fn default() -> Self {
        Growing {
            shared: Arc::new(Shared {
                sender: watch::Sender::new(Arrived::default()),
                on_join: Mutex::new(None),
            }),
        }
    }
}

impl Growing {
    /// Appends a chunk, waking the readers unless `wake` is false (they see
    /// it on the next change: more chunks, the end, or the writer dropped).
    pub fn push(&self, chunk: Bytes, wake: bool) {
        self.shared.sender.send_if_modified(|arrived| {
            arrived.len += chunk.len();
            arrived.chunks.push(chunk);
            wake
        });
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.shared.sender.borrow().len
    }

    /// The body so far in one piece, in an allocation of its own: the
    /// chunks may be slices of larger read buffers, which a stored entry
    /// must not keep alive (the memory tier counts only the body's length).
    pub fn contiguous(&self) -> Bytes {
        let arrived = self.shared.sender.borrow();
        let mut body = BytesMut::with_capacity(arrived.len);
        for chunk in &arrived.chunks {
            body.extend_from_slice(chunk);
        }
        body.freeze()
    }

    /// The body ended cleanly: readers end theirs once they have read it all.
    pub fn complete(self) {
        self.shared
            .sender
            .send_modify(|arrived| arrived.complete = true);
    }

    /// A reader of what arrives from now on: for a client that has read
    /// everything so far straight from the fill.
    pub fn reader_from_here(&self) -> Reader {
        let receiver = self.shared.sender.subscribe();
        let next = receiver.borrow().chunks.len();
        Reader::new(receiver, next)
    }

    /// A handle that makes readers while the body is still being written.
    pub fn joining(&self) -> Joining {
        Joining(Arc::downgrade(&self.shared))
    }

    /// Runs `hand_over` when a request first joins through a [`Joining`],
    /// after its reader exists: the fill can stay where it is while its
    /// one reader is the leader's client, and move once others read too.
    pub fn when_joined(&self, hand_over: impl FnOnce() + Send + 'static) {
        *self
            .shared
            .on_join
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(hand_over));
    }

    /// Resolves once no reader is left. Holds the writing end open until
    /// it is dropped, so await it only next to the fill that owns `self`.
    pub fn unread(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let shared = self.shared.clone();
        async move { shared.sender.closed().await }
    }
}

/// A way for requests arriving during the fill to start reading it.
#[derive(Clone)]
pub struct Joining(Weak<Shared>);

impl std::fmt::Debug for Joining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Joining")
    }
}

impl Joining {
    /// A reader from the first byte; `None` once the fill is gone.
    pub fn reader(&self) -> Option<Reader> {
        let shared = self.0.upgrade()?;
        let reader = Reader::new(shared.sender.subscribe(), 0);
        let hand_over = shared
            .on_join
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(hand_over) = hand_over {
            hand_over();
        }
        Some(reader)
    }
}

/// The body broke off before its end: the fetch failed or the fill gave up.
#[derive(Debug, thiserror::Error)]
#[error("the shared fetch's body broke off before its end")]
pub struct Broken;

/// One request's read of a growing body, as a response body.
pub struct Reader {
    receiver: watch::Receiver<Arrived>,
    /// Index of the next chunk to hand out.
    next: usize,
    /// Resolves `true` when more has arrived, `false` when the writer is gone.
    more: Option<Pin<Box<dyn Future<Output = bool> + Send>>>,
    writer_gone: bool,
}

impl Reader {
    fn new(receiver: watch::Receiver<Arrived>, next: usize) -> Reader {
        Reader {
            receiver,
            next,
            more: None,
            writer_gone: false,
        }
    }
}

async fn changed(mut receiver: watch::Receiver<Arrived>) -> bool {
    receiver.changed().await.is_ok()
}

impl Body for Reader {
    type Data = Bytes;
    type Error = Broken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        let this = self.get_mut();
        loop {
            {
                let arrived = this.receiver.borrow_and_update();
                if let Some(chunk) = arrived.chunks.get(this.next) {
                    this.next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                if arrived.complete {
                    return Poll::Ready(None);
                }
            }
            if this.writer_gone {
                return Poll::Ready(Some(Err(Broken)));
            }
            // A clone waits, so that the receiver itself stays readable.
            let receiver = &this.receiver;
            let more = this
                .more
                .get_or_insert_with(|| Box::pin(changed(receiver.clone())));
            let arrived = ready!(more.as_mut().poll(cx));
            this.more = None;
            this.writer_gone = !arrived;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn readers_get_every_chunk_in_order_and_the_end() {
        let growing = Growing::default();
        let early = growing.reader_from_here();
        growing.push(Bytes::from_static(b"ab"), true);
        let joining = growing.joining();
        let mut late = joining.reader().unwrap();
        growing.push(Bytes::from_static(b"cd"), true);
        assert_eq!(growing.received(), 4);
        assert_eq!(growing.contiguous(), "abcd");
        let first = late.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab", "a late reader starts at the first byte");
        let reading = tokio::spawn(early.collect());
        growing.push(Bytes::from_static(b"e"), false);
        growing.complete();
        assert_eq!(reading.await.unwrap().unwrap().to_bytes(), "abcde");
        assert_eq!(late.collect().await.unwrap().to_bytes(), "cde");
        assert!(
            joining.reader().is_none(),
            "no joining once the fill is gone"
        );
    }

    #[tokio::test]
    async fn a_writer_dropped_before_the_end_breaks_the_readers() {
        let growing = Growing::default();
        let mut reader = growing.reader_from_here();
        growing.push(Bytes::from_static(b"ab"), true);
        let waiting = tokio::spawn(async move {
            let first = reader.frame().await.unwrap().unwrap();
            (first.into_data().unwrap(), reader.frame().await)
        });
        tokio::task::yield_now().await;
        drop(growing);
        let (first, then) = waiting.await.unwrap();
        assert_eq!(first, "ab", "what arrived is still read");
        assert!(matches!(then, Some(Err(Broken))));
    }

    #[tokio::test]
    async fn the_writer_learns_when_nobody_reads() {
        let growing = Growing::default();
        let reader = growing.reader_from_here();
        let unread = tokio::spawn(growing.unread());
        tokio::task::yield_now().await;
        assert!(!unread.is_finished());
        drop(reader);
        unread.await.unwrap();
    }
}
