//! A minimal HTTP/1.1 client for load generation: keep-alive, Content-Length or chunked
//! responses, no allocation per request beyond the latency sample.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Reads one response with a Content-Length body; returns the body.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = &buf[..end];
            if !head.starts_with(b"HTTP/1.1 200") {
                bail!("unexpected response: {}", String::from_utf8_lossy(head));
            }
            let len = content_length(head).context("response without Content-Length")?;
            let total = end + 4 + len;
            while buf.len() < total {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Ok(body);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a fresh connection.
pub async fn fetch(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf).await
}

/// `connections` keep-alive connections sending `request` back to back for `duration`;
/// returns every request's latency in µs.
pub async fn hammer(
    addr: SocketAddr,
    request: &[u8],
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + duration;
    let request: std::sync::Arc<[u8]> = request.into();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let request = std::sync::Arc::clone(&request);
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut buf = Vec::with_capacity(16 * 1024);
                let mut latencies = Vec::with_capacity(100_000);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    stream.write_all(&request).await?;
                    read_response(&mut stream, &mut buf).await?;
                    latencies.push(t.elapsed().as_micros() as u64);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Opens an event stream and returns, for `count` events, the delay between the upstream's
/// `sentUs` timestamp and the moment the event was read here.
pub async fn event_latencies(
    addr: SocketAddr,
    request: &[u8],
    count: usize,
    now_us: fn() -> u64,
) -> anyhow::Result<Vec<u64>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut latencies = Vec::with_capacity(count);
    const MARK: &[u8] = b"\"sentUs\":";
    while latencies.len() < count {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("event stream closed");
        }
        let now = now_us();
        buf.extend_from_slice(&chunk[..n]);
        while let Some(at) = find(&buf, MARK) {
            let digits: Vec<u8> = buf[at + MARK.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            if at + MARK.len() + digits.len() >= buf.len() {
                break; // the number may continue in the next read
            }
            let sent: u64 = std::str::from_utf8(&digits)?.parse()?;
            latencies.push(now.saturating_sub(sent));
            buf.drain(..at + MARK.len() + digits.len());
        }
    }
    Ok(latencies)
}
