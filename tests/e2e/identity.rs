//! Verified identity: `--auth alb` (the load balancer's signed header) and `--auth jwt`
//! (bearer tokens against a JWKS or a PEM key), with keys generated per test and served
//! from a local key server.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::input::{tree, EMPTY_LAYOUT};
use crate::support::{metric, Gateway, Response};
use crate::tokens::{
    alb_header, alb_token, b64, es256, hs256, now, user_claims, Key, KeyServer, ARN,
};

const KID: &str = "3f9a1c2e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";

fn alb_gateway(keys: &KeyServer, extra: &[&str]) -> Gateway {
    let key_url = format!("{}/{{region}}/{{kid}}", keys.url);
    let mut args = vec![
        "--auth",
        "alb",
        "--alb-arn",
        ARN,
        "--alb-region",
        "eu-west-1",
        "--alb-key-url",
        &key_url,
    ];
    args.extend_from_slice(extra);
    Gateway::fake(&args)
}

fn key_path(kid: &str) -> String {
    format!("/eu-west-1/{kid}")
}

async fn with_header(gw: &Gateway, name: &str, value: &str, path: &str) -> Response {
    gw.request(Method::GET, None, path, &[(name, value)], None)
        .await
}

async fn alb(gw: &Gateway, token: &str, path: &str) -> Response {
    with_header(gw, "x-amzn-oidc-data", token, path).await
}

/// A 401 with a JSON reason containing `why`.
fn assert_rejected(resp: &Response, why: &str, case: &str) {
    assert_eq!(
        resp.status,
        StatusCode::UNAUTHORIZED,
        "{case}: {}",
        resp.text()
    );
    let error = resp.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains(why),
        "{case}: error {error:?} does not mention {why:?}"
    );
}

/// Nothing was created and nothing started.
async fn assert_untouched(gw: &Gateway) {
    assert_eq!(tree(gw.data.path()), EMPTY_LAYOUT);
    assert_eq!(gw.stats().await["users"].as_array().unwrap().len(), 0);
    assert!(gw.spawned_pids().is_empty(), "{}", gw.log());
}

#[actix_web::test]
async fn alb_accepts_padded_unpadded_and_cognito_tokens() {
    let keys = KeyServer::start();
    let key = Key::generate(KID);
    keys.set(&key_path(KID), 200, &key.public_pem());
    let gw = alb_gateway(&keys, &[]);

    // Claims whose JSON lengths are not multiples of 3, so the ALB-style encoding pads.
    let mut claims = user_claims("alice");
    claims["name"] = json!("Alice A");
    let mut padded = alb_token(&key, &claims);
    while !padded.split('.').take(2).any(|s| s.ends_with('=')) {
        claims["name"] = json!(format!("{} ", claims["name"].as_str().unwrap()));
        padded = alb_token(&key, &claims);
    }
    let me = alb(&gw, &padded, "/-/api/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    let me = me.json();
    assert_eq!(me["userId"], "alice");
    assert_eq!(me["email"], "alice@example.com");
    assert!(me["homeDirectory"]
        .as_str()
        .unwrap()
        .ends_with("/users/alice"));

    let unpadded = es256(
        &key,
        &alb_header(KID, ARN, now() + 120),
        &user_claims("bob"),
        false,
    );
    assert!(!unpadded.contains('='));
    let me = alb(&gw, &unpadded, "/-/api/me").await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["userId"], "bob");

    // What Cognito's userinfo looks like through an ALB: a UUID subject, string booleans.
    let sub = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    let cognito = json!({
        "sub": sub, "email_verified": "true", "email": "carol@example.com",
        "username": "carol", "exp": now() + 120,
        "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example",
    });
    let token = alb_token(&key, &cognito);
    let me = alb(&gw, &token, "/-/api/me").await.json();
    assert_eq!(me["userId"], sub);
    assert_eq!(me["name"], "carol");
    assert_eq!(me["emailVerified"], true);
    assert!(
        me["homeDirectory"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/users/{sub}")),
        "a safe subject is its own directory name: {me}"
    );

    // The same token through the proxy starts carol's instance; OpenCode never sees the
    // load balancer's headers or cookies.
    let echo = gw
        .request(
            Method::GET,
            None,
            "/echo",
            &[
                ("x-amzn-oidc-data", &token),
                ("x-amzn-oidc-accesstoken", "access"),
                ("x-amzn-oidc-identity", sub),
                ("cookie", "AWSELBAuthSessionCookie-0=s0; theme=dark"),
            ],
            None,
        )
        .await;
    assert_eq!(echo.status, StatusCode::OK, "{}", echo.text());
    let seen = echo.json()["headers"].to_string().to_ascii_lowercase();
    for leaked in ["x-amzn-oidc", "awselbauthsessioncookie"] {
        assert!(!seen.contains(leaked), "{leaked} reached OpenCode: {seen}");
    }
    assert!(seen.contains("theme=dark"));

    // One key fetch for everything above, and repeated tokens are not re-verified.
    assert_eq!(keys.hits(&key_path(KID)), 1);
    for _ in 0..3 {
        assert_eq!(alb(&gw, &token, "/-/api/me").await.status, StatusCode::OK);
    }
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "chamberlain_auth_requests_total{outcome=\"cache_hit\"}"
        ) >= 3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "chamberlain_auth_requests_total{outcome=\"verified\"}"
        ),
        3.0
    );
    assert_eq!(gw.stats().await["auth"]["mode"], "alb");
}

