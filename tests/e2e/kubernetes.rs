//! `--backend kubernetes` end to end: the real gateway and the real OpenCode, with
//! `tests/fake_kubernetes` as the cluster (an API server that is also the kubelet: pods run
//! as local processes on their own loopback addresses, with the pod's uid, environment and
//! volumes). The same lifecycle as the local backend: start with progress, proxy,
//! websockets, stop keeping the home, crash restart, idle cull, and the cluster as the
//! truth: a restarted gateway and a second replica adopt the user's pod instead of
//! starting another.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::Value;

use crate::support::{real_opencode, Gateway, Terminal};

const FAKE_KUBERNETES: &str = env!("CARGO_BIN_EXE_fake-kubernetes");
const NAMESPACE: &str = "team";
const TOKEN: &str = "test-cluster-token";

/// A fake cluster for one test, ended (with every pod's process) when dropped.
struct Cluster {
    child: Child,
    url: String,
    kubeconfig: PathBuf,
    _state: tempfile::TempDir,
    client: awc::Client,
}

impl Cluster {
    fn start() -> Cluster {
        // Every cluster's pods get addresses of their own, so port 4096 never collides.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = 20 + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let state = tempfile::tempdir().expect("temp dir");
        // Its log, and the pods' output, stay in its state directory.
        let log =
            std::fs::File::create(state.path().join("fake-kubernetes.log")).expect("log file");
        let mut child = Command::new(FAKE_KUBERNETES)
            .args(["--listen", "127.0.0.1:0", "--token", TOKEN, "--state-dir"])
            .arg(state.path())
            .arg("--pod-ips")
            .arg(format!("127.0.{n}.1-127.0.{n}.250"))
            // The pods' OpenCode and the gateway's probe are found on the node's PATH.
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start fake-kubernetes");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("fake-kubernetes prints its address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let kubeconfig = state.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
                 users:\n- name: gateway\n  user:\n    token: {TOKEN}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: gateway\n    namespace: {NAMESPACE}\n\
                 current-context: fake\n"
            ),
        )
        .expect("write kubeconfig");
        Cluster {
            child,
            url,
            kubeconfig,
            _state: state,
            client: crate::support::client(),
        }
    }

    /// A gateway replica with users' OpenCode as pods of this cluster.
    fn gateway(&self, args: &[&str]) -> Gateway {
        let mut all = vec![
            "--backend",
            "kubernetes",
            "--k8s-image",
            "chamberlain:test",
            "--opencode-arg=--pure",
            "--stop-grace",
            "5s",
        ];
        all.extend_from_slice(args);
        let kubeconfig = self.kubeconfig.display().to_string();
        Gateway::start(&real_opencode(), &all, &[("KUBECONFIG", &kubeconfig)])
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let mut response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .force_close()
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let body = response.body().limit(16 << 20).await.expect("body");
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (response.status(), value)
    }

    /// The items of a list in the namespace, e.g. `pods`, `persistentvolumeclaims`.
    async fn list(&self, plural: &str) -> Vec<Value> {
        let (status, list) = self
            .get(&format!("/api/v1/namespaces/{NAMESPACE}/{plural}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Pods whose process runs, as the kubelet sees them.
    async fn running(&self) -> Vec<Value> {
        let (status, pods) = self.get("/fake/pods").await;
        assert_eq!(status, StatusCode::OK);
        pods.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !p["pid"].is_null())
            .collect()
    }

    async fn post(&self, path: &str) -> StatusCode {
        self.client
            .post(format!("{}{path}", self.url))
            .force_close()
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .status()
    }

    /// Waits until `check` holds for the running pods.
    async fn wait_running(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let pods = self.running().await;
            if check(&pods) {
                return pods;
            }
            assert!(Instant::now() < deadline, "never {what}; running: {pods:?}");
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM: the fake ends every pod's processes before it exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uid_of(pid: u64) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn healthy(gw: &Gateway, user: &str) {
    let response = gw.get(user, "/global/health").await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{}\nlog:\n{}",
        response.text(),
        gw.log()
    );
    assert_eq!(response.json()["healthy"], true, "{}", response.text());
}

#[actix_web::test]
async fn a_users_opencode_is_a_pod_with_a_home_volume_reached_through_the_gateway() {
    let cluster = Cluster::start();
    let gw = cluster.gateway(&[]);

    // The starting page's steps are the pod's.
    let started = gw.post("alice", "/-/api/instance/start").await;
    assert!(started.status.is_success(), "{}", started.text());
    let mut progress = gw.stream("alice", "/-/api/instance/progress", &[]).await;
    let steps = progress.read_to_end().await;
    assert!(
        steps.contains("\"state\":\"ready\""),
        "{steps}\n{}",
        gw.log()
    );
    // The stream carries the latest step only; OpenCode takes a while to answer once its
    // container started, so that step is always seen.
    assert!(
        steps.contains("Started container opencode"),
        "no step of the pod in {steps}"
    );

    // What the cluster holds: the pod, as the user and walled off; the home's claim; the
    // start's secret, which the pod reads its password from.
    let pods = cluster.list("pods").await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/component"],
        "opencode"
    );
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 1000);
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let pod_text = pod.to_string();
    let claims = cluster.list("persistentvolumeclaims").await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    let secrets = cluster.list("secrets").await;
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let password = secrets[0]["data"]["password"].as_str().expect("a password");
    assert!(
        !pod_text.contains(password),
        "the password is only in the secret"
    );
    let running = cluster.running().await;
    assert_eq!(running.len(), 1);
    let pid = running[0]["pid"].as_u64().expect("pid");
    assert_eq!(uid_of(pid), Some(1000), "OpenCode runs as the pod's user");

    // Through the gateway: HTTP and a terminal over a websocket, in the pod.
    healthy(&gw, "alice").await;
    let mut terminal = Terminal::open(&gw, "alice").await;
    let (out, status) = terminal
        .run("id -u; echo kept > \"$HOME/workspace/kept.txt\"")
        .await;
    assert_eq!((out.as_str(), status), ("1000", 0));
    drop(terminal);

    // A stop deletes the pod and its secret, and keeps the home.
    let stopped = gw.post("alice", "/-/api/instance/stop").await;
    assert!(stopped.status.is_success(), "{}", stopped.text());
    gw.wait_state("alice", "stopped").await;
    assert!(cluster.list("pods").await.is_empty());
    assert!(cluster.running().await.is_empty());
    assert!(cluster.list("secrets").await.is_empty());
    assert_eq!(cluster.list("persistentvolumeclaims").await.len(), 1);

    // The next start finds the home as it was.
    healthy(&gw, "alice").await;
    let mut terminal = Terminal::open(&gw, "alice").await;
    let (out, _) = terminal.run("cat \"$HOME/workspace/kept.txt\"").await;
    assert_eq!(out, "kept");
}

