//! The organisation's model keys stay in the gateway: the real OpenCode reaches our mock
//! provider through the relay, which swaps its per-start token for the org key. The key is
//! nowhere a user can look; use is counted per user; a daily budget stops one user only.

use std::sync::atomic::Ordering;
use std::time::Duration;

use awc::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use crate::mock_model::MockModel;
use crate::support::{Gateway, Terminal};

pub(crate) const ORG_KEY: &str = "sk-org-5d1e2b7c9a";

/// A gateway whose organisation has a key for the mock provider.
pub(crate) fn gateway_with_org_key(model: &MockModel, args: &[&str]) -> Gateway {
    gateway_with(args, "mock", &model.org_config())
}

/// A gateway whose organisation has a key for `provider`, and `config`.
fn gateway_with(args: &[&str], provider: &str, config: &str) -> Gateway {
    let gw = Gateway::real(args);
    give_org_key(&gw, provider, config);
    gw
}

/// Gives `gw`'s organisation a key for `provider`, and `config` (read at every start).
pub(crate) fn give_org_key(gw: &Gateway, provider: &str, config: &str) {
    let shared = gw.data.path().join("shared");
    std::fs::write(shared.join("config/opencode.json"), config).unwrap();
    std::fs::write(
        shared.join("auth/auth.json"),
        format!(r#"{{"{provider}": {{"type": "api", "key": "{ORG_KEY}"}}}}"#),
    )
    .unwrap();
}

/// Sends `user` a prompt in a new session and returns OpenCode's answer (the assistant
/// message, once the turn has ended).
pub(crate) async fn ask(gw: &Gateway, user: &str) -> Value {
    let session = gw
        .request(
            Method::POST,
            Some(user),
            "/session",
            &[("content-type", "application/json")],
            Some(Bytes::from_static(b"{}")),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.text());
    let id = session.json()["id"].as_str().unwrap().to_owned();
    let answer = gw
        .request(
            Method::POST,
            Some(user),
            &format!("/session/{id}/message"),
            &[("content-type", "application/json")],
            Some(Bytes::from_static(
                br#"{"parts":[{"type":"text","text":"say something"}]}"#,
            )),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

/// Alice's turn is answered without error, and every call reached the provider with `key`.
async fn answered_with(gw: &Gateway, model: &MockModel, key: &str) {
    let answer = ask(gw, "alice").await;
    assert!(
        answer["info"]["error"].is_null(),
        "the turn failed: {answer}\n{}",
        gw.log()
    );
    let keys = model.counts.keys();
    assert!(!keys.is_empty(), "the model was never called");
    assert!(keys.iter().all(|k| k == key), "the provider saw {keys:?}");
}

/// Alice in `/stats` once every answer the provider began is counted (a title's answer may
/// end after the turn's), and how many that is.
async fn counted(gw: &Gateway, model: &MockModel) -> (Value, u64) {
    let answered = || u64::from(model.counts.answers.load(Ordering::SeqCst));
    let alice = gw
        .wait_user("alice", "every answer counted", |u| llm(u).0 == answered())
        .await;
    let answers = llm(&alice).0;
    assert!(answers >= 1);
    (alice, answers)
}

fn llm(user: &Value) -> (u64, u64, u64) {
    let llm = &user["llm"];
    (
        llm["requests"].as_u64().unwrap_or(0),
        llm["inputTokens"].as_u64().unwrap_or(0),
        llm["outputTokens"].as_u64().unwrap_or(0),
    )
}

#[actix_web::test]
async fn org_keys_stay_in_the_gateway_and_use_is_counted() {
    let model = MockModel::start(2, Duration::from_millis(10));
    let gw = gateway_with_org_key(&model, &["--llm-price", "m1=1000000/2000000"]);

    answered_with(&gw, &model, &format!("Bearer {ORG_KEY}")).await;
    assert!(model.counts.asked_for_usage.load(Ordering::SeqCst) >= 1);

    // Not through OpenCode's API ...
    for path in ["/provider", "/config", "/config/providers"] {
        let seen = gw.get("alice", path).await;
        assert_eq!(seen.status, StatusCode::OK, "{path}: {}", seen.text());
        assert!(!seen.text().contains(ORG_KEY), "{path} shows the key");
    }
    // ... nor in a terminal: the environment, the home, the shared files.
    let mut terminal = Terminal::open(&gw, "alice").await;
    let shared = gw.data.path().join("shared");
    let (out, _) = terminal
        .run(&format!(
            "{{ env; cat /proc/self/environ /proc/$PPID/environ; grep -r . ~ ; cat {0}/auth/auth.json {0}/config/opencode.json; }} 2>&1 | grep -c {ORG_KEY}",
            shared.display()
        ))
        .await;
    assert_eq!(out.trim().lines().last(), Some("0"), "{out}");
    // ... nor in the gateway's log.
    assert!(!gw.log().contains(ORG_KEY));

    // What the mock reported is what was counted: 5 + 5 tokens per answer (the title's
    // answer may end after the turn's).
    let (alice, answers) = counted(&gw, &model).await;
    assert_eq!(llm(&alice), (answers, 5 * answers, 5 * answers), "{alice}");
    // $1 per input token and $2 per output token, at that price.
    assert_eq!(
        alice["llm"]["costUsd"].as_f64(),
        Some(15.0 * answers as f64)
    );
    let me = gw.get("alice", "/-/api/instance").await.json();
    assert_eq!(me["llm"]["inputTokens"], 5 * answers);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "chamberlain_llm_tokens_total{{provider=\"mock\",model=\"m1\",direction=\"output\"}} {}",
            5 * answers
        )),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_daily_budget_stops_one_user_with_a_message_and_not_the_others() {
    let model = MockModel::start(2, Duration::from_millis(10));
    let gw = gateway_with_org_key(&model, &["--llm-daily-tokens", "15"]);

    // The first turn (a title and a step, 10 tokens each) takes the user over the budget ...
    let first = ask(&gw, "alice").await;
    assert!(first["info"]["error"].is_null(), "{first}");
    let calls = model.counts.answers.load(Ordering::SeqCst);
    // ... the next is refused before it reaches the provider, and says why.
    let refused = ask(&gw, "alice").await;
    let error = refused["info"]["error"].to_string();
    assert!(
        error.contains("Your daily model budget is used up"),
        "{refused}\n{}",
        gw.log()
    );
    let idle = gw.get("alice", "/session/status").await.json();
    assert_eq!(
        idle,
        serde_json::json!({}),
        "the turn ended, no endless retry"
    );
    // Another user goes on.
    let bob = ask(&gw, "bob").await;
    assert!(bob["info"]["error"].is_null(), "{bob}");
    assert!(model.counts.answers.load(Ordering::SeqCst) > calls);
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .contains("chamberlain_llm_requests_total{provider=\"mock\",outcome=\"over_budget\"}"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn use_survives_a_restart() {
    let model = MockModel::start(2, Duration::from_millis(10));
    let mut gw = gateway_with_org_key(&model, &[]);
    ask(&gw, "alice").await;
    let before = llm(&gw.user("alice").await.expect("alice"));
    assert!(before.0 >= 1);
    gw.terminate();
    let gw = gw.restart();
    // Known again before any new call: read from state/ at start.
    ask(&gw, "alice").await;
    let after = llm(&gw.user("alice").await.expect("alice"));
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{before:?} then {after:?}"
    );
}

#[actix_web::test]
async fn anthropic_calls_carry_the_key_as_x_api_key_and_are_counted() {
    let model = MockModel::start(2, Duration::from_millis(10));
    let gw = gateway_with(&[], "anthropic", &model.anthropic_config());

    answered_with(&gw, &model, &format!("x-api-key {ORG_KEY}")).await;
    let seen = gw.get("alice", "/provider").await;
    assert!(!seen.text().contains(ORG_KEY));
    // 7 in (message_start), 3 out (the last message_delta) per answer.
    let (alice, answers) = counted(&gw, &model).await;
    assert_eq!(llm(&alice), (answers, 7 * answers, 3 * answers), "{alice}");
}

#[actix_web::test]
async fn a_token_is_good_only_for_its_providers_and_while_its_instance_runs() {
    let model = MockModel::start(2, Duration::from_millis(10));
    let gw = gateway_with_org_key(&model, &[]);
    let mut terminal = Terminal::open(&gw, "alice").await;
    let (config, status) = terminal.run("printenv OPENCODE_CONFIG_CONTENT").await;
    assert_eq!(status, 0, "{config}");
    let config: Value = config
        .lines()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_else(|| panic!("no config in {config}"));
    let options = &config["provider"]["mock"]["options"];
    let base = options["baseURL"].as_str().unwrap().to_owned();
    let token = options["apiKey"].as_str().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    assert!(!token.contains(ORG_KEY));

    let client = crate::support::client();
    let call = |path: String, key: Option<String>| {
        let mut req = client
            .post(format!("{base}{path}"))
            .insert_header(("content-type", "application/json"));
        if let Some(key) = key {
            req = req.insert_header(("authorization", format!("Bearer {key}")));
        }
        async move {
            let mut resp = req
                .send_body(r#"{"model":"m1","stream":true,"messages":[]}"#)
                .await
                .expect("relay reachable");
            let body = resp.body().limit(1 << 20).await.expect("body");
            (resp.status(), String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = call("/chat/completions".into(), Some(token.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"usage\""), "{body}");
    assert_eq!(
        model.counts.keys().last(),
        Some(&format!("Bearer {ORG_KEY}"))
    );
    // The provider's own answers pass unchanged, errors included (the mock has no /models).
    let models = client
        .get(format!("{base}/models"))
        .insert_header(("authorization", format!("Bearer {token}")))
        .send()
        .await
        .expect("relay reachable");
    assert_eq!(models.status(), StatusCode::NOT_FOUND);
    // The org key is lent for model calls only.
    let (status, body) = call("/files".into(), Some(token.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for (key, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("made-up".to_owned()), StatusCode::UNAUTHORIZED),
        (Some(ORG_KEY.to_owned()), StatusCode::UNAUTHORIZED),
    ] {
        let (status, body) = call("/chat/completions".into(), key.clone()).await;
        assert_eq!(status, expected, "{key:?}: {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"]["message"].is_string());
    }
    // A provider the organisation has no key for, through this token.
    let other = base.replace("/mock", "/openai");
    let resp = client
        .post(format!("{other}/chat/completions"))
        .insert_header(("authorization", format!("Bearer {token}")))
        .send_body("{}")
        .await
        .expect("relay reachable");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // The token ends with its instance.
    let stop = gw.post("alice", "/-/api/instance/stop").await;
    assert_eq!(stop.status, StatusCode::OK, "{}", stop.text());
    let (status, _) = call("/chat/completions".into(), Some(token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
