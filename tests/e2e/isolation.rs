//! What keeps users apart, against the real OpenCode: separate sessions, the organisation's
//! keys usable but not readable, no reach into another home, process or port, git identity,
//! nothing left running after a stop, none of the gateway's environment. In two set-ups:
//! - `root`: the gateway runs as root with `--isolation both` (a uid per user + Landlock);
//! - `landlock`: the gateway runs as an unprivileged uid with `--isolation landlock`, so
//!   every user shares that uid and only Landlock separates them.
//!
//! Every test runs in both. They need root (to run the gateway as root, or to switch to the
//! unprivileged uid) and a kernel with Landlock; they fail, not skip, without them.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use crate::support::{as_u64, wait_gone, Gateway, Terminal};

/// The unprivileged uid the `landlock` set-up runs the gateway as (not in /etc/passwd on
/// purpose: nothing may depend on a name).
const GATEWAY_UID: u32 = 64_123;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Root,
    Landlock,
}

fn gateway(setup: Setup, env: &[(&str, &str)], extra: &[&str]) -> Gateway {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the isolation tests must run as root (CI runs them as root)"
    );
    match setup {
        Setup::Root => {
            let mut args = vec!["--isolation", "both"];
            args.extend_from_slice(extra);
            Gateway::real_with(&args, env, None)
        }
        Setup::Landlock => {
            let mut args = vec!["--isolation", "landlock"];
            args.extend_from_slice(extra);
            Gateway::real_with(&args, env, Some(GATEWAY_UID))
        }
    }
}

macro_rules! in_both_setups {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_web::test]
            async fn root_uid_and_landlock() {
                super::$name(super::Setup::Root).await
            }
            #[actix_web::test]
            async fn unprivileged_landlock() {
                super::$name(super::Setup::Landlock).await
            }
        }
    )*};
}

in_both_setups!(
    sessions_are_separate,
    shared_keys_work_and_are_read_only,
    terminals_cannot_touch_another_home_or_process,
    file_api_does_not_leak_another_home,
    another_users_port_needs_the_password,
    git_commits_carry_the_users_identity,
    stopping_leaves_no_process_behind,
    the_gateways_environment_stays_out,
);

async fn start(gw: &Gateway, user: &str) -> Value {
    let resp = gw.get(user, "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{user}: {}", resp.text());
    gw.user(user).await.expect("user in stats")
}

fn home(gw: &Gateway, user: &str) -> String {
    gw.data
        .path()
        .canonicalize()
        .unwrap()
        .join("users")
        .join(user)
        .display()
        .to_string()
}

async fn sessions_are_separate(setup: Setup) {
    let gw = gateway(setup, &[], &[]);
    start(&gw, "alice").await;
    start(&gw, "bob").await;
    let created = gw.post("alice", "/session").await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let mine = gw.get("alice", &format!("/session/{id}")).await;
    assert_eq!(mine.status, StatusCode::OK);
    let theirs = gw.get("bob", &format!("/session/{id}")).await;
    assert_ne!(theirs.status, StatusCode::OK, "bob read alice's session");
    let list = gw.get("bob", "/session").await.json();
    assert!(!list.to_string().contains(&id), "bob lists alice's session");
}

