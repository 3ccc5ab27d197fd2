//! A fake `opencode serve` for the gateway's integration tests and benchmarks.
//!
//! It behaves like OpenCode where the gateway cares (the start line, Basic auth with
//! `OPENCODE_SERVER_PASSWORD`, `/global/health`, a few JSON routes, an event stream) and can
//! be told to misbehave:
//!
//! `--fake-start-delay-ms=N`   sleep before listening
//! `--fake-no-listen`          never print the start line
//! `--fake-crash-after-ms=N`   exit with status 3, N ms after listening
//! `--fake-hang-health`        `/global/health` never answers
//! `--fake-ignore-sigterm`     ignore SIGTERM (only SIGKILL stops it)
//! `--fake-spawn-child`        start `sleep 1000` (in the same process group)
//! `--fake-spawn-session-child` start `sleep 1000` in a session of its own, like a terminal
//!
//! Websockets at `/ws` (anything else upgrading gets 404): frames are echoed unchanged; a text
//! frame `close:CODE:REASON` makes it close with that code; `?flood=MIB` sends that many MiB
//! of binary frames without reading; `?tick_ms=N` sends a text frame every N ms; `?ping=1`
//! pings the client first; `?headers=1` sends the handshake's request headers as the first
//! frame; the subprotocol `chamberlain.test` is accepted when offered. `GET /ws/stats` reports
//! open sockets, pongs received and the last close code received.
//!
//! Other arguments (`serve`, `--hostname`, `--port`, `--pure`) are accepted and ignored.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_http::ws;
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

#[derive(Default, Clone)]
struct Knobs {
    start_delay: Duration,
    no_listen: bool,
    crash_after: Option<Duration>,
    hang_health: bool,
    ignore_sigterm: bool,
    spawn_child: bool,
    spawn_session_child: bool,
}

fn parse_knobs() -> Knobs {
    let mut knobs = Knobs::default();
    for arg in std::env::args().skip(1) {
        let (name, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        let ms = || Duration::from_millis(value.parse().unwrap_or(0));
        match name {
            "--fake-start-delay-ms" => knobs.start_delay = ms(),
            "--fake-no-listen" => knobs.no_listen = true,
            "--fake-crash-after-ms" => knobs.crash_after = Some(ms()),
            "--fake-hang-health" => knobs.hang_health = true,
            "--fake-ignore-sigterm" => knobs.ignore_sigterm = true,
            "--fake-spawn-child" => knobs.spawn_child = true,
            "--fake-spawn-session-child" => knobs.spawn_session_child = true,
            _ => {}
        }
    }
    knobs
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct State {
    password: Option<String>,
    knobs: Knobs,
    started_at_us: u64,
    listening_at_us: AtomicU64,
    child_pid: Option<u32>,
    session_child_pid: Option<u32>,
    sessions: Mutex<Vec<Value>>,
    events: broadcast::Sender<String>,
    server: Mutex<Option<ServerHandle>>,
    ws_open: AtomicU64,
    ws_pongs: AtomicU64,
    ws_last_close: Mutex<Option<u16>>,
}

fn authorized(req: &HttpRequest, state: &State) -> bool {
    let Some(password) = &state.password else {
        return true;
    };
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("opencode:{password}"))
    );
    req.headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes())
}

async fn guard(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<State>>()
        .cloned()
        .expect("state is registered");
    if !authorized(req.request(), &state) {
        let resp = HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"Secure Area\""))
            .finish();
        return Ok(req.into_response(resp));
    }
    next.call(req).await
}

async fn health(state: web::Data<State>) -> HttpResponse {
    if state.knobs.hang_health {
        futures_util::future::pending::<()>().await;
    }
    HttpResponse::Ok().json(json!({"healthy": true, "version": "fake"}))
}

async fn list_sessions(state: web::Data<State>) -> HttpResponse {
    let sessions = state.sessions.lock().map(|s| s.clone()).unwrap_or_default();
    HttpResponse::Ok().json(sessions)
}

async fn create_session(state: web::Data<State>) -> HttpResponse {
    let id = format!("ses_fake_{}", now_us());
    let session = json!({"id": id, "directory": std::env::current_dir().ok()});
    if let Ok(mut sessions) = state.sessions.lock() {
        sessions.push(session.clone());
    }
    let _ = state
        .events
        .send(json!({"type": "session.created", "properties": {"sessionID": id}}).to_string());
    HttpResponse::Ok().json(session)
}

