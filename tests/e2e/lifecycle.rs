//! Instance lifecycle against the fake OpenCode: crashes, timeouts, health, idle, limits,
//! stopping and shutdown.

use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use nix::sys::signal::Signal;

use crate::support::{alive, as_u64, eventually, metric, poll_until, wait_gone, Gateway, PATIENCE};

/// Crashes 300 ms after listening; each restart waits out a doubling backoff.
#[actix_web::test]
async fn crash_restarts_with_exponential_backoff() {
    let gw = Gateway::fake(&["--opencode-arg=--fake-crash-after-ms=300"]);
    let mut previous: Option<(u64, u64)> = None; // (pid, crash time in µs)
    for (attempt, backoff_ms) in [(0u32, 0u64), (1, 1000), (2, 2000)] {
        let env = gw.get("alice", "/env").await;
        assert_eq!(
            env.status,
            StatusCode::OK,
            "attempt {attempt}: {}",
            env.text()
        );
        let env = env.json();
        let (pid, started, listening) = (
            as_u64(&env["pid"]),
            as_u64(&env["startedAtUs"]),
            as_u64(&env["listeningAtUs"]),
        );
        if let Some((old_pid, crashed_at)) = previous {
            assert_ne!(pid, old_pid, "a new process after the crash");
            // The new process cannot have started before the backoff after the crash ended.
            assert!(
                started >= crashed_at + backoff_ms * 1000,
                "attempt {attempt}: restarted {}ms after the crash, backoff is {backoff_ms}ms",
                (started.saturating_sub(crashed_at)) / 1000
            );
        }
        let entry = gw
            .wait_user("alice", "recorded the crash", |u| {
                u["state"] == "stopped" && u["restarts"] == attempt
            })
            .await;
        let message = entry["message"].as_str().unwrap_or_default();
        assert!(message.contains("exited unexpectedly"), "{message}");
        assert!(
            message.contains("crashing as told"),
            "stderr tail in: {message}"
        );
        previous = Some((pid, listening + 300_000));
    }
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "chamberlain_instance_crashes_total"), 3.0);
    assert_eq!(metric(&metrics, "chamberlain_instance_restarts_total"), 2.0);
}

/// Five crashes within the window: failed, and requests no longer start it until a person
/// or an operator resets it.
#[actix_web::test]
async fn crash_loop_ends_in_failed_until_reset() {
    let gw = Gateway::fake(&["--opencode-arg=--fake-crash-after-ms=0"]);
    let mut last = None;
    for _ in 0..12 {
        let resp = gw.get("alice", "/small").await;
        if resp.status == StatusCode::SERVICE_UNAVAILABLE && resp.json()["state"] == "failed" {
            last = Some(resp);
            break;
        }
        gw.wait_user("alice", "came to rest", |u| {
            u["state"] == "stopped" || u["state"] == "failed"
        })
        .await;
    }
    let failed = last.expect("the instance never failed");
    let error = failed.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("crashed 5 times"), "{error}");
    assert_eq!(gw.wait_spawned(5).await.len(), 5);

    // Requests do not restart a failed instance.
    let again = gw.get("alice", "/small").await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(again.json()["state"], "failed");
    assert_eq!(gw.spawned_pids().len(), 5);
    assert!(gw.user("alice").await.unwrap()["pid"].is_null());

    // An operator's stop resets it to stopped, and the next request starts it again.
    let stop = gw
        .admin_request(Method::POST, "/instances/alice/stop")
        .await;
    assert_eq!(stop.status, StatusCode::OK);
    assert_eq!(gw.state("alice").await, "stopped");
    gw.get("alice", "/small").await;
    assert_eq!(
        gw.wait_spawned(6).await.len(),
        6,
        "a reset instance starts again"
    );
}

