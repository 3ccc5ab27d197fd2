//! The model relay's cost, in process: time to the first streamed token of a chat
//! completion, from a provider of our own directly and through the relay (token checked,
//! budget checked, `stream_options.include_usage` added, the key swapped, the answer read for
//! usage on its way). Goal: under 1 ms added at p50.
//!
//! The provider answers at once with a first chunk, then its usage a few milliseconds later;
//! the client sends a ~2 KiB request on a fresh connection each time (to the provider and to
//! the relay alike; the relay keeps its own connections to the provider), notes when the
//! first `data:` line arrives, and reads the answer to its end.
//!
//! Run: `cargo run --release -p chamberlain-bench -- relay [--requests N]`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use bytes::Bytes;
use chamberlain::relay::metrics::LlmMetrics;
use chamberlain::relay::usage::UsageBook;
use chamberlain::relay::{Relay, RelayClient, ANSWER_TIMEOUT};
use chamberlain_actors::llm::{Grant, Grants, KeyHeader, RelayedProvider};

use crate::percentile;

const TOKEN: &str = "bench-token";

/// Serves `app` on a loopback port of its own, on a thread with its own actix system.
fn serve<F>(app: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || App::new().configure(app.clone()))
                .workers(1)
                .disable_signals()
                .bind("127.0.0.1:0");
            match server {
                Ok(server) => {
                    let _ = tx.send(Ok(server.addrs()[0]));
                    let _ = server.run().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    });
    Ok(rx.recv_timeout(Duration::from_secs(30))??)
}

/// A provider: the first chunk at once, the usage 5 ms later.
fn provider(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/chat/completions",
        web::post().to(|_body: Bytes| async {
            let first = Bytes::from_static(
                b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            );
            let stream = futures_util::stream::unfold(0u8, move |i| {
                let first = first.clone();
                async move {
                    match i {
                        0 => Some((Ok::<_, actix_web::Error>(first), 1)),
                        1 => {
                            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
                            Some((
                                Ok(Bytes::from_static(
                                    b"data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n",
                                )),
                                2,
                            ))
                        }
                        _ => None,
                    }
                }
            });
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(stream)
        }),
    );
}

/// Microseconds from sending the request to the first `data:` of the answer.
fn first_token(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<u64> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let t0 = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            anyhow::bail!("the answer ended before its first token");
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(5).any(|w| w == b"data:") {
            break;
        }
    }
    let first = t0.elapsed().as_micros() as u64;
    // Read the answer to its end, as OpenCode does: the call is over only then (and the
    // relay allows a user only so many at once).
    while stream.read(&mut buf)? > 0 {}
    Ok(first)
}

pub fn run(requests: usize) -> anyhow::Result<()> {
    let upstream = serve(provider)?;
    let grants = Grants::default();
    let providers = BTreeMap::from([(
        "mock".to_owned(),
        RelayedProvider {
            id: "mock".into(),
            upstream: format!("http://{upstream}/v1"),
            key: "sk-bench".into(),
            header: KeyHeader::Bearer,
        },
    )]);
    grants.insert(
        TOKEN.to_owned(),
        Grant {
            user_id: "bench".into(),
            providers: Arc::new(providers),
        },
    );
    let dir = tempfile::tempdir()?;
    let state = web::Data::new(Relay {
        grants,
        lookup: None,
        usage: Arc::new(UsageBook::open(dir.path().join("usage.json"))?),
        daily_tokens: u64::MAX,
        metrics: LlmMetrics::default(),
        prices: Default::default(),
        calls: Default::default(),
        timeout: ANSWER_TIMEOUT,
    });
    let relay = serve(move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(state.clone())
            .app_data(web::Data::new(RelayClient::new(ANSWER_TIMEOUT)))
            .configure(chamberlain::relay::configure);
    })?;

    let body = serde_json::json!({
        "model": "m",
        "stream": true,
        "messages": [{"role": "user", "content": "x".repeat(2000)}],
    })
    .to_string();
    // Warm up both paths (the relay's pooled connection to the provider included).
    for _ in 0..50 {
        first_token(upstream, "/v1/chat/completions", &body).context("direct")?;
        first_token(relay, "/mock/chat/completions", &body).context("relay")?;
    }
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    for _ in 0..requests {
        direct.push(first_token(upstream, "/v1/chat/completions", &body)?);
        relayed.push(first_token(relay, "/mock/chat/completions", &body)?);
    }
    direct.sort_unstable();
    relayed.sort_unstable();
    let (d50, d99) = (percentile(&direct, 50.0), percentile(&direct, 99.0));
    let (r50, r99) = (percentile(&relayed, 50.0), percentile(&relayed, 99.0));
    println!("model relay, time to first token over {requests} streamed chat completions");
    println!("  direct  p50 {d50:>6} µs  p99 {d99:>6} µs");
    println!(
        "  relay   p50 {r50:>6} µs  p99 {r99:>6} µs  (added p50 {} µs; goal < 1000 µs)",
        r50 as i64 - d50 as i64
    );
    Ok(())
}
