//! Start-up: what the gateway says when it cannot listen, the addresses it accepts, and the
//! data directory laid out by `chamberlain prepare-data` (the container's entrypoint) or
//! refused with the reason.

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use awc::http::StatusCode;

use crate::support::{run_to_exit, Gateway, FAKE};

/// An unprivileged uid for the refusals (not in /etc/passwd on purpose).
const STRANGER: u32 = 64_124;

#[test]
fn a_taken_port_is_named_before_anything_starts() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    for flag in ["--listen", "--admin-listen"] {
        let (status, err) = run_to_exit(&[flag, &taken]);
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "chamberlain: cannot listen on {taken} ({flag}): stop the program that holds \
                 the address, or choose another with {flag}: Address already in use"
            )),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        // Nothing was started: no actor, no isolation set-up, no listener.
        assert!(!err.contains("isolation in force"), "{err}");
    }
}

#[actix_web::test]
async fn a_host_name_is_a_listen_address() {
    let gw = Gateway::fake(&["--listen", "localhost:0", "--admin-listen", "localhost:0"]);
    assert!(gw.base.starts_with("http://127.0.0.1:"), "{}", gw.base);
    assert!(gw.admin.starts_with("http://127.0.0.1:"), "{}", gw.admin);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());

    let (status, err) = run_to_exit(&["--listen", "nowhere.invalid:8080"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'nowhere.invalid:8080' for '--listen <LISTEN>': \"nowhere.invalid:8080\" is not an address like 127.0.0.1:8080 or localhost:8080"),
        "{err}"
    );
}

/// Runs `chamberlain` with `args` and `env` (as `run_as` if given), with no other
/// environment of the test's, to its exit; returns its status and stderr.
fn chamberlain(args: &[&str], env: &[(&str, &str)], run_as: Option<u32>) -> (ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chamberlain"));
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(uid) = run_as {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("run chamberlain");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temporary directory others may pass through (a new one is its owner's alone).
fn passable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    tmp
}

/// (path, uid, gid, mode) of every directory `prepare-data` lays out.
fn layout(data: &Path) -> Vec<(&'static str, u32, u32, u32)> {
    [
        "",
        "users",
        "state",
        "shared",
        "shared/repos",
        "shared/auth",
        "shared/config",
    ]
    .into_iter()
    .map(|dir| {
        let meta = std::fs::symlink_metadata(data.join(dir)).unwrap();
        assert!(meta.is_dir(), "{dir}");
        (dir, meta.uid(), meta.gid(), meta.mode() & 0o7777)
    })
    .collect()
}

#[test]
fn prepare_data_lays_out_the_data_directory_with_its_owners_and_modes() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_arg = data.display().to_string();
    let (status, err) = chamberlain(
        &[
            "prepare-data",
            "--data-dir",
            &data_arg,
            "--uid-range",
            "612300-612399",
        ],
        &[],
        None,
    );
    assert!(status.success(), "{err}");
    assert_eq!(err, "", "nothing to say as root");
    let expected = [
        ("", 0, 0, 0o711),
        ("users", 0, 0, 0o711),
        ("state", 0, 0, 0o700),
        ("shared", 0, 612_300, 0o750),
        ("shared/repos", 0, 612_300, 0o750),
        ("shared/auth", 0, 0, 0o700),
        ("shared/config", 0, 0, 0o700),
    ];
    assert_eq!(layout(&data), expected);
    assert_eq!(
        crate::input::tree(&data),
        [
            "shared",
            "shared/auth",
            "shared/config",
            "shared/repos",
            "state",
            "users"
        ],
        "nothing else, no probe left"
    );

    // On an existing volume, from the environment the entrypoint passes on: modes put
    // right, what the operator put there kept.
    std::fs::set_permissions(data.join("state"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(data.join("shared/auth/auth.json"), "{}").unwrap();
    let (status, err) = chamberlain(
        &["prepare-data"],
        &[
            ("CHAMBERLAIN_DATA_DIR", &data_arg),
            ("CHAMBERLAIN_UID_RANGE", "612300-612399"),
        ],
        None,
    );
    assert!(status.success(), "{err}");
    assert_eq!(layout(&data), expected);
    assert_eq!(
        std::fs::read_to_string(data.join("shared/auth/auth.json")).unwrap(),
        "{}"
    );

    // A link below the data directory is refused, saying which.
    std::fs::remove_dir(data.join("shared/config")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), data.join("shared/config")).unwrap();
    let (status, err) = chamberlain(&["prepare-data", "--data-dir", &data_arg], &[], None);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "chamberlain: {}/shared/config is a symbolic link; the data directory must hold \
             real directories",
            std::fs::canonicalize(&data).unwrap().display()
        )),
        "{err}"
    );
}