#[actix_web::test]
async fn a_crashed_pod_is_replaced_and_an_idle_one_deleted() {
    let cluster = Cluster::start();
    let gw = cluster.gateway(&["--idle-timeout", "20s", "--health-interval", "1s"]);
    healthy(&gw, "bob").await;
    let first = cluster.running().await;
    assert_eq!(first.len(), 1);
    let name = first[0]["name"].as_str().expect("name").to_owned();

    // The node kills OpenCode: the instance sees the pod's end, deletes it, and the next
    // request starts a new pod.
    assert_eq!(
        cluster
            .post(&format!("/fake/pods/{NAMESPACE}/{name}/kill?oom=true"))
            .await,
        StatusCode::OK
    );
    let crashed = gw
        .wait_user("bob", "saw the crash", |u| {
            u["state"] == "stopped"
                && u["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("OOMKilled"))
        })
        .await;
    assert!(
        crashed["message"]
            .as_str()
            .unwrap_or("")
            .contains("exit code 137"),
        "{crashed}"
    );
    healthy(&gw, "bob").await;
    let second = cluster.running().await;
    assert_eq!(second.len(), 1);
    assert_ne!(second[0]["uid"], first[0]["uid"], "a new pod");
    let stats = gw.user("bob").await.expect("bob");
    assert_eq!(stats["restarts"], 1, "{stats}");

    // The node evicts it (memory pressure): the same, with the node's reason (in the status,
    // or in the pod's events the message ends with, whichever the instance saw first).
    let name = second[0]["name"].as_str().expect("name").to_owned();
    assert_eq!(
        cluster
            .post(&format!("/fake/pods/{NAMESPACE}/{name}/evict"))
            .await,
        StatusCode::OK
    );
    gw.wait_user("bob", "saw the eviction", |u| {
        u["state"] == "stopped"
            && u["message"].as_str().is_some_and(|m| {
                m.to_lowercase().contains("evicted") && m.contains("low on resource")
            })
    })
    .await;
    healthy(&gw, "bob").await;
    assert_eq!(gw.user("bob").await.expect("bob")["restarts"], 2);

    // Unused for the idle timeout: the pod is deleted, the home kept.
    gw.wait_state("bob", "stopped").await;
    cluster
        .wait_running("no pod runs", |pods| pods.is_empty())
        .await;
    assert!(cluster.list("pods").await.is_empty());
    assert_eq!(cluster.list("persistentvolumeclaims").await.len(), 1);
}

#[actix_web::test]
async fn a_restarted_gateway_adopts_the_running_pod() {
    let cluster = Cluster::start();
    let mut gw = cluster.gateway(&[]);
    healthy(&gw, "carol").await;
    let before = cluster.running().await;
    assert_eq!(before.len(), 1);

    // A gateway that stops (a rolling update) leaves users' pods running...
    gw.terminate();
    gw.wait_log_contains("left running for the next gateway")
        .await;
    let after = cluster.running().await;
    assert_eq!(after.len(), 1, "the pod outlives its gateway");
    assert_eq!(after[0]["uid"], before[0]["uid"]);

    // ...and the next one takes it over, with its password, without a restart.
    let gw = gw.restart();
    healthy(&gw, "carol").await;
    gw.wait_log_contains("adopting the user's running pod")
        .await;
    let adopted = cluster.running().await;
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0]["uid"], before[0]["uid"]);
    assert_eq!(
        adopted[0]["pid"], before[0]["pid"],
        "the same OpenCode process"
    );
}

