//! Who may sign in (`--allowed-*`), who is an administrator (`--admin-*`), the admin API on
//! the public listener, and personal access tokens (made on the portal, used by the CLI as
//! Bearer or Basic, revoked by their owner or an admin, expired).

use actix_web::http::{Method, StatusCode};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::{Gateway, Response};
use crate::tokens::{es256, now, Key};

const JSON: (&str, &str) = ("content-type", "application/json");

async fn post_json(gw: &Gateway, user: &str, path: &str, body: Value) -> Response {
    gw.request(
        Method::POST,
        Some(user),
        path,
        &[JSON],
        Some(Bytes::from(body.to_string())),
    )
    .await
}

/// A request carrying only `authorization` (no dev identity).
async fn with_auth(gw: &Gateway, method: Method, path: &str, auth: &str) -> Response {
    gw.request(method, None, path, &[("authorization", auth)], None)
        .await
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn user_ids(stats: &Value) -> Vec<String> {
    stats["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn the_sign_in_policy_refuses_before_anything_exists_and_names_admins() {
    let gw = Gateway::fake(&[
        "--allowed-users",
        "alice,Carol@Localhost",
        "--admin-users",
        "root-admin",
    ]);
    let me = gw.get("alice", "/-/api/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["admin"], json!(false));
    let carol = gw.get("carol", "/-/api/me").await;
    assert_eq!(carol.status, StatusCode::OK, "by email: {}", carol.text());

    // Refused everywhere: the API, the proxy, a page; nothing is created or started.
    for path in [
        "/-/api/me",
        "/-/api/instance",
        "/",
        "/session",
        "/-/api/repos",
    ] {
        let bob = gw.get("bob", path).await;
        assert_eq!(bob.status, StatusCode::FORBIDDEN, "{path}: {}", bob.text());
        assert!(
            bob.text().contains("not open to you"),
            "{path}: {}",
            bob.text()
        );
    }
    let page = gw
        .get_with(
            "bob",
            "/",
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.text().contains("<html") && page.text().contains("bob@localhost"),
        "{}",
        page.text()
    );
    let started = gw.post("bob", "/-/api/instance/start").await;
    assert_eq!(started.status, StatusCode::FORBIDDEN);
    assert!(!user_ids(&gw.stats().await).contains(&"bob".to_owned()));
    let homes: Vec<String> = std::fs::read_dir(gw.data.path().join("users"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(!homes.iter().any(|h| h.contains("bob")), "{homes:?}");
    // The refusal is logged.
    gw.wait_log_contains("sign-in refused").await;

    // Administrators may always sign in, and only they reach the console and its API.
    let admin = gw.get("root-admin", "/-/api/me").await;
    assert_eq!(admin.json()["admin"], json!(true), "{}", admin.text());
    assert_eq!(
        gw.get("root-admin", "/-/admin").await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get("alice", "/-/admin").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        gw.get("alice", "/-/api/admin/stats").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        gw.post("alice", "/-/api/admin/instances/alice/stop")
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // An admin stops and restarts someone's instance; each action is in the audit log.
    assert_eq!(gw.get("alice", "/anything").await.status, StatusCode::OK);
    gw.wait_state("alice", "ready").await;
    let stats = gw.get("root-admin", "/-/api/admin/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    let stats = stats.json();
    let alice = stats["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["userId"] == "alice")
        .unwrap()
        .clone();
    let started_at = alice["startedAtTime"].as_str().unwrap();
    assert!(
        started_at.len() == 20 && started_at.ends_with('Z') && started_at.contains('T'),
        "{started_at}"
    );
    assert!(
        stats["version"].is_string() && stats.get("startsWaiting").is_some(),
        "{stats}"
    );

    let cross_site = gw
        .request(
            Method::POST,
            Some("root-admin"),
            "/-/api/admin/instances/alice/stop",
            &[JSON, ("origin", "https://evil.example")],
            Some(Bytes::from_static(b"{}")),
        )
        .await;
    assert_eq!(
        cross_site.status,
        StatusCode::FORBIDDEN,
        "{}",
        cross_site.text()
    );
    assert_eq!(gw.state("alice").await, "ready");

    let stopped = gw
        .post("root-admin", "/-/api/admin/instances/alice/stop")
        .await;
    assert_eq!(stopped.status, StatusCode::OK, "{}", stopped.text());
    gw.wait_state("alice", "stopped").await;
    let restarted = gw
        .post("root-admin", "/-/api/admin/instances/alice/restart")
        .await;
    assert_eq!(
        restarted.status,
        StatusCode::ACCEPTED,
        "{}",
        restarted.text()
    );
    gw.wait_state("alice", "ready").await;
    let missing = gw
        .post("root-admin", "/-/api/admin/instances/nobody/stop")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // From the public console, repositories come from https:// only (git runs as root).
    let local = post_json(
        &gw,
        "root-admin",
        "/-/api/admin/repos",
        json!({"name": "etc", "url": "/etc"}),
    )
    .await;
    assert_eq!(local.status, StatusCode::BAD_REQUEST, "{}", local.text());
    assert!(local.text().contains("https://"), "{}", local.text());
    let log = gw.log();
    for action in ["action=\"stop\"", "action=\"restart\""] {
        assert!(
            log.lines().any(|l| l.contains("admin action")
                && l.contains("root-admin")
                && l.contains(action)
                && l.contains("alice")),
            "no audit line for {action}:\n{log}"
        );
    }
}

#[actix_web::test]
async fn groups_in_the_token_decide_who_signs_in_and_who_is_admin() {
    let key = Key::generate("k");
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, key.public_pem()).unwrap();
    let gw = Gateway::fake(&[
        "--auth",
        "jwt",
        "--jwt-public-key",
        pem.to_str().unwrap(),
        "--allowed-groups",
        "staff",
        "--admin-groups",
        "ops",
        "--allowed-users",
        "Vera@X.test",
    ]);
    let token = |sub: &str, groups: Value| {
        let claims = json!({"sub": sub, "exp": now() + 300, "cognito:groups": groups});
        format!(
            "Bearer {}",
            es256(&key, &json!({"alg": "ES256", "kid": "k"}), &claims, false)
        )
    };
    let staff = with_auth(
        &gw,
        Method::GET,
        "/-/api/me",
        &token("s1", json!(["staff"])),
    )
    .await;
    assert_eq!(staff.status, StatusCode::OK, "{}", staff.text());
    assert_eq!(staff.json()["admin"], json!(false));
    let guest = with_auth(
        &gw,
        Method::GET,
        "/-/api/me",
        &token("g1", json!(["guests"])),
    )
    .await;
    assert_eq!(guest.status, StatusCode::FORBIDDEN, "{}", guest.text());
    let nobody = with_auth(&gw, Method::GET, "/-/api/me", &token("n1", json!(null))).await;
    assert_eq!(nobody.status, StatusCode::FORBIDDEN);
    let op = token("o1", json!(["ops"]));
    let me = with_auth(&gw, Method::GET, "/-/api/me", &op).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["admin"], json!(true));
    let stats = with_auth(&gw, Method::GET, "/-/api/admin/stats", &op).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text());
    let staff_stats = with_auth(
        &gw,
        Method::GET,
        "/-/api/admin/stats",
        &token("s1", json!(["staff"])),
    )
    .await;
    assert_eq!(staff_stats.status, StatusCode::FORBIDDEN);
    // An address names a person only when the identity provider says it is verified, and
    // an entry with `@` is never taken for a subject.
    let by_email = |sub: &str, email: Option<&str>, verified: Value| {
        let mut claims = json!({"sub": sub, "exp": now() + 300, "email_verified": verified});
        if let Some(email) = email {
            claims["email"] = json!(email);
        }
        format!(
            "Bearer {}",
            es256(&key, &json!({"alg": "ES256", "kid": "k"}), &claims, false)
        )
    };
    for (sub, email, verified, expected) in [
        ("v1", Some("vera@x.test"), json!(true), StatusCode::OK),
        ("v2", Some("vera@x.test"), json!("true"), StatusCode::OK),
        (
            "v3",
            Some("vera@x.test"),
            json!(false),
            StatusCode::FORBIDDEN,
        ),
        (
            "v4",
            Some("vera@x.test"),
            Value::Null,
            StatusCode::FORBIDDEN,
        ),
        ("vera@x.test", None, Value::Null, StatusCode::FORBIDDEN),
    ] {
        let resp = with_auth(
            &gw,
            Method::GET,
            "/-/api/me",
            &by_email(sub, email, verified.clone()),
        )
        .await;
        assert_eq!(resp.status, expected, "{sub} {verified}: {}", resp.text());
    }
    // A `groups` claim written as one string works too.
    let plain = json!({"sub": "s2", "exp": now() + 300, "groups": "guests, staff"});
    let plain = format!(
        "Bearer {}",
        es256(&key, &json!({"alg": "ES256", "kid": "k"}), &plain, false)
    );
    assert_eq!(
        with_auth(&gw, Method::GET, "/-/api/me", &plain)
            .await
            .status,
        StatusCode::OK
    );
}

#[actix_web::test]
async fn personal_access_tokens_reach_only_their_owners_opencode_until_revoked() {
    let gw = Gateway::fake(&["--admin-users", "boss"]);
    // Bad requests are refused and create nothing.
    for (body, why) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "expiresInDays": 0}), "days"),
        (json!({"name": "x", "expiresInDays": 400}), "days"),
        (json!({"nom": "x"}), "unknown field"),
    ] {
        let resp = post_json(&gw, "alice", "/-/api/tokens", body).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{why}: {}",
            resp.text()
        );
    }
    let huge = post_json(
        &gw,
        "alice",
        "/-/api/tokens",
        json!({"name": "x".repeat(10_000)}),
    )
    .await;
    assert!(huge.status.is_client_error(), "{}", huge.status);
    assert_eq!(gw.get("alice", "/-/api/tokens").await.json(), json!([]));

    let made = post_json(
        &gw,
        "alice",
        "/-/api/tokens",
        json!({"name": "laptop", "expiresInDays": 7}),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let made = made.json();
    let secret = made["token"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("chpat_"), "{secret}");
    let stored = std::fs::read_to_string(gw.data.path().join("state/access-tokens.json")).unwrap();
    assert!(
        !stored.contains(&secret) && stored.contains(&id),
        "only a digest is stored"
    );
    assert!(!gw.log().contains(&secret), "the token is never logged");
    let listed = gw.get("alice", "/-/api/tokens").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        listed.to_string().find("chpat_").is_none(),
        "a listing never shows the secret"
    );
    assert_eq!(gw.get("bob", "/-/api/tokens").await.json(), json!([]));

    // The token is Alice, as Bearer and as the password of Basic (any user name), on the
    // API and through the proxy to her own OpenCode.
    for auth in [
        format!("Bearer {secret}"),
        basic("opencode", &secret),
        basic("anyone", &secret),
    ] {
        let me = with_auth(&gw, Method::GET, "/-/api/me", &auth).await;
        assert_eq!(me.status, StatusCode::OK, "{auth}: {}", me.text());
        assert_eq!(me.json()["userId"], "alice");
        let proxied = with_auth(&gw, Method::GET, "/anything", &auth).await;
        assert_eq!(proxied.status, StatusCode::OK, "{}", proxied.text());
    }
    assert_eq!(gw.state("alice").await, "ready");
    // It cannot make or list tokens, and never reaches the admin API (Boss's neither).
    let mint = gw
        .request(
            Method::POST,
            None,
            "/-/api/tokens",
            &[JSON, ("authorization", &format!("Bearer {secret}"))],
            Some(Bytes::from(json!({"name": "more"}).to_string())),
        )
        .await;
    assert_eq!(mint.status, StatusCode::FORBIDDEN, "{}", mint.text());
    let boss = post_json(&gw, "boss", "/-/api/tokens", json!({"name": "ci"}))
        .await
        .json();
    let boss_secret = boss["token"].as_str().unwrap();
    let admin_by_token = with_auth(
        &gw,
        Method::GET,
        "/-/api/admin/stats",
        &format!("Bearer {boss_secret}"),
    )
    .await;
    assert_eq!(admin_by_token.status, StatusCode::FORBIDDEN);
    // Wrong tokens are refused, and so is Basic with a password that is not a token.
    for auth in [
        "Bearer chpat_0000".to_owned(),
        basic("opencode", "chpat_nope"),
        basic("opencode", "hunter2"),
    ] {
        let resp = with_auth(&gw, Method::GET, "/-/api/me", &auth).await;
        assert_eq!(
            resp.status,
            StatusCode::UNAUTHORIZED,
            "{auth}: {}",
            resp.text()
        );
    }

    // Bob cannot revoke it; an admin sees every token and can; Alice can revoke her own.
    let by_bob = gw
        .request(
            Method::DELETE,
            Some("bob"),
            &format!("/-/api/tokens/{id}"),
            &[],
            None,
        )
        .await;
    assert_eq!(by_bob.status, StatusCode::NOT_FOUND);
    let all = gw.get("boss", "/-/api/admin/tokens").await.json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let operator_list = gw.admin_request(Method::GET, "/tokens").await.json();
    assert_eq!(operator_list, all);
    let revoked = gw
        .request(
            Method::DELETE,
            Some("alice"),
            &format!("/-/api/tokens/{id}"),
            &[],
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    let after = with_auth(&gw, Method::GET, "/anything", &format!("Bearer {secret}")).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "revoked at once");
    let boss_id = boss["id"].as_str().unwrap();
    let by_operator = gw
        .admin_request(Method::DELETE, &format!("/tokens/{boss_id}"))
        .await;
    assert_eq!(by_operator.status, StatusCode::OK, "{}", by_operator.text());
    gw.wait_log("the operator's revocation", |l| {
        l.contains("admin action") && l.contains("revoke token") && l.contains(boss_id)
    })
    .await;
}

