//! Class 1: root acting on paths a user controls. A user replaces names in their own home
//! with links to `shared/`, `state/`, `users/`, another home and a root-owned file, then
//! makes the gateway work in that home: a clone, a workspace listing, a restart (which
//! provisions the home again). Nothing outside the attacker's home may change.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use awc::http::{Method, StatusCode};
use bytes::Bytes;

use super::{assert_unchanged, root_gateway, snapshot};
use crate::support::Gateway;
use crate::support::Terminal;

fn data(gw: &Gateway) -> PathBuf {
    gw.data.path().canonicalize().unwrap()
}

async fn clone(gw: &Gateway, user: &str, target: &str) -> (StatusCode, String) {
    let resp = gw
        .request(
            Method::POST,
            Some(user),
            "/-/api/repos/kit/clone",
            &[("content-type", "application/json")],
            Some(Bytes::from(format!("{{\"targetName\": \"{target}\"}}"))),
        )
        .await;
    (resp.status, resp.text())
}

/// The places an attacker must not reach, as they are now.
fn victims(
    data: &Path,
    canary: &Path,
) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
    [
        data.join("shared"),
        data.join("state"),
        data.join("users/bob/workspace"),
        data.join("users/bob/.gitconfig"),
        canary.to_owned(),
    ]
    .into_iter()
    .map(|p| (p.display().to_string(), snapshot(&p)))
    .chain(std::iter::once((
        "users/ entries".to_owned(),
        std::fs::read_dir(data.join("users"))
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), String::new()))
            .collect(),
    )))
    .collect()
}

#[actix_web::test]
async fn links_planted_in_a_home_lead_the_gateway_nowhere() {
    let gw = root_gateway("both", &[]);
    let data = data(&gw);
    std::fs::create_dir_all(data.join("shared/repos/kit")).unwrap();
    std::fs::write(data.join("shared/repos/kit/README"), "template").unwrap();
    std::fs::write(
        data.join("shared/auth/auth.json"),
        r#"{"anthropic":{"type":"api","key":"sk-org"}}"#,
    )
    .unwrap();
    // A root-owned file others may read, as most of /etc is.
    let canary_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(canary_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let canary = canary_dir.path().join("canary");
    std::fs::write(&canary, "root's own").unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).unwrap();

    for user in ["alice", "bob"] {
        let resp = gw.get(user, "/session").await;
        assert_eq!(resp.status, StatusCode::OK, "{user}: {}", resp.text());
    }
    let mut bob = Terminal::open(&gw, "bob").await;
    let (out, status) = bob
        .run("mkdir -p ~/workspace/bobs-project && echo b > ~/workspace/bobs-project/f")
        .await;
    assert_eq!(status, 0, "{out}");
    let before = victims(&data, canary_dir.path());

    let d = data.display();
    let c = canary.display();
    let mut alice = Terminal::open(&gw, "alice").await;
    let (out, status) = alice
        .run(&format!(
            "cd ~ && rm -f .gitconfig && ln -s {c} .gitconfig.chamberlain-tmp \
             && mv .local/share .local/share.old && mkdir .local/share \
             && ln -s {d}/shared/auth .local/share/opencode \
             && rm -rf .local/state && ln -s {d}/state .local/state \
             && rm -rf .cache && ln -s {d}/shared/config .cache \
             && mv workspace workspace.real && ln -s {d}/users/bob/workspace workspace"
        ))
        .await;
    assert_eq!(status, 0, "planting links: {out}");

    // A clone and a listing through a workspace that leads into bob's.
    let (status, body) = clone(&gw, "alice", "kit").await;
    assert!(
        !status.is_success(),
        "a clone landed through the link: {status} {body}"
    );
    let listing = gw.get("alice", "/-/api/workspace").await;
    assert!(
        !listing.text().contains("bobs-project"),
        "alice listed bob's projects: {}",
        listing.text()
    );

    // A clone through a workspace that leads into users/: a home for someone else.
    let (out, status) = alice
        .run(&format!(
            "cd ~ && rm workspace && ln -s {d}/users workspace"
        ))
        .await;
    assert_eq!(status, 0, "{out}");
    let (status, body) = clone(&gw, "alice", "carol").await;
    assert!(
        !status.is_success(),
        "a clone landed in users/: {status} {body}"
    );

    // A restart provisions the home again, through every link, and starts OpenCode in a
    // workspace that leads into bob's.
    let (out, status) = alice
        .run(&format!(
            "cd ~ && rm workspace && ln -s {d}/users/bob/workspace/bobs-project workspace"
        ))
        .await;
    assert_eq!(status, 0, "{out}");
    let stop = gw.post("alice", "/-/api/instance/stop").await;
    assert_eq!(stop.status, StatusCode::OK, "{}", stop.text());
    let start = gw.post("alice", "/-/api/instance/start").await;
    assert!(start.status.is_success(), "{}", start.text());
    // Her OpenCode may well fail in the home she broke; either way provisioning has run.
    gw.wait_user("alice", "came to rest after the restart", |u| {
        u["state"] == "ready"
            || u["state"] == "failed"
            || u["message"]
                .as_str()
                .is_some_and(|m| m.contains("while starting"))
    })
    .await;

    // Whatever happened to her start, no process of hers works in bob's project.
    let bobs = data.join("users/bob/workspace/bobs-project");
    for pid in crate::support::pids_of_uid(crate::support::as_u64(
        &gw.user("alice").await.expect("alice")["uid"],
    ) as u32)
    {
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        assert!(
            !cwd.starts_with(&bobs),
            "alice's pid {pid} works in {}",
            cwd.display()
        );
    }
    let after = victims(&data, canary_dir.path());
    for ((what, was), (_, now)) in before.iter().zip(&after) {
        assert_unchanged(what, was, now);
    }
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "root's own");
}