/// No start line within --start-timeout: killed, failed, with the child's stderr.
#[actix_web::test]
async fn hung_start_fails_after_the_start_timeout() {
    let gw = Gateway::fake(&["--opencode-arg=--fake-no-listen", "--start-timeout", "2s"]);
    let resp = gw.get("alice", "/small").await;
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        resp.text()
    );
    let body = resp.json();
    assert_eq!(body["state"], "failed");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("did not report listening within 2s"),
        "{error}"
    );
    assert!(
        error.contains("told not to listen"),
        "stderr tail in: {error}"
    );
    let pids = gw.wait_spawned(1).await;
    assert_eq!(pids.len(), 1);
    assert!(wait_gone(pids[0]).await, "hung child killed");
    assert_eq!(
        metric(
            &gw.metrics().await,
            "chamberlain_instance_starts_total{outcome=\"timeout\"}"
        ),
        1.0
    );

    // Requests leave a failed instance alone; a person's explicit start retries it.
    assert_eq!(gw.get("alice", "/small").await.json()["state"], "failed");
    assert_eq!(gw.spawned_pids().len(), 1);
    let start = gw.post("alice", "/-/api/instance/start").await;
    assert_eq!(start.status, StatusCode::ACCEPTED, "{}", start.text());
    assert_ne!(start.json()["state"], "failed");
    assert_eq!(gw.wait_spawned(2).await.len(), 2);
}

/// Health checks that never answer: restarted after --health-failures.
#[actix_web::test]
async fn hung_health_checks_restart_the_instance() {
    let gw = Gateway::fake(&[
        "--opencode-arg=--fake-hang-health",
        "--health-interval",
        "300ms",
        "--health-failures",
        "2",
    ]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let first = as_u64(&gw.user("alice").await.unwrap()["pid"]);
    let entry = gw
        .wait_user("alice", "restarted", |u| {
            u["restarts"].as_u64() >= Some(1) && u["pid"].as_u64().is_some_and(|p| p != first)
        })
        .await;
    assert!(entry["restarts"].as_u64() >= Some(1));
    assert!(wait_gone(first as u32).await, "unhealthy process stopped");
    gw.wait_log_contains("health check failed").await;
}

/// A child that ignores SIGTERM is killed once the grace period is over, together with what
/// it started, even outside its process group (a terminal's shell).
#[actix_web::test]
async fn sigterm_ignoring_child_is_killed_after_the_grace() {
    let gw = Gateway::fake(&[
        "--opencode-arg=--fake-ignore-sigterm",
        "--opencode-arg=--fake-spawn-session-child",
        "--stop-grace",
        "1s",
    ]);
    let env = gw.get("alice", "/env").await.json();
    let pid = as_u64(&env["pid"]) as u32;
    let terminal = as_u64(&env["sessionChildPid"]) as u32;
    assert!(alive(terminal));
    let started = Instant::now();
    let stop = gw
        .admin_request(Method::POST, "/instances/alice/stop")
        .await;
    assert_eq!(stop.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "SIGKILL only after the grace"
    );
    assert!(wait_gone(pid).await);
    assert!(
        wait_gone(terminal).await,
        "the terminal-like process outlived its instance"
    );
    assert_eq!(gw.state("alice").await, "stopped");
    gw.wait_log_contains("did not stop within the grace period")
        .await;
}

/// A crash leaves no orphan behind either: what ran below OpenCode is remembered and killed.
#[actix_web::test]
async fn a_crashed_instance_leaves_no_orphans() {
    let gw = Gateway::fake(&[
        "--opencode-arg=--fake-spawn-child",
        "--opencode-arg=--fake-spawn-session-child",
        "--opencode-arg=--fake-crash-after-ms=500",
    ]);
    let env = gw.get("alice", "/env").await.json();
    let orphans = [
        as_u64(&env["childPid"]) as u32,
        as_u64(&env["sessionChildPid"]) as u32,
    ];
    gw.wait_user("alice", "crashed", |u| u["state"] == "stopped")
        .await;
    for pid in orphans {
        assert!(wait_gone(pid).await, "pid {pid} outlived the crash");
    }
}

/// Idle instances are stopped; a running request is activity; an event stream is not, and
/// a reconnecting event stream does not wake a culled instance.
#[actix_web::test]
async fn idle_instances_are_culled_and_event_streams_do_not_wake_them() {
    let gw = Gateway::fake(&["--idle-timeout", "1s", "--sse-keepalive", "200ms"]);

    // A request running longer than the idle timeout keeps the instance alive.
    let slow = gw.get("alice", "/slow?ms=2500").await;
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(
        gw.state("alice").await,
        "ready",
        "not culled during a request"
    );

    // An open event stream does not keep it alive, and ends when it is culled.
    let mut events = gw
        .stream("alice", "/event", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(events.status(), StatusCode::OK);
    let entry = gw.wait_state("alice", "stopped").await;
    assert!(entry["message"]
        .as_str()
        .unwrap_or_default()
        .contains("without activity"));
    events.read_to_end().await;
    assert_eq!(
        metric(
            &gw.metrics().await,
            "chamberlain_instance_culls_total{reason=\"idle\"}"
        ),
        1.0
    );

    // A reconnecting event stream gets 503 + Retry-After and does not start the instance.
    let spawned = gw.spawned_pids().len();
    let resp = gw
        .get_with("alice", "/event", &[("accept", "text/event-stream")])
        .await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(resp.json()["state"], "stopped");
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.state("alice").await, "stopped");
    assert_eq!(gw.spawned_pids().len(), spawned);

    // A person's request does.
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
}

/// At --max-instances a newcomer is refused (503 + Retry-After) until the running instance
/// has been idle for --evict-min-idle; then the idle one is evicted.
#[actix_web::test]
async fn max_instances_refuses_then_evicts_the_idle_instance() {
    let gw = Gateway::fake(&["--max-instances", "1", "--evict-min-idle", "5s"]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);

    let refused = gw.get("bob", "/small").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body = refused.json();
    assert_eq!(body["state"], "stopped");
    assert!(body["error"].as_str().unwrap_or_default().contains("limit"));
    assert_eq!(gw.state("alice").await, "ready");

    eventually("bob got in", PATIENCE, async || {
        let resp = gw.get("bob", "/small").await;
        if resp.status == StatusCode::OK {
            Ok(())
        } else {
            Err(resp.text())
        }
    })
    .await;
    let alice = gw.wait_state("alice", "stopped").await;
    assert!(alice["message"]
        .as_str()
        .unwrap_or_default()
        .contains("make room"));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "chamberlain_instance_culls_total{reason=\"evicted\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "chamberlain_instance_starts_total{outcome=\"refused\"}"
        ) >= 1.0
    );
    let stats = gw.stats().await;
    assert_eq!(stats["instances"], 1);
}

