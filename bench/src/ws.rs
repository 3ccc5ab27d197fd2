//! A minimal websocket client for the benchmark: a hand-made handshake, then actix-http's
//! frame codec (client mode, masked) over a plain TCP stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_http::ws::{Codec, Frame, Message};
use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub type Socket = Framed<TcpStream, Codec>;

pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Socket> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    // Read the handshake answer byte by byte so no frame bytes are consumed with it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            bail!("connection closed during the handshake");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        bail!("handshake refused: {}", String::from_utf8_lossy(&head));
    }
    Ok(Framed::new(
        stream,
        Codec::new().client_mode().max_size(64 << 20),
    ))
}

async fn next_data(socket: &mut Socket) -> anyhow::Result<Bytes> {
    loop {
        match socket.next().await.context("socket ended")?? {
            Frame::Text(b) | Frame::Binary(b) => return Ok(b),
            Frame::Close(reason) => bail!("closed: {reason:?}"),
            _ => {}
        }
    }
}

/// Round-trip times (µs) of `count` small text messages echoed one at a time.
pub async fn echo_rtt(socket: &mut Socket, count: usize) -> anyhow::Result<Vec<u64>> {
    let mut rtts = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        socket
            .send(Message::Text(format!("ping {i:08}").into()))
            .await?;
        next_data(socket).await?;
        rtts.push(t.elapsed().as_micros() as u64);
    }
    Ok(rtts)
}

/// MiB/s for `messages` 1 MiB binary messages echoed back (counting one direction).
pub async fn echo_throughput(socket: &mut Socket, messages: usize) -> anyhow::Result<f64> {
    let payload = Bytes::from(vec![0x42u8; 1 << 20]);
    let t = Instant::now();
    // Keep a few in flight so both directions are busy.
    let window = 4.min(messages);
    for _ in 0..window {
        socket.send(Message::Binary(payload.clone())).await?;
    }
    let mut sent = window;
    for _ in 0..messages {
        let echo = next_data(socket).await?;
        if echo.len() != payload.len() {
            bail!("echo of {} bytes", echo.len());
        }
        if sent < messages {
            socket.send(Message::Binary(payload.clone())).await?;
            sent += 1;
        }
    }
    let secs = t.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    Ok(messages as f64 / secs)
}
