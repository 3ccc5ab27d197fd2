//! The client-bound half of a bridged websocket: frames queued by the bridge actor, drained by
//! the HTTP response body at the client's pace.
//!
//! The queue is the gateway's only buffer toward a client, so its size is known exactly: the
//! bridge closes the socket (1013) when a client that stops reading lets it grow past the cap.
//! The actor and the response body run on the same worker thread, hence `Rc<RefCell<_>>`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    finished: bool,
    waker: Option<Waker>,
}

/// The writing end, held by the bridge actor.
#[derive(Clone, Default)]
pub struct Outbox(Rc<RefCell<Queue>>);

/// The reading end: the response body.
pub struct OutboxBody(Outbox);

impl Outbox {
    pub fn new() -> (Outbox, OutboxBody) {
        let outbox = Outbox::default();
        (outbox.clone(), OutboxBody(outbox))
    }

    fn wake(&self) {
        let waker = self.0.borrow_mut().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues an encoded frame; returns the bytes now waiting for the client.
    pub fn push(&self, frame: Bytes) -> usize {
        let buffered = {
            let mut q = self.0.borrow_mut();
            if q.finished {
                return q.bytes;
            }
            q.bytes += frame.len();
            q.frames.push_back(frame);
            q.bytes
        };
        self.wake();
        buffered
    }

    /// Drops everything not yet handed to the connection.
    pub fn discard(&self) {
        let mut q = self.0.borrow_mut();
        q.frames.clear();
        q.bytes = 0;
    }

    /// No more frames: the body ends once the queued ones are sent.
    pub fn finish(&self) {
        self.0.borrow_mut().finished = true;
        self.wake();
    }

    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.0.borrow().bytes
    }
}

impl Stream for OutboxBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut q = self.0 .0.borrow_mut();
        if let Some(frame) = q.frames.pop_front() {
            q.bytes -= frame.len();
            return Poll::Ready(Some(Ok(frame)));
        }
        if q.finished {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn counts_what_waits_and_ends_after_draining() {
        let (outbox, mut body) = Outbox::new();
        assert_eq!(outbox.push(Bytes::from_static(b"abc")), 3);
        assert_eq!(outbox.push(Bytes::from_static(b"de")), 5);
        assert_eq!(body.next().await.unwrap().unwrap(), "abc");
        assert_eq!(outbox.buffered(), 2);
        outbox.finish();
        assert_eq!(outbox.push(Bytes::from_static(b"ignored")), 2);
        assert_eq!(body.next().await.unwrap().unwrap(), "de");
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn discard_drops_the_backlog() {
        let (outbox, mut body) = Outbox::new();
        outbox.push(Bytes::from(vec![0u8; 1000]));
        outbox.discard();
        assert_eq!(outbox.buffered(), 0);
        outbox.push(Bytes::from_static(b"close"));
        outbox.finish();
        assert_eq!(body.next().await.unwrap().unwrap(), "close");
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_body_is_woken_by_a_push() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (outbox, mut body) = Outbox::new();
                let reader =
                    tokio::task::spawn_local(async move { body.next().await.map(|r| r.unwrap()) });
                tokio::task::yield_now().await;
                outbox.push(Bytes::from_static(b"late"));
                assert_eq!(reader.await.unwrap().unwrap(), "late");
            })
            .await;
    }
}