#[actix_web::test]
async fn alb_rejections_are_401_and_touch_nothing() {
    let keys = KeyServer::start();
    let key = Key::generate(KID);
    keys.set(&key_path(KID), 200, &key.public_pem());
    let gw = alb_gateway(&keys, &[]);
    let claims = user_claims("mallory");
    let good = alb_token(&key, &claims);
    let header = alb_header(KID, ARN, now() + 120);

    let missing = gw.request(Method::GET, None, "/-/api/me", &[], None).await;
    assert_rejected(&missing, "not signed in", "no header");

    let parts: Vec<&str> = good.split('.').collect();
    let imposter = Key::generate(KID);
    let mut altered_claims = claims.clone();
    altered_claims["sub"] = json!("admin");
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        b64(altered_claims.to_string().as_bytes(), true),
        parts[2]
    );
    let none_header = json!({"alg": "none", "kid": KID, "signer": ARN});
    let alg_none = format!(
        "{}.{}.",
        b64(none_header.to_string().as_bytes(), false),
        b64(claims.to_string().as_bytes(), false)
    );
    let alg_none_signed = format!("{alg_none}c2ln");
    let mut hs_header = header.clone();
    hs_header["alg"] = json!("HS256");
    let mut expired_claims = claims.clone();
    expired_claims["exp"] = json!(now() - 3600);
    let mut no_sub = claims.clone();
    no_sub.as_object_mut().unwrap().remove("sub");

    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "garbage".into(), "segments"),
        (
            "two segments",
            format!("{}.{}", parts[0], parts[1]),
            "segments",
        ),
        ("four segments", format!("{good}.{}", parts[2]), "segments"),
        (
            "bad signature",
            alb_token(&imposter, &claims),
            "signature does not verify",
        ),
        (
            "payload altered after signing",
            altered,
            "signature does not verify",
        ),
        (
            "wrong signer",
            es256(
                &key,
                &alb_header(
                    KID,
                    "arn:aws:elasticloadbalancing:eu-west-1:999:loadbalancer/app/evil/1",
                    now() + 120,
                ),
                &claims,
                true,
            ),
            "signer",
        ),
        ("alg none, empty signature", alg_none, "signature segment"),
        ("alg none", alg_none_signed, "not ES256"),
        (
            "HS256 keyed with the public key",
            hs256(key.public_pem().as_bytes(), &hs_header, &claims),
            "not ES256",
        ),
        ("expired", alb_token(&key, &expired_claims), "expired"),
        ("without sub", alb_token(&key, &no_sub), "sub"),
    ];
    for (case, token, why) in &cases {
        assert_rejected(&alb(&gw, token, "/-/api/me").await, why, case);
        // The proxy path refuses the same way and starts nothing.
        assert_rejected(&alb(&gw, token, "/session").await, why, case);
    }

    // An unknown kid: the key server is asked once, then the miss is remembered.
    let stranger = Key::generate("0b6c1d2e-0000-4000-8000-000000000000");
    let token = alb_token(&stranger, &claims);
    for _ in 0..3 {
        assert_rejected(
            &alb(&gw, &token, "/-/api/me").await,
            "no such signing key",
            "unknown kid",
        );
    }
    assert_eq!(keys.hits(&key_path(&stranger.kid)), 1);
    // Many requests at once for another unknown kid, while the key server is slow to
    // answer, still ask once.
    keys.set_delay(300);
    let crowd = Key::generate("1c2d3e4f-0000-4000-8000-000000000000");
    let token = alb_token(&crowd, &claims);
    let answers =
        futures_util::future::join_all((0..20).map(|_| alb(&gw, &token, "/-/api/me"))).await;
    assert!(answers.iter().all(|r| r.status == StatusCode::UNAUTHORIZED));
    assert_eq!(keys.hits(&key_path(&crowd.kid)), 1);
    keys.set_delay(0);
    // A kid that could steer the key URL is never fetched.
    let mut sneaky = alb_header("../../admin", ARN, now() + 120);
    sneaky["kid"] = json!("../../admin");
    let token = es256(&key, &sneaky, &claims, true);
    assert_rejected(&alb(&gw, &token, "/-/api/me").await, "kid", "path kid");

    // A browser gets a page, not JSON.
    let page = gw
        .request(
            Method::GET,
            None,
            "/",
            &[("x-amzn-oidc-data", &cases[0].1), ("accept", "text/html")],
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.text().contains("sign-in rejected"), "{}", page.text());

    // A 64 KB header never reaches the verifier.
    let huge = "A".repeat(64 * 1024);
    let resp = alb(&gw, &huge, "/-/api/me").await;
    assert!(
        matches!(resp.status.as_u16(), 400 | 431),
        "64 KB header: {}",
        resp.status
    );

    // Only the one good key was ever fetched for KID; a rejection logs its reason, never
    // the token.
    assert_eq!(keys.hits(&key_path(KID)), 1);
    let log = gw.log();
    assert!(log.contains("request refused"), "{log}");
    assert!(!log.contains(parts[2]), "a token's signature was logged");
    assert_untouched(&gw).await;
}