#[test]
fn prepare_data_without_root_only_makes_directories() {
    let tmp = passable_tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(STRANGER), Some(STRANGER)).unwrap();
    let data_arg = data.display().to_string();
    let (status, err) = chamberlain(
        &["prepare-data", "--data-dir", &data_arg],
        &[],
        Some(STRANGER),
    );
    assert!(status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "running as uid {STRANGER}, not root: users cannot get their own uids (Landlock only)"
        )),
        "{err}"
    );
    for (dir, uid, gid, _) in layout(&data) {
        assert_eq!((uid, gid), (STRANGER, STRANGER), "{dir}");
    }
}

#[test]
fn a_data_directory_that_cannot_be_written_is_refused_with_the_reason() {
    // Root's, and others may only read it: not the stranger's to write.
    let tmp = passable_tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_arg = data.display().to_string();
    let reason = format!(
        "chamberlain: the data directory {} is not writable by uid {STRANGER}",
        std::fs::canonicalize(&data).unwrap().display()
    );
    let advice = "mount a writable volume there (read-only mounts, and volumes owned by \
                  another user, cannot hold users' homes)";

    let (status, err) = chamberlain(
        &["prepare-data", "--data-dir", &data_arg],
        &[],
        Some(STRANGER),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&reason) && err.contains(advice), "{err}");

    let (status, err) = chamberlain(
        &[
            "serve",
            "--data-dir",
            &data_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "none",
            "--opencode-bin",
            FAKE,
            "--system-accounts=off",
        ],
        &[],
        Some(STRANGER),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&reason) && err.contains(advice), "{err}");
    assert!(!err.contains("isolation in force"), "{err}");
    assert_eq!(
        crate::input::tree(&data),
        Vec::<String>::new(),
        "nothing made"
    );
}

/// A process of `uid`'s (a terminal job, say, the gateway knows nothing of).
fn stray(uid: u32) -> std::process::Child {
    Command::new("sleep")
        .arg("120")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .spawn()
        .expect("start a process as the user")
}

/// Waits (bounded) for `child` to end, and says whether SIGKILL ended it.
async fn killed(child: &mut std::process::Child) -> bool {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..500 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.signal() == Some(nix::libc::SIGKILL);
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    false
}

#[actix_web::test]
async fn processes_left_under_a_users_uid_end_before_a_start_and_at_start_up() {
    let gw = Gateway::fake(&[]);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let uid = gw.user("alice").await.expect("alice")["uid"]
        .as_u64()
        .expect("alice has a uid of her own") as u32;

    // Left while her OpenCode was stopped: ended before the next start.
    let stop = gw
        .admin_request(awc::http::Method::POST, "/instances/alice/stop")
        .await;
    assert!(stop.status.is_success(), "{}", stop.text());
    gw.wait_state("alice", "stopped").await;
    let mut left = stray(uid);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert!(killed(&mut left).await, "survived a start");
    gw.wait_log_contains("ended processes left from an earlier run")
        .await;

    // Left by a gateway that died: ended by the next one as it starts.
    let mut left = stray(uid);
    let mut gw = gw;
    gw.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    let gw = gw.restart();
    assert!(killed(&mut left).await, "survived the gateway's start-up");
    gw.wait_log_contains("ending processes left from an earlier run")
        .await;
    assert!(!gw.log().contains("survived SIGKILL"), "{}", gw.log());
}
