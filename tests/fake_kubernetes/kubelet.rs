//! The kubelet of the one node, `fake-node`: each pod gets a task on the main thread that
//! takes it through the real lifecycle, writing status and Events to the store as it goes.
//!
//! A pod's task, top to bottom:
//! 1. schedule: wait until every claim it names exists (else `FailedScheduling`), then
//!    `spec.nodeName`, a pod IP, `PodScheduled`, the `Scheduled` event;
//! 2. mount: create its volumes (missing secret → `FailedMount`, retried every second);
//! 3. `Pulling`/`Pulled`, then each init container to completion, then the first container;
//!    a missing env reference is a `CreateContainerConfigError`, retried every second;
//! 4. probes decide `started`/`ready`; the container's exit makes the pod `Succeeded`/`Failed`
//!    (every restartPolicy is treated as `Never`);
//! 5. deletion: SIGTERM the process group, SIGKILL after the grace period, then remove the
//!    object (DELETED), free the IP and the pod's own directories.
//!
//! Messages a task takes (from the API and the control endpoints): `Delete(grace)`,
//! `Kill { oom }`, `Evict`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::cluster::Cluster;
use crate::env;
use crate::events::{self, Level};
use crate::mounts::{self, Mount};
use crate::podstatus as ps;
use crate::probes::{self, Kind, Report};
use crate::process::{self, ProcSpec, Running};
use crate::resources::Resource;
use crate::{clock, pvc};

#[derive(Debug)]
pub enum PodSignal {
    Delete(u64),
    Kill { oom: bool },
    Evict,
}

/// What the control endpoints can see of a pod's task.
#[derive(Clone, Debug)]
pub struct Slot {
    pub namespace: String,
    pub name: String,
    pub pid: Option<i32>,
    tx: mpsc::UnboundedSender<PodSignal>,
}

struct Start {
    namespace: String,
    name: String,
    uid: String,
    rx: mpsc::UnboundedReceiver<PodSignal>,
}

/// The API's way to the kubelet; cheap to share between threads.
pub struct Handle {
    tx: mpsc::UnboundedSender<Start>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Handle {
    /// The handle, and the receiver `run` takes on the thread that is to own the pods.
    pub fn new() -> (Handle, Starts) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Handle {
                tx,
                slots: Mutex::new(HashMap::new()),
            },
            Starts(rx),
        )
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pod was created: give it a task.
    pub fn pod_created(&self, namespace: &str, name: &str, uid: &str) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.slots().insert(
            uid.to_owned(),
            Slot {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                pid: None,
                tx,
            },
        );
        let _ = self.tx.send(Start {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            rx,
        });
    }

    /// Tells a pod's task something; false when it has no task.
    pub fn signal(&self, uid: &str, signal: PodSignal) -> bool {
        self.slots()
            .get(uid)
            .is_some_and(|s| s.tx.send(signal).is_ok())
    }

    pub fn slots_snapshot(&self) -> Vec<(String, Slot)> {
        self.slots()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn set_pid(&self, uid: &str, pid: Option<i32>) {
        if let Some(slot) = self.slots().get_mut(uid) {
            slot.pid = pid;
        }
    }

    fn forget(&self, uid: &str) {
        self.slots().remove(uid);
    }
}

pub struct Starts(mpsc::UnboundedReceiver<Start>);

/// Runs pod tasks on the current (main) thread until the handle is dropped.
pub async fn run(cluster: Arc<Cluster>, mut starts: Starts) {
    while let Some(start) = starts.0.recv().await {
        let pod = PodTask {
            cx: cluster.clone(),
            ns: start.namespace,
            name: start.name,
            uid: start.uid,
            rx: start.rx,
            ip: None,
            oom: false,
            evicted: false,
            last_warning: String::new(),
            started_tx: None,
        };
        actix_web::rt::spawn(pod.run());
    }
}

/// Why a pod's task stopped working through its lifecycle.
enum Stop {
    /// The pod is being deleted (its process, if it had one, has exited).
    Deleted,
    /// The containers are done (or never will start); wait for deletion.
    Done,
}

/// How a container ended.
struct Ending {
    code: i32,
    signal: Option<i32>,
    reason: &'static str,
    message: Option<String>,
    started_at: String,
}