async fn shared_keys_work_and_are_read_only(setup: Setup) {
    let gw = gateway(setup, &[], &[]);
    let shared = gw.data.path().join("shared/auth/auth.json");
    let keys = r#"{"anthropic":{"type":"api","key":"sk-ant-shared-test-key"}}"#;
    std::fs::write(&shared, keys).unwrap();
    if setup == Setup::Landlock {
        // Owned by the very uid the users run as: only Landlock stands in the way.
        std::os::unix::fs::chown(&shared, Some(GATEWAY_UID), Some(GATEWAY_UID)).unwrap();
    }
    for user in ["alice", "bob"] {
        start(&gw, user).await;
        let providers = gw.get(user, "/provider").await;
        assert_eq!(providers.status, StatusCode::OK, "{}", providers.text());
        let connected = providers.json()["connected"].to_string();
        assert!(connected.contains("anthropic"), "{user}: {connected}");

        let put = gw
            .request(
                Method::PUT,
                Some(user),
                "/auth/anthropic",
                &[("content-type", "application/json")],
                Some(Bytes::from_static(br#"{"type":"api","key":"sk-stolen"}"#)),
            )
            .await;
        assert_eq!(put.status, StatusCode::FORBIDDEN, "{}", put.text());
        assert!(put.json()["error"].as_str().unwrap().contains("read-only"));

        // The organisation's file is not in the home, and not readable or writable where
        // it is: OpenCode has the keys in its environment.
        let mut term = Terminal::open(&gw, user).await;
        let shared = shared.display();
        for script in [format!("cat {shared}"), format!("echo '{{}}' > {shared}")] {
            let (out, status) = term.run(&script).await;
            assert_ne!(status, 0, "{user}: {script}: {out}");
            assert!(out.contains("denied"), "{out}");
        }
        let (out, status) = term
            .run("echo '{}' > ~/.local/share/opencode/auth.json && ls -ld ~/.local/share/opencode")
            .await;
        assert_eq!(status, 0, "{user}'s own auth file is theirs: {out}");
        assert!(
            !out.contains("root"),
            "a root-owned directory in the home: {out}"
        );
    }
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), keys);
}

async fn terminals_cannot_touch_another_home_or_process(setup: Setup) {
    let gw = gateway(setup, &[], &[]);
    start(&gw, "alice").await;
    let bob = start(&gw, "bob").await;
    let bob_pid = as_u64(&bob["pid"]);
    let bob_home = home(&gw, "bob");
    let mut term = Terminal::open(&gw, "alice").await;
    for (what, script) in [
        ("read", format!("cat {bob_home}/.gitconfig")),
        ("list", format!("ls {bob_home}/workspace")),
        ("write", format!("echo pwned > {bob_home}/workspace/pwned")),
        ("read the password", format!("cat /proc/{bob_pid}/environ")),
    ] {
        let (out, status) = term.run(&script).await;
        assert_ne!(status, 0, "alice could {what} bob's: {out}");
        assert!(out.contains("denied"), "{what}: {out}");
        assert!(!out.contains("OPENCODE_SERVER_PASSWORD"), "{out}");
    }
    let (out, status) = term.run(&format!("kill -0 {bob_pid}")).await;
    assert_ne!(status, 0, "alice may signal bob's OpenCode: {out}");
    assert!(out.contains("not permitted"), "{out}");
    assert!(!std::path::Path::new(&format!("{bob_home}/workspace/pwned")).exists());
    // Her own home is hers.
    let (out, status) = term
        .run("echo mine > ~/workspace/mine && cat ~/workspace/mine")
        .await;
    assert_eq!((status, out.as_str()), (0, "mine"));
}

async fn file_api_does_not_leak_another_home(setup: Setup) {
    let gw = gateway(setup, &[], &[]);
    start(&gw, "alice").await;
    start(&gw, "bob").await;
    let secret = format!("bob-secret-{}", std::process::id());
    let mut term = Terminal::open(&gw, "bob").await;
    let (out, status) = term
        .run(&format!("echo {secret} > ~/workspace/secret.txt"))
        .await;
    assert_eq!(status, 0, "{out}");
    let own = gw.get("bob", "/file/content?path=secret.txt").await;
    assert!(
        own.text().contains(&secret),
        "the file API works: {}",
        own.text()
    );

    let bob_home = home(&gw, "bob");
    for path in [
        format!("{bob_home}/workspace/secret.txt"),
        "../../bob/workspace/secret.txt".to_owned(),
        "../../../users/bob/workspace/secret.txt".to_owned(),
    ] {
        let resp = gw
            .get("alice", &format!("/file/content?path={}", encode(&path)))
            .await;
        assert!(
            !resp.text().contains(&secret),
            "alice read bob's file through {path}: {}",
            resp.text()
        );
    }
}

