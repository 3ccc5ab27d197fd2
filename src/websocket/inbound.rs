//! Websocket frames read from the client's side of an upgraded connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_http::ws::{Codec, Frame, ProtocolError};
use bytes::BytesMut;
use futures_util::Stream;
use tokio_util::codec::Decoder;

/// Decodes the request payload of an upgraded connection into frames. Frames larger than the
/// codec's limit are an error (`Overflow`); after any error the stream ends.
pub struct ClientFrames<S> {
    payload: S,
    buf: BytesMut,
    codec: Codec,
    eof: bool,
    failed: bool,
}

impl<S> ClientFrames<S> {
    pub fn new(payload: S, codec: Codec) -> Self {
        Self {
            payload,
            buf: BytesMut::new(),
            codec,
            eof: false,
            failed: false,
        }
    }
}

impl<S, E> Stream for ClientFrames<S>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Err(e) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(None) if this.eof => return Poll::Ready(None),
                Ok(None) => {}
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(
                        e.to_string(),
                    )))));
                }
                Poll::Ready(None) => this.eof = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::Message;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio_util::codec::Encoder;

    fn client_frame(msg: Message) -> Bytes {
        let mut codec = Codec::new().client_mode();
        let mut buf = BytesMut::new();
        codec.encode(msg, &mut buf).unwrap();
        buf.freeze()
    }

    #[tokio::test]
    async fn decodes_frames_split_across_chunks() {
        let mut wire = client_frame(Message::Text("hello".into())).to_vec();
        wire.extend_from_slice(&client_frame(Message::Binary(Bytes::from_static(
            b"\x00\x01",
        ))));
        let chunks: Vec<Result<Bytes, std::io::Error>> = wire
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut frames = ClientFrames::new(futures_util::stream::iter(chunks), Codec::new());
        assert!(matches!(frames.next().await, Some(Ok(Frame::Text(t))) if t == "hello"));
        assert!(matches!(frames.next().await, Some(Ok(Frame::Binary(b))) if b == "\x00\x01"));
        assert!(frames.next().await.is_none());
    }

    #[tokio::test]
    async fn oversized_frames_are_an_error_and_end_the_stream() {
        let wire = client_frame(Message::Binary(Bytes::from(vec![7u8; 2048])));
        let chunks = vec![Ok::<_, std::io::Error>(wire)];
        let mut frames = ClientFrames::new(
            futures_util::stream::iter(chunks),
            Codec::new().max_size(1024),
        );
        assert!(matches!(
            frames.next().await,
            Some(Err(ProtocolError::Overflow))
        ));
        assert!(frames.next().await.is_none());
    }
}
