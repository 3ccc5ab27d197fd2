//! `KubernetesBackend`: where an instance's OpenCode is a pod. A start first looks at what
//! the cluster already holds under the user's name: a live pod (an earlier gateway's, or
//! another replica's) is adopted with the credentials in its secret; a dead or dying one is
//! deleted and waited for. Then the home's claim is made if missing, the start's secret
//! written, and the launch creates the pod (`pod.rs`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use chamberlain_actors::health::Questions;
use chamberlain_actors::instance::{
    Backend, Custody, Launch, LaunchFn, PrepareError, Prepared, UserSpec,
};
use chamberlain_actors::launcher::generate_password;
use chamberlain_actors::llm::{Grant, GrantGuard, RelaySettings, RelayedProvider};
use chamberlain_actors::{OrgFiles, Upstream};

use crate::names::{self, UserNames};
use crate::objects::{self, Start};
use crate::pod::{self, Credentials, Driver, Origin, PodCustody};
use crate::settings::Settings;
use crate::sweep::Sweep;

/// When a person may try again at a full cluster.
const NO_ROOM_RETRY: Duration = Duration::from_secs(10);
/// How often a start looks whether a dying pod of the user is gone.
const GONE_POLL: Duration = Duration::from_millis(250);

struct Inner {
    client: kube::Client,
    settings: Settings,
    org: OrgFiles,
    relay: RelaySettings,
}

pub struct KubernetesBackend {
    inner: Arc<Inner>,
    questions: Questions,
    /// The last use of each user's pod this gateway told the others of.
    shared: RefCell<HashMap<String, SystemTime>>,
}

impl KubernetesBackend {
    pub fn new(
        client: kube::Client,
        settings: Settings,
        org: OrgFiles,
        relay: RelaySettings,
        health_timeout: Duration,
    ) -> Self {
        let inner = Arc::new(Inner {
            client,
            settings,
            org,
            relay,
        });
        let sweep = Sweep {
            pods: inner.api(),
            secrets: inner.api(),
            sweep_after: inner.settings.sweep_after,
            orphan_after: inner.settings.orphan_after,
            grace: inner.settings.grace_seconds(),
        };
        let every = inner.settings.sweep_every;
        actix::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = sweep.run().await {
                    tracing::warn!(error = %e, "the sweep of users' pods failed; trying again");
                }
            }
        });
        Self {
            inner,
            questions: Questions::new(health_timeout),
            shared: RefCell::default(),
        }
    }
}

impl KubernetesBackend {
    /// The relay's lookup of grants that other replicas made.
    pub fn grants(&self) -> crate::grants::SharedGrants {
        crate::grants::SharedGrants(Arc::new(crate::grants::ClusterGrants::new(
            self.inner.api(),
            self.inner.org.clone(),
            self.inner.relay.clone(),
        )))
    }
}

impl Inner {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// One API request, bounded: the outer error is the timeout.
    async fn timed<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, String> {
        tokio::time::timeout(self.settings.request_timeout, request)
            .await
            .map_err(|_| {
                format!(
                    "{what}: no answer from the Kubernetes API within {}s",
                    self.settings.request_timeout.as_secs()
                )
            })
    }

    /// One API request, bounded, any failure described.
    async fn call<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, String> {
        self.timed(what, request)
            .await?
            .map_err(|e| format!("{what}: {e}"))
    }

    /// The organisation's providers relayed for a start with `token` (and the environment
    /// that points OpenCode at them), read off the actor thread.
    async fn org_start(
        self: &Arc<Self>,
        token: String,
    ) -> Result<(Vec<(String, String)>, BTreeMap<String, RelayedProvider>), String> {
        let inner = Arc::clone(self);
        match tokio::task::spawn_blocking(move || inner.org.for_start(&inner.relay, &token)).await {
            Ok(Ok(start)) => Ok((start.env, start.providers)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("reading the organisation's files: {e}")),
        }
    }