#[actix_web::test]
async fn alb_key_server_down_is_503_not_401() {
    let keys = KeyServer::start();
    keys.set(&key_path(KID), 500, "oops");
    let gw = alb_gateway(&keys, &["--auth-key-timeout", "2s"]);
    let key = Key::generate(KID);
    let resp = alb(&gw, &alb_token(&key, &user_claims("dave")), "/-/api/me").await;
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        resp.text()
    );
    assert!(resp.header("retry-after").is_some());
    assert_untouched(&gw).await;
}

#[actix_web::test]
async fn alb_identity_covers_websockets_and_logout() {
    let keys = KeyServer::start();
    let key = Key::generate(KID);
    keys.set(&key_path(KID), 200, &key.public_pem());
    let gw = alb_gateway(
        &keys,
        &[
            "--logout-url",
            "https://auth.example.com/logout?client_id=x",
        ],
    );
    let token = alb_token(&key, &user_claims("erin"));
    // A socket alone does not start an instance; a request does.
    assert_eq!(alb(&gw, &token, "/session").await.status, StatusCode::OK);

    let (resp, _socket) = gw
        .ws(None, "/ws", &[("x-amzn-oidc-data", &token)])
        .await
        .expect("websocket with a verified identity");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        gw.ws_refused(None, "/ws", &[]).await,
        StatusCode::UNAUTHORIZED
    );
    let forged = alb_token(&Key::generate(KID), &user_claims("erin"));
    assert_eq!(
        gw.ws_refused(None, "/ws", &[("x-amzn-oidc-data", &forged)])
            .await,
        StatusCode::UNAUTHORIZED
    );

    let out = gw
        .request(
            Method::GET,
            None,
            "/-/logout",
            &[
                ("x-amzn-oidc-data", &token),
                (
                    "cookie",
                    "AWSELBAuthSessionCookie-0=a; AWSELBAuthSessionCookie-5=f; other=1",
                ),
            ],
            None,
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(
        out.header("location").as_deref(),
        Some("https://auth.example.com/logout?client_id=x")
    );
    let cleared: Vec<String> = out
        .headers
        .get_all("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    for shard in ["-0=", "-1=", "-2=", "-3=", "-5="] {
        assert!(
            cleared.iter().any(
                |c| c.starts_with(&format!("AWSELBAuthSessionCookie{shard}"))
                    && c.contains("Max-Age=0")
            ),
            "{shard} not expired: {cleared:?}"
        );
    }
    assert!(!cleared.iter().any(|c| c.starts_with("other=")));
}