#[actix_web::test]
async fn two_replicas_route_one_user_to_one_pod() {
    let cluster = Cluster::start();
    let a = cluster.gateway(&[]);
    let b = cluster.gateway(&[]);

    // Both replicas asked at once: one pod (the second create loses and adopts).
    let (at_a, at_b) = futures_util::join!(
        a.get("dave", "/global/health"),
        b.get("dave", "/global/health")
    );
    assert_eq!(at_a.status, StatusCode::OK, "{}\n{}", at_a.text(), a.log());
    assert_eq!(at_b.status, StatusCode::OK, "{}\n{}", at_b.text(), b.log());
    let pods = cluster.running().await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(
        cluster.list("secrets").await.len(),
        1,
        "the loser's secret is gone"
    );

    // One OpenCode behind both: a terminal made through A is listed through B.
    let id = crate::support::create_pty(&a, "dave").await;
    let listed = b.get("dave", "/pty").await;
    assert!(listed.text().contains(&id), "{}", listed.text());

    // A stop at B ends the pod; A notices, and starts a new one at the next request.
    let stopped = b.post("dave", "/-/api/instance/stop").await;
    assert!(stopped.status.is_success());
    a.wait_user("dave", "saw the pod go", |u| u["state"] != "ready")
        .await;
    healthy(&a, "dave").await;
    let now = cluster.running().await;
    assert_eq!(now.len(), 1);
    assert_ne!(now[0]["uid"], pods[0]["uid"], "a new pod");
}

