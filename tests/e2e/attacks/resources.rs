//! Class 4 and 5: one user starving the others or the gateway, and gateways on one host
//! ending each other's users.

use awc::http::StatusCode;

use super::root_gateway;
use crate::support::{eventually, Gateway, Terminal, PATIENCE};

#[actix_web::test]
async fn dev_shm_is_closed_and_users_go_first_when_memory_runs_out() {
    let gw = root_gateway("both", &[]);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let mut term = Terminal::open(&gw, "alice").await;

    // Host memory every user could fill, and that outlives their instance.
    let name = format!("/dev/shm/chamberlain-attack-{}", std::process::id());
    let (out, status) = term.run(&format!("echo x > {name}")).await;
    assert_ne!(status, 0, "a user wrote to /dev/shm: {out}");
    assert!(!std::path::Path::new(&name).exists());
    // What a shell needs from /dev still works.
    let (out, status) = term
        .run("echo ok > /dev/null && head -c 4 /dev/urandom | wc -c && tty")
        .await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");

    // The OOM killer's order: the user's processes first, the gateway last.
    let (out, status) = term.run("cat /proc/self/oom_score_adj").await;
    assert_eq!((status, out.trim()), (0, "1000"), "{out}");
    // Lowering a score needs CAP_SYS_RESOURCE, which some sandboxes (this CI's, say) take
    // away even from root: then the gateway stays at 0, still below every user, and says so.
    let gateway = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", gw.pid)).unwrap();
    match gateway.trim() {
        "-900" => {}
        "0" => assert!(
            gw.log()
                .contains("cannot lower the gateway's oom_score_adj"),
            "{}",
            gw.log()
        ),
        other => panic!("the gateway's oom_score_adj is {other}"),
    }
}

/// Runs a gateway that must refuse to start; returns what it said.
fn refused(args: &[&str]) -> String {
    let (status, err) = crate::support::run_to_exit(args);
    assert!(!status.success(), "{err}");
    err
}

#[actix_web::test]
async fn two_gateways_cannot_share_uids() {
    assert!(nix::unistd::Uid::effective().is_root(), "uids need root");
    // Far above the ranges other tests take (100 each).
    let first = crate::support::UIDS.base() + 90_000;
    let range = format!("{first}-{}", first + 99);
    let gw = Gateway::fake(&["--isolation", "uid", "--uid-range", &range]);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());

    let err = refused(&["--isolation", "uid", "--uid-range", &range]);
    assert!(err.contains("in use by another gateway"), "{err}");
    // A range overlapping a running user's uid, under another name: that user's process is
    // a stranger to the second gateway.
    let overlapping = format!("{}-{}", first - 50, first + 49);
    let err = refused(&["--isolation", "uid", "--uid-range", &overlapping]);
    assert!(err.contains("is not free"), "{err}");
    // The first gateway's user was never touched.
    assert_eq!(gw.state("alice").await, "ready");
}

#[actix_web::test]
async fn a_user_filling_their_home_is_stopped_at_the_quota_and_no_one_else_is() {
    let gw = root_gateway(
        "both",
        &["--disk-quota", "300MiB", "--disk-check-interval", "1s"],
    );
    for user in ["alice", "bob"] {
        let resp = gw.get(user, "/session").await;
        assert_eq!(resp.status, StatusCode::OK, "{user}: {}", resp.text());
    }
    let measured = gw
        .wait_user("alice", "had her home measured", |u| {
            u["diskBytes"].is_u64()
        })
        .await;
    assert!(
        crate::support::as_u64(&measured["diskBytes"]) < 300 << 20,
        "a fresh home is over the quota already: {measured}"
    );

    let mut term = Terminal::open(&gw, "alice").await;
    let (out, status) = term
        // Outside the workspace: OpenCode snapshots what is in a project. OpenCode's own data
        // grows by tens of MB over a start (seen: 37 to 55 MiB), so the quota leaves room.
        .run("head -c 400000000 /dev/zero > ~/big && sync")
        .await;
    assert_eq!(status, 0, "{out}");
    gw.wait_user("alice", "was measured over the quota", |u| {
        u["diskBytes"].as_u64().is_some_and(|b| b >= 300 << 20)
    })
    .await;
    let mine = gw.get("alice", "/-/api/instance").await.json();
    assert_eq!(mine["diskQuota"], 300 << 20, "{mine}");

    // Her next start is refused, with the reason.
    let stop = gw.post("alice", "/-/api/instance/stop").await;
    assert_eq!(stop.status, StatusCode::OK, "{}", stop.text());
    let start = gw.post("alice", "/-/api/instance/start").await;
    assert!(
        start.status.is_success(),
        "{} {}",
        start.status,
        start.text()
    );
    let failed = gw.wait_state("alice", "failed").await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or("")
            .contains("disk quota"),
        "{failed}"
    );
    // Everyone else goes on, and new users still get uids (state/ is written).
    assert_eq!(gw.state("bob").await, "ready");
    let carol = gw.get("carol", "/session").await;
    assert_eq!(carol.status, StatusCode::OK, "{}", carol.text());

    // Once an operator frees space, she starts again.
    let home = gw.data.path().join("users/alice/big");
    std::fs::remove_file(home).unwrap();
    let again = gw.post("alice", "/-/api/instance/start").await;
    assert!(
        again.status.is_success(),
        "{} {}",
        again.status,
        again.text()
    );
    let refusal = failed["message"].clone();
    gw.wait_user("alice", "started again once space was freed", |u| {
        u["state"] == "ready" || (u["state"] == "failed" && u["message"] != refusal)
    })
    .await;
    assert_eq!(gw.state("alice").await, "ready", "{}", gw.log());
}

#[actix_web::test]
async fn one_user_holding_many_sockets_leaves_room_for_the_others() {
    let gw = Gateway::fake(&["--max-user-connections", "3"]);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let mut held = Vec::new();
    for _ in 0..3 {
        let (_, socket) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
        held.push(socket);
    }
    // Her fourth connection, socket or request, is refused; nobody else's is.
    assert_eq!(
        gw.ws_refused(Some("alice"), "/ws", &[]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let refused = gw.get("alice", "/session").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    assert!(refused.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("at once"));
    let bob = gw.get("bob", "/session").await;
    assert_eq!(bob.status, StatusCode::OK, "{}", bob.text());

    // A closed socket gives its room back.
    drop(held.pop());
    eventually("the closed socket's room back", PATIENCE, async || {
        let again = gw.get("alice", "/session").await;
        if again.status == StatusCode::OK {
            return Ok(());
        }
        assert_eq!(
            again.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            again.text()
        );
        Err(again.text())
    })
    .await;
}

#[actix_web::test]
async fn a_user_running_as_root_under_landlock_has_no_capability() {
    // What `auto` falls back to when users' uids cannot reach OpenCode: uid 0, Landlock.
    let gw = root_gateway("landlock", &[]);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let mut term = Terminal::open(&gw, "alice").await;
    let (out, status) = term
        .run("grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status")
        .await;
    assert_eq!(status, 0, "{out}");
    for line in out.lines() {
        assert!(line.trim_end().ends_with("0000000000000000"), "{out}");
    }
    // What the capabilities would allow: a device node (a disk), a raw socket.
    let (out, status) = term.run("mknod ~/disk b 7 0").await;
    assert_ne!(status, 0, "{out}");
    assert!(!gw.data.path().join("users/alice/disk").exists());
}
