//! The OpenCode CLI through the gateway with a personal access token:
//! `opencode run --attach <gateway> -p <token> …` sends HTTP Basic (user `opencode`, the
//! token as password) on every request, including its event stream. A real prompt is
//! answered by the mock model; a revoked token is refused.
//!
//! The CLI's `--format json` is used: in attach mode `opencode run` (1.18.33) exits as soon
//! as the prompt's answer arrives, and the events of the turn's end (the final text) come
//! after it, so they are not printed — attached to OpenCode directly just the same (checked
//! by hand). Events from the middle of a turn are printed; the answer is read back from the
//! session.

use std::process::{Command, Stdio};
use std::time::Duration;

use awc::http::{Method, StatusCode};
use bytes::Bytes;

use crate::mock_model::MockModel;
use crate::process_group::ProcessGroup;
use crate::relay::gateway_with_org_key;
use crate::support::{poll_until, real_opencode};

/// Runs `opencode run --attach <url> -p <password> <words>` with a home of its own and
/// returns (exit code, stdout, stderr); fails the test after `deadline`.
async fn attach_and_run(
    url: &str,
    password: &str,
    words: &[&str],
    deadline: Duration,
) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let err = home.path().join("err");
    // A process group of its own: killed with everything it started if the test ends first.
    let mut run = ProcessGroup::spawn(
        Command::new(real_opencode())
            .args(["run", "--format", "json", "--attach", url, "-p", password])
            .args(words)
            .current_dir(home.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_DATA_HOME", home.path().join(".local/share"))
            .env("XDG_CACHE_HOME", home.path().join(".cache"))
            .env("XDG_STATE_HOME", home.path().join(".local/state"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap()),
    )
    .unwrap();
    let code = poll_until(deadline, async || match run.child().try_wait().unwrap() {
        Some(status) => Ok(status.code().unwrap_or(-1)),
        None => Err(()),
    })
    .await
    .unwrap_or_else(|()| {
        panic!(
            "opencode run did not end within {deadline:?}: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    });
    (
        code,
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

#[actix_web::test]
async fn the_opencode_cli_attaches_with_a_token_and_not_once_it_is_revoked() {
    // A model that takes seconds, as real ones do: the CLI does not wait for its event
    // stream before prompting, and exits when the answer is complete.
    let model = MockModel::start(50, Duration::from_millis(100));
    let gw = gateway_with_org_key(&model, &[]);
    let made = gw
        .request(
            Method::POST,
            Some("alice"),
            "/-/api/tokens",
            &[("content-type", "application/json")],
            Some(Bytes::from_static(br#"{"name": "cli test"}"#)),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let made = made.json();
    let token = made["token"].as_str().unwrap().to_owned();

    // The first run also starts Alice's OpenCode through the gateway.
    let (code, out, err) = attach_and_run(
        &gw.base,
        &token,
        &["say", "something"],
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}\n{}", gw.log());
    // What the CLI printed came from the event stream it opened with the token.
    assert!(
        out.contains("\"type\":\"step_start\""),
        "events reached the CLI: {out}\nstderr: {err}"
    );
    // The answer is in the session, read back with the same token as Bearer.
    let bearer = format!("Bearer {token}");
    let sessions = gw
        .request(
            Method::GET,
            None,
            "/session",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(sessions.status, StatusCode::OK);
    let sid = sessions.json()[0]["id"].as_str().unwrap().to_owned();
    let messages = gw
        .request(
            Method::GET,
            None,
            &format!("/session/{sid}/message"),
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert!(
        messages.text().contains("word0"),
        "the model answered: {}",
        messages.text()
    );
    assert_eq!(gw.state("alice").await, "ready");
    assert!(
        model
            .counts
            .answers
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    // A wrong token, then the revoked one: refused, and the CLI says it failed.
    let (code, out, _) = attach_and_run(
        &gw.base,
        "chpat_not-a-token",
        &["hi"],
        Duration::from_secs(120),
    )
    .await;
    assert_ne!(code, 0, "a wrong token: {out}");
    let id = made["id"].as_str().unwrap();
    let revoked = gw
        .request(
            Method::DELETE,
            Some("alice"),
            &format!("/-/api/tokens/{id}"),
            &[],
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    let (code, out, _) = attach_and_run(&gw.base, &token, &["hi"], Duration::from_secs(120)).await;
    assert_ne!(code, 0, "a revoked token: {out}");
    assert!(!out.contains("step_start"), "{out}");
}