#[actix_web::test]
async fn a_replica_relays_model_calls_for_a_pod_another_one_started() {
    use crate::relay::{ask, give_org_key, ORG_KEY};
    let model = crate::mock_model::MockModel::start(3, Duration::from_millis(10));
    let cluster = Cluster::start();
    // The relay Service sends the pod's calls to B, which did not start the pod.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let b = cluster.gateway(&["--llm-listen", &format!("127.0.0.1:{port}")]);
    let a = cluster.gateway(&["--k8s-relay-url", &format!("http://127.0.0.1:{port}")]);
    give_org_key(&a, "mock", &model.org_config());
    give_org_key(&b, "mock", &model.org_config());

    let answer = ask(&a, "erin").await;
    assert!(
        answer["info"]["error"].is_null(),
        "the turn failed: {answer}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    let keys = model.counts.keys();
    let org_key = format!("Bearer {ORG_KEY}");
    assert!(
        !keys.is_empty() && keys.iter().all(|k| *k == org_key),
        "{keys:?}"
    );
    let relayed_by_b = crate::support::metric(
        &b.metrics().await,
        "chamberlain_llm_requests_total{provider=\"mock\",outcome=\"ok\"}",
    );
    assert!(relayed_by_b >= 1.0, "B relayed the calls");
    // A counts what B relayed for erin (B shares its use; A watches it).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let instance = a.get("erin", "/-/api/instance").await.json();
        if instance["llm"]["requests"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never saw B's count: {instance}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }

    // A made-up token is refused at B, the token in the pod's config is not in any pod's
    // spec, and the key is nowhere in the cluster.
    let forged = awc::Client::new()
        .post(format!("http://127.0.0.1:{port}/mock/chat/completions"))
        .bearer_auth("0".repeat(48))
        .send_body("{}")
        .await
        .expect("relay answers");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    // Made-up tokens cost one caller a few lookups, then none.
    for n in 0..12u32 {
        let forged = awc::Client::new()
            .post(format!("http://127.0.0.1:{port}/mock/chat/completions"))
            .bearer_auth(format!("{n:048x}"))
            .send_body("{}")
            .await
            .expect("relay answers");
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    }
    b.wait_log_contains("too many unknown relay tokens from one caller")
        .await;
    for plural in ["pods", "secrets", "persistentvolumeclaims"] {
        let objects = serde_json::to_string(&cluster.list(plural).await).unwrap();
        assert!(
            !objects.contains(ORG_KEY),
            "the org key is in the cluster's {plural}"
        );
    }
}

#[actix_web::test]
async fn a_replica_does_not_cull_a_pod_another_one_serves() {
    let cluster = Cluster::start();
    let idle = ["--idle-timeout", "6s", "--health-interval", "1s"];
    let a = cluster.gateway(&idle);
    let b = cluster.gateway(&idle);
    healthy(&a, "frank").await;
    let pod = cluster.running().await;
    assert_eq!(pod.len(), 1);
    // frank now reaches B only (a load balancer's choice); A sees nobody for 3 idle timeouts.
    healthy(&b, "frank").await;
    let until = Instant::now() + Duration::from_secs(18);
    while Instant::now() < until {
        healthy(&b, "frank").await;
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    }
    a.wait_log_contains("in use through another gateway").await;
    let now = cluster.running().await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["uid"], pod[0]["uid"], "the pod A started still runs");
    assert_eq!(a.state("frank").await, "ready");
    // Once nobody uses it anywhere, it is culled.
    a.wait_state("frank", "stopped").await;
    cluster
        .wait_running("no pod runs", |pods| pods.is_empty())
        .await;
}

#[actix_web::test]
async fn a_token_made_at_one_replica_opens_the_other_until_revoked_there() {
    use awc::http::Method;
    let cluster = Cluster::start();
    let a = cluster.gateway(&[]);
    let b = cluster.gateway(&[]);
    let made = a
        .request(
            Method::POST,
            Some("gina"),
            "/-/api/tokens",
            &[("content-type", "application/json")],
            Some(bytes::Bytes::from_static(
                br#"{"name":"laptop","expiresInDays":7}"#,
            )),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let made = made.json();
    let (token, id) = (
        made["token"].as_str().expect("token").to_owned(),
        made["id"].as_str().expect("id").to_owned(),
    );
    let bearer = format!("Bearer {token}");
    // The token is kept in the cluster as its digest, never itself.
    let secrets = serde_json::to_string(&cluster.list("secrets").await).unwrap();
    assert!(secrets.contains(&id) && !secrets.contains(&token));

    let with_token = |gw: &Gateway| {
        let bearer = bearer.clone();
        let gw_base = gw.url("/-/api/me");
        async move {
            let mut response = crate::support::client()
                .get(gw_base)
                .insert_header(("authorization", bearer))
                .force_close()
                .send()
                .await
                .expect("request");
            let _ = response.body().await;
            response.status()
        }
    };
    // B learns of it through its watch.
    let deadline = Instant::now() + Duration::from_secs(30);
    while with_token(&b).await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "B never accepted A's token\n{}",
            b.log()
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    // Revoked at B, refused at A.
    let revoked = b
        .request(
            Method::DELETE,
            Some("gina"),
            &format!("/-/api/tokens/{id}"),
            &[],
            None,
        )
        .await;
    assert!(revoked.status.is_success(), "{}", revoked.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    while with_token(&a).await != StatusCode::UNAUTHORIZED {
        assert!(
            Instant::now() < deadline,
            "A still accepts a revoked token\n{}",
            a.log()
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!serde_json::to_string(&cluster.list("secrets").await)
        .unwrap()
        .contains(&id));
}

#[actix_web::test]
async fn the_instance_limit_counts_every_replicas_pods() {
    let cluster = Cluster::start();
    let a = cluster.gateway(&["--max-instances", "1"]);
    let b = cluster.gateway(&["--max-instances", "1"]);
    healthy(&a, "hana").await;
    // B runs nothing itself, but the cluster holds its limit.
    let refused = b.get("ivan", "/global/health").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    let ivan = b.user("ivan").await.expect("ivan");
    assert!(
        ivan["message"]
            .as_str()
            .unwrap_or("")
            .contains("limit of 1 OpenCode pods"),
        "{ivan}"
    );
    assert_eq!(cluster.running().await.len(), 1);
    // Room again once hana's pod is gone.
    let stopped = a.post("hana", "/-/api/instance/stop").await;
    assert!(stopped.status.is_success());
    cluster
        .wait_running("hana's pod gone", |pods| pods.is_empty())
        .await;
    healthy(&b, "ivan").await;
}

#[actix_web::test]
async fn a_pod_no_gateway_holds_or_uses_is_swept() {
    let cluster = Cluster::start();
    let mut a = cluster.gateway(&[]);
    healthy(&a, "lena").await;
    assert_eq!(cluster.running().await.len(), 1);
    // A stops and leaves the pod running; lena never comes back.
    a.terminate();
    assert_eq!(cluster.running().await.len(), 1);
    // Another replica, whose idle timeout is short, sweeps it with its secret, and keeps
    // the home.
    let b = cluster.gateway(&["--idle-timeout", "3s", "--start-timeout", "5s"]);
    cluster
        .wait_running("the pod swept", |pods| pods.is_empty())
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.list("secrets").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the start's secret stayed\n{}",
            b.log()
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    b.wait_log_contains("deleting a pod no gateway has used")
        .await;
    assert!(cluster.list("pods").await.is_empty());
    assert_eq!(cluster.list("persistentvolumeclaims").await.len(), 1);
}
