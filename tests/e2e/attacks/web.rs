//! Attacks on the gateway itself, tried the way a signed-in user with a terminal (or a web
//! page that user visits) would, against the real OpenCode with a uid per user. Each
//! failed against the code before the fix it checks (issue 13).
//!
//! - the admin API from a user's terminal: plain, through an IPv4-mapped IPv6 address, on
//!   a dual-stack listener, and sending a request and closing at once; the admin socket;
//!   and without the operator token at all;
//! - browser-side: a rebound `Host`, cross-site posts riding the cookie, and other
//!   spellings of a guarded OpenCode route.
//!
//! They need root (uid isolation), like `isolation.rs`, and fail without it.

use std::os::unix::fs::PermissionsExt;

use awc::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use crate::support::{as_u64, poll_until, unix_request, Gateway, Terminal, PATIENCE};

fn gateway(extra: &[&str]) -> Gateway {
    super::root_gateway("both", extra)
}

/// Starts `user`'s OpenCode; their entry in `/stats`.
async fn start(gw: &Gateway, user: &str) -> Value {
    let resp = gw.get(user, "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{user}: {}", resp.text());
    gw.wait_state(user, "ready").await
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// What a user's terminal tries against a TCP admin listener at `host` (as written in a
/// URL) and `port`: each attempt prints what it got.
fn admin_attempts(host: &str, port: u16) -> Vec<(String, String)> {
    // bash's /dev/tcp takes the address without brackets.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let url = format!("http://{host}:{port}");
    let request = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n")
    };
    vec![
        (
            format!("curl stop via {host}"),
            format!("curl -s -g -w ' code=%{{http_code}}' -X POST {url}/instances/bob/stop"),
        ),
        (
            format!("curl stats via {host}"),
            format!("curl -s -g -w ' code=%{{http_code}}' {url}/stats"),
        ),
        (
            format!("send-and-close stop via {host}"),
            // Written, then the socket closed before any answer can come.
            format!(
                "for i in 1 2 3 4 5; do exec 3<>/dev/tcp/{bare}/{port} && printf '{}' >&3; \
                 exec 3>&-; done; sleep 1; echo sent",
                request("POST", "/instances/bob/stop")
            ),
        ),
        (
            format!("half-close stats via {host}"),
            // Written, the sending side shut, and the answer read.
            format!(
                "perl -MIO::Socket::IP -e '$s = IO::Socket::IP->new(PeerHost => \"{bare}\", \
                 PeerPort => {port}) or die \"connect: $!\"; print $s \"{}\"; shutdown($s, 1); \
                 print while <$s>'",
                request("GET", "/stats")
            ),
        ),
    ]
}

/// Runs every attempt from `term` and checks that none got anything: no 200, no user list.
async fn attack_admin(term: &mut Terminal, host: &str, port: u16) {
    for (what, script) in admin_attempts(host, port) {
        let (out, _) = term.run(&script).await;
        eprintln!("{what}: {out}");
        assert!(!out.contains("code=200"), "{what} succeeded: {out}");
        assert!(!out.contains("HTTP/1.1 200"), "{what} succeeded: {out}");
        for leak in ["userId", "\"pid\"", "\"port\"", "maxInstances"] {
            assert!(!out.contains(leak), "{what} leaked {leak}: {out}");
        }
    }
}

/// Bob's OpenCode is the one that was there before: ready, same process.
async fn assert_untouched(gw: &Gateway, user: &str, pid: u64) {
    let entry = gw.user(user).await.expect("user in stats");
    assert_eq!(entry["state"], "ready", "{user}: {entry}\n{}", gw.log());
    assert_eq!(as_u64(&entry["pid"]), pid, "{user} was restarted: {entry}");
}

#[actix_web::test]
async fn the_admin_listener_refuses_users_terminals() {
    let gw = gateway(&[]);
    let bob = start(&gw, "bob").await;
    let pid = as_u64(&bob["pid"]);
    start(&gw, "alice").await;
    let port = port_of(&gw.admin);
    let mut term = Terminal::open(&gw, "alice").await;
    // The listener is IPv4; an IPv6 socket reaches it through the mapped address and is
    // listed in /proc/net/tcp6, not tcp.
    for host in ["127.0.0.1", "[::ffff:127.0.0.1]"] {
        attack_admin(&mut term, host, port).await;
    }
    assert_untouched(&gw, "bob", pid).await;
}

#[actix_web::test]
async fn a_dual_stack_admin_listener_refuses_users_terminals() {
    // On [::] an IPv4 client is reported as IPv4-mapped, while its socket is in tcp.
    let gw = gateway(&["--admin-listen", "[::]:0"]);
    let bob = start(&gw, "bob").await;
    let pid = as_u64(&bob["pid"]);
    start(&gw, "alice").await;
    let port = port_of(&gw.admin);
    let mut term = Terminal::open(&gw, "alice").await;
    for host in ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"] {
        attack_admin(&mut term, host, port).await;
    }
    assert_untouched(&gw, "bob", pid).await;
}