#[actix_web::test]
async fn a_token_survives_a_restart_and_ends_at_its_expiry() {
    let mut gw = Gateway::fake(&[]);
    let made = post_json(&gw, "alice", "/-/api/tokens", json!({"name": "cli"}))
        .await
        .json();
    let secret = format!("Bearer {}", made["token"].as_str().unwrap());
    let expires = made["expiresAt"].as_str().unwrap();
    assert!(expires.ends_with('Z'), "{expires}");
    gw.terminate();
    let mut gw = gw.restart();
    assert_eq!(
        with_auth(&gw, Method::GET, "/-/api/me", &secret)
            .await
            .status,
        StatusCode::OK
    );

    // Move its expiry into the past, as time would, and start again.
    let path = gw.data.path().join("state/access-tokens.json");
    let mut file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file["tokens"][0]["expiresAt"] = json!(now() - 1);
    std::fs::write(&path, file.to_string()).unwrap();
    gw.terminate();
    let gw = gw.restart();
    let expired = with_auth(&gw, Method::GET, "/-/api/me", &secret).await;
    assert_eq!(
        expired.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        expired.text()
    );
    assert_eq!(gw.get("alice", "/-/api/tokens").await.json(), json!([]));
}

#[actix_web::test]
async fn the_admin_listener_says_what_it_serves() {
    let gw = Gateway::fake(&[]);
    let index = gw.admin_request(Method::GET, "/").await;
    assert_eq!(index.status, StatusCode::OK);
    let endpoints = index.json()["endpoints"].clone();
    for route in [
        "GET /stats",
        "POST /instances/{user}/restart",
        "DELETE /tokens/{id}",
        "GET /console",
    ] {
        assert!(endpoints.get(route).is_some(), "{route}: {endpoints}");
    }
    // The console page loads without the token; its data does not.
    let page = gw.admin_request_with(Method::GET, "/console", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("admin.js"));
    let stats = gw.admin_request_with(Method::GET, "/stats", &[]).await;
    assert_eq!(stats.status, StatusCode::UNAUTHORIZED);
}