/// `/event`: `server.connected`, then broadcast events; `?tick_ms=N` adds timestamped ticks;
/// `?partial=1` sends half a line first and then stays silent.
async fn events(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let tick = query
        .get("tick_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let first = if query.contains_key("partial") {
        "data: {\"type\":\"partial\",".to_owned()
    } else {
        format!(
            "data: {}\n\n",
            json!({"type": "server.connected", "properties": {}})
        )
    };
    let rx = state.events.subscribe();
    let updates = futures_util::stream::unfold((rx, tick), |(mut rx, tick)| async move {
        let next = match tick {
            Some(period) => {
                tokio::time::sleep(period).await;
                json!({"type": "tick", "sentUs": now_us()}).to_string()
            }
            None => loop {
                match rx.recv().await {
                    Ok(event) => break event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        };
        Some((
            Ok::<_, actix_web::Error>(Bytes::from(format!("data: {next}\n\n"))),
            (rx, tick),
        ))
    });
    let stream = futures_util::stream::once(async move { Ok(Bytes::from(first)) }).chain(updates);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(stream)
}

async fn env(state: web::Data<State>) -> HttpResponse {
    let vars: HashMap<String, String> = std::env::vars().collect();
    HttpResponse::Ok().json(json!({
        "pid": std::process::id(),
        "cwd": std::env::current_dir().ok(),
        "env": vars,
        "startedAtUs": state.started_at_us,
        "listeningAtUs": state.listening_at_us.load(Ordering::Relaxed),
        "childPid": state.child_pid,
        "sessionChildPid": state.session_child_pid,
    }))
}

/// The request's headers as `[name, value]` pairs, repeated headers included.
fn header_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn echo(req: HttpRequest, mut body: web::Payload) -> HttpResponse {
    if req.headers().contains_key(header::UPGRADE) {
        return HttpResponse::NotFound().body("no websocket here");
    }
    let mut len = 0usize;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => len += c.len(),
            Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
        }
    }
    let headers = header_pairs(&req);
    HttpResponse::Ok().json(json!({
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "bodyLen": len,
    }))
}

/// FNV-1a over a byte stream, so tests can compare what was sent with what arrived.
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}
const FNV_START: u64 = 0xcbf29ce484222325;

async fn upload(mut body: web::Payload) -> HttpResponse {
    let (mut len, mut hash) = (0u64, FNV_START);
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                len += c.len() as u64;
                hash = fnv(hash, &c);
            }
            Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
        }
    }
    HttpResponse::Ok().json(json!({"bytes": len, "fnv": format!("{hash:016x}")}))
}