/// --max-concurrent-starts 1: the second start waits in `queued` and begins only after the
/// first has finished starting.
#[actix_web::test]
async fn concurrent_starts_are_limited() {
    let gw = Gateway::fake(&[
        "--max-concurrent-starts",
        "1",
        "--opencode-arg=--fake-start-delay-ms=1500",
    ]);
    // Until it sees one queued and one starting, or too late for that: both ready.
    let watcher = async {
        poll_until(PATIENCE, async || {
            let stats = gw.stats().await;
            if stats["byState"]["queued"] == 1 && stats["byState"]["starting"] == 1 {
                Ok(true)
            } else if stats["byState"]["ready"] == 2 {
                Ok(false)
            } else {
                Err(())
            }
        })
        .await
        .unwrap_or(false)
    };
    let (a, b, seen_queued) =
        futures_util::future::join3(gw.get("alice", "/env"), gw.get("bob", "/env"), watcher).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(b.status, StatusCode::OK);
    assert!(
        seen_queued,
        "one start waited in queued while the other was starting"
    );
    let (a, b) = (a.json(), b.json());
    let (first, second) = if as_u64(&a["startedAtUs"]) < as_u64(&b["startedAtUs"]) {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        as_u64(&second["startedAtUs"]) >= as_u64(&first["listeningAtUs"]),
        "the second process was spawned only after the first was listening"
    );
}

