//! One start's pod, from its creation (or adoption) to its end, driven by one task:
//!
//! - created, or adopted when it already runs (an earlier gateway's, or another replica's
//!   that won a race to create it: the name is the user's, so there is one at a time);
//! - watched: the pod's events become the starting page's steps (`Progress`), its
//!   readiness with an address becomes `Listening`, its end `Exited`;
//! - deleted on `terminate` (with the grace period) or `kill` (at once); the start's secret
//!   goes with it.
//!
//! The task ends when the pod is gone, or when the instance lets go of it (the gateway
//! shuts down and the pod runs on for the next one); then nothing is deleted.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use actix::Recipient;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, watch_object};
use kube::runtime::WatchStreamExt as _;
use tokio::sync::{mpsc, watch};

use chamberlain_actors::instance::{Custody, ProcessEvent};
use chamberlain_actors::launcher::basic_authorization;
use chamberlain_actors::llm::GrantGuard;

use crate::names;
use crate::objects::{KEY_PASSWORD, KEY_RELAY_TOKEN};

/// How many of the pod's events are kept for the message of a failed start.
const OUTPUT_EVENTS: usize = 8;

/// A start's credentials, read from its secret.
pub(crate) struct Credentials {
    pub password: String,
    pub relay_token: String,
}

/// Reads the credentials of a running pod from the secret its annotation names.
pub(crate) async fn credentials(secrets: &Api<Secret>, pod: &Pod) -> Result<Credentials, String> {
    let name = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_SECRET))
        .ok_or("the pod names no secret")?;
    let secret = secrets
        .get(name)
        .await
        .map_err(|e| format!("reading secret {name}: {e}"))?;
    let value = |key: &str| -> Result<String, String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| format!("secret {name} has no {key}"))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| format!("secret {name}: {key} is not text"))
    };
    Ok(Credentials {
        password: value(KEY_PASSWORD)?,
        relay_token: value(KEY_RELAY_TOKEN)?,
    })
}

/// Whether a pod found at a start can be taken over: it is running or on its way, and
/// nobody is deleting it.
pub(crate) fn adoptable(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && matches!(phase, Some("Pending" | "Running") | None)
}

/// How a start comes by its pod.
pub(crate) enum Origin {
    Create { pod: Box<Pod>, secret: String },
    Adopt { uid: String },
}

/// Makes the relay grant of a start's token (the token is the pod's: ours, or the adopted
/// pod's).
pub(crate) type Grant = Box<dyn Fn(String) -> Option<GrantGuard>>;

pub(crate) struct Driver {
    pub pods: Api<Pod>,
    pub events: Api<Event>,
    pub secrets: Api<Secret>,
    pub name: String,
    pub user: String,
    pub port: u16,
    pub origin: Origin,
    pub grant: Grant,
}

enum Command {
    Delete { grace: u32 },
}

#[derive(Default)]
struct Seen {
    authorization: String,
    /// The pod's latest events (warnings and reasons), for a failed start's message.
    output: VecDeque<String>,
    out_of_memory: bool,
    grant: Option<GrantGuard>,
}

/// The instance's hold on one start's pod.
pub(crate) struct PodCustody {
    name: String,
    commands: mpsc::UnboundedSender<Command>,
    seen: Rc<RefCell<Seen>>,
    gone: watch::Receiver<bool>,
    grace: u32,
}

impl PodCustody {
    /// Starts the task that creates (or adopts) and watches the pod; it reports to `events`
    /// under `generation`.
    pub(crate) fn launch(
        driver: Driver,
        credentials: Credentials,
        grace: u32,
        generation: u64,
        events: Recipient<ProcessEvent>,
    ) -> Self {
        let seen = Rc::new(RefCell::new(Seen {
            authorization: basic_authorization(&credentials.password),
            grant: (driver.grant)(credentials.relay_token),
            ..Seen::default()
        }));
        let (commands, receiver) = mpsc::unbounded_channel();
        let (gone_tx, gone) = watch::channel(false);
        let name = driver.name.clone();
        actix::spawn(drive(
            driver,
            generation,
            events,
            receiver,
            Rc::clone(&seen),
            gone_tx,
        ));
        Self {
            name,
            commands,
            seen,
            gone,
            grace,
        }
    }
}

impl Custody for PodCustody {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn authorization(&self) -> String {
        self.seen.borrow().authorization.clone()
    }

    fn look(&mut self) {}

    fn terminate(&mut self) {
        let _ = self.commands.send(Command::Delete { grace: self.grace });
    }

    fn kill(&mut self) {
        let _ = self.commands.send(Command::Delete { grace: 0 });
    }

    fn clean_up(&mut self) -> Option<LocalBoxFuture<'static, ()>> {
        if *self.gone.borrow() {
            return None;
        }
        let mut gone = self.gone.clone();
        Some(
            async move {
                // Ends too when the task does (its sender dropped).
                let _ = gone.wait_for(|gone| *gone).await;
            }
            .boxed_local(),
        )
    }

    fn still_running(&self) -> String {
        format!("pod {}", self.name)
    }

    fn last_output(&self) -> String {
        let seen = self.seen.borrow();
        seen.output.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn out_of_memory(&self) -> bool {
        self.seen.borrow().out_of_memory
    }

    fn outlives_gateway(&self) -> bool {
        true
    }
}