/// The deterministic content of `/download`: byte i is `(i * 7 + i / 251) % 256`.
fn pattern(offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| {
            let i = offset + i;
            ((i * 7 + i / 251) % 256) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn download(req: HttpRequest, query: web::Query<HashMap<String, String>>) -> HttpResponse {
    let total: u64 = query.get("bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
    let chunked = query.contains_key("chunked");
    const CHUNK: u64 = 64 * 1024;
    let stream = futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let len = CHUNK.min(total - offset);
        Some((
            Ok::<_, actix_web::Error>(pattern(offset, len as usize)),
            offset + len,
        ))
    });
    let mut builder = HttpResponse::Ok();
    builder.content_type("application/octet-stream");
    if req.method() == actix_web::http::Method::HEAD {
        let empty = futures_util::stream::empty::<Result<Bytes, actix_web::Error>>();
        return builder.body(actix_web::body::SizedStream::new(total, empty));
    }
    if chunked {
        builder.streaming(stream)
    } else {
        builder.body(actix_web::body::SizedStream::new(total, Box::pin(stream)))
    }
}

async fn slow(query: web::Query<HashMap<String, String>>) -> HttpResponse {
    let ms: u64 = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    HttpResponse::Ok().json(json!({"sleptMs": ms}))
}

async fn stop_listening(state: web::Data<State>) -> HttpResponse {
    let handle = state.server.lock().ok().and_then(|mut h| h.take());
    if let Some(handle) = handle {
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
    HttpResponse::Ok().json(json!({"stopping": true}))
}

/// A grandchild of the gateway: in the instance's process group like a tool OpenCode runs,
/// or in a session of its own like a terminal's shell.
async fn websocket_stats(state: web::Data<State>) -> HttpResponse {
    let last = state.ws_last_close.lock().ok().and_then(|c| *c);
    HttpResponse::Ok().json(json!({
        "open": state.ws_open.load(Ordering::Relaxed),
        "pongs": state.ws_pongs.load(Ordering::Relaxed),
        "lastClose": last,
    }))
}

/// Counts an open socket for `/ws/stats` until dropped.
struct OpenSocket(web::Data<State>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.ws_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn frame(payload: &[u8], op: ws::OpCode, fin: bool) -> Bytes {
    let mut buf = bytes::BytesMut::new();
    ws::Parser::write_message(&mut buf, payload, op, fin, false);
    buf.freeze()
}

fn close_frame(reason: Option<ws::CloseReason>) -> Bytes {
    let mut buf = bytes::BytesMut::new();
    ws::Parser::write_close(&mut buf, reason, false);
    buf.freeze()
}

/// What one client frame makes the fake send back, and whether it is the last.
fn answer(received: ws::Frame, state: &State) -> (Option<Bytes>, bool) {
    match received {
        ws::Frame::Text(text) => {
            if let Some(command) = text.strip_prefix(b"close:") {
                let command = String::from_utf8_lossy(command).into_owned();
                let (code, why) = command.split_once(':').unwrap_or((&command, ""));
                let reason = ws::CloseReason {
                    code: ws::CloseCode::from(code.parse::<u16>().unwrap_or(1000)),
                    description: Some(why.to_owned()),
                };
                return (Some(close_frame(Some(reason))), true);
            }
            (Some(frame(&text, ws::OpCode::Text, true)), false)
        }
        ws::Frame::Binary(data) => (Some(frame(&data, ws::OpCode::Binary, true)), false),
        ws::Frame::Continuation(item) => {
            let (op, fin, data) = match item {
                ws::Item::FirstText(b) => (ws::OpCode::Text, false, b),
                ws::Item::FirstBinary(b) => (ws::OpCode::Binary, false, b),
                ws::Item::Continue(b) => (ws::OpCode::Continue, false, b),
                ws::Item::Last(b) => (ws::OpCode::Continue, true, b),
            };
            (Some(frame(&data, op, fin)), false)
        }
        ws::Frame::Ping(p) => (Some(frame(&p, ws::OpCode::Pong, true)), false),
        ws::Frame::Pong(_) => {
            state.ws_pongs.fetch_add(1, Ordering::Relaxed);
            (None, false)
        }
        ws::Frame::Close(reason) => {
            if let Ok(mut last) = state.ws_last_close.lock() {
                *last = Some(reason.as_ref().map_or(1005, |r| u16::from(r.code)));
            }
            (Some(close_frame(reason)), true)
        }
    }
}

async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    if ws::verify_handshake(req.head()).is_err() {
        return HttpResponse::BadRequest().body("not a websocket handshake");
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return HttpResponse::BadRequest().finish();
    };
    let accept = ws::hash_key(key.as_bytes());
    let mut reply = HttpResponse::SwitchingProtocols();
    reply.upgrade("websocket").insert_header((
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_bytes(&accept).expect("base64 is a valid header"),
    ));
    let offered = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if offered.split(',').any(|p| p.trim() == "chamberlain.test") {
        reply.insert_header((header::SEC_WEBSOCKET_PROTOCOL, "chamberlain.test"));
    }
    state.ws_open.fetch_add(1, Ordering::Relaxed);
    let open = OpenSocket(state.clone());

    let mut first = Vec::new();
    if query.contains_key("headers") {
        let headers = header_pairs(&req);
        first.push(frame(
            json!(headers).to_string().as_bytes(),
            ws::OpCode::Text,
            true,
        ));
    }
    if query.contains_key("ping") {
        first.push(frame(b"are you there", ws::OpCode::Ping, true));
    }
    let first = futures_util::stream::iter(first.into_iter().map(Ok::<_, actix_web::Error>));

    if let Some(mib) = query.get("flood").and_then(|v| v.parse::<usize>().ok()) {
        // Never reads: a client that does not read must be cut off by the gateway.
        let chunk = frame(&vec![0x5a; 64 * 1024], ws::OpCode::Binary, true);
        let flood = futures_util::stream::iter((0..mib * 16).map(move |_| Ok(chunk.clone())));
        let end = futures_util::stream::once(async move {
            drop(open);
            Ok(close_frame(Some(ws::CloseCode::Normal.into())))
        });
        return reply.streaming(first.chain(flood).chain(end));
    }

    let tick = query
        .get("tick_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let inbound = WsFrames {
        payload,
        buf: bytes::BytesMut::new(),
        codec: ws::Codec::new().max_size(64 << 20),
    };
    let echo = futures_util::stream::unfold(
        (inbound, state.clone(), open, false),
        move |(mut inbound, state, open, done)| async move {
            if done {
                return None;
            }
            loop {
                let next = match tick {
                    Some(period) => {
                        tokio::select! {
                            frame = inbound.next() => frame,
                            _ = tokio::time::sleep(period) => {
                                let text = format!("tick {}", now_us());
                                return Some((Ok(frame(text.as_bytes(), ws::OpCode::Text, true)), (inbound, state, open, false)));
                            }
                        }
                    }
                    None => inbound.next().await,
                };
                match next {
                    Some(Ok(f)) => match answer(f, &state) {
                        (Some(bytes), last) => {
                            return Some((Ok(bytes), (inbound, state, open, last)))
                        }
                        (None, _) => continue,
                    },
                    Some(Err(_)) | None => return None,
                }
            }
        },
    );
    reply.streaming(first.chain(echo))
}

/// Client frames of an upgraded request.
struct WsFrames {
    payload: web::Payload,
    buf: bytes::BytesMut,
    codec: ws::Codec,
}

impl WsFrames {
    async fn next(&mut self) -> Option<Result<ws::Frame, ws::ProtocolError>> {
        use tokio_util::codec::Decoder as _;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Err(e) => return Some(Err(e)),
                Ok(None) => {}
            }
            match self.payload.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

fn spawn_sleeper(own_session: bool) -> Option<u32> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("1000");
    if own_session {
        // SAFETY: setsid is async-signal-safe and nothing else runs in the forked child.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd.spawn().ok().map(|c| c.id())
}

fn main() -> std::io::Result<()> {
    let started_at_us = now_us();
    let knobs = parse_knobs();
    eprintln!("fake-opencode: pid {} starting", std::process::id());
    if knobs.ignore_sigterm {
        // SAFETY: installing SIG_IGN has no handler code to be unsafe in.
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::SigHandler::SigIgn,
            )
        }
        .map_err(std::io::Error::from)?;
    }
    let child_pid = knobs.spawn_child.then(|| spawn_sleeper(false)).flatten();
    let session_child_pid = knobs
        .spawn_session_child
        .then(|| spawn_sleeper(true))
        .flatten();
    std::thread::sleep(knobs.start_delay);
    if knobs.no_listen {
        eprintln!("fake-opencode: told not to listen; waiting forever");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (event_tx, _) = broadcast::channel(64);
    let state = web::Data::new(State {
        password: std::env::var("OPENCODE_SERVER_PASSWORD").ok(),
        knobs: knobs.clone(),
        started_at_us,
        listening_at_us: AtomicU64::new(0),
        child_pid,
        session_child_pid,
        sessions: Mutex::new(Vec::new()),
        events: event_tx,
        server: Mutex::new(None),
        ws_open: AtomicU64::new(0),
        ws_pongs: AtomicU64::new(0),
        ws_last_close: Mutex::new(None),
    });

    actix_web::rt::System::new().block_on(async move {
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .wrap(actix_web::middleware::from_fn(guard))
                .route("/global/health", web::get().to(health))
                .route("/session", web::get().to(list_sessions))
                .route("/session", web::post().to(create_session))
                .route("/event", web::get().to(events))
                .route("/global/event", web::get().to(events))
                .route("/env", web::get().to(env))
                .route("/upload", web::post().to(upload))
                .route("/download", web::get().to(download))
                .route("/download", web::head().to(download))
                .route("/slow", web::get().to(slow))
                .route(
                    "/small",
                    web::get().to(|| async { HttpResponse::Ok().body("ok") }),
                )
                .route(
                    "/redirect",
                    web::get().to(|| async {
                        HttpResponse::Found()
                            .insert_header((header::LOCATION, "/elsewhere"))
                            .finish()
                    }),
                )
                .route(
                    "/cookies",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .append_header((header::SET_COOKIE, "a=1; Path=/"))
                            .append_header((header::SET_COOKIE, "b=2; Path=/"))
                            .finish()
                    }),
                )
                .route(
                    "/gzip",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .insert_header((header::CONTENT_ENCODING, "gzip"))
                            .body(Bytes::from_static(b"\x1f\x8b\x08\x00not-really-gzip"))
                    }),
                )
                .route(
                    "/hop",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .insert_header((header::CONNECTION, "x-hop"))
                            .insert_header(("x-hop", "1"))
                            .insert_header(("keep-alive", "timeout=5"))
                            .insert_header(("x-end-to-end", "1"))
                            .finish()
                    }),
                )
                .route("/fake/stop-listening", web::post().to(stop_listening))
                .route("/ws", web::get().to(websocket))
                .route("/ws/stats", web::get().to(websocket_stats))
                .default_service(web::to(echo))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        if let Ok(mut slot) = state.server.lock() {
            *slot = Some(server.handle());
        }
        state.listening_at_us.store(now_us(), Ordering::Relaxed);
        println!("opencode server listening on http://127.0.0.1:{port}");
        std::io::stdout().flush()?;
        if let Some(after) = knobs.crash_after {
            actix_web::rt::spawn(async move {
                tokio::time::sleep(after).await;
                eprintln!("fake-opencode: crashing as told");
                std::process::exit(3);
            });
        }
        server.await?;
        // Told to stop listening: stay alive without a listener.
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}
