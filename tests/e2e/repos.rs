//! The shared repository library: listing, cloning into a user's workspace, the operator's
//! API, and what must hold under concurrency and interruption.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use awc::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::{poll_until, Gateway, Response, PATIENCE};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "safe.directory=*",
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@t",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An upstream repository with `commits` commits (and a symlink to /etc/passwd).
fn upstream(dir: &Path, commits: usize) -> PathBuf {
    let path = dir.join("upstream");
    std::fs::create_dir_all(&path).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    std::os::unix::fs::symlink("/etc/passwd", path.join("passwd-link")).unwrap();
    for i in 0..commits {
        std::fs::write(path.join("file.txt"), format!("version {i}\n")).unwrap();
        git(&path, &["add", "-A"]);
        git(&path, &["commit", "-q", "-m", &format!("commit {i}")]);
    }
    path
}

async fn admin_json(gw: &Gateway, method: Method, path: &str, body: Value) -> Response {
    let resp = gw
        .client
        .request(method, format!("{}{path}", gw.admin))
        .insert_header(("content-type", "application/json"))
        .insert_header((
            "authorization",
            format!("Bearer {}", gw.admin_token.as_deref().unwrap_or_default()),
        ))
        .send_body(body.to_string())
        .await
        .expect("admin request");
    let mut resp = resp;
    let body = resp.body().await.expect("admin body");
    Response {
        status: resp.status(),
        headers: resp.headers().clone(),
        body,
    }
}

async fn clone(gw: &Gateway, user: &str, source: &str, body: Option<Value>) -> Response {
    gw.request(
        Method::POST,
        Some(user),
        &format!("/-/api/repos/{source}/clone"),
        &[("content-type", "application/json")],
        body.map(|b| Bytes::from(b.to_string())),
    )
    .await
}

fn workspace(gw: &Gateway, user: &str) -> PathBuf {
    gw.data.path().join("users").join(user).join("workspace")
}

fn repos_dir(gw: &Gateway) -> PathBuf {
    gw.data.path().join("shared/repos")
}

#[actix_web::test]
async fn both_users_see_the_library_and_a_clone_is_private_and_complete() {
    let gw = Gateway::fake(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let up = upstream(scratch.path(), 3);
    let added = admin_json(
        &gw,
        Method::POST,
        "/repos",
        json!({"name": "template", "url": up, "description": "The team template"}),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text());
    std::fs::create_dir_all(repos_dir(&gw).join("notes")).unwrap();
    std::fs::write(repos_dir(&gw).join("notes/README"), "hello").unwrap();
    std::fs::write(repos_dir(&gw).join("notes/.description"), "Plain notes").unwrap();

    let a = gw.get("alice", "/-/api/repos").await.json();
    let b = gw.get("bob", "/-/api/repos").await.json();
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&a), ["notes", "template"]);
    assert_eq!(names(&a), names(&b));
    let template = gw.get("alice", "/-/api/repos/template").await.json();
    assert_eq!(template["kind"], "git");
    assert_eq!(template["description"], "The team template");
    assert_eq!(template["defaultBranch"], "main");
    assert_eq!(a[0]["kind"], "folder");
    assert_eq!(a[0]["description"], "Plain notes");

    let resp = clone(&gw, "alice", "template", None).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["success"], true);
    let target = PathBuf::from(body["targetPath"].as_str().unwrap());
    assert_eq!(
        target,
        workspace(&gw, "alice")
            .canonicalize()
            .unwrap()
            .join("template")
    );

    // A working repository with the whole history, whose origin is the template's upstream.
    assert_eq!(git(&target, &["rev-list", "--count", "HEAD"]), "3");
    assert_eq!(git(&target, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&target, &["remote", "get-url", "origin"]),
        up.display().to_string()
    );
    // Owned by alice's uid (not root's), like her home.
    let home_uid = std::fs::metadata(gw.data.path().join("users/alice"))
        .unwrap()
        .uid();
    assert_ne!(home_uid, 0);
    for path in [
        target.clone(),
        target.join("file.txt"),
        target.join(".git/HEAD"),
    ] {
        assert_eq!(
            std::fs::symlink_metadata(&path).unwrap().uid(),
            home_uid,
            "{path:?}"
        );
    }

    let mine = gw.get("alice", "/-/api/workspace").await.json();
    assert_eq!(
        mine,
        json!([{
            "name": "template", "path": target, "isGit": true,
            "lastModified": mine[0]["lastModified"],
        }])
    );
    let theirs = gw.get("bob", "/-/api/workspace").await.json();
    assert_eq!(theirs, json!([]), "bob sees alice's clone");
    assert!(!workspace(&gw, "bob").join("template").exists());

    // Sizes arrive in the background.
    let sized = poll_until(PATIENCE, async || {
        let sized = gw.get("alice", "/-/api/repos/notes").await.json();
        if sized["sizeBytes"].is_number() {
            Ok(sized)
        } else {
            Err(sized)
        }
    })
    .await
    .unwrap_or_else(|sized| sized);
    assert_eq!(sized["sizeBytes"], 5 + 11);
}

