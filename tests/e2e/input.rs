//! Bad and missing input: identity, names, routes, origins, configuration.

use std::path::Path;
use std::process::Command;

use awc::http::{Method, StatusCode};

use crate::support::{Gateway, FAKE};

/// Every path under the test's data directory.
pub fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The data directory of a gateway that has served no one (the admin token is made at
/// every start).
pub const EMPTY_LAYOUT: &[&str] = &[
    "shared",
    "shared/auth",
    "shared/config",
    "shared/repos",
    "state",
    "state/admin-token",
    "users",
];

#[actix_web::test]
async fn missing_identity_is_401_and_touches_nothing() {
    let gw = Gateway::fake(&[]);
    let api = gw.request(Method::GET, None, "/session", &[], None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    let body = api.json();
    assert_eq!(body["error"], "not signed in");
    assert_eq!(body["login"], "/-/login");

    let page = gw
        .request(
            Method::GET,
            None,
            "/some/page",
            &[("accept", "text/html")],
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(
        page.text().contains("/-/login?next=/some/page"),
        "{}",
        page.text()
    );

    for path in ["/-/api/me", "/-/api/instance", "/-/api/instance/progress"] {
        let resp = gw.request(Method::GET, None, path, &[], None).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let start = gw
        .request(Method::POST, None, "/-/api/instance/start", &[], None)
        .await;
    assert_eq!(start.status, StatusCode::UNAUTHORIZED);

    assert_eq!(tree(gw.data.path()), EMPTY_LAYOUT);
    assert_eq!(gw.stats().await["users"].as_array().unwrap().len(), 0);
}

/// The shared stylesheet is for people who are not signed in too: the pages they see (401,
/// sign-in, errors) link it, and it is served to a request that carries no credential, on
/// both listeners.
#[actix_web::test]
async fn the_shared_stylesheet_is_served_to_anyone() {
    let gw = Gateway::fake(&[]);
    let css = gw
        .request(Method::GET, None, "/-/static/base.css", &[], None)
        .await;
    assert_eq!(css.status, StatusCode::OK, "{}", css.text());
    assert_eq!(
        css.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(css.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(
        css.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(css.text().contains("--accent:"), "{}", css.text());

    let navigation = [("accept", "text/html"), ("sec-fetch-mode", "navigate")];
    let unauthorized = gw
        .request(Method::GET, None, "/some/page", &navigation, None)
        .await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    let missing = gw.get_with("erin", "/-/no-such-page", &navigation).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let login = gw.request(Method::GET, None, "/-/login", &[], None).await;
    assert_eq!(login.status, StatusCode::OK);
    for (name, page) in [("401", unauthorized), ("404", missing), ("sign-in", login)] {
        assert!(
            page.text()
                .contains(r#"<link rel="stylesheet" href="/-/static/base.css">"#),
            "{name}: {}",
            page.text()
        );
    }

    // The admin listener: the console's assets need no operator token; its data does.
    let css = gw
        .admin_request_with(Method::GET, "/static/base.css", &[])
        .await;
    assert_eq!(css.status, StatusCode::OK, "{}", css.text());
    assert_eq!(
        css.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    let console = gw.admin_request_with(Method::GET, "/console", &[]).await;
    assert!(console.text().contains(r#"href="static/base.css""#));
    // Nothing was created for the anonymous requests.
    assert!(!tree(gw.data.path()).iter().any(|p| p.starts_with("users/")));
}

#[actix_web::test]
async fn malformed_user_names_are_400_and_create_nothing() {
    let gw = Gateway::fake(&[]);
    let long = "a".repeat(10 * 1024);
    for name in [
        "a/b",
        "..",
        "../../etc",
        ".hidden",
        "a b",
        "-dash",
        long.as_str(),
    ] {
        let resp = gw.get(name, "/session").await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{name:.20}");
        assert!(
            resp.json()["error"]
                .as_str()
                .unwrap()
                .contains("dev user name"),
            "{name:.20}"
        );
        let me = gw.get(name, "/-/api/me").await;
        assert_eq!(me.status, StatusCode::BAD_REQUEST, "{name:.20}");
    }
    // A NUL can only arrive percent-encoded: in the login form and in a cookie.
    let login = gw
        .request(Method::GET, None, "/-/login?user=a%00b", &[], None)
        .await;
    assert_eq!(login.status, StatusCode::BAD_REQUEST);
    assert!(login.text().contains("contains"), "{}", login.text());
    let cookie = gw
        .request(
            Method::GET,
            None,
            "/session",
            &[("cookie", "chamberlain_dev_user=a%00b")],
            None,
        )
        .await;
    assert_eq!(cookie.status, StatusCode::BAD_REQUEST);
    let traversal = gw
        .request(Method::GET, None, "/-/login?user=..%2F..%2Fetc", &[], None)
        .await;
    assert_eq!(traversal.status, StatusCode::BAD_REQUEST);

    assert_eq!(tree(gw.data.path()), EMPTY_LAYOUT);
    let parent = gw.data.path().parent().unwrap();
    for entry in ["etc", "b", "hidden"] {
        assert!(!parent.join(entry).exists());
    }
    assert_eq!(gw.stats().await["users"].as_array().unwrap().len(), 0);
}

#[actix_web::test]
async fn dev_login_sets_a_cookie_that_identifies_later_requests() {
    let gw = Gateway::fake(&[]);
    let form = gw.request(Method::GET, None, "/-/login", &[], None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.text().contains("<form"));

    let login = gw
        .request(
            Method::GET,
            None,
            "/-/login?user=carol&next=/session",
            &[],
            None,
        )
        .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    assert_eq!(login.header("location").as_deref(), Some("/session"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with("chamberlain_dev_user=carol;"),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));

    let me = gw
        .request(
            Method::GET,
            None,
            "/-/api/me",
            &[("cookie", "chamberlain_dev_user=carol")],
            None,
        )
        .await
        .json();
    assert_eq!(me["userId"], "carol");
    assert_eq!(me["email"], "carol@localhost");
    assert_eq!(me["isInitialized"], false);
    assert_eq!(me["instance"]["state"], "stopped");
    let sessions = gw
        .request(
            Method::GET,
            None,
            "/session",
            &[("cookie", "chamberlain_dev_user=carol")],
            None,
        )
        .await;
    assert_eq!(sessions.status, StatusCode::OK);
    let me = gw.get("carol", "/-/api/me").await.json();
    assert_eq!(me["isInitialized"], true);
    assert_eq!(me["instance"]["state"], "ready");
    let home = gw.data.path().canonicalize().unwrap().join("users/carol");
    assert_eq!(me["homeDirectory"], home.display().to_string());

    let open_redirect = gw
        .request(
            Method::GET,
            None,
            "/-/login?user=carol&next=//evil.example/x",
            &[],
            None,
        )
        .await;
    assert_eq!(open_redirect.header("location").as_deref(), Some("/"));

    let logout = gw.request(Method::GET, None, "/-/logout", &[], None).await;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    assert!(logout.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[actix_web::test]
async fn unknown_gateway_routes_and_methods_are_json_errors() {
    let gw = Gateway::fake(&[]);
    let missing = gw.get("alice", "/-/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "no such endpoint: /-/nope");
    let wrong = gw.get("alice", "/-/api/instance/start").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.json()["error"].as_str().unwrap().contains("GET"));
    let health = gw.request(Method::GET, None, "/-/healthz", &[], None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = gw.request(Method::GET, None, "/-/readyz", &[], None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let admin_missing = gw.admin_request(Method::GET, "/nope").await;
    assert_eq!(admin_missing.status, StatusCode::NOT_FOUND);
    let admin_unknown = gw
        .admin_request(Method::POST, "/instances/nobody/stop")
        .await;
    assert_eq!(admin_unknown.status, StatusCode::NOT_FOUND);
    // Nothing was started by any of this.
    assert_eq!(gw.spawned_pids().len(), 0);
}

#[actix_web::test]
async fn cross_site_state_changes_are_refused() {
    let gw = Gateway::fake(&[]);
    for path in ["/-/api/instance/start", "/-/api/instance/stop"] {
        let resp = gw
            .request(
                Method::POST,
                Some("alice"),
                path,
                &[("origin", "https://evil.example")],
                None,
            )
            .await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(gw.spawned_pids().len(), 0);
    let host = gw.base.trim_start_matches("http://").to_owned();
    let origin = format!("http://{host}");
    let ok = gw
        .request(
            Method::POST,
            Some("alice"),
            "/-/api/instance/start",
            &[("origin", &origin)],
            None,
        )
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text());
    let stopped = gw.post("alice", "/-/api/instance/stop").await;
    assert_eq!(stopped.status, StatusCode::OK);
    assert_eq!(stopped.json()["state"], "stopped");
}

#[actix_web::test]
async fn dev_identity_refuses_a_public_address() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chamberlain"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--opencode-bin", FAKE])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve dev identity"),
        "{stderr}"
    );

    let bad_flag = Command::new(env!("CARGO_BIN_EXE_chamberlain"))
        .args(["serve", "--idle-timeout", "soon"])
        .output()
        .unwrap();
    assert!(!bad_flag.status.success());
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("--idle-timeout"));
}

#[actix_web::test]
async fn configuration_is_read_from_the_environment() {
    let gw = Gateway::start(
        Path::new(FAKE),
        &[],
        &[
            ("CHAMBERLAIN_MAX_INSTANCES", "2"),
            ("CHAMBERLAIN_MAX_CONCURRENT_STARTS", "1"),
            (
                "CHAMBERLAIN_OPENCODE_ARG",
                "--pure --fake-start-delay-ms=10",
            ),
        ],
    );
    let stats = gw.stats().await;
    assert_eq!(stats["maxInstances"], 2);
    assert_eq!(stats["maxConcurrentStarts"], 1);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
}
