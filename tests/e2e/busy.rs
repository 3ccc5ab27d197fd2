//! An agent at work is not idle: a prompt, then no client at all, against the real OpenCode
//! and a slow model of our own (`mock_model`). The instance stays while the reply streams
//! and is stopped once the work is done and the idle timeout has passed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use awc::http::{Method, StatusCode};
use bytes::Bytes;

use crate::mock_model::MockModel;
use crate::support::{eventually, poll_until, Gateway, PATIENCE};

/// A new session of `user` in the directory `query` names (or OpenCode's own), sent a prompt
/// that the agent works on after the request has been answered.
async fn prompt(gw: &Gateway, user: &str, query: &str) {
    let session = gw
        .request(
            Method::POST,
            Some(user),
            &format!("/session{query}"),
            &[("content-type", "application/json")],
            Some(Bytes::from_static(b"{}")),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    let id = session.json()["id"].as_str().unwrap().to_owned();
    let prompt = gw
        .request(
            Method::POST,
            Some(user),
            &format!("/session/{id}/prompt_async{query}"),
            &[("content-type", "application/json")],
            Some(Bytes::from_static(
                br#"{"parts":[{"type":"text","text":"write a long answer"}]}"#,
            )),
        )
        .await;
    assert!(prompt.status.is_success(), "{}", prompt.text());
}

#[actix_web::test]
async fn an_agent_at_work_keeps_its_instance_until_the_work_is_done() {
    // Each agent step streams for about 20 s; the idle timeout is 10 s. (With 3 s, a loaded
    // machine stopped the instance before OpenCode had even begun the prompt it had taken:
    // it marks a session busy only once its loop starts, and the prompt was the last
    // activity.)
    let model = MockModel::start(40, Duration::from_millis(500));
    let gw = Gateway::real(&["--idle-timeout", "10s"]);
    std::fs::write(
        gw.data.path().join("shared/config/opencode.json"),
        model.opencode_config(),
    )
    .unwrap();
    std::fs::create_dir_all(gw.data.path().join("shared/repos/kit")).unwrap();
    std::fs::write(gw.data.path().join("shared/repos/kit/README"), "kit").unwrap();

    // In OpenCode's own directory, then in a project cloned into the workspace.
    for (round, project) in [None, Some("kit")].into_iter().enumerate() {
        let query = match project {
            Some(name) => {
                let clone = gw
                    .request(
                        Method::POST,
                        Some("alice"),
                        &format!("/-/api/repos/{name}/clone"),
                        &[],
                        None,
                    )
                    .await;
                assert_eq!(clone.status, StatusCode::CREATED, "{}", clone.text());
                let dir = clone.json()["targetPath"].as_str().unwrap().to_owned();
                format!("?directory={}", dir.replace('/', "%2F"))
            }
            None => String::new(),
        };
        prompt(&gw, "alice", &query).await;

        // No client from here on (the admin API is not a client of the instance).
        let done = round as u32 + 1;
        let mut saw_busy = false;
        poll_until(2 * PATIENCE, async || {
            if model.counts.finished.load(Ordering::SeqCst) >= done {
                return Ok(());
            }
            let me = gw.user("alice").await.expect("alice in /stats");
            assert_eq!(
                me["state"],
                "ready",
                "stopped while the agent worked: {me}\n{}",
                gw.log()
            );
            saw_busy |= me["busySessions"].as_u64().unwrap_or(0) > 0;
            Err(me)
        })
        .await
        .unwrap_or_else(|me| panic!("the reply never finished: {me}\n{}", gw.log()));
        assert!(saw_busy, "busySessions never showed the work");
        assert!(model.counts.started.load(Ordering::SeqCst) >= done);

        // Work done, nobody there: stopped after the idle timeout.
        let stopped = gw.wait_state("alice", "stopped").await;
        assert!(
            stopped["message"]
                .as_str()
                .unwrap_or("")
                .contains("without activity"),
            "{stopped}"
        );
    }
}

#[actix_web::test]
async fn a_full_gateway_does_not_evict_an_agent_at_work() {
    // 30 s of work: on a loaded machine the test may see the 8th piece late, and the work
    // must still be under way then.
    let model = MockModel::start(60, Duration::from_millis(500));
    let gw = Gateway::real(&[
        "--max-instances",
        "1",
        "--evict-min-idle",
        "2s",
        "--health-interval",
        "1s",
        "--wait-timeout",
        "1s",
    ]);
    std::fs::write(
        gw.data.path().join("shared/config/opencode.json"),
        model.opencode_config(),
    )
    .unwrap();
    // Requests wait only 1 s for a start (so bob hears "full" at once): start her first.
    let start = gw.post("alice", "/-/api/instance/start").await;
    assert!(start.status.is_success(), "{}", start.text());
    gw.wait_state("alice", "ready").await;
    prompt(&gw, "alice", "").await;
    gw.wait_user("alice", "was seen at work", |u| {
        u["busySessions"].as_u64().unwrap_or(0) > 0
    })
    .await;

    // Well past --evict-min-idle without a client of hers (8 pieces, 500 ms apart, since her
    // prompt), bob wants the one place.
    eventually(
        "the model streamed 8 pieces",
        PATIENCE,
        async || match model.counts.pieces.load(Ordering::SeqCst) {
            8.. => Ok(()),
            pieces => Err(format!("{pieces} pieces")),
        },
    )
    .await;
    assert_eq!(
        model.counts.finished.load(Ordering::SeqCst),
        0,
        "the work ended too soon"
    );
    let bob = gw.get("bob", "/session").await;
    assert_eq!(
        bob.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        bob.text()
    );
    assert_eq!(gw.state("alice").await, "ready");

    // Her work done and idle long enough, bob gets the place.
    eventually("the reply finished", 2 * PATIENCE, async || {
        match model.counts.finished.load(Ordering::SeqCst) {
            0 => Err("not yet"),
            _ => Ok(()),
        }
    })
    .await;
    poll_until(PATIENCE, async || {
        let bob = gw.get("bob", "/session").await;
        if bob.status == StatusCode::OK {
            return Ok(());
        }
        assert_eq!(
            bob.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            bob.text()
        );
        Err(())
    })
    .await
    .unwrap_or_else(|()| panic!("bob never got in\n{}", gw.log()));
}