/// What the pod's state means for the start.
#[derive(Debug, PartialEq, Eq)]
enum PodState {
    Waiting,
    Ready(IpAddr),
    Ended {
        status: String,
        killed: bool,
        oom: bool,
    },
}

fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = pod.status.as_ref() else {
        return PodState::Waiting;
    };
    match status.phase.as_deref() {
        Some("Failed" | "Succeeded") => {
            let terminated = status
                .container_statuses
                .iter()
                .chain(status.init_container_statuses.iter())
                .flatten()
                .find_map(|c| c.state.as_ref()?.terminated.as_ref());
            let (status, killed, oom) = match (terminated, status.reason.as_deref()) {
                (_, Some("Evicted")) => (
                    format!(
                        "the node evicted the pod: {}",
                        status.message.as_deref().unwrap_or("no reason given")
                    ),
                    true,
                    false,
                ),
                (Some(t), _) => {
                    let reason = t.reason.as_deref().unwrap_or("");
                    let oom = reason == "OOMKilled";
                    (
                        format!(
                            "exit code {} ({})",
                            t.exit_code,
                            if reason.is_empty() {
                                "no reason"
                            } else {
                                reason
                            }
                        ),
                        oom || t.exit_code == 137,
                        oom,
                    )
                }
                (None, _) => (
                    format!(
                        "the pod {}",
                        status.phase.as_deref().unwrap_or("ended").to_lowercase()
                    ),
                    false,
                    false,
                ),
            };
            PodState::Ended {
                status,
                killed,
                oom,
            }
        }
        _ => {
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            match status.pod_ip.as_deref().map(str::parse::<IpAddr>) {
                Some(Ok(ip)) if ready => PodState::Ready(ip),
                _ => PodState::Waiting,
            }
        }
    }
}

/// Deletes the pod `name` if it is still the one of `uid` (never a newer pod of the name).
pub(crate) async fn delete(pods: &Api<Pod>, name: &str, uid: &str, grace: u32, user: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(grace),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => tracing::info!(user, pod = name, grace, "deleting the pod"),
        Err(e) if is_gone(&e) => {}
        Err(e) => tracing::warn!(user, pod = name, error = %e, "cannot delete the pod"),
    }
}

/// Not found, or a precondition failed (the name is now another pod's): nothing of ours.
pub(crate) fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.is_not_found() || status.is_conflict())
}

pub(crate) fn already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.is_already_exists())
}

/// Makes the pod the owner of its start's secret, so that the cluster deletes the secret
/// with the pod whoever deletes the pod (a replica that adopted it, an operator, a drain).
/// The sweep deletes what this misses.
async fn own(secrets: &Api<Secret>, secret: &str, pod: &str, uid: &str, user: &str) {
    let patch = serde_json::json!({"metadata": {"ownerReferences": [{
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod,
        "uid": uid,
    }]}});
    if let Err(e) = secrets
        .patch(secret, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(user, secret, error = %e, "cannot make the pod its secret's owner");
    }
}

pub(crate) async fn delete_secret(secrets: &Api<Secret>, name: &str, user: &str) {
    match secrets.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if is_gone(&e) => {}
        Err(e) => tracing::warn!(user, secret = name, error = %e, "cannot delete a start's secret"),
    }
}

