//! A model provider of our own for agent work offline: an OpenAI-compatible
//! `POST /v1/chat/completions` that streams its answer as server-sent events, slowly when
//! asked for an agent step (a request with `tools`), at once for a title. It counts the
//! streams it finished and those whose reader went away.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;

#[derive(Default)]
pub struct Counts {
    /// Agent-step streams sent to the end.
    pub finished: AtomicU32,
    /// Agent-step streams begun.
    pub started: AtomicU32,
    /// Pieces of agent steps sent so far (one every `every`: a clock the test can wait on).
    pub pieces: AtomicU32,
    /// Answers begun, agent steps and titles alike (each reports 5 + 5 tokens at its end).
    pub answers: AtomicU32,
    /// Requests that asked for usage in the stream (`stream_options.include_usage`).
    pub asked_for_usage: AtomicU32,
    /// The key every request carried (see [`Counts::keys`]).
    pub keys: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    /// `Bearer …` or `x-api-key …`, per request.
    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().map(|k| k.clone()).unwrap_or_default()
    }

    fn saw_key(&self, req: &actix_web::HttpRequest) {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let key = match (header("authorization"), header("x-api-key")) {
            (Some(auth), _) => auth.to_owned(),
            (None, Some(key)) => format!("x-api-key {key}"),
            (None, None) => String::new(),
        };
        if let Ok(mut keys) = self.keys.lock() {
            keys.push(key);
        }
    }
}

pub struct MockModel {
    pub base_url: String,
    pub counts: Arc<Counts>,
    handle: actix_web::dev::ServerHandle,
}

impl MockModel {
    /// A model whose agent steps stream `chunks` pieces, `every` apart.
    pub fn start(chunks: u32, every: Duration) -> MockModel {
        let counts = Arc::new(Counts::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::clone(&counts);
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let counts = Arc::clone(&shared);
                    let anthropic = Arc::clone(&counts);
                    App::new()
                        .route(
                            "/v1/messages",
                            web::post().to(move |req: actix_web::HttpRequest| {
                                let counts = Arc::clone(&anthropic);
                                counts.saw_key(&req);
                                async move { answer_anthropic(&counts) }
                            }),
                        )
                        .route(
                            "/v1/chat/completions",
                            web::post().to(move |req: actix_web::HttpRequest, body: web::Bytes| {
                                let counts = Arc::clone(&counts);
                                counts.saw_key(&req);
                                async move { answer(&body, chunks, every, counts) }
                            }),
                        )
                })
                .workers(1)
                .disable_signals()
                .bind("127.0.0.1:0")
                .expect("mock model address");
                let addr = server.addrs()[0];
                let server = server.run();
                let _ = tx.send((addr, server.handle()));
                let _ = server.await;
            });
        });
        let (addr, handle) = rx.recv().expect("mock model started");
        MockModel {
            base_url: format!("http://{addr}/v1"),
            counts,
            handle,
        }
    }

    /// OpenCode's config for a provider `mock` with one model `m1` served here.
    /// The org's config for OpenCode's own `anthropic` provider, sent here.
    pub fn anthropic_config(&self) -> String {
        serde_json::json!({
            "model": "anthropic/claude-sonnet-4-5",
            "small_model": "anthropic/claude-sonnet-4-5",
            "provider": {"anthropic": {"options": {"baseURL": self.base_url}}}
        })
        .to_string()
    }

    /// The org's config when the gateway holds the key (`shared/auth/auth.json` has "mock").
    pub fn org_config(&self) -> String {
        serde_json::json!({
            "model": "mock/m1",
            "provider": {"mock": {
                "npm": "@ai-sdk/openai-compatible",
                "options": {"baseURL": self.base_url},
                "models": {"m1": {}}
            }}
        })
        .to_string()
    }

    pub fn opencode_config(&self) -> String {
        serde_json::json!({
            "model": "mock/m1",
            "provider": {"mock": {
                "npm": "@ai-sdk/openai-compatible",
                "options": {"baseURL": self.base_url, "apiKey": "unused"},
                "models": {"m1": {}}
            }}
        })
        .to_string()
    }
}

impl Drop for MockModel {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}

/// An Anthropic messages stream: 7 tokens in, 3 out.
fn answer_anthropic(counts: &Counts) -> HttpResponse {
    counts.answers.fetch_add(1, Ordering::SeqCst);
    let events = [
        (
            "message_start",
            serde_json::json!({"type": "message_start", "message": {
            "id": "msg_mock", "type": "message", "role": "assistant", "model": "claude-mock",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 7, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "hello from the mock"}}),
        ),
        (
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            serde_json::json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 3}}),
        ),
        ("message_stop", serde_json::json!({"type": "message_stop"})),
    ];
    let body: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}

fn chunk(content: Option<&str>, finish: bool) -> Bytes {
    let mut chunk = serde_json::json!({
        "id": "mock", "object": "chat.completion.chunk", "created": 0, "model": "m1",
        "choices": [{"index": 0, "delta": {}, "finish_reason": null}]
    });
    if let Some(text) = content {
        chunk["choices"][0]["delta"] = serde_json::json!({"role": "assistant", "content": text});
    }
    if finish {
        chunk["choices"][0]["finish_reason"] = "stop".into();
        chunk["usage"] =
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10});
    }
    Bytes::from(format!("data: {chunk}\n\n"))
}

fn answer(body: &[u8], chunks: u32, every: Duration, counts: Arc<Counts>) -> HttpResponse {
    let request = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    let step = request.get("tools").is_some();
    counts.answers.fetch_add(1, Ordering::SeqCst);
    if request["stream_options"]["include_usage"] == true {
        counts.asked_for_usage.fetch_add(1, Ordering::SeqCst);
    }
    let (n, pause) = if step {
        counts.started.fetch_add(1, Ordering::SeqCst);
        (chunks, every)
    } else {
        (1, Duration::ZERO)
    };
    let stream = futures_util::stream::unfold(0u32, move |i| {
        let counts = Arc::clone(&counts);
        async move {
            if i > n {
                return None;
            }
            if i < n {
                if i > 0 {
                    actix_web::rt::time::sleep(pause).await;
                }
                if step {
                    counts.pieces.fetch_add(1, Ordering::SeqCst);
                }
                return Some((
                    Ok::<_, actix_web::Error>(chunk(Some(&format!("word{i} ")), false)),
                    i + 1,
                ));
            }
            if step {
                counts.finished.fetch_add(1, Ordering::SeqCst);
            }
            let mut end = chunk(None, true).to_vec();
            end.extend_from_slice(b"data: [DONE]\n\n");
            Some((Ok(Bytes::from(end)), i + 1))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}
