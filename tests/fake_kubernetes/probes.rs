//! Readiness, liveness and startup probes: `httpGet`, `tcpSocket` and `exec`, with the
//! kubelet's thresholds, delays, periods and timeouts.
//!
//! Each probe runs as its own task and reports to the pod's task: a `Verdict` when the probe's
//! state flips (after `successThreshold`/`failureThreshold` results), and `Failed` for the
//! first failure of each run of failures (the kubelet's `Unhealthy` event).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::process::{signal_group, ProcSpec, Spawner};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    pub fn field(self) -> &'static str {
        match self {
            Kind::Startup => "startupProbe",
            Kind::Readiness => "readinessProbe",
            Kind::Liveness => "livenessProbe",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

#[derive(Debug)]
pub enum Report {
    Verdict(Kind, bool),
    Failed(Kind, String),
}

/// Where and as whom probes run.
#[derive(Clone)]
pub struct Target {
    pub ip: String,
    pub ports: Vec<(String, u16)>,
    /// The container's process settings, for `exec` probes.
    pub exec: ProcSpec,
}

/// An I/O error in Go's words, which is what the real kubelet's messages carry.
fn go_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        _ => e.to_string(),
    }
}

fn port(value: &Value, target: &Target) -> Result<u16, String> {
    if let Some(n) = value.as_u64() {
        return u16::try_from(n).map_err(|_| format!("invalid port {n}"));
    }
    let name = value.as_str().unwrap_or("");
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    target
        .ports
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| *p)
        .ok_or_else(|| format!("couldn't find port: {name} in container"))
}

async fn http_get(get: &Value, target: &Target) -> Result<(), String> {
    let host = get["host"].as_str().unwrap_or(&target.ip).to_owned();
    let port = port(&get["port"], target)?;
    let path = get["path"].as_str().unwrap_or("/");
    let scheme = get["scheme"].as_str().unwrap_or("HTTP");
    let url = format!("{}://{host}:{port}{path}", scheme.to_lowercase());
    if scheme != "HTTP" {
        return Err(format!(
            "Get {url:?}: the fake kubelet probes plain HTTP only"
        ));
    }
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| {
            format!(
                "Get {url:?}: dial tcp {host}:{port}: connect: {}",
                go_error(&e)
            )
        })?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n");
    for h in get["httpHeaders"].as_array().into_iter().flatten() {
        let (Some(n), Some(v)) = (h["name"].as_str(), h["value"].as_str()) else {
            continue;
        };
        if !n.contains(['\r', '\n']) && !v.contains(['\r', '\n']) {
            request.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        if n == 0 {
            return Err(format!("Get {url:?}: EOF"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec(
    command: &Value,
    target: &Target,
    spawner: &Spawner,
    timeout: Duration,
) -> Result<(), String> {
    let argv: Vec<String> = command
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let spec = ProcSpec {
        argv,
        log: None,
        ..target.exec.clone()
    };
    let running = spawner
        .spawn(spec)
        .await
        .map_err(|e| format!("exec failed: {e}"))?;
    match tokio::time::timeout(timeout, running.exit).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("command exited with {status}")),
        Ok(Err(_)) => Err("lost the probe process".into()),
        Err(_) => {
            signal_group(running.pid, nix::sys::signal::Signal::SIGKILL);
            Err(format!("command timed out after {}s", timeout.as_secs()))
        }
    }
}

/// One probe attempt.
pub async fn run_once(probe: &Value, target: &Target, spawner: &Spawner) -> Result<(), String> {
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    if let Some(command) = probe["exec"].get("command") {
        return exec(command, target, spawner, timeout).await;
    }
    let attempt = async {
        if probe["httpGet"].is_object() {
            http_get(&probe["httpGet"], target).await
        } else if probe["tcpSocket"].is_object() {
            let host = probe["tcpSocket"]["host"]
                .as_str()
                .unwrap_or(&target.ip)
                .to_owned();
            let port = port(&probe["tcpSocket"]["port"], target)?;
            TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: connect: {}", go_error(&e)))
        } else {
            Err("the fake kubelet supports httpGet, tcpSocket and exec probes only".into())
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("context deadline exceeded (Client.Timeout exceeded while awaiting headers) after {}s", timeout.as_secs())))
}

/// Runs a probe until the receiver is gone. `gate` (the startup probe's success) holds
/// readiness and liveness back, as in the kubelet.
pub async fn run(
    kind: Kind,
    probe: Value,
    target: Target,
    spawner: Spawner,
    tx: mpsc::UnboundedSender<Report>,
    gate: Option<watch::Receiver<bool>>,
) {
    if let Some(mut gate) = gate {
        if gate.wait_for(|started| *started).await.is_err() {
            return;
        }
    }
    let seconds = |field: &str, default: u64| probe[field].as_u64().unwrap_or(default);
    tokio::time::sleep(Duration::from_secs(seconds("initialDelaySeconds", 0))).await;
    let period = Duration::from_secs(seconds("periodSeconds", 10).max(1));
    let success_threshold = seconds("successThreshold", 1).max(1);
    let failure_threshold = seconds("failureThreshold", 3).max(1);
    // Liveness starts out passing; readiness and startup start out not passing.
    let mut state = kind == Kind::Liveness;
    let (mut successes, mut failures) = (0u64, 0u64);
    loop {
        let result = run_once(&probe, &target, &spawner).await;
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if !state && successes >= success_threshold {
                    state = true;
                    if tx.send(Report::Verdict(kind, true)).is_err() {
                        return;
                    }
                }
            }
            Err(message) => {
                failures += 1;
                successes = 0;
                if failures == 1 && tx.send(Report::Failed(kind, message)).is_err() {
                    return;
                }
                if (state || kind != Kind::Readiness) && failures >= failure_threshold {
                    state = false;
                    if tx.send(Report::Verdict(kind, false)).is_err() {
                        return;
                    }
                    if kind != Kind::Readiness {
                        return;
                    }
                }
            }
        }
        if kind == Kind::Startup && state {
            return;
        }
        tokio::time::sleep(period).await;
    }
}