    fn driver(
        &self,
        names: &UserNames,
        user: &UserSpec,
        origin: Origin,
        providers: BTreeMap<String, RelayedProvider>,
    ) -> Driver {
        let grants = Arc::clone(&self.relay.grants);
        let user_id = user.user_id.clone();
        let providers = Arc::new(providers);
        Driver {
            pods: self.api(),
            events: self.api::<Event>(),
            secrets: self.api(),
            name: names.pod(),
            user: user.user_id.clone(),
            port: self.settings.port,
            origin,
            grant: Box::new(move |token| {
                (!providers.is_empty()).then(|| {
                    GrantGuard::new(
                        &grants,
                        token,
                        Grant {
                            user_id: user_id.clone(),
                            providers: Arc::clone(&providers),
                        },
                    )
                })
            }),
        }
    }

    fn launch(self: &Arc<Self>, driver: Driver, credentials: Credentials) -> LaunchFn {
        let grace = self.settings.grace_seconds();
        Box::new(move |launch: Launch| {
            Ok(Box::new(PodCustody::launch(
                driver,
                credentials,
                grace,
                launch.generation,
                launch.events,
            )) as Box<dyn Custody>)
        })
    }

    /// Deletes a pod that cannot be adopted and waits until it is gone (the name is the
    /// user's: the next pod needs it). The instance's start timeout bounds the wait.
    async fn clear(&self, found: &Pod, user: &str) -> Result<(), String> {
        let pods: Api<Pod> = self.api();
        let name = found.metadata.name.clone().unwrap_or_default();
        let uid = found.metadata.uid.clone();
        if found.metadata.deletion_timestamp.is_none() {
            tracing::info!(
                user,
                pod = name,
                "deleting a pod of the user that has ended"
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match self
                .timed("deleting the old pod", pods.delete(&name, &params))
                .await?
            {
                Ok(_) => {}
                Err(e) if pod::is_gone(&e) => {}
                Err(e) => return Err(format!("deleting the old pod: {e}")),
            }
        }
        // Its start's secret goes too (its owner reference would see to it in a cluster;
        // this replica may not be the one that made it).
        if let Some(secret) = found
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(names::ANNOTATION_SECRET))
        {
            pod::delete_secret(&self.api(), secret, user).await;
        }
        loop {
            let current = self
                .call("reading the old pod", pods.get_opt(&name))
                .await?;
            if current.is_none_or(|p| p.metadata.uid != uid) {
                return Ok(());
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }

    /// Refuses a new pod while the cluster runs `--max-instances` of them (every replica's).
    /// Two replicas starting at the same moment may each take the last place.
    async fn room(&self) -> Result<(), PrepareError> {
        let pods: Api<Pod> = self.api();
        let list = self
            .call(
                "counting the users' pods",
                pods.list(&ListParams::default().labels(&names::opencode_pods())),
            )
            .await?;
        let live = list.items.iter().filter(|p| pod::adoptable(p)).count();
        if live >= self.settings.max_pods {
            return Err(PrepareError::NoRoom {
                message: format!(
                    "the cluster runs its limit of {} OpenCode pods; try again shortly",
                    self.settings.max_pods
                ),
                retry_after: NO_ROOM_RETRY,
            });
        }
        Ok(())
    }

    async fn prepare(self: Arc<Self>, user: Arc<UserSpec>) -> Result<Prepared, PrepareError> {
        let names = UserNames::of(&user.key);
        let pods: Api<Pod> = self.api();
        let secrets: Api<Secret> = self.api();
        if let Some(found) = self
            .call("looking for the user's pod", pods.get_opt(&names.pod()))
            .await?
        {
            if pod::adoptable(&found) {
                match pod::credentials(&secrets, &found).await {
                    Ok(credentials) => {
                        tracing::info!(user = %user.user_id, pod = names.pod(), "adopting the user's running pod");
                        let (_, providers) =
                            self.org_start(credentials.relay_token.clone()).await?;
                        let uid = found.metadata.uid.clone().unwrap_or_default();
                        let driver = self.driver(&names, &user, Origin::Adopt { uid }, providers);
                        return Ok(Prepared {
                            disk_bytes: None,
                            launch: self.launch(driver, credentials),
                        });
                    }
                    Err(e) => {
                        tracing::warn!(user = %user.user_id, pod = names.pod(), error = %e, "cannot adopt the user's pod; replacing it")
                    }
                }
            }
            self.clear(&found, &user.user_id).await?;
        }
        self.room().await?;
        let claims: Api<PersistentVolumeClaim> = self.api();
        match self
            .timed(
                "creating the home's volume claim",
                claims.create(
                    &PostParams::default(),
                    &objects::home(&self.settings, &names),
                ),
            )
            .await?
        {
            Ok(_) => {
                tracing::info!(user = %user.user_id, claim = names.home(), "created the home's volume claim")
            }
            Err(e) if pod::already_exists(&e) => {}
            Err(e) => return Err(format!("creating the home's volume claim: {e}").into()),
        }
        let password = generate_password().map_err(|e| e.to_string())?;
        let relay_token = generate_password().map_err(|e| e.to_string())?;
        let start_id = generate_password().map_err(|e| e.to_string())?[..8].to_owned();
        let (org_env, providers) = self.org_start(relay_token.clone()).await?;
        let git = user.profile().git_env();
        let start = Start {
            names: &names,
            user_id: &user.user_id,
            start: &start_id,
            password: &password,
            relay_token: &relay_token,
            org_env: &org_env,
            env: &git,
        };
        let secret = objects::secret(&start);
        let pod = objects::pod(&self.settings, &start);
        self.call(
            "writing the start's secret",
            secrets.create(&PostParams::default(), &secret),
        )
        .await?;
        let origin = Origin::Create {
            pod: Box::new(pod),
            secret: names.secret(&start_id),
        };
        let driver = self.driver(&names, &user, origin, providers);
        Ok(Prepared {
            disk_bytes: None,
            launch: self.launch(
                driver,
                Credentials {
                    password,
                    relay_token,
                },
            ),
        })
    }
}

impl Backend for KubernetesBackend {
    fn prepare(
        &self,
        user: Arc<UserSpec>,
        _measure_disk: bool,
    ) -> LocalBoxFuture<'static, Result<Prepared, PrepareError>> {
        Arc::clone(&self.inner).prepare(user).boxed_local()
    }

    fn probe(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<(), String>> {
        self.questions.probe(upstream)
    }

    fn busy_sessions(&self, upstream: &Upstream) -> LocalBoxFuture<'static, Result<u32, String>> {
        self.questions.busy_sessions(upstream)
    }

    /// Writes the pod's last use where every replica reads it (an annotation), when it is
    /// news: only a replica that served the user since it last said so writes.
    fn share_activity(&self, user: &UserSpec, idle_for: Duration) {
        let Some(used_at) = SystemTime::now().checked_sub(idle_for) else {
            return;
        };
        let names = UserNames::of(&user.key);
        {
            let mut shared = self.shared.borrow_mut();
            let told = shared.get(&names.digest).copied().unwrap_or(UNIX_EPOCH);
            if used_at.duration_since(told).unwrap_or_default() < self.inner.settings.share_step {
                return;
            }
            shared.insert(names.digest.clone(), used_at);
        }
        let millis = used_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .to_string();
        let patch = serde_json::json!({
            "metadata": {"annotations": {names::ANNOTATION_LAST_USED: millis}}
        });
        let inner = Arc::clone(&self.inner);
        let user = user.user_id.clone();
        actix::spawn(async move {
            let pods: Api<Pod> = inner.api();
            let result = inner
                .call(
                    "sharing the pod's last use",
                    pods.patch(&names.pod(), &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await;
            if let Err(e) = result {
                tracing::warn!(user, error = %e, "cannot tell other gateways of the pod's use");
            }
        });
    }

    /// How long ago any replica last saw the pod used (`None`: none said).
    fn idle_elsewhere(
        &self,
        user: Arc<UserSpec>,
    ) -> LocalBoxFuture<'static, Result<Option<Duration>, String>> {
        let inner = Arc::clone(&self.inner);
        async move {
            let pods: Api<Pod> = inner.api();
            let name = UserNames::of(&user.key).pod();
            let pod = inner
                .call("reading the pod's last use", pods.get_opt(&name))
                .await?;
            let used_at = pod
                .as_ref()
                .and_then(|p| p.metadata.annotations.as_ref())
                .and_then(|a| a.get(names::ANNOTATION_LAST_USED))
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
            Ok(used_at.map(|at| SystemTime::now().duration_since(at).unwrap_or_default()))
        }
        .boxed_local()
    }

    /// The home is a volume the gateway does not mount: its size is the claim's.
    fn disk_usage(
        &self,
        _user: Arc<UserSpec>,
    ) -> LocalBoxFuture<'static, Result<Option<u64>, String>> {
        std::future::ready(Ok(None)).boxed_local()
    }
}