#[actix_web::test]
async fn folders_keep_modes_and_symlinks_stay_symlinks() {
    let gw = Gateway::fake(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let folder = repos_dir(&gw).join("kit");
    std::fs::create_dir_all(folder.join("bin")).unwrap();
    std::fs::write(folder.join("bin/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(
        folder.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // Users copy what they can read (the clone runs as the user): an unusual mode that
    // lets them read it.
    std::fs::write(folder.join("odd-mode.txt"), "k").unwrap();
    std::fs::set_permissions(
        folder.join("odd-mode.txt"),
        std::fs::Permissions::from_mode(0o604),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", folder.join("passwd")).unwrap();
    let up = upstream(scratch.path(), 1);
    let added = admin_json(
        &gw,
        Method::POST,
        "/repos",
        json!({"name": "gitkit", "url": up}),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text());

    for (source, target) in [("kit", "my-kit"), ("gitkit", "gitkit")] {
        let resp = clone(&gw, "alice", source, Some(json!({"targetName": target}))).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    }
    let ws = workspace(&gw, "alice");
    let mode = |p: &str| std::fs::metadata(ws.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("my-kit/bin/run.sh"), 0o755);
    assert_eq!(mode("my-kit/odd-mode.txt"), 0o604);
    for link in ["my-kit/passwd", "gitkit/passwd-link"] {
        let meta = std::fs::symlink_metadata(ws.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link} was followed");
        assert_eq!(
            std::fs::read_link(ws.join(link)).unwrap(),
            Path::new("/etc/passwd")
        );
    }
}

#[actix_web::test]
async fn bad_names_unknown_sources_and_existing_targets() {
    let gw = Gateway::fake(&[]);
    std::fs::create_dir_all(repos_dir(&gw).join("kit")).unwrap();
    std::fs::write(repos_dir(&gw).join("kit/a"), "a").unwrap();
    assert_eq!(
        clone(&gw, "alice", "kit", None).await.status,
        StatusCode::CREATED
    );

    let long = "x".repeat(300);
    for bad in ["../x", "a/b", ".hidden", "", long.as_str(), "a\u{0}b"] {
        let resp = clone(&gw, "alice", "kit", Some(json!({"targetName": bad}))).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{bad:?}: {}",
            resp.text()
        );
        assert!(resp.json()["error"].is_string(), "{}", resp.text());
        assert!(
            resp.json()["error"].as_str().unwrap().contains("name"),
            "{}",
            resp.text()
        );
    }
    for unknown in ["nope", "..", "..%2F..%2Fetc"] {
        let resp = clone(&gw, "alice", unknown, None).await;
        assert_eq!(
            resp.status,
            StatusCode::NOT_FOUND,
            "{unknown}: {}",
            resp.text()
        );
        assert!(resp.json()["error"].is_string(), "{}", resp.text());
    }
    assert_eq!(
        gw.get("alice", "/-/api/repos/nope").await.status,
        StatusCode::NOT_FOUND
    );
    let again = clone(&gw, "alice", "kit", None).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text());
    assert!(again.json()["error"]
        .as_str()
        .unwrap()
        .contains("already exists"));
    let garbage = gw
        .request(
            Method::POST,
            Some("alice"),
            "/-/api/repos/kit/clone",
            &[],
            Some(Bytes::from_static(b"{nope")),
        )
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    // Nothing but the one clone was made.
    let entries: Vec<_> = std::fs::read_dir(workspace(&gw, "alice"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, ["kit"]);
    // Not signed in: nothing at all.
    let anon = gw
        .request(Method::POST, None, "/-/api/repos/kit/clone", &[], None)
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn twenty_users_clone_one_repository_at_once() {
    let gw = Gateway::fake(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let up = upstream(scratch.path(), 5);
    let added = admin_json(
        &gw,
        Method::POST,
        "/repos",
        json!({"name": "template", "url": up}),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED);
    let users: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    let results =
        futures_util::future::join_all(users.iter().map(|u| clone(&gw, u, "template", None))).await;
    for (user, resp) in users.iter().zip(&results) {
        assert_eq!(resp.status, StatusCode::CREATED, "{user}: {}", resp.text());
        assert_eq!(
            git(
                &workspace(&gw, user).join("template"),
                &["rev-list", "--count", "HEAD"]
            ),
            "5"
        );
    }
}

#[actix_web::test]
async fn an_interrupted_clone_leaves_no_target() {
    let mut gw = Gateway::fake(&[]);
    let big = repos_dir(&gw).join("big");
    for d in 0..40 {
        let dir = big.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            std::fs::write(dir.join(format!("f{f}")), [b'x'; 512]).unwrap();
        }
    }
    let url = gw.url("/-/api/repos/big/clone");
    let request = gw
        .client
        .post(url)
        .insert_header(("x-chamberlain-dev-user", "alice"))
        .send();
    actix_web::rt::spawn(async move {
        let _ = request.await;
    });
    let ws = workspace(&gw, "alice");
    let mut partial = None;
    for _ in 0..2000 {
        partial = std::fs::read_dir(&ws).ok().and_then(|mut d| {
            d.find_map(|e| {
                e.ok().filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".chamberlain-clone-")
                })
            })
        });
        if partial.is_some() {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(partial.is_some(), "the clone never started");
    gw.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    assert!(
        !ws.join("big").exists(),
        "a partial clone became the target"
    );
}

#[actix_web::test]
async fn three_hundred_repositories_list_at_once_while_sizes_are_computed() {
    let gw = Gateway::fake(&[]);
    let root = repos_dir(&gw);
    for i in 0..300 {
        let dir = root.join(format!("repo-{i:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("README"), format!("repo {i}")).unwrap();
    }
    let huge = root.join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    std::fs::File::create(huge.join("blob"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();

    // The listing never waits for sizes: the first one has none yet.
    let first = gw.get("alice", "/-/api/repos").await;
    assert_eq!(first.status, StatusCode::OK);
    let list = first.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 301);
    assert!(
        list.iter().all(|r| r["sizeBytes"].is_null()),
        "sizes were computed inline"
    );

    let sizes = poll_until(PATIENCE, async || {
        let sizes = gw.get("alice", "/-/api/repos").await.json();
        if sizes
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["sizeBytes"].is_number())
        {
            Ok(sizes)
        } else {
            Err(sizes)
        }
    })
    .await
    .unwrap_or_else(|sizes| sizes);
    let huge = sizes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "huge")
        .unwrap();
    assert_eq!(huge["sizeBytes"], 1u64 << 30);
}

#[actix_web::test]
async fn the_operator_refreshes_and_deletes_repositories() {
    let gw = Gateway::fake(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let up = upstream(scratch.path(), 1);
    for (body, status) in [
        (json!({"name": "t", "url": up}), StatusCode::CREATED),
        (json!({"name": "t", "url": up}), StatusCode::CONFLICT),
        (json!({"name": "../t", "url": up}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "u", "url": "ssh://example.com/x"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "u", "url": "/nonexistent/repo"}),
            StatusCode::BAD_REQUEST,
        ),
        // A directory that is no repository: git's refusal is the upstream's fault.
        (
            json!({"name": "u", "url": scratch.path()}),
            StatusCode::BAD_GATEWAY,
        ),
        (json!({"name": "u"}), StatusCode::BAD_REQUEST),
    ] {
        let resp = admin_json(&gw, Method::POST, "/repos", body.clone()).await;
        assert_eq!(resp.status, status, "{body}: {}", resp.text());
    }
    assert!(!repos_dir(&gw).join("u").exists());

    std::fs::write(up.join("file.txt"), "new\n").unwrap();
    git(&up, &["commit", "-q", "-am", "upstream moved on"]);
    let refreshed = admin_json(&gw, Method::POST, "/repos/t/refresh", json!({})).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    assert_eq!(
        clone(&gw, "alice", "t", None).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        git(
            &workspace(&gw, "alice").join("t"),
            &["rev-list", "--count", "HEAD"]
        ),
        "2"
    );

    let deleted = admin_json(&gw, Method::DELETE, "/repos/t", json!({})).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text());
    assert_eq!(gw.get("alice", "/-/api/repos").await.json(), json!([]));
    let again = admin_json(&gw, Method::DELETE, "/repos/t", json!({})).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    // The user's clone is theirs and stays.
    assert!(workspace(&gw, "alice").join("t/.git").is_dir());
}

#[actix_web::test]
async fn a_clone_is_visible_to_the_users_opencode() {
    let gw = Gateway::real(&[]);
    std::fs::create_dir_all(repos_dir(&gw).join("starter/src")).unwrap();
    std::fs::write(repos_dir(&gw).join("starter/src/main.txt"), "hello").unwrap();
    let resp = clone(&gw, "alice", "starter", None).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let listing = gw.get("alice", "/file?path=starter").await;
    assert_eq!(listing.status, StatusCode::OK, "{}", listing.text());
    assert!(listing.text().contains("src"), "{}", listing.text());
    let content = gw
        .get("alice", "/file/content?path=starter%2Fsrc%2Fmain.txt")
        .await;
    assert!(content.text().contains("hello"), "{}", content.text());
}

/// A bare repository named the git way (`kit.git`) is cloned as `kit` unless the person
/// names the folder.
#[actix_web::test]
async fn a_clone_of_name_git_is_called_name() {
    let gw = Gateway::fake(&[]);
    let scratch = tempfile::tempdir().unwrap();
    let up = upstream(scratch.path(), 1);
    let added = admin_json(
        &gw,
        Method::POST,
        "/repos",
        json!({"name": "kit.git", "url": up}),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text());
    let resp = clone(&gw, "alice", "kit.git", None).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    assert!(resp.json()["targetPath"]
        .as_str()
        .unwrap()
        .ends_with("/workspace/kit"));
    assert!(workspace(&gw, "alice").join("kit/file.txt").is_file());
    let named = clone(
        &gw,
        "alice",
        "kit.git",
        Some(json!({"targetName": "kit.git"})),
    )
    .await;
    assert_eq!(
        named.status,
        StatusCode::CREATED,
        "a name given is kept: {}",
        named.text()
    );
    assert!(workspace(&gw, "alice").join("kit.git/file.txt").is_file());
}
