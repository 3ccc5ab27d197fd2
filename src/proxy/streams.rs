//! Response body wrappers: one that keeps a value alive for as long as the body streams, and
//! the event-stream relay.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::metrics::StreamGauge;

/// A body stream that holds `T` (e.g. an activity guard) until the body is finished or the
/// client goes away.
pub struct Held<S, T> {
    inner: S,
    _held: T,
}

impl<S, T> Held<S, T> {
    pub fn new(inner: S, held: T) -> Self {
        Self { inner, _held: held }
    }
}

impl<S: Stream + Unpin, T: Unpin> Stream for Held<S, T> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

const KEEPALIVE: &[u8] = b": keepalive\n";

/// Relays an upstream event stream chunk by chunk, as it arrives.
///
/// - A comment line is sent when the upstream has been silent for `keepalive`, but only at a
///   line boundary, so it can never split an event in half.
/// - When the instance starts stopping the stream ends cleanly (the client's `EventSource`
///   reconnects later) instead of hanging until the process dies.
/// - An upstream read error also ends the stream cleanly: an event stream has no length to
///   violate, and a clean end makes clients reconnect.
pub struct SseRelay<S> {
    inner: S,
    keepalive: Duration,
    timer: Pin<Box<Sleep>>,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    at_line_start: bool,
    done: bool,
    _gauge: StreamGauge,
}

impl<S> SseRelay<S> {
    pub fn new(
        inner: S,
        keepalive: Duration,
        stopping: CancellationToken,
        gauge: StreamGauge,
    ) -> Self {
        Self {
            inner,
            keepalive,
            timer: Box::pin(tokio::time::sleep(keepalive)),
            stopping: Box::pin(stopping.cancelled_owned()),
            at_line_start: true,
            done: false,
            _gauge: gauge,
        }
    }
}

impl<S, E> Stream for SseRelay<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.stopping.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(last) = chunk.last() {
                    this.at_line_start = *last == b'\n';
                }
                let next = Instant::now() + this.keepalive;
                this.timer.as_mut().reset(next);
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + this.keepalive;
            this.timer.as_mut().reset(next);
            if this.at_line_start {
                // Register the timer again before yielding.
                let _ = this.timer.as_mut().poll(cx);
                return Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE))));
            }
            let _ = this.timer.as_mut().poll(cx);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::sync::mpsc;

    fn gauge() -> StreamGauge {
        let instances = chamberlain_actors::InstanceMetrics::new();
        crate::metrics::Metrics::new(&instances).http.open_stream()
    }

    type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, ()>>>>;
    type Feed = mpsc::UnboundedSender<Result<Bytes, ()>>;

    fn relay(keepalive: Duration) -> (Feed, CancellationToken, SseRelay<Chunks>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream: Chunks = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let token = CancellationToken::new();
        (
            tx,
            token.clone(),
            SseRelay::new(stream, keepalive, token, gauge()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_only_at_line_boundaries() {
        let (tx, _token, mut relay) = relay(Duration::from_secs(15));
        tx.send(Ok(Bytes::from_static(b"data: {\"a\":"))).unwrap();
        assert_eq!(relay.next().await.unwrap().unwrap(), "data: {\"a\":");
        // Mid-line silence: no comment may be injected.
        let waited = tokio::time::timeout(Duration::from_secs(40), relay.next()).await;
        assert!(waited.is_err(), "keepalive injected inside a line");
        tx.send(Ok(Bytes::from_static(b"1}\n\n"))).unwrap();
        assert_eq!(relay.next().await.unwrap().unwrap(), "1}\n\n");
        let start = Instant::now();
        assert_eq!(relay.next().await.unwrap().unwrap(), KEEPALIVE);
        assert!(start.elapsed() >= Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn ends_cleanly_when_the_instance_stops() {
        let (_tx, token, mut relay) = relay(Duration::from_secs(15));
        token.cancel();
        assert!(relay.next().await.is_none());
        assert!(relay.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_error_ends_the_stream() {
        let (tx, _token, mut relay) = relay(Duration::from_secs(15));
        tx.send(Ok(Bytes::from_static(b"data: x\n\n"))).unwrap();
        tx.send(Err(())).unwrap();
        assert!(relay.next().await.unwrap().is_ok());
        assert!(relay.next().await.is_none());
    }
}
