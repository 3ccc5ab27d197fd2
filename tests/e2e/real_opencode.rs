//! The gateway in front of the real, pinned OpenCode.

use awc::http::StatusCode;

use awc::ws::{CloseCode, Message};

use crate::direct_opencode::DirectOpenCode;
use crate::support::{
    as_u64, client, create_pty, eventually, metric, poll_until, read_terminal, read_until_close,
    real_opencode, send, Gateway, PATIENCE,
};

#[actix_web::test]
async fn each_user_gets_their_own_process_and_sessions() {
    let gw = Gateway::real(&[]);
    let (a, b) =
        futures_util::future::join(gw.get("alice", "/session"), gw.get("bob", "/session")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(b.status, StatusCode::OK, "{}", b.text());

    let created = gw.post("alice", "/session").await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let home = gw
        .data
        .path()
        .canonicalize()
        .unwrap()
        .join("users/alice/workspace");
    assert_eq!(created.json()["directory"], home.display().to_string());

    let alice_list = gw.get("alice", "/session").await.json();
    assert!(alice_list.as_array().unwrap().iter().any(|s| s["id"] == id));
    let bob_list = gw.get("bob", "/session").await.json();
    assert!(
        !bob_list.as_array().unwrap().iter().any(|s| s["id"] == id),
        "bob sees alice's session: {bob_list}"
    );
    let bob_direct = gw.get("bob", &format!("/session/{id}")).await;
    assert_ne!(
        bob_direct.status,
        StatusCode::OK,
        "bob can open alice's session by id"
    );

    let alice = gw.user("alice").await.unwrap();
    let bob = gw.user("bob").await.unwrap();
    assert_ne!(as_u64(&alice["pid"]), as_u64(&bob["pid"]));
    assert_ne!(as_u64(&alice["port"]), as_u64(&bob["port"]));
    assert!(as_u64(&alice["rssBytes"]) > 0);
}

/// A terminal (PTY) runs its shell in a session of its own, outside OpenCode's process group;
/// stopping the instance still ends it and what it started.
#[actix_web::test]
async fn stopping_an_instance_ends_its_terminals() {
    let gw = Gateway::real(&[]);
    let pty = gw
        .request(
            awc::http::Method::POST,
            Some("alice"),
            "/pty",
            &[("content-type", "application/json")],
            Some(bytes::Bytes::from_static(
                br#"{"command":"/bin/sh","args":["-c","sleep 1000 & sleep 1000"]}"#,
            )),
        )
        .await;
    assert_eq!(pty.status, StatusCode::OK, "{}", pty.text());
    let shell = as_u64(&pty.json()["pid"]) as u32;
    let below = poll_until(PATIENCE, async || {
        let below = children_of(shell);
        if below.len() >= 2 {
            Ok(below)
        } else {
            Err(below)
        }
    })
    .await
    .unwrap_or_else(|below| below);
    assert_eq!(below.len(), 2, "the terminal's two sleeps are running");
    let stop = gw
        .admin_request(awc::http::Method::POST, "/instances/alice/stop")
        .await;
    assert_eq!(stop.status, StatusCode::OK);
    for pid in std::iter::once(shell).chain(below) {
        assert!(
            crate::support::wait_gone(pid).await,
            "pid {pid} outlived its instance"
        );
    }
}

fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                })
                == Some(parent)
        })
        .collect()
}

#[actix_web::test]
async fn events_arrive_through_the_proxy() {
    let gw = Gateway::real(&[]);
    assert_eq!(gw.get("alice", "/session").await.status, StatusCode::OK);
    let mut events = gw.stream("alice", "/event", &[]).await;
    assert_eq!(events.status(), StatusCode::OK);
    events.read_until(&["server.connected"]).await;
    let created = gw.post("alice", "/session").await.json();
    let id = created["id"].as_str().unwrap().to_owned();
    events.read_until(&["session.created", &id]).await;
}