fn jwt_claims(sub: &str, issuer: &str, aud: &str) -> Value {
    json!({"sub": sub, "iss": issuer, "aud": aud, "exp": now() + 300, "email": format!("{sub}@x.test")})
}

const ISSUER: &str = "https://issuer.test/pool";

fn es_header(kid: &str) -> Value {
    json!({"alg": "ES256", "typ": "JWT", "kid": kid})
}

/// A gateway verifying bearer tokens against `keys`' `/jwks.json`, for issuer `ISSUER` and
/// audience `api`.
fn jwks_gateway(keys: &KeyServer, extra: &[&str]) -> Gateway {
    let jwks = format!("{}/jwks.json", keys.url);
    let mut args = vec![
        "--auth",
        "jwt",
        "--jwks-url",
        &jwks,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        "api",
    ];
    args.extend_from_slice(extra);
    Gateway::fake(&args)
}

async fn bearer(gw: &Gateway, token: &str) -> Response {
    with_header(gw, "authorization", &format!("Bearer {token}"), "/-/api/me").await
}

#[actix_web::test]
async fn jwt_jwks_rotation_fetches_a_new_kid_once() {
    let keys = KeyServer::start();
    let k1 = Key::generate("k1");
    let k2 = Key::generate("k2");
    keys.set("/jwks.json", 200, &json!({"keys": [k1.jwk()]}).to_string());
    let gw = jwks_gateway(
        &keys,
        &[
            "--jwt-cookie",
            "id_token",
            "--jwks-refresh-cooldown",
            "300ms",
        ],
    );

    let t1 = es256(
        &k1,
        &es_header("k1"),
        &jwt_claims("frank", ISSUER, "api"),
        false,
    );
    let me = bearer(&gw, &t1).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["userId"], "frank");
    let t1b = es256(
        &k1,
        &es_header("k1"),
        &jwt_claims("grace", ISSUER, "api"),
        false,
    );
    assert_eq!(bearer(&gw, &t1b).await.status, StatusCode::OK);
    assert_eq!(keys.hits("/jwks.json"), 1);

    // The provider rotates: the new kid triggers exactly one refetch.
    keys.set("/jwks.json", 200, &json!({"keys": [k2.jwk()]}).to_string());
    actix_web::rt::time::sleep(std::time::Duration::from_millis(400)).await;
    let t2 = es256(
        &k2,
        &es_header("k2"),
        &jwt_claims("heidi", ISSUER, "api"),
        false,
    );
    let me = bearer(&gw, &t2).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    let t2b = es256(
        &k2,
        &es_header("k2"),
        &jwt_claims("ivan", ISSUER, "api"),
        false,
    );
    assert_eq!(bearer(&gw, &t2b).await.status, StatusCode::OK);
    assert_eq!(keys.hits("/jwks.json"), 2);

    // A kid nobody publishes: one refetch at most per cooldown, however often it comes.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(400)).await;
    let k3 = Key::generate("k3");
    let t3 = es256(
        &k3,
        &es_header("k3"),
        &jwt_claims("judy", ISSUER, "api"),
        false,
    );
    for _ in 0..5 {
        assert_rejected(
            &bearer(&gw, &t3).await,
            "no signing key for kid k3",
            "unknown kid",
        );
    }
    assert_eq!(keys.hits("/jwks.json"), 3);

    // k1 left the set at rotation and is no longer trusted for new tokens.
    let t1c = es256(
        &k1,
        &es_header("k1"),
        &jwt_claims("ken", ISSUER, "api"),
        false,
    );
    assert_rejected(
        &bearer(&gw, &t1c).await,
        "no signing key for kid k1",
        "retired key",
    );

    // The token may come in the configured cookie instead.
    let me = with_header(
        &gw,
        "cookie",
        &format!("theme=x; id_token={t2}"),
        "/-/api/me",
    )
    .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(me.json()["userId"], "heidi");
}