async fn drive(
    driver: Driver,
    generation: u64,
    events: Recipient<ProcessEvent>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    seen: Rc<RefCell<Seen>>,
    gone: watch::Sender<bool>,
) {
    let Driver {
        pods,
        events: pod_events,
        secrets,
        name,
        user,
        port,
        origin,
        grant,
    } = driver;
    let exited = |status: String, killed: bool| {
        events.do_send(ProcessEvent::Exited {
            generation,
            status,
            killed,
        })
    };
    // The start's own secret, deleted with the pod (none when the pod was adopted: the
    // adopted pod's secret is its starter's, deleted when that pod ends).
    let (uid, own_secret) = match origin {
        Origin::Adopt { uid } => (uid, None),
        Origin::Create { pod, secret } => match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let uid = created.metadata.uid.unwrap_or_default();
                own(&secrets, &secret, &name, &uid, &user).await;
                (uid, Some(secret))
            }
            Err(e) if already_exists(&e) => {
                // Another replica created the user's pod first: it is the user's pod.
                delete_secret(&secrets, &secret, &user).await;
                let adopted = match pods.get(&name).await {
                    Ok(pod) => pod,
                    Err(e) => {
                        exited(
                            format!("cannot read the pod another gateway created: {e}"),
                            false,
                        );
                        let _ = gone.send(true);
                        return;
                    }
                };
                match credentials(&secrets, &adopted).await {
                    Ok(credentials) => {
                        let mut seen = seen.borrow_mut();
                        seen.authorization = basic_authorization(&credentials.password);
                        seen.grant = grant(credentials.relay_token);
                    }
                    Err(e) => {
                        exited(
                            format!("cannot adopt the pod another gateway created: {e}"),
                            false,
                        );
                        let _ = gone.send(true);
                        return;
                    }
                }
                tracing::info!(
                    user,
                    pod = name,
                    "another gateway created the pod first; adopted it"
                );
                (adopted.metadata.uid.unwrap_or_default(), None)
            }
            Err(e) => {
                delete_secret(&secrets, &secret, &user).await;
                exited(format!("cannot create the pod: {e}"), false);
                let _ = gone.send(true);
                return;
            }
        },
    };
    let mut pod_stream = watch_object(pods.clone(), &name).default_backoff().boxed();
    let mut event_stream = watcher::watcher(
        pod_events,
        watcher::Config::default().fields(&format!("involvedObject.name={name}")),
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    let mut listening = false;
    let mut ended = false;
    let mut deleting = false;
    let mut seen_events = HashSet::new();
    let pod_gone = loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Delete { grace }) => {
                    deleting = true;
                    delete(&pods, &name, &uid, grace, &user).await;
                }
                // Let go: the pod runs on (unless it was being deleted already).
                None => break false,
            },
            item = pod_stream.next() => match item {
                Some(Ok(Some(pod))) if pod.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    match pod_state(&pod) {
                        PodState::Ready(ip) if !listening && !ended => {
                            listening = true;
                            events.do_send(ProcessEvent::Listening {
                                generation,
                                addr: SocketAddr::new(ip, port),
                            });
                        }
                        PodState::Ended { status, killed, oom } if !ended => {
                            ended = true;
                            seen.borrow_mut().out_of_memory = oom;
                            exited(status, killed);
                        }
                        _ => {}
                    }
                }
                // Gone, or the name is another pod's now.
                Some(Ok(_)) => break true,
                Some(Err(e)) => {
                    tracing::warn!(user, pod = name, error = %e, "watching the pod");
                }
                None => break false,
            },
            item = event_stream.next() => match item {
                Some(Ok(event)) => {
                    let ours = event.involved_object.uid.as_deref().is_none_or(|u| u == uid);
                    let key = (event.metadata.name.clone(), event.count);
                    if ours && seen_events.insert(key) {
                        let line = format!(
                            "{}: {}",
                            event.reason.as_deref().unwrap_or("Event"),
                            event.message.as_deref().unwrap_or("")
                        );
                        {
                            let mut seen = seen.borrow_mut();
                            if seen.output.len() == OUTPUT_EVENTS {
                                seen.output.pop_front();
                            }
                            seen.output.push_back(line.clone());
                        }
                        // A readiness probe fails while OpenCode starts: not news to the
                        // person waiting (kept for the message of a failed start).
                        let routine = event.reason.as_deref() == Some("Unhealthy");
                        if !listening && !ended && !routine {
                            events.do_send(ProcessEvent::Progress { generation, message: line });
                        }
                    }
                }
                Some(Err(e)) => tracing::debug!(user, pod = name, error = %e, "watching the pod's events"),
                None => {}
            },
        }
    };
    if pod_gone && !ended {
        let status = if deleting {
            "the pod was deleted"
        } else {
            // Another replica's idle stop, an operator, a drain: not a kill of this one's.
            "the pod was deleted (by another gateway, an operator or the cluster)"
        };
        exited(status.to_owned(), false);
    }
    if pod_gone || deleting {
        if let Some(secret) = own_secret {
            delete_secret(&secrets, &secret, &user).await;
        }
    }
    if pod_gone {
        let _ = gone.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"}, "status": status}))
            .unwrap()
    }

    #[test]
    fn a_pod_is_ready_with_an_address_and_ended_in_a_final_phase() {
        assert_eq!(
            pod_state(&pod(json!({"phase": "Pending"}))),
            PodState::Waiting
        );
        let ready = json!({"phase": "Running", "podIP": "10.1.2.3",
            "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(
            pod_state(&pod(ready)),
            PodState::Ready("10.1.2.3".parse().unwrap())
        );
        let no_ip =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(pod_state(&pod(no_ip)), PodState::Waiting);
        let oom = json!({"phase": "Failed", "containerStatuses": [{"name": "opencode", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]});
        assert_eq!(
            pod_state(&pod(oom)),
            PodState::Ended {
                status: "exit code 137 (OOMKilled)".into(),
                killed: true,
                oom: true
            }
        );
        let evicted = json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"});
        assert!(
            matches!(pod_state(&pod(evicted)), PodState::Ended { status, .. } if status.contains("low on memory"))
        );
    }

    #[test]
    fn only_a_live_pod_nobody_deletes_is_adopted() {
        assert!(adoptable(&pod(json!({"phase": "Running"}))));
        assert!(adoptable(&pod(json!({"phase": "Pending"}))));
        assert!(!adoptable(&pod(json!({"phase": "Failed"}))));
        let mut deleting = pod(json!({"phase": "Running"}));
        deleting.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-12-02T08:00:00Z")).unwrap();
        assert!(!adoptable(&deleting));
    }
}