/// The same OpenCode started directly, to compare what the gateway serves with the original.
fn direct_opencode() -> DirectOpenCode {
    DirectOpenCode::start(&real_opencode(), &["--pure"], "direct", PATIENCE)
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn direct_get(direct: &DirectOpenCode, path: &str) -> (StatusCode, bytes::Bytes) {
    let mut resp = client()
        .get(format!("http://{}{path}", direct.addr))
        .insert_header(("authorization", direct.authorization()))
        .send()
        .await
        .unwrap();
    let body = resp.body().limit(64 * 1024 * 1024).await.unwrap();
    (resp.status(), body)
}

#[actix_web::test]
async fn web_ui_loads_byte_identical_through_the_gateway() {
    let gw = Gateway::real(&[]);
    let direct = direct_opencode();
    let (status, index_direct) = direct_get(&direct, "/").await;
    assert_eq!(status, StatusCode::OK);
    let index = gw.get("alice", "/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.body, index_direct, "index.html differs");

    let html = String::from_utf8_lossy(&index.body).into_owned();
    let script = html
        .split("src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|src| src.ends_with(".js") && src.starts_with('/'))
        .unwrap_or_else(|| panic!("no script in index.html:\n{html}"))
        .to_owned();
    let (status, js_direct) = direct_get(&direct, &script).await;
    assert_eq!(status, StatusCode::OK);
    let js = gw.get("alice", &script).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.body.len() > 1000, "{script} is {} bytes", js.body.len());
    assert_eq!(js.body, js_direct, "{script} differs");

    // Browsers fetch the app manifest without cookies; the gateway's copy, served without
    // sign-in, is still OpenCode's own.
    let (status, manifest_direct) = direct_get(&direct, "/site.webmanifest").await;
    assert_eq!(status, StatusCode::OK);
    let mut anonymous = client()
        .get(gw.url("/site.webmanifest"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
    assert_eq!(
        anonymous.body().await.unwrap(),
        manifest_direct,
        "static/opencode.webmanifest no longer matches OpenCode's /site.webmanifest"
    );
    // Anything else still needs sign-in.
    let other = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn progress_follows_a_real_start_to_ready() {
    let gw = Gateway::real(&[]);
    let start = gw.post("dana", "/-/api/instance/start").await;
    assert_eq!(start.status, StatusCode::ACCEPTED);
    let text = gw
        .stream("dana", "/-/api/instance/progress", &[])
        .await
        .read_to_end()
        .await;
    assert!(text.contains("\"state\":\"ready\""), "{text}");
    let me = gw.get("dana", "/-/api/me").await.json();
    assert_eq!(me["instance"]["state"], "ready");
    assert_eq!(me["isInitialized"], true);
}

/// `chamberlain-<digits>` printed by the shell (not the typed `$RANDOM`).
fn echoed_number(out: &str) -> Option<String> {
    out.match_indices("chamberlain-")
        .map(|(i, m)| &out[i + m.len()..])
        .find_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            (!digits.is_empty()).then_some(digits)
        })
}

#[actix_web::test]
async fn a_terminal_works_through_the_gateway() {
    let gw = Gateway::real(&[]);
    let id = create_pty(&gw, "alice").await;
    let port = as_u64(&gw.user("alice").await.unwrap()["port"]) as u16;
    let (resp, mut socket) = gw
        .ws(Some("alice"), &format!("/pty/{id}/connect"), &[])
        .await
        .expect("terminal websocket");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // The bridge's connection to OpenCode is among these (it may be a pooled connection that
    // was upgraded); idle pooled connections stay, so the one that goes is the bridge's.
    let during = connections_to(port);
    assert!(
        !during.is_empty(),
        "no connection to OpenCode for the websocket"
    );
    send(
        &mut socket,
        Message::Text("echo chamberlain-$RANDOM\n".into()),
    )
    .await;
    let out = read_terminal(&mut socket, |o| echoed_number(o).is_some()).await;
    assert!(echoed_number(&out).is_some(), "{out}");

    // Resize through OpenCode's API; the shell sees the new size.
    let resize = gw
        .request(
            awc::http::Method::PUT,
            Some("alice"),
            &format!("/pty/{id}"),
            &[("content-type", "application/json")],
            Some(bytes::Bytes::from_static(
                br#"{"size":{"rows":33,"cols":111}}"#,
            )),
        )
        .await;
    assert_eq!(resize.status, StatusCode::OK, "{}", resize.text());
    send(&mut socket, Message::Text("stty size\n".into())).await;
    read_terminal(&mut socket, |o| o.contains("33 111")).await;

    // Closing the client closes the gateway's connection to OpenCode.
    send(&mut socket, Message::Close(None)).await;
    read_until_close(&mut socket).await;
    eventually("the bridge's connection closed", PATIENCE, async || {
        let open = connections_to(port);
        if during.iter().all(|p| open.contains(p)) {
            Err(format!("connections from {open:?}"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// Local ports of ESTABLISHED TCP connections to 127.0.0.1:`port`. `/proc/net/tcp` can skip
/// entries while the table changes under the reader, so several reads are merged.
fn connections_to(port: u16) -> Vec<u16> {
    let remote = format!("0100007F:{port:04X}");
    let mut ports: Vec<u16> = (0..5)
        .flat_map(|_| {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 3 && f[2] == remote && f[3] == "01")
                        .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[actix_web::test]
async fn a_user_cannot_reach_another_users_terminal() {
    let gw = Gateway::real(&["--upstream-timeout", "3s"]);
    let id = create_pty(&gw, "alice").await;
    let (_, mut alice) = gw
        .ws(Some("alice"), &format!("/pty/{id}/connect"), &[])
        .await
        .expect("alice's terminal");
    assert_eq!(gw.get("bob", "/session").await.status, StatusCode::OK);
    let status = gw
        .ws_refused(Some("bob"), &format!("/pty/{id}/connect"), &[])
        .await;
    assert!(
        status == StatusCode::GATEWAY_TIMEOUT || status.is_client_error(),
        "bob got {status} for alice's terminal"
    );
    // Alice's terminal is unaffected and still hers.
    send(
        &mut alice,
        Message::Text("echo chamberlain-$RANDOM\n".into()),
    )
    .await;
    read_terminal(&mut alice, |o| echoed_number(o).is_some()).await;
}

#[actix_web::test]
async fn stopping_the_instance_closes_its_terminal_sockets() {
    let gw = Gateway::real(&[]);
    let id = create_pty(&gw, "alice").await;
    let (_, mut socket) = gw
        .ws(Some("alice"), &format!("/pty/{id}/connect"), &[])
        .await
        .expect("terminal websocket");
    let stop = gw
        .admin_request(awc::http::Method::POST, "/instances/alice/stop")
        .await;
    assert_eq!(stop.status, StatusCode::OK);
    let (reason, _) = read_until_close(&mut socket).await;
    assert_eq!(reason.map(|r| r.code), Some(CloseCode::Restart));
}

/// OpenCode 1.18.33 ends on SIGTERM, with an interactive terminal open too (whose shell,
/// which ignores SIGTERM, ends with the terminal): a stop needs no SIGKILL, and its duration
/// is in `chamberlain_instance_stop_seconds`.
#[actix_web::test]
async fn opencode_stops_on_sigterm_with_a_terminal_open() {
    let gw = Gateway::real(&["--stop-grace", "60s"]);
    create_pty(&gw, "alice").await;
    let stop = gw.post("alice", "/-/api/instance/stop").await;
    assert_eq!(stop.status, StatusCode::OK, "{}", stop.text());
    assert_eq!(gw.state("alice").await, "stopped");
    assert!(
        !gw.log().contains("did not stop within the grace period"),
        "{}",
        gw.log()
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "chamberlain_instance_stop_seconds_count"),
        1.0,
        "{metrics}"
    );
}