fn encode(path: &str) -> String {
    path.replace('/', "%2F")
}

async fn another_users_port_needs_the_password(setup: Setup) {
    let gw = gateway(setup, &[], &[]);
    start(&gw, "alice").await;
    let bob = start(&gw, "bob").await;
    let port = as_u64(&bob["port"]);
    let mut term = Terminal::open(&gw, "alice").await;
    let (out, status) = term
        .run(&format!(
            "curl -s -o /dev/null -w 'code=%{{http_code}}\\n' http://127.0.0.1:{port}/session"
        ))
        .await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("code=401"), "{out}");

    // The admin listener needs the operator token, which users cannot read (state/ is out
    // of their reach); with a uid per user their sockets are refused before the token is
    // even looked at. (tests/e2e/attacks.rs tries harder.)
    let (out, _) = term
        .run(&format!(
            "curl -s -o /dev/null -w 'code=%{{http_code}}\\n' -X POST {}/instances/bob/stop",
            gw.admin
        ))
        .await;
    match setup {
        Setup::Root => assert!(out.contains("code=403"), "{out}"),
        Setup::Landlock => assert!(out.contains("code=401"), "{out}"),
    }
    assert_eq!(gw.state("bob").await, "ready");
    // The operator still gets in.
    assert_eq!(
        gw.admin_request(Method::GET, "/stats").await.status,
        StatusCode::OK
    );
}

async fn git_commits_carry_the_users_identity(setup: Setup) {
    let gw = gateway(setup, &[], &[]);
    start(&gw, "alice").await;
    let mut term = Terminal::open(&gw, "alice").await;
    let (out, status) = term
        .run(
            "cd ~/workspace && git init -q repo && cd repo && git commit -q --allow-empty -m one \
             && git log -1 --format='%an|%ae|%cn|%ce'",
        )
        .await;
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("alice|alice@localhost|alice|alice@localhost"),
        "{out}"
    );
    let (out, _) = term.run("git config --global user.email").await;
    assert!(out.contains("alice@localhost"), ".gitconfig: {out}");
}

async fn stopping_leaves_no_process_behind(setup: Setup) {
    let gw = gateway(setup, &[], &[]);
    let alice = start(&gw, "alice").await;
    let mut term = Terminal::open(&gw, "alice").await;
    let (out, status) = term
        .run(
            "setsid sh -c 'echo $$ > ~/.tmp/escapee; exec sleep 1000' </dev/null >/dev/null 2>&1 & \
             nohup sleep 1001 </dev/null >/dev/null 2>&1 & echo nohup=$!; sleep 0.5; \
             echo escapee=$(cat ~/.tmp/escapee)",
        )
        .await;
    assert_eq!(status, 0, "{out}");
    let pid_of = |name: &str| -> u32 {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no {name} pid in {out}"))
    };
    let (escapee, nohup) = (pid_of("escapee"), pid_of("nohup"));
    assert!(crate::support::alive(escapee) && crate::support::alive(nohup));

    let stop = gw
        .admin_request(Method::POST, "/instances/alice/stop")
        .await;
    assert_eq!(stop.status, StatusCode::OK, "{}", stop.text());
    match setup {
        Setup::Root => {
            // `stopped` is only reported once nothing of the uid is left.
            let uid = as_u64(&alice["uid"]) as u32;
            let left = processes_of(uid);
            assert!(
                left.is_empty(),
                "processes of alice's uid {uid} left: {left:?}"
            );
        }
        Setup::Landlock => {
            for pid in [escapee, nohup] {
                assert!(wait_gone(pid).await, "pid {pid} outlived alice's instance");
            }
        }
    }
    let _ = Duration::ZERO;
}

/// Live (non-zombie) processes with real uid `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok());
            let zombie = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            real == Some(uid) && !zombie
        })
        .collect()
}

