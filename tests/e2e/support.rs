//! Starting a real `chamberlain` process for a test and talking to it as a client would.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use awc::error::SendRequestError;
use awc::http::header::HeaderMap;
use awc::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::Value;

pub use crate::gateway_process::PATIENCE;
use crate::gateway_process::{field, serve_command, GatewayProcess, UidBlock};

pub const FAKE: &str = env!("CARGO_BIN_EXE_fake-opencode");
const GATEWAY: &str = env!("CARGO_BIN_EXE_chamberlain");

/// The uids of this run's gateways. Two runs on one host (two checkouts) set
/// `CHAMBERLAIN_TEST_UID_BASE` apart; benchmarks take theirs elsewhere.
pub const UIDS: UidBlock = UidBlock {
    variable: "CHAMBERLAIN_TEST_UID_BASE",
    default: 300_000,
};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// Asks `probe` until it answers `Ok`, a moment apart, for up to `within`; then gives the last
/// `Err` it answered (what it saw instead). A bound, not a timing: a machine loaded with
/// other builds makes everything slow, so `within` is generous ([`PATIENCE`] or more).
pub async fn poll_until<T, E>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(found) => return Ok(found),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => actix_web::rt::time::sleep(POLL).await,
        }
    }
}

/// [`poll_until`], failing the test with `what` was awaited and what was seen last.
pub async fn eventually<T, E: std::fmt::Display>(
    what: &str,
    within: Duration,
    probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    poll_until(within, probe).await.unwrap_or_else(|seen| {
        panic!("still waiting after {within:?} for: {what}; last seen: {seen}")
    })
}

