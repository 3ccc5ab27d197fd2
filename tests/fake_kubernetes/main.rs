//! A fake Kubernetes for the gateway's end-to-end tests: an API server (a faithful subset)
//! and the kubelet of one node, `fake-node`, that runs each pod's container as a local
//! process. Like KWOK, but the pods really run.
//!
//! ```text
//! fake-kubernetes --listen 127.0.0.1:0 --state-dir DIR --pod-ips 127.0.3.1-127.0.3.250 [--token T]
//! ```
//! prints `fake kubernetes listening on http://127.0.0.1:PORT` on stdout once bound, logs to
//! stderr, and on SIGTERM/SIGINT SIGKILLs every pod's process group and exits 0.
//!
//! Served: core/v1 pods (with `/status` and `/log`), secrets, persistentvolumeclaims, events,
//! services, configmaps; coordination.k8s.io/v1 leases; `GET /version`; `GET` of any
//! namespace (every name exists). Verbs: create, get, list (label/field selectors, `limit` +
//! `continue`), watch (see `watch.rs`), replace, patch (merge, strategic-as-merge, JSON
//! patch), delete (preconditions, grace periods, finalizers), deletecollection. Errors are
//! `Status` objects with the real codes, reasons and messages. Test-only endpoints: `control.rs`.
//!
//! Deviations from a real cluster (the ones a test might trip on):
//! - Processes run on the host, not in containers: no images (a container needs `command`;
//!   the image is only reported), no namespaces, cgroups or resource limits.
//! - Mounts are simulated by rewriting paths (`mounts.rs`): an env value, command word, arg
//!   or `workingDir` that is a `mountPath` or under one becomes the volume's host directory
//!   (`subPath` appended). Paths inside longer strings (`--dir=/data`, `sh -c` scripts) are
//!   NOT rewritten, so pass paths as whole args or env values.
//! - The environment is only what the pod defines, plus `HOSTNAME` (as a runtime sets it) and
//!   `PATH` from the fake's own environment when the pod sets none (an image would). No
//!   `HOME`, no service links (`KUBERNETES_SERVICE_HOST`...).
//! - `runAsUser`/`runAsGroup`/`fsGroup`/`supplementalGroups` are honoured (the fake must run
//!   as root to switch users; otherwise only its own uid works and groups are dropped).
//!   `fsGroup` gives volumes that group, g+rw and setgid dirs, like the kubelet; without it a
//!   claim's directory stays owned by the fake's user, mode 0755. `runAsNonRoot` is checked.
//!   Other security settings (capabilities, seccomp, readOnlyRootFilesystem...) are ignored.
//! - `workingDir` is created only when it lies in a volume; elsewhere it must exist on the
//!   host (else the container fails with `StartError`, where a runtime would create it).
//! - Every `restartPolicy` acts as `Never` (the default stays `Always` in the spec, as the API
//!   server sets it). Probes: httpGet (plain HTTP), tcpSocket, exec; no gRPC.
//! - Claims bind at once (no storage classes or provisioner); a missing claim keeps the pod
//!   unscheduled with `FailedScheduling`, as the scheduler does. Volume types: PVC, emptyDir,
//!   secret, configMap, hostPath.
//! - Strategic merge patch is a plain merge patch (lists are replaced, not merged by key);
//!   server-side apply (`application/apply-patch+yaml`) is 415. No admission, RBAC, quotas,
//!   service accounts, owner references or garbage collection, `dryRun`, or protobuf.
//! - Pod logs: `container`, `tailLines`, `limitBytes`; no `follow`, `previous` or
//!   timestamps. Log files stay in `<state-dir>/logs/` after the pod is gone.
//! - Events are not aggregated into counts (a retry loop records a Warning only when its
//!   message changes). Watch bookmarks come every 10 s; the default watch timeout is 5 min
//!   plus up to 1 min of jitter; each resource keeps its last 2000 changes for resuming.

mod api;
mod clock;
mod cluster;
mod control;
mod defaults;
mod env;
mod events;
mod ids;
mod ips;
mod kubelet;
mod logs;
mod mounts;
mod patch;
mod podstatus;
mod probes;
mod process;
mod pvc;
mod resources;
mod selector;
mod shape;
mod status;
mod store;
mod validate;
mod watch;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "fake-kubernetes",
    about = "A fake Kubernetes API server and kubelet for tests"
)]
struct Args {
    /// Address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Where claims, pod volumes and container logs live.
    #[arg(long)]
    state_dir: PathBuf,
    /// Pod IP range, `FIRST-LAST`.
    #[arg(long, default_value = "127.0.3.1-127.0.3.250")]
    pod_ips: String,
    /// Bearer token every API request must carry.
    #[arg(long)]
    token: Option<String>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    // Before any other thread exists, so children are only ever forked from this one.
    let spawner = process::Spawner::start();
    let ips = ips::IpPool::parse(&args.pod_ips).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(&args.state_dir)?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;
    for sub in ["volumes", "pods", "logs"] {
        std::fs::create_dir_all(state_dir.join(sub))?;
    }
    let listener = TcpListener::bind(&args.listen)?;
    let address = listener.local_addr()?;
    let (kubelet, starts) = kubelet::Handle::new();
    let cluster = Arc::new(cluster::Cluster {
        store: store::Store::new(),
        state_dir,
        token: args.token,
        spawner: spawner.clone(),
        ips: Mutex::new(ips),
        kubelet,
    });

    actix_web::rt::System::new().block_on(async move {
        actix_web::rt::spawn(kubelet::run(cluster.clone(), starts));
        let data = web::Data::from(cluster);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 << 20))
                .configure(control::routes)
                .default_service(web::to(api::dispatch))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        println!("fake kubernetes listening on http://{address}");
        std::io::stdout().flush()?;
        tracing::info!("state in {}", args.state_dir.display());

        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            result = server => result?,
            _ = term.recv() => tracing::info!("SIGTERM: killing every pod"),
            _ = int.recv() => tracing::info!("SIGINT: killing every pod"),
        }
        spawner.kill_all(Duration::from_secs(5));
        std::process::exit(0)
    })
}