#[actix_web::test]
async fn the_admin_listener_needs_the_operator_token() {
    let gw = gateway(&[]);
    start(&gw, "bob").await;
    for (what, headers) in [
        ("no token", vec![]),
        (
            "a wrong token",
            vec![("authorization", "Bearer not-the-token")],
        ),
        ("a Basic header", vec![("authorization", "Basic b3A6b3A=")]),
    ] {
        for (method, path) in [
            (Method::GET, "/stats"),
            (Method::POST, "/instances/bob/stop"),
        ] {
            let resp = gw.admin_request_with(method, path, &headers).await;
            assert_eq!(
                resp.status,
                StatusCode::UNAUTHORIZED,
                "{what} {path}: {}",
                resp.text()
            );
            assert!(resp.json()["error"].as_str().unwrap().contains("token"));
        }
    }
    assert_eq!(gw.state("bob").await, "ready");
    let health = gw.admin_request_with(Method::GET, "/healthz", &[]).await;
    assert_eq!(health.status, StatusCode::OK, "health checks need no token");
    // The token is in the state directory, for root (and the gateway's uid) only.
    let file = gw.data.path().join("state/admin-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The log says where.
    gw.wait_log_contains(&file.display().to_string()).await;
    let stats = gw.admin_request(Method::GET, "/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
}

#[actix_web::test]
async fn the_admin_socket_serves_root_only() {
    let data = tempfile::tempdir().unwrap();
    let socket = data.path().join("admin.sock");
    let socket_arg = socket.display().to_string();
    // The socket lives where users can reach it by path: only its mode and the peer check
    // keep them out.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let gw = gateway(&["--admin-listen", "none", "--admin-socket", &socket_arg]);
    assert_eq!(gw.admin, "none", "no TCP admin listener");
    assert!(!gw.data.path().join("state/admin-token").exists());
    let bob = start_via_socket(&gw, &socket, "bob").await;
    let pid = as_u64(&bob["pid"]);
    start_via_socket(&gw, &socket, "alice").await;

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut term = Terminal::open(&gw, "alice").await;
    let attempt = format!(
        "curl -s -w ' code=%{{http_code}}' --unix-socket {socket_arg} -X POST http://admin/instances/bob/stop; \
         curl -s -w ' code=%{{http_code}}' --unix-socket {socket_arg} http://admin/stats"
    );
    let (out, _) = term.run(&attempt).await;
    assert!(out.contains("code=000"), "alice connected: {out}");
    assert!(!out.contains("userId"), "{out}");

    // Even when the file lets her connect, the kernel's credentials say who she is.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (out, _) = term.run(&attempt).await;
    assert!(out.contains("code=403"), "{out}");
    assert!(
        !out.contains("code=200") && !out.contains("userId"),
        "{out}"
    );

    let (status, body) = unix_request(&socket, "GET", "/stats").unwrap();
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    let entry = stats["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["userId"] == "bob")
        .cloned()
        .unwrap();
    assert_eq!(entry["state"], "ready", "{entry}");
    assert_eq!(as_u64(&entry["pid"]), pid);
    drop(data);
}

/// Starts `user` and waits for ready, asking the admin socket (there is no TCP listener).
async fn start_via_socket(gw: &Gateway, socket: &std::path::Path, user: &str) -> Value {
    let resp = gw.get(user, "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{user}: {}", resp.text());
    poll_until(PATIENCE, async || {
        let (status, body) = unix_request(socket, "GET", "/stats").unwrap();
        assert_eq!(status, 200, "{body}");
        let stats: Value = serde_json::from_str(&body).unwrap();
        stats["users"]
            .as_array()
            .and_then(|u| {
                u.iter()
                    .find(|u| u["userId"] == user && u["state"] == "ready")
            })
            .cloned()
            .ok_or(())
    })
    .await
    .unwrap_or_else(|()| panic!("{user} never ready\n{}", gw.log()))
}

#[actix_web::test]
async fn a_rebound_host_is_refused() {
    let gw = gateway(&[]);
    start(&gw, "alice").await;
    let evil = [("host", "evil.example"), ("origin", "http://evil.example")];
    for (method, path) in [
        (Method::GET, "/session"),
        (Method::POST, "/session"),
        (Method::GET, "/-/api/me"),
        (Method::GET, "/-/login?user=alice"),
    ] {
        let resp = gw
            .request(method.clone(), Some("alice"), path, &evil, None)
            .await;
        assert_eq!(
            resp.status,
            StatusCode::MISDIRECTED_REQUEST,
            "{method} {path}: {}",
            resp.text()
        );
    }
    // A forwarded host from a peer that is not a trusted proxy counts for nothing.
    let forged = [("host", "evil.example"), ("x-forwarded-host", "127.0.0.1")];
    let resp = gw
        .request(Method::GET, Some("alice"), "/session", &forged, None)
        .await;
    assert_eq!(
        resp.status,
        StatusCode::MISDIRECTED_REQUEST,
        "{}",
        resp.text()
    );

    let pty = gw.post("alice", "/pty").await;
    let id = pty.json()["id"].as_str().unwrap().to_owned();
    let status = gw
        .ws_refused(Some("alice"), &format!("/pty/{id}/connect"), &evil)
        .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);

    // The gateway's own names work, and health checks answer any host.
    let local = gw
        .request(
            Method::GET,
            Some("alice"),
            "/session",
            &[("host", "localhost")],
            None,
        )
        .await;
    assert_eq!(local.status, StatusCode::OK, "{}", local.text());
    let health = gw
        .request(
            Method::GET,
            None,
            "/-/healthz",
            &[("host", "10.1.2.3:8080")],
            None,
        )
        .await;
    assert_eq!(health.status, StatusCode::OK);
}

async fn sessions(gw: &Gateway, user: &str) -> usize {
    let list = gw.get(user, "/session").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    list.json().as_array().expect("sessions").len()
}

#[actix_web::test]
async fn cross_site_posts_with_the_cookie_are_refused() {
    let gw = gateway(&[]);
    start(&gw, "alice").await;
    let before = sessions(&gw, "alice").await;
    let cookie = ("cookie", "chamberlain_dev_user=alice");
    let form = ("content-type", "text/plain");
    for (what, headers) in [
        (
            "a foreign Origin",
            vec![cookie, form, ("origin", "http://evil.example")],
        ),
        ("Origin: null", vec![cookie, form, ("origin", "null")]),
        (
            "Sec-Fetch-Site: cross-site",
            vec![cookie, form, ("sec-fetch-site", "cross-site")],
        ),
    ] {
        for path in ["/session", "/project/git/init"] {
            let resp = gw
                .request(
                    Method::POST,
                    None,
                    path,
                    &headers,
                    Some(Bytes::from_static(b"{}")),
                )
                .await;
            assert_eq!(
                resp.status,
                StatusCode::FORBIDDEN,
                "{what} {path}: {}",
                resp.text()
            );
        }
    }
    assert_eq!(
        sessions(&gw, "alice").await,
        before,
        "a session was created"
    );
    assert!(
        !gw.data.path().join("users/alice/workspace/.git").exists(),
        "git init ran"
    );

    // The gateway's own pages may; so may a client that sets its own header.
    let own = gw.base.clone();
    let resp = gw
        .request(
            Method::POST,
            None,
            "/session",
            &[
                cookie,
                ("content-type", "application/json"),
                ("origin", &own),
            ],
            Some(Bytes::from_static(b"{}")),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let resp = gw
        .request(
            Method::POST,
            Some("alice"),
            "/session",
            &[
                ("content-type", "application/json"),
                ("origin", "http://tool.example"),
            ],
            Some(Bytes::from_static(b"{}")),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(sessions(&gw, "alice").await, before + 2);
}

#[actix_web::test]
async fn other_spellings_of_the_key_routes_are_refused() {
    let gw = gateway(&[]);
    let shared = gw.data.path().join("shared/auth/auth.json");
    let keys = r#"{"anthropic":{"type":"api","key":"sk-ant-shared-test-key"}}"#;
    std::fs::write(&shared, keys).unwrap();
    start(&gw, "alice").await;
    let body = Bytes::from_static(br#"{"type":"api","key":"sk-stolen"}"#);
    let json = [("content-type", "application/json")];
    for (path, status) in [
        ("//auth/anthropic", StatusCode::BAD_REQUEST),
        ("/%61uth/anthropic", StatusCode::BAD_REQUEST),
        ("/auth//anthropic", StatusCode::BAD_REQUEST),
        ("/x/../auth/anthropic", StatusCode::BAD_REQUEST),
        ("/AUTH/anthropic", StatusCode::FORBIDDEN),
        ("/auth/anthropic", StatusCode::FORBIDDEN),
    ] {
        for method in [Method::PUT, Method::DELETE] {
            let resp = gw
                .request(
                    method.clone(),
                    Some("alice"),
                    path,
                    &json,
                    Some(body.clone()),
                )
                .await;
            assert_eq!(resp.status, status, "{method} {path}: {}", resp.text());
        }
    }
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), keys);
    let own = gw
        .data
        .path()
        .join("users/alice/.local/share/opencode/auth.json.own");
    assert!(!own.exists() || !std::fs::read_to_string(own).unwrap().contains("sk-stolen"));
}