#[actix_web::test]
async fn jwt_rejects_wrong_issuer_audience_client_and_expired() {
    let keys = KeyServer::start();
    let key = Key::generate("only");
    keys.set("/jwks.json", 200, &json!({"keys": [key.jwk()]}).to_string());
    let gw = jwks_gateway(&keys, &["--jwt-client-id", "client1"]);
    let header = es_header("only");
    let sign = |claims: &Value| es256(&key, &header, claims, false);

    // Accepted: the audience, a Cognito access token (client_id, no aud), an ID token
    // (aud = the client id).
    let mut access = jwt_claims("liam", ISSUER, "x");
    access.as_object_mut().unwrap().remove("aud");
    access["client_id"] = json!("client1");
    access["token_use"] = json!("access");
    for claims in [
        jwt_claims("liam", ISSUER, "api"),
        access.clone(),
        jwt_claims("liam", ISSUER, "client1"),
    ] {
        let me = bearer(&gw, &sign(&claims)).await;
        assert_eq!(me.status, StatusCode::OK, "{claims}: {}", me.text());
    }

    let mut wrong_client = access.clone();
    wrong_client["client_id"] = json!("client2");
    let mut expired = jwt_claims("liam", ISSUER, "api");
    expired["exp"] = json!(now() - 600);
    let mut rs_header = header.clone();
    rs_header["alg"] = json!("RS256");
    let mut hs_header = header.clone();
    hs_header["alg"] = json!("HS256");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong issuer",
            sign(&jwt_claims("liam", "https://evil.test", "api")),
            "issuer",
        ),
        (
            "wrong audience",
            sign(&jwt_claims("liam", ISSUER, "other")),
            "audience",
        ),
        ("wrong client id", sign(&wrong_client), "client id"),
        ("expired", sign(&expired), "expired"),
        (
            "alg the key does not have",
            es256(&key, &rs_header, &jwt_claims("liam", ISSUER, "api"), false),
            "does not match",
        ),
        (
            "HS256 keyed with the public key",
            hs256(
                key.public_pem().as_bytes(),
                &hs_header,
                &jwt_claims("liam", ISSUER, "api"),
            ),
            "symmetric",
        ),
    ];
    for (case, token, why) in &cases {
        assert_rejected(&bearer(&gw, token).await, why, case);
    }
    let basic = with_header(&gw, "authorization", "Basic YTpi", "/-/api/me").await;
    assert_rejected(&basic, "Bearer", "basic auth");
    // Only the accepted tokens' user exists, and wrong tokens never caused a refetch.
    assert_eq!(keys.hits("/jwks.json"), 1);
}

#[actix_web::test]
async fn jwt_with_a_pem_key_and_no_sign_in_page() {
    let key = Key::generate("ignored");
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    std::fs::write(&pem, key.public_pem()).unwrap();
    let gw = Gateway::fake(&[
        "--auth",
        "jwt",
        "--jwt-public-key",
        pem.to_str().unwrap(),
        "--jwt-issuer",
        ISSUER,
    ]);
    let token = es256(
        &key,
        &es_header("any"),
        &jwt_claims("mia", ISSUER, "x"),
        false,
    );
    let me = bearer(&gw, &token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    let forged = es256(
        &Key::generate("any"),
        &es_header("any"),
        &jwt_claims("mia", ISSUER, "x"),
        false,
    );
    assert_rejected(&bearer(&gw, &forged).await, "signature", "forged");

    let page = gw
        .request(Method::GET, None, "/", &[("accept", "text/html")], None)
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(!page.text().contains("/-/login"), "{}", page.text());
    // Without a token: the 401 and signed-out pages, and the stylesheet they link.
    assert!(
        page.text().contains("/-/static/base.css"),
        "{}",
        page.text()
    );
    let out = gw.request(Method::GET, None, "/-/logout", &[], None).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(out.text().contains("/-/static/base.css"), "{}", out.text());
    let css = gw
        .request(Method::GET, None, "/-/static/base.css", &[], None)
        .await;
    assert_eq!(css.status, StatusCode::OK, "{}", css.text());
    assert!(css
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/css")));
    let login = gw.request(Method::GET, None, "/-/login", &[], None).await;
    assert_eq!(login.status, StatusCode::NOT_FOUND);
}