/// SIGTERM to the gateway stops every instance (SIGTERM, grace, SIGKILL), including
/// processes they started, and exits 0.
#[actix_web::test]
async fn gateway_sigterm_leaves_no_process_behind() {
    let mut gw = Gateway::fake(&[
        "--opencode-arg=--fake-spawn-child",
        "--opencode-arg=--fake-spawn-session-child",
        "--opencode-arg=--fake-ignore-sigterm",
        "--stop-grace",
        "1s",
    ]);
    let mut pids = Vec::new();
    for user in ["alice", "bob"] {
        let env = gw.get(user, "/env").await.json();
        for key in ["pid", "childPid", "sessionChildPid"] {
            pids.push(as_u64(&env[key]) as u32);
        }
    }
    assert!(pids.iter().all(|p| alive(*p)));
    let status = gw.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
    for pid in pids {
        assert!(wait_gone(pid).await, "pid {pid} survived the gateway");
    }
    gw.wait_log_contains("shutdown complete").await;
}

/// A gateway killed outright takes its OpenCode processes with it (parent-death signal).
#[actix_web::test]
async fn killed_gateway_takes_its_instances_along() {
    let mut gw = Gateway::fake(&[]);
    let env = gw.get("alice", "/env").await.json();
    let pid = as_u64(&env["pid"]) as u32;
    gw.signal_and_wait(Signal::SIGKILL);
    assert!(wait_gone(pid).await, "OpenCode survived a killed gateway");
}

/// A browser navigation to a stopped instance gets the starting page at once, and the
/// progress stream reports the states up to ready.
#[actix_web::test]
async fn navigation_gets_the_starting_page_and_progress_follows() {
    let gw = Gateway::fake(&["--opencode-arg=--fake-start-delay-ms=1500"]);
    let page = gw
        .get_with("alice", "/work", &[("accept", "text/html")])
        .await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert!(page.text().contains("Starting your workspace"));
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));

    let mut progress = gw.stream("alice", "/-/api/instance/progress", &[]).await;
    assert_eq!(
        progress.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let text = progress.read_to_end().await;
    assert!(text.contains("\"state\":\"starting\""), "{text}");
    assert!(
        text.trim_end().ends_with('}') && text.contains("\"state\":\"ready\""),
        "{text}"
    );

    let after = gw
        .get_with("alice", "/work", &[("accept", "text/html")])
        .await;
    assert_eq!(after.status, StatusCode::OK, "ready: proxied");
    // The gateway's own address, opened by a person, lands on the portal.
    let landing = gw.get_with("alice", "/", &[("accept", "text/html")]).await;
    assert_eq!(landing.status, StatusCode::SEE_OTHER);
    assert_eq!(landing.header("location").as_deref(), Some("/-/"));
    let api = gw.get("alice", "/").await;
    assert_eq!(
        api.status,
        StatusCode::OK,
        "a script asking for / is proxied"
    );
}

/// The limit counts processes: an evicted OpenCode that takes its time to stop (it ignores
/// SIGTERM, so it lasts the whole --stop-grace) is gone before the newcomer's starts.
#[actix_web::test]
async fn an_evicted_instance_is_gone_before_the_next_one_starts() {
    let gw = Gateway::fake(&[
        "--max-instances",
        "1",
        "--evict-min-idle",
        "100ms",
        "--stop-grace",
        "2s",
        "--opencode-arg=--fake-ignore-sigterm",
    ]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    // Idle long enough to be evicted.
    gw.wait_user("alice", "was idle for --evict-min-idle", |u| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        now.saturating_sub(as_u64(&u["lastActivity"])) >= 200
    })
    .await;
    let bob = gw
        .client
        .get(gw.url("/small"))
        .insert_header(("x-chamberlain-dev-user", "bob"))
        .send();
    let bob = actix_web::rt::spawn(async move { bob.await.map(|r| r.status()) });
    let mut most = 0;
    while !bob.is_finished() {
        let live = gw.spawned_pids().into_iter().filter(|p| alive(*p)).count();
        most = most.max(live);
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    let status = bob.await.unwrap().expect("bob's request");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(most, 1, "two OpenCodes were alive under --max-instances 1");
    let alice = gw.wait_state("alice", "stopped").await;
    assert!(alice["message"]
        .as_str()
        .unwrap_or_default()
        .contains("make room"));
}