struct PodTask {
    cx: Arc<Cluster>,
    ns: String,
    name: String,
    uid: String,
    rx: mpsc::UnboundedReceiver<PodSignal>,
    ip: Option<Ipv4Addr>,
    oom: bool,
    evicted: bool,
    /// The last Warning recorded by a retry loop, so a retry does not repeat it.
    last_warning: String,
    /// The startup probe's verdict, which holds readiness and liveness probes back.
    started_tx: Option<watch::Sender<bool>>,
}

/// Reads the store on the kubelet's behalf, for env and volume references.
struct StoreView<'a> {
    cx: &'a Cluster,
    ns: &'a str,
    pod: &'a Value,
}

impl env::Sources for StoreView<'_> {
    fn secret(&self, name: &str) -> Option<Value> {
        self.cx.store.get(Resource::Secrets, self.ns, name)
    }
    fn config_map(&self, name: &str) -> Option<Value> {
        self.cx.store.get(Resource::ConfigMaps, self.ns, name)
    }
    fn field(&self, path: &str) -> Option<String> {
        env::pod_field(self.pod, path)
    }
}

impl mounts::Lookup for StoreView<'_> {
    fn secret(&self, name: &str) -> Option<Value> {
        env::Sources::secret(self, name)
    }
    fn config_map(&self, name: &str) -> Option<Value> {
        env::Sources::config_map(self, name)
    }
    fn claim_dir(&self, name: &str) -> Option<PathBuf> {
        let claim = self
            .cx
            .store
            .get(Resource::PersistentVolumeClaims, self.ns, name)?;
        claim["metadata"]["deletionTimestamp"]
            .is_null()
            .then(|| self.cx.claim_dir(self.ns, name))
    }
}

/// The pod- and container-level security context merged (the container's wins).
fn security(pod: &Value, container: &Value, field: &str) -> Value {
    let c = &container["securityContext"][field];
    if c.is_null() {
        pod["spec"]["securityContext"][field].clone()
    } else {
        c.clone()
    }
}

impl PodTask {
    fn pod_dir(&self) -> PathBuf {
        self.cx.state_dir.join("pods").join(&self.uid)
    }

    /// The pod as stored now, if it is still this pod (same uid).
    fn pod(&self) -> Option<Value> {
        self.cx
            .store
            .get(Resource::Pods, &self.ns, &self.name)
            .filter(|p| p["metadata"]["uid"] == self.uid.as_str())
    }

    fn update(&self, edit: impl FnOnce(&mut Value)) -> Option<Value> {
        let uid = self.uid.clone();
        self.cx
            .store
            .update(Resource::Pods, &self.ns, &self.name, move |pod| {
                if pod["metadata"]["uid"] != uid.as_str() {
                    return Err(crate::status::ApiError::internal("pod replaced"));
                }
                edit(pod);
                Ok(())
            })
            .ok()
    }

    fn status(&self, edit: impl FnOnce(&mut Value)) {
        self.update(|pod| edit(&mut pod["status"]));
    }

    fn event(&self, level: Level, reason: &str, message: &str) {
        if let Some(pod) = self.pod() {
            let component = if reason == "Scheduled" || reason == "FailedScheduling" {
                "default-scheduler"
            } else {
                "kubelet"
            };
            events::record(&self.cx.store, &pod, level, component, reason, message);
        }
    }

    /// A Warning from a retry loop, recorded only when it differs from the last one.
    fn warn_once(&mut self, reason: &str, message: &str) {
        let key = format!("{reason}:{message}");
        if self.last_warning != key {
            self.event(Level::Warning, reason, message);
            self.last_warning = key;
        }
    }