async fn the_gateways_environment_stays_out(setup: Setup) {
    let gw = gateway(
        setup,
        &[
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-never-shown"),
            ("ANTHROPIC_API_KEY", "sk-ant-passed-on"),
        ],
        &["--pass-env", "ANTHROPIC_API_KEY", "--limit-nofile", "1000"],
    );
    let config = gw.data.path().join("shared/config/opencode.json");
    std::fs::write(&config, r#"{"$schema":"https://opencode.ai/config.json"}"#).unwrap();
    if setup == Setup::Landlock {
        std::os::unix::fs::chown(&config, Some(GATEWAY_UID), Some(GATEWAY_UID)).unwrap();
    }
    start(&gw, "alice").await;
    let mut term = Terminal::open(&gw, "alice").await;

    // The organisation's config is every child's, in its environment; the file itself is
    // the gateway's.
    let (out, status) = term
        .run("printf '%s\\n' \"$OPENCODE_CONFIG_CONTENT\"")
        .await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("opencode.ai/config.json"), "{out}");
    for script in [
        format!("cat {}", config.display()),
        format!("echo '{{}}' > {}", config.display()),
    ] {
        let (out, status) = term.run(&script).await;
        assert_ne!(status, 0, "the shared config: {script}: {out}");
    }

    // Per-user limits.
    let (out, _) = term.run("ulimit -n; ulimit -u").await;
    let limits: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(limits.first(), Some(&"1000"), "{out}");
    if setup == Setup::Root {
        assert_eq!(limits.get(1), Some(&"4096"), "{out}");
    }

    let (out, status) = term.run("env").await;
    assert_eq!(status, 0, "{out}");
    assert!(!out.contains("aws-secret-never-shown"), "{out}");
    assert!(!out.contains("AWS_SECRET_ACCESS_KEY"), "{out}");
    assert!(out.contains("ANTHROPIC_API_KEY=sk-ant-passed-on"), "{out}");
    assert!(out.contains("GIT_AUTHOR_EMAIL=alice@localhost"), "{out}");
}

/// Puts /etc/passwd and /etc/group back as they were when dropped (the test below is the
/// only one that lets a gateway write them; every other gateway runs with them off).
struct EtcRestore(Vec<(&'static str, Vec<u8>)>);

impl EtcRestore {
    fn take() -> EtcRestore {
        EtcRestore(
            ["/etc/passwd", "/etc/group"]
                .into_iter()
                .map(|p| (p, std::fs::read(p).expect("read /etc")))
                .collect(),
        )
    }
}

impl Drop for EtcRestore {
    fn drop(&mut self) {
        for (path, bytes) in &self.0 {
            let _ = std::fs::write(path, bytes);
        }
    }
}

/// With `--system-accounts on` (the default in a container), a user's uid has a name: the
/// terminal's `whoami` and `id` say who they are. This writes the test host's /etc/passwd
/// and /etc/group (within this gateway's uid range only, as the gateway does in its image)
/// and puts them back afterwards.
#[actix_web::test]
async fn a_users_uid_has_a_name_in_the_terminal() {
    let _restore = EtcRestore::take();
    let alice_elsewhere = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("alice:"));
    let gw = gateway(Setup::Root, &[], &["--system-accounts", "on"]);
    start(&gw, "alice").await;
    let mut term = Terminal::open(&gw, "alice").await;
    let (out, status) = term
        .run("echo \"$(whoami) $(id -un) $(id -gn) $(id -u)\"")
        .await;
    assert_eq!(status, 0, "{out}");
    let line = out
        .lines()
        .map(str::trim)
        .rfind(|l| l.split(' ').count() == 4)
        .unwrap_or_default();
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words.len(), 4, "{out}");
    // The name the gateway wrote for this uid; "alice" unless this host has an alice already.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let named = passwd
        .lines()
        .find(|l| l.split(':').nth(2) == Some(words[3]))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("uid {} not in /etc/passwd", words[3]));
    assert_eq!(&words[..3], [named, named, named], "{out}");
    if !alice_elsewhere {
        assert_eq!(named, "alice");
    }
}