/// The pinned real OpenCode: `CHAMBERLAIN_TEST_OPENCODE`, else the repository's
/// `node_modules/.bin/opencode` (installed by `npm ci`). Missing is a test failure, not a skip.
pub fn real_opencode() -> PathBuf {
    if let Some(path) = std::env::var_os("CHAMBERLAIN_TEST_OPENCODE") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/opencode");
    assert!(
        path.exists(),
        "the real OpenCode is required for these tests: run `npm install` in the repository \
         (or set CHAMBERLAIN_TEST_OPENCODE); looked for {}",
        path.display()
    );
    path
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

pub struct Gateway {
    /// First, so that the gateway has ended before its data directory is removed.
    process: GatewayProcess,
    pub pid: u32,
    pub base: String,
    /// The TCP admin listener's base URL (`none` when it is off).
    pub admin: String,
    /// The operator token of the TCP admin listener.
    pub admin_token: Option<String>,
    pub data: tempfile::TempDir,
    pub client: awc::Client,
    /// How it was started, for [`Gateway::restart`].
    started: Started,
}

#[derive(Clone)]
struct Started {
    opencode: PathBuf,
    /// Its arguments, with those the start added (listeners, uid range).
    args: Vec<String>,
    env: Vec<(String, String)>,
    run_as: Option<u32>,
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .disable_redirects()
        .finish()
}

impl Gateway {
    /// A gateway in front of the fake OpenCode; `args` go to `chamberlain serve`.
    pub fn fake(args: &[&str]) -> Gateway {
        Gateway::start(Path::new(FAKE), args, &[])
    }

    /// A gateway in front of the real, pinned OpenCode (started with `--pure`).
    pub fn real(args: &[&str]) -> Gateway {
        let mut all = vec!["--opencode-arg=--pure"];
        all.extend_from_slice(args);
        Gateway::start(&real_opencode(), &all, &[])
    }

    pub fn start(opencode: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::start_as(opencode, args, env, None)
    }

    /// The real OpenCode behind a gateway with `env` added to its environment, running as
    /// `run_as` (a uid, with a group of the same number) instead of the test's own user if
    /// given; the data directory is then handed to that uid.
    pub fn real_with(args: &[&str], env: &[(&str, &str)], run_as: Option<u32>) -> Gateway {
        let mut all = vec!["--opencode-arg=--pure"];
        all.extend_from_slice(args);
        Gateway::start_as(&real_opencode(), &all, env, run_as)
    }

    fn start_as(
        opencode: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        run_as: Option<u32>,
    ) -> Gateway {
        let data = tempfile::tempdir().expect("temp dir");
        if let Some(uid) = run_as {
            std::os::unix::fs::chown(data.path(), Some(uid), Some(uid)).expect("chown data dir");
        }
        let started = Started {
            opencode: opencode.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            run_as,
        };
        Gateway::spawn_in(data, started)
    }

    /// The same gateway again, on the same data directory, once this one has exited.
    pub fn restart(mut self) -> Gateway {
        assert!(
            self.process.has_exited(),
            "restart after the gateway has exited"
        );
        let Gateway { data, started, .. } = self;
        Gateway::spawn_in(data, started)
    }

    fn spawn_in(data: tempfile::TempDir, mut started: Started) -> Gateway {
        let args: Vec<&str> = started.args.iter().map(String::as_str).collect();
        let (mut command, added) = serve_command(
            Path::new(GATEWAY),
            &started.opencode,
            data.path(),
            &args,
            &UIDS,
        );
        command
            .args(["--log", "info,chamberlain=debug,chamberlain_actors=debug"])
            .envs(started.env.iter().map(|(k, v)| (k, v)));
        if let Some(uid) = started.run_as {
            use std::os::unix::process::CommandExt;
            // std drops root's supplementary groups when it sets the uid.
            command.uid(uid).gid(uid);
        }
        let mut process = GatewayProcess::spawn(command).expect("start chamberlain");
        let listening = process
            .wait_listening(PATIENCE)
            .unwrap_or_else(|e| panic!("{e}"));
        // Generated at every start, or the one the test named.
        let token_file = args
            .iter()
            .position(|a| *a == "--admin-token-file")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| data.path().join("state/admin-token"));
        let admin_token = std::fs::read_to_string(token_file)
            .ok()
            .map(|t| t.trim().to_owned());
        started.args.extend(added);
        Gateway {
            pid: process.pid(),
            process,
            base: listening.public,
            admin: listening.admin,
            admin_token,
            data,
            client: client(),
            started,
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until a line of the log satisfies `found`: the log is read by a thread of its
    /// own, a moment behind the gateway (and after the gateway's answer).
    pub async fn wait_log(&self, what: &str, found: impl Fn(&str) -> bool) {
        eventually(&format!("a log line: {what}"), PATIENCE, async || {
            let log = self.log();
            if log.lines().any(&found) {
                Ok(())
            } else {
                Err(format!("the log:\n{log}"))
            }
        })
        .await
    }

    /// [`Gateway::wait_log`] for a line containing `text`.
    pub async fn wait_log_contains(&self, text: &str) {
        self.wait_log(text, |line| line.contains(text)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn request(
        &self,
        method: Method,
        user: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Response {
        let build = || {
            // A connection per request: reusing a kept-alive one the gateway had just closed
            // failed requests with "connector has been disconnected" on a loaded machine
            // (seen after a refused PUT whose body the gateway did not read).
            let mut req = self
                .client
                .request(method.clone(), self.url(path))
                .force_close();
            if let Some(user) = user {
                req = req.insert_header(("x-chamberlain-dev-user", user));
            }
            for (k, v) in headers {
                req = req.append_header((*k, *v));
            }
            req
        };
        let mut resp = match body {
            Some(b) => build()
                .send_body(b)
                .await
                .unwrap_or_else(|e| panic!("{path}: request failed: {e}")),
            None if method.is_safe() => resend(path, async || build().send().await).await,
            None => build()
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}: request failed: {e}")),
        };
        let body = resp
            .body()
            .limit(256 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("{path}: body failed: {e}"));
        Response {
            status: resp.status(),
            headers: resp.headers().clone(),
            body,
        }
    }

    pub async fn get(&self, user: &str, path: &str) -> Response {
        self.request(Method::GET, Some(user), path, &[], None).await
    }

    pub async fn get_with(&self, user: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request(Method::GET, Some(user), path, headers, None)
            .await
    }

    pub async fn post(&self, user: &str, path: &str) -> Response {
        self.request(
            Method::POST,
            Some(user),
            path,
            &[("content-type", "application/json")],
            Some(Bytes::from_static(b"{}")),
        )
        .await
    }

    /// An operator's request to the TCP admin listener (with the token).
    pub async fn admin_request(&self, method: Method, path: &str) -> Response {
        let bearer = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("authorization", b))
            .into_iter()
            .collect();
        self.admin_request_with(method, path, &headers).await
    }

    /// A request to the TCP admin listener with exactly `headers`.
    pub async fn admin_request_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let build = || {
            let mut req = self
                .client
                .request(method.clone(), format!("{}{path}", self.admin))
                .force_close();
            for (k, v) in headers {
                req = req.insert_header((*k, *v));
            }
            req
        };
        let mut resp = if method.is_safe() {
            resend(&format!("admin {path}"), async || build().send().await).await
        } else {
            build()
                .send()
                .await
                .unwrap_or_else(|e| panic!("admin {path}: {e}"))
        };
        let body = resp
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .expect("admin body");
        Response {
            status: resp.status(),
            headers: resp.headers().clone(),
            body,
        }
    }

    pub async fn stats(&self) -> Value {
        let resp = self.admin_request(Method::GET, "/stats").await;
        assert_eq!(resp.status, StatusCode::OK, "/stats: {}", resp.text());
        resp.json()
    }

    pub async fn metrics(&self) -> String {
        self.admin_request(Method::GET, "/metrics").await.text()
    }

    pub async fn user(&self, user: &str) -> Option<Value> {
        self.stats().await["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["userId"] == user).cloned())
    }

    pub async fn state(&self, user: &str) -> String {
        self.user(user)
            .await
            .map(|u| u["state"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| "absent".to_owned())
    }

    /// Polls `/stats` until `check` holds for the user's entry (an upper bound, not a timing
    /// assertion: it only fails when the state is never reached).
    pub async fn wait_user(&self, user: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        poll_until(PATIENCE, async || match self.user(user).await {
            Some(entry) if check(&entry) => Ok(entry),
            Some(entry) => Err(format!("last: {entry}")),
            None => Err("no such user".to_owned()),
        })
        .await
        .unwrap_or_else(|seen| panic!("{user}: never {what}; {seen}\nlog:\n{}", self.log()))
    }

    pub async fn wait_state(&self, user: &str, state: &str) -> Value {
        self.wait_user(user, &format!("reached {state}"), |u| u["state"] == state)
            .await
    }

    /// Sends SIGTERM and waits for the gateway to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
    }

    /// Sends `signal` (unless it has exited already) and waits for the gateway to exit.
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        self.process
            .signal_and_wait(signal, PATIENCE)
            .unwrap_or_else(|e| panic!("after {signal}: {e}"))
    }

    /// Waits (bounded) until the log shows at least `n` spawned processes; returns them.
    pub async fn wait_spawned(&self, n: usize) -> Vec<u32> {
        poll_until(PATIENCE, async || {
            let pids = self.spawned_pids();
            if pids.len() >= n {
                Ok(pids)
            } else {
                Err(pids)
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never spawned {n} processes:\n{}", self.log()))
    }

    /// Pids of OpenCode processes the gateway spawned, from its log.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.log()
            .lines()
            .filter(|l| l.contains("spawned OpenCode"))
            .filter_map(|l| field(l, "pid="))
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// Sends a request that may be sent again (a safe method, no body) until the gateway
/// answers it, for up to [`PATIENCE`]: a connection that ends before any answer (refused,
/// reset, closed on a loaded machine) is not the answer a test is waiting for. Any other
/// failure fails the test at once.
async fn resend(
    what: &str,
    mut send: impl AsyncFnMut() -> Result<awc::ClientResponse, SendRequestError>,
) -> awc::ClientResponse {
    poll_until(PATIENCE, async || match send().await {
        Ok(resp) => Ok(resp),
        Err(e @ (SendRequestError::Connect(_) | SendRequestError::Send(_))) => Err(e),
        Err(e) => panic!("{what}: request failed: {e}"),
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: request failed for {PATIENCE:?}: {e}"))
}

/// Runs `chamberlain serve` with `args` (plus loopback listeners on free ports, a fresh data
/// directory and the fake OpenCode, where `args` do not say otherwise) until it exits, which
/// it must do within [`PATIENCE`]; returns its status and what it printed on stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let data = tempfile::tempdir().expect("temp dir");
    let (command, _) = serve_command(
        Path::new(GATEWAY),
        Path::new(FAKE),
        data.path(),
        args,
        &UIDS,
    );
    let mut process = GatewayProcess::spawn(command).expect("start chamberlain");
    let status = process
        .wait_exit(PATIENCE)
        .unwrap_or_else(|e| panic!("chamberlain {args:?}: {e}"));
    (status, process.finished_log())
}

/// Live processes whose real uid is `uid`.
pub fn pids_of_uid(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|rest| rest.split_whitespace().next())
                    == Some(uid.to_string().as_str())
            })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Peak resident memory of `pid` in bytes.
pub fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

/// Waits (bounded) for `pid` to be gone.
pub async fn wait_gone(pid: u32) -> bool {
    poll_until(PATIENCE, async || if alive(pid) { Err(()) } else { Ok(()) })
        .await
        .is_ok()
}

pub fn as_u64(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The value of one sample line in Prometheus text, or 0 if absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A response being read chunk by chunk (event streams, progress).
pub struct Stream {
    response: awc::ClientResponse,
}

impl Stream {
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The next chunk as text, `None` at the end; fails if nothing arrives within
    /// [`PATIENCE`].
    pub async fn next_chunk(&mut self) -> Option<String> {
        use futures_util::StreamExt;
        actix_web::rt::time::timeout(PATIENCE, self.response.next())
            .await
            .unwrap_or_else(|_| panic!("no chunk within {PATIENCE:?}"))
            .map(|c| String::from_utf8_lossy(&c.expect("chunk")).into_owned())
    }

    /// Everything until the stream ends.
    pub async fn read_to_end(&mut self) -> String {
        let mut text = String::new();
        while let Some(chunk) = self.next_chunk().await {
            text.push_str(&chunk);
        }
        text
    }

    /// Reads until the text so far contains every one of `needles`.
    pub async fn read_until(&mut self, needles: &[&str]) -> String {
        let mut text = String::new();
        while !needles.iter().all(|n| text.contains(n)) {
            let chunk = self.next_chunk().await;
            text.push_str(
                &chunk.unwrap_or_else(|| panic!("stream ended before {needles:?}: {text}")),
            );
        }
        text
    }
}

impl Gateway {
    /// Opens a streaming GET as `user` with extra `headers`.
    pub async fn stream(&self, user: &str, path: &str, headers: &[(&str, &str)]) -> Stream {
        let response = resend(path, async || {
            let mut req = self
                .client
                .get(self.url(path))
                .force_close()
                .insert_header(("x-chamberlain-dev-user", user));
            for (k, v) in headers {
                req = req.insert_header((*k, *v));
            }
            req.send().await
        })
        .await;
        Stream { response }
    }
}

/// A websocket client connection (awc, client mode).
pub type Socket = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

impl Gateway {
    /// Opens a websocket through the gateway as `user` (no user: no identity). A handshake
    /// whose connection ends before any answer is tried again, as [`resend`] does.
    pub async fn ws(
        &self,
        user: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(awc::ClientResponse, Socket), awc::error::WsClientError> {
        use awc::error::WsClientError;
        let url = format!("{}{path}", self.base.replacen("http://", "ws://", 1));
        let connect = async || {
            let mut req = self.client.ws(url.as_str()).max_frame_size(64 << 20);
            if let Some(user) = user {
                req = req.header("x-chamberlain-dev-user", user);
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.connect().await
        };
        let answered = poll_until(PATIENCE, async || match connect().await {
            Err(WsClientError::SendRequest(
                e @ (SendRequestError::Connect(_) | SendRequestError::Send(_)),
            )) => Err(WsClientError::SendRequest(e)),
            answered => Ok(answered),
        })
        .await;
        answered.unwrap_or_else(Err)
    }

    /// The HTTP status a refused websocket handshake got.
    pub async fn ws_refused(
        &self,
        user: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> StatusCode {
        match self.ws(user, path, headers).await {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status,
            Err(other) => panic!("{path}: unexpected error {other}"),
            Ok(_) => panic!("{path}: the websocket was accepted"),
        }
    }
}

/// The next frame, failing the test if none arrives within [`PATIENCE`].
pub async fn next_frame(socket: &mut Socket) -> Option<awc::ws::Frame> {
    use futures_util::StreamExt;
    actix_web::rt::time::timeout(PATIENCE, socket.next())
        .await
        .unwrap_or_else(|_| panic!("no websocket frame within {PATIENCE:?}"))
        .map(|f| f.expect("websocket frame"))
}

/// Reads frames until a close frame; returns its reason and the data bytes read before it.
pub async fn read_until_close(socket: &mut Socket) -> (Option<awc::ws::CloseReason>, usize) {
    let mut data = 0;
    loop {
        match next_frame(socket).await {
            Some(awc::ws::Frame::Close(reason)) => return (reason, data),
            Some(awc::ws::Frame::Binary(b) | awc::ws::Frame::Text(b)) => data += b.len(),
            Some(_) => {}
            None => panic!("socket ended without a close frame after {data} bytes"),
        }
    }
}

pub async fn send(socket: &mut Socket, message: awc::ws::Message) {
    use futures_util::SinkExt;
    socket.send(message).await.expect("websocket send");
}

/// Creates a terminal for `user` through the gateway; returns its id.
pub async fn create_pty(gw: &Gateway, user: &str) -> String {
    let pty = gw.post(user, "/pty").await;
    assert_eq!(pty.status, StatusCode::OK, "{}", pty.text());
    pty.json()["id"].as_str().expect("pty id").to_owned()
}

/// Reads terminal output until `found` accepts it (bounded by `next_frame`'s timeout).
pub async fn read_terminal(socket: &mut Socket, found: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    while !found(&out) {
        match next_frame(socket).await {
            Some(awc::ws::Frame::Text(b) | awc::ws::Frame::Binary(b)) => {
                out.push_str(&String::from_utf8_lossy(&b))
            }
            Some(awc::ws::Frame::Ping(p)) => send(socket, awc::ws::Message::Pong(p)).await,
            Some(awc::ws::Frame::Close(reason)) => {
                panic!("terminal closed ({reason:?}); output: {out}")
            }
            Some(_) => {}
            None => panic!("terminal ended; output: {out}"),
        }
    }
    out
}

/// An interactive terminal of one user through the gateway, driven like a person typing.
pub struct Terminal {
    socket: Socket,
}

impl Terminal {
    pub async fn open(gw: &Gateway, user: &str) -> Terminal {
        let id = create_pty(gw, user).await;
        let (_, socket) = gw
            .ws(Some(user), &format!("/pty/{id}/connect"), &[])
            .await
            .expect("terminal websocket");
        Terminal { socket }
    }

    /// Runs `script` and returns what it printed and its exit status. The markers are
    /// typed split in two, so the echo of the typed line never matches them.
    pub async fn run(&mut self, script: &str) -> (String, i32) {
        let line = format!(
            "printf '%s\\n' \"CH-\"\"BEGIN\"; {script}; printf '%s %s\\n' \"CH-\"\"END\" \"$?\"\n"
        );
        send(&mut self.socket, awc::ws::Message::Text(line.into())).await;
        let out = read_terminal(&mut self.socket, |o| end_status(o).is_some()).await;
        let status = end_status(&out).unwrap_or(-1);
        let begin = out.rfind("CH-BEGIN").map_or(0, |i| i + "CH-BEGIN".len());
        let end = out.rfind("CH-END").unwrap_or(out.len()).max(begin);
        (out[begin..end].trim().to_owned(), status)
    }
}

fn end_status(out: &str) -> Option<i32> {
    let at = out.rfind("CH-END ")?;
    let digits: String = out[at + 7..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One HTTP/1.1 request over a Unix socket (the admin socket): the status and the body.
pub fn unix_request(socket: &Path, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}