    /// Waits, unless a signal ends the wait. Kill has nothing to kill here; Evict ends the pod.
    async fn pause(&mut self, period: Duration) -> Result<(), Stop> {
        let sleep = tokio::time::sleep(period);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(()),
                signal = self.rx.recv() => match signal {
                    Some(PodSignal::Delete(_)) | None => return Err(Stop::Deleted),
                    Some(PodSignal::Kill { .. }) => {}
                    Some(PodSignal::Evict) => {
                        self.evict_status();
                        return Err(Stop::Done);
                    }
                },
            }
        }
    }

    async fn run(mut self) {
        tracing::info!(
            "kubelet: pod {}/{} ({}) admitted",
            self.ns,
            self.name,
            self.uid
        );
        let stop = match self.lifecycle().await {
            Ok(()) => Stop::Done,
            Err(stop) => stop,
        };
        if let Stop::Done = stop {
            // The pod stays, as a finished pod does, until it is deleted.
            loop {
                match self.rx.recv().await {
                    Some(PodSignal::Delete(_)) | None => break,
                    Some(_) => {}
                }
            }
        }
        self.cleanup();
    }

    fn cleanup(&mut self) {
        let uid = self.uid.clone();
        let removed = self
            .cx
            .store
            .remove(Resource::Pods, &self.ns, &self.name, |pod| {
                if pod["metadata"]["uid"] == uid.as_str() {
                    Ok(())
                } else {
                    Err(crate::status::ApiError::internal("pod replaced"))
                }
            });
        if removed.is_ok() {
            tracing::info!("kubelet: pod {}/{} removed", self.ns, self.name);
        }
        if let Some(ip) = self.ip.take() {
            if let Ok(mut ips) = self.cx.ips.lock() {
                ips.free(ip);
            }
        }
        let _ = std::fs::remove_dir_all(self.pod_dir());
        self.cx.kubelet.forget(&self.uid);
        pvc::sweep(&self.cx, &self.ns);
    }

    async fn lifecycle(&mut self) -> Result<(), Stop> {
        self.schedule().await?;
        let volumes = self.mount().await?;
        let pod = self.pod().ok_or(Stop::Deleted)?;
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let inits: Vec<Value> = pod["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(main) = containers.first().cloned() else {
            return Err(Stop::Done);
        };
        self.status(|s| {
            ps::set_condition(s, "PodReadyToStartContainers", true, None, None);
            if inits.is_empty() {
                ps::set_condition(s, "Initialized", true, None, None);
            } else {
                let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
                let msg = format!("containers with incomplete status: [{}]", names.join(" "));
                ps::set_condition(
                    s,
                    "Initialized",
                    false,
                    Some("ContainersNotInitialized"),
                    Some(&msg),
                );
            }
            let names: Vec<&str> = containers
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            let msg = format!("containers with unready status: [{}]", names.join(" "));
            ps::set_condition(s, "Ready", false, Some("ContainersNotReady"), Some(&msg));
            ps::set_condition(
                s,
                "ContainersReady",
                false,
                Some("ContainersNotReady"),
                Some(&msg),
            );
            let creating = if inits.is_empty() {
                "ContainerCreating"
            } else {
                "PodInitializing"
            };
            for c in &inits {
                ps::put_container(
                    s,
                    "initContainerStatuses",
                    ps::container(c, ps::waiting("PodInitializing", None), false, false, None),
                );
            }
            for c in &containers {
                ps::put_container(
                    s,
                    "containerStatuses",
                    ps::container(c, ps::waiting(creating, None), false, false, None),
                );
            }
        });

        for init in &inits {
            let ending = self.container(init, &volumes, true).await?;
            let name = init["name"].as_str().unwrap_or("");
            if ending.code != 0 {
                self.event(
                    Level::Warning,
                    "Failed",
                    &format!(
                        "Init container {name} failed with exit code {}",
                        ending.code
                    ),
                );
                self.finish(ending, true, name);
                return Err(Stop::Done);
            }
            self.finish(ending, true, name);
        }
        if !inits.is_empty() {
            self.status(|s| {
                ps::set_condition(s, "Initialized", true, None, None);
                for c in &containers {
                    ps::put_container(
                        s,
                        "containerStatuses",
                        ps::container(
                            c,
                            ps::waiting("ContainerCreating", None),
                            false,
                            false,
                            None,
                        ),
                    );
                }
            });
        }
        let name = main["name"].as_str().unwrap_or("").to_owned();
        let ending = self.container(&main, &volumes, false).await?;
        self.finish(ending, false, &name);
        Ok(())
    }

    /// Waits for the claims (the scheduler's volume binding), then binds the pod to the node.
    async fn schedule(&mut self) -> Result<(), Stop> {
        loop {
            let pod = self.pod().ok_or(Stop::Deleted)?;
            let view = StoreView {
                cx: &self.cx,
                ns: &self.ns,
                pod: &pod,
            };
            let missing = pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
                .find(|claim| mounts::Lookup::claim_dir(&view, claim).is_none())
                .map(str::to_owned);
            let Some(claim) = missing else { break };
            let message = format!("0/1 nodes are available: persistentvolumeclaim \"{claim}\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.");
            self.status(|s| {
                ps::set_condition(
                    s,
                    "PodScheduled",
                    false,
                    Some("Unschedulable"),
                    Some(&message),
                )
            });
            self.warn_once("FailedScheduling", &message);
            self.pause(Duration::from_secs(1)).await?;
        }
        let ip = self.cx.ips.lock().ok().and_then(|mut ips| ips.take());
        let Some(ip) = ip else {
            self.warn_once("FailedCreatePodSandBox", "no pod IP left in --pod-ips");
            return Err(Stop::Done);
        };
        self.ip = Some(ip);
        let now = clock::now();
        self.update(|pod| {
            pod["spec"]["nodeName"] = json!("fake-node");
            let s = &mut pod["status"];
            ps::set_condition(s, "PodScheduled", true, None, None);
            s["hostIP"] = json!("127.0.0.1");
            s["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
            s["podIP"] = json!(ip.to_string());
            s["podIPs"] = json!([{"ip": ip.to_string()}]);
            s["startTime"] = json!(now);
        });
        self.last_warning.clear();
        self.event(
            Level::Normal,
            "Scheduled",
            &format!(
                "Successfully assigned {}/{} to fake-node",
                self.ns, self.name
            ),
        );
        Ok(())
    }

    async fn mount(&mut self) -> Result<Vec<(String, PathBuf)>, Stop> {
        loop {
            let pod = self.pod().ok_or(Stop::Deleted)?;
            let view = StoreView {
                cx: &self.cx,
                ns: &self.ns,
                pod: &pod,
            };
            match mounts::prepare(&pod, &self.pod_dir(), &view) {
                Ok(volumes) => {
                    if let Some(group) = pod["spec"]["securityContext"]["fsGroup"].as_u64() {
                        for (name, dir) in &volumes {
                            let source = pod["spec"]["volumes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .find(|v| v["name"] == name.as_str())
                                .cloned()
                                .unwrap_or(Value::Null);
                            if source["hostPath"].is_object() {
                                continue;
                            }
                            let read_only =
                                source["secret"].is_object() || source["configMap"].is_object();
                            if let Err(e) = mounts::apply_fs_group(dir, group as u32, read_only) {
                                tracing::warn!(
                                    "kubelet: fsGroup {group} on {}: {e}",
                                    dir.display()
                                );
                            }
                        }
                    }
                    self.last_warning.clear();
                    return Ok(volumes);
                }
                Err(not_ready) => {
                    self.warn_once("FailedMount", &not_ready.message);
                    self.pause(Duration::from_secs(1)).await?;
                }
            }
        }
    }

    /// The process for a container, or the kubelet's reason it cannot be created
    /// (`CreateContainerConfigError` and its message).
    fn process(
        &self,
        pod: &Value,
        c: &Value,
        volumes: &[(String, PathBuf)],
        init: bool,
    ) -> Result<ProcSpec, (&'static str, String)> {
        let config = |m: String| ("CreateContainerConfigError", m);
        let view = StoreView {
            cx: &self.cx,
            ns: &self.ns,
            pod,
        };
        let mut vars = env::resolve(c, &view).map_err(config)?;
        let uid = security(pod, c, "runAsUser").as_u64().map(|u| u as u32);
        let gid = security(pod, c, "runAsGroup").as_u64().map(|g| g as u32);
        let me = nix::unistd::Uid::effective().as_raw();
        if security(pod, c, "runAsNonRoot").as_bool() == Some(true) {
            let name = c["name"].as_str().unwrap_or("");
            match uid {
                None => return Err(config(format!("container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {name})", self.name, self.ns, self.uid))),
                Some(0) => return Err(config(format!("container's runAsUser breaks non-root policy (pod: \"{}_{}({})\", container: {name})", self.name, self.ns, self.uid))),
                Some(_) => {}
            }
        }
        let mut groups: Vec<u32> = Vec::new();
        if let Some(g) = pod["spec"]["securityContext"]["fsGroup"].as_u64() {
            groups.push(g as u32);
        }
        for g in pod["spec"]["securityContext"]["supplementalGroups"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(g) = g.as_u64() {
                groups.push(g as u32);
            }
        }
        if me != 0 {
            if uid.is_some_and(|u| u != me) {
                return Err((
                    "RunContainerError",
                    format!("cannot run as uid {uid:?}: the fake kubelet is not root"),
                ));
            }
            // Not root: supplementary groups cannot be set; run with the fake's own.
            groups.clear();
        }
        if !vars.iter().any(|(k, _)| k == "PATH") {
            // Deviation: a real container gets PATH from its image.
            vars.push((
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ));
        }
        if !vars.iter().any(|(k, _)| k == "HOSTNAME") {
            vars.push(("HOSTNAME".into(), self.name.clone()));
        }
        let lookup = {
            let vars = vars.clone();
            move |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        };
        let mounts: Vec<Mount> = mounts::container_mounts(c, volumes);
        let words = |field: &str| -> Vec<String> {
            c[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str())
                .map(|w| mounts::rewrite(&env::expand(w, &lookup), &mounts))
                .collect()
        };
        let command = words("command");
        if command.is_empty() {
            return Err((
                "RunContainerError",
                "the fake kubelet has no images: the container needs an explicit command".into(),
            ));
        }
        let argv: Vec<String> = command.into_iter().chain(words("args")).collect();
        for (_, value) in vars.iter_mut() {
            *value = mounts::rewrite(value, &mounts);
        }
        let cwd = c["workingDir"]
            .as_str()
            .map(|w| PathBuf::from(mounts::rewrite(w, &mounts)));
        if let Some(dir) = &cwd {
            let under_volume = mounts.iter().any(|m| dir.starts_with(&m.host_path));
            if under_volume {
                let _ = std::fs::create_dir_all(dir);
            }
        }
        let name = c["name"].as_str().unwrap_or("");
        let log = self.cx.log_path(&self.ns, &self.name, init.then_some(name));
        if let Some(parent) = log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        Ok(ProcSpec {
            argv,
            env: vars,
            cwd,
            uid,
            gid: gid.or(uid.map(|_| 0)),
            groups,
            log: Some(log),
        })
    }

    /// Runs one container to its end; `Err` when the pod is deleted or evicted meanwhile.
    async fn container(
        &mut self,
        c: &Value,
        volumes: &[(String, PathBuf)],
        init: bool,
    ) -> Result<Ending, Stop> {
        let name = c["name"].as_str().unwrap_or("").to_owned();
        let list = if init {
            "initContainerStatuses"
        } else {
            "containerStatuses"
        };
        let image = c["image"].as_str().unwrap_or("").to_owned();
        self.event(
            Level::Normal,
            "Pulling",
            &format!("Pulling image \"{image}\""),
        );
        self.event(Level::Normal, "Pulled", &format!("Successfully pulled image \"{image}\" in 0s (0s including waiting). Image size: 0 bytes."));
        let (spec, running) = loop {
            let pod = self.pod().ok_or(Stop::Deleted)?;
            match self.process(&pod, c, volumes, init) {
                Ok(spec) => match self.cx.spawner.spawn(spec.clone()).await {
                    Ok(running) => break (spec, running),
                    Err(e) => {
                        let message = format!("failed to create containerd task: failed to create shim task: OCI runtime create failed: exec: {:?}: {e}", spec.argv.first().cloned().unwrap_or_default());
                        self.event(Level::Warning, "Failed", &format!("Error: {message}"));
                        return Ok(Ending {
                            code: 128,
                            signal: None,
                            reason: "StartError",
                            message: Some(message),
                            started_at: clock::now(),
                        });
                    }
                },
                Err(("CreateContainerConfigError", message)) => {
                    self.status(|s| {
                        ps::edit_container(s, list, &name, |cs| {
                            cs["state"] = ps::waiting("CreateContainerConfigError", Some(&message))
                        })
                    });
                    self.warn_once("Failed", &format!("Error: {message}"));
                    self.pause(Duration::from_secs(1)).await?;
                }
                Err((_, message)) => {
                    self.event(Level::Warning, "Failed", &format!("Error: {message}"));
                    return Ok(Ending {
                        code: 128,
                        signal: None,
                        reason: "StartError",
                        message: Some(message),
                        started_at: clock::now(),
                    });
                }
            }
        };
        self.last_warning.clear();
        self.event(
            Level::Normal,
            "Created",
            &format!("Created container: {name}"),
        );
        self.event(
            Level::Normal,
            "Started",
            &format!("Started container {name}"),
        );
        let started_at = clock::now();
        let pid = running.pid;
        self.cx.kubelet.set_pid(&self.uid, Some(pid));
        tracing::info!(
            "kubelet: {}/{} container {name} started as pid {pid}: {:?}",
            self.ns,
            self.name,
            spec.argv
        );

        let (reports_tx, mut reports) = mpsc::unbounded_channel::<Report>();
        let has = |k: Kind| c[k.field()].is_object();
        let startup_done = !has(Kind::Startup);
        let mut ready = !init && !has(Kind::Readiness) && startup_done;
        self.status(|s| {
            ps::put_container(
                s,
                list,
                ps::container(
                    c,
                    json!({"running": {"startedAt": started_at}}),
                    ready,
                    startup_done,
                    Some(pid),
                ),
            );
            if ready {
                ps::set_condition(s, "ContainersReady", true, None, None);
                ps::set_condition(s, "Ready", true, None, None);
            }
            if !init {
                s["phase"] = json!("Running");
            }
        });
        let mut probe_tasks = Vec::new();
        if !init {
            let (started_tx, started_rx) = watch::channel(startup_done);
            let target = probes::Target {
                ip: self.ip.map(|i| i.to_string()).unwrap_or_default(),
                ports: c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some((
                            p["name"].as_str()?.to_owned(),
                            u16::try_from(p["containerPort"].as_u64()?).ok()?,
                        ))
                    })
                    .collect(),
                exec: ProcSpec {
                    log: None,
                    ..spec.clone()
                },
            };
            for kind in [Kind::Startup, Kind::Readiness, Kind::Liveness] {
                if let Some(probe) = c.get(kind.field()).filter(|p| p.is_object()) {
                    let gate = (kind != Kind::Startup).then(|| started_rx.clone());
                    probe_tasks.push(actix_web::rt::spawn(probes::run(
                        kind,
                        probe.clone(),
                        target.clone(),
                        self.cx.spawner.clone(),
                        reports_tx.clone(),
                        gate,
                    )));
                }
            }
            self.started_tx = Some(started_tx);
        }
        drop(reports_tx);
        let Running { exit, .. } = running;
        tokio::pin!(exit);
        let mut deleting = false;
        let status = loop {
            tokio::select! {
                status = &mut exit => break status.ok(),
                signal = self.rx.recv() => match signal {
                    // A second deletion can only make it quicker (a force delete).
                    Some(PodSignal::Delete(grace)) if deleting => {
                        if grace == 0 {
                            process::signal_group(pid, Signal::SIGKILL);
                        }
                    }
                    Some(PodSignal::Delete(grace)) => {
                        deleting = true;
                        self.event(Level::Normal, "Killing", &format!("Stopping container {name}"));
                        self.stop_process(pid, grace);
                    }
                    None => {
                        deleting = true;
                        self.stop_process(pid, 0);
                        // No more signals will come; wait for the exit alone.
                        let status = (&mut exit).await.ok();
                        break status;
                    }
                    Some(PodSignal::Kill { oom }) => {
                        self.oom |= oom;
                        process::signal_group(pid, Signal::SIGKILL);
                    }
                    Some(PodSignal::Evict) => {
                        self.evicted = true;
                        self.event(Level::Warning, "Evicted", "The node was low on resource: memory. Threshold quantity: 100Mi, available: 0Ki. ");
                        process::signal_group(pid, Signal::SIGKILL);
                    }
                },
                Some(report) = reports.recv() => match report {
                    Report::Failed(kind, message) => {
                        self.event(Level::Warning, "Unhealthy", &format!("{} probe failed: {message}", kind.title()));
                    }
                    Report::Verdict(Kind::Startup, true) => {
                        if let Some(tx) = &self.started_tx {
                            let _ = tx.send(true);
                        }
                        ready = !has(Kind::Readiness);
                        self.status(|s| {
                            ps::edit_container(s, list, &name, |cs| { cs["started"] = json!(true); cs["ready"] = json!(ready); });
                            if ready {
                                ps::set_condition(s, "ContainersReady", true, None, None);
                                ps::set_condition(s, "Ready", true, None, None);
                            }
                        });
                    }
                    Report::Verdict(Kind::Readiness, now) => {
                        let msg = format!("containers with unready status: [{name}]");
                        self.status(|s| {
                            ps::edit_container(s, list, &name, |cs| cs["ready"] = json!(now));
                            let (reason, message) = if now { (None, None) } else { (Some("ContainersNotReady"), Some(msg.as_str())) };
                            ps::set_condition(s, "ContainersReady", now, reason, message);
                            ps::set_condition(s, "Ready", now, reason, message);
                        });
                    }
                    Report::Verdict(kind, false) => {
                        let why = if kind == Kind::Startup { "startup" } else { "liveness" };
                        self.event(Level::Normal, "Killing", &format!("Container {name} failed {why} probe, will be restarted"));
                        let pod = self.pod().unwrap_or(Value::Null);
                        let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                        self.stop_process(pid, grace);
                    }
                    Report::Verdict(_, true) => {}
                },
            }
        };
        for task in probe_tasks {
            task.abort();
        }
        self.started_tx = None;
        self.cx.kubelet.set_pid(&self.uid, None);
        let (code, signal) = status
            .as_ref()
            .map(process::exit_code)
            .unwrap_or((137, Some(9)));
        let reason = if self.oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        tracing::info!(
            "kubelet: {}/{} container {name} exited: code {code}, reason {reason}",
            self.ns,
            self.name
        );
        let ending = Ending {
            code,
            signal,
            reason,
            message: None,
            started_at,
        };
        if deleting {
            self.finish(ending, init, &name);
            return Err(Stop::Deleted);
        }
        if self.evicted {
            self.finish(ending, init, &name);
            self.evict_status();
            return Err(Stop::Done);
        }
        Ok(ending)
    }

    /// SIGTERM now, SIGKILL after the grace period (in the background; the exit ends it).
    fn stop_process(&self, pid: i32, grace: u64) {
        if grace == 0 {
            process::signal_group(pid, Signal::SIGKILL);
            return;
        }
        process::signal_group(pid, Signal::SIGTERM);
        actix_web::rt::spawn(async move {
            tokio::time::sleep(Duration::from_secs(grace)).await;
            process::signal_group(pid, Signal::SIGKILL);
        });
    }

    /// Writes a container's terminated state and, for the main container, the pod's phase.
    fn finish(&self, ending: Ending, init: bool, name: &str) {
        let list = if init {
            "initContainerStatuses"
        } else {
            "containerStatuses"
        };
        let mut terminated = json!({
            "exitCode": ending.code,
            "reason": ending.reason,
            "startedAt": ending.started_at,
            "finishedAt": clock::now(),
            "containerID": "",
        });
        if let Some(sig) = ending.signal {
            terminated["signal"] = json!(sig);
        }
        if let Some(m) = &ending.message {
            terminated["message"] = json!(m);
        }
        let failed_init = init && ending.code != 0;
        self.status(|s| {
            ps::edit_container(s, list, name, |cs| {
                if let Some(id) = cs.get("containerID").cloned() {
                    terminated["containerID"] = id;
                }
                cs["state"] = json!({"terminated": terminated});
                cs["ready"] = json!(false);
                cs["started"] = json!(false);
            });
            if init && !failed_init {
                return;
            }
            ps::set_condition(s, "ContainersReady", false, Some("PodCompleted"), None);
            ps::set_condition(s, "Ready", false, Some("PodCompleted"), None);
            ps::set_condition(s, "PodReadyToStartContainers", false, None, None);
            s["phase"] = json!(if ending.code == 0 && !failed_init {
                "Succeeded"
            } else {
                "Failed"
            });
        });
    }

    fn evict_status(&mut self) {
        self.evicted = true;
        self.status(|s| {
            s["phase"] = json!("Failed");
            s["reason"] = json!("Evicted");
            s["message"] = json!(
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 0Ki. "
            );
            ps::set_condition(
                s,
                "DisruptionTarget",
                true,
                Some("TerminationByKubelet"),
                Some("The node was low on resource: memory."),
            );
            ps::set_condition(s, "Ready", false, Some("PodFailed"), None);
            ps::set_condition(s, "ContainersReady", false, Some("PodFailed"), None);
        });
    }
}
