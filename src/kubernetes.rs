//! `--backend kubernetes`: the client of the API server (the service account in a cluster,
//! else KUBECONFIG's current context), the settings of users' pods from the CLI, and the
//! personal access tokens and model use every replica shares (Secrets, watched).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chamberlain_actors::llm::RelaySettings;
use chamberlain_actors::OrgFiles;
use chamberlain_kubernetes::documents::{Change, SecretSet};
use chamberlain_kubernetes::{Cluster, KubernetesBackend, Settings};
use futures_util::StreamExt as _;

use crate::cli::{BackendKind, ServeArgs};
use crate::identity::access_tokens::AccessTokens;
use crate::relay::usage::UsageBook;
use crate::shared::{SharedChange, SharedDocuments};

/// The port OpenCode listens on in a pod (each pod has its own address).
const POD_PORT: u16 = 4096;
/// Bound on each API request of a start.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often, at most, the sweep looks for pods and secrets no gateway holds.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How much newer a pod's use must be before a replica tells the others again (a quarter
/// of the idle timeout when that is shorter).
const SHARE_STEP: Duration = Duration::from_secs(15);

/// A gateway's link to its cluster, made once at start-up.
pub struct Connected {
    cluster: Cluster,
    namespace: String,
}

/// Connects when users' OpenCode runs as pods; `None` with the local backend.
pub async fn connect(args: &ServeArgs) -> anyhow::Result<Option<Connected>> {
    if args.kubernetes.backend != BackendKind::Kubernetes {
        return Ok(None);
    }
    let cluster = chamberlain_kubernetes::connect().await?;
    let namespace = args
        .kubernetes
        .k8s_namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    Ok(Some(Connected { cluster, namespace }))
}

/// The personal access tokens in the cluster, kept current by a watch for as long as the
/// gateway runs.
pub async fn access_tokens(
    connected: &Connected,
    realm: &str,
    max_days: u64,
) -> anyhow::Result<Arc<AccessTokens>> {
    let (set, documents) =
        open_set(connected, "access-token", "the personal access tokens").await?;
    let tokens = Arc::new(AccessTokens::shared(
        Arc::new(ClusterDocuments(set.clone())),
        documents,
        realm,
        max_days,
    ));
    let watched = Arc::clone(&tokens);
    follow(set, move |change| watched.apply(change));
    Ok(tokens)
}

/// The model use book, shared with the other replicas (this one's use is a document of its
/// own, new at every start), kept current by a watch.
pub async fn usage_book(connected: &Connected, path: PathBuf) -> anyhow::Result<Arc<UsageBook>> {
    let (set, documents) = open_set(connected, "llm-usage", "the replicas' model use").await?;
    let replica = chamberlain_actors::launcher::generate_password().map_err(anyhow::Error::msg)?
        [..12]
        .to_owned();
    let book = Arc::new(
        UsageBook::shared(
            path,
            Arc::new(ClusterDocuments(set.clone())),
            replica,
            documents,
        )
        .context("cannot read the model usage book; move it aside to start afresh")?,
    );
    let watched = Arc::clone(&book);
    follow(set, move |change| watched.apply(change));
    Ok(book)
}

/// The shared documents of `kind`, and every one there is now (`what` names them in an
/// error).
async fn open_set(
    connected: &Connected,
    kind: &'static str,
    what: &str,
) -> anyhow::Result<(SecretSet, Vec<Vec<u8>>)> {
    let set = SecretSet::new(&connected.cluster.client, &connected.namespace, kind);
    let documents = set
        .list()
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot read {what}"))?;
    Ok((set, documents))
}

/// Feeds the set's changes to `apply` for as long as the gateway runs.
fn follow(set: SecretSet, apply: impl Fn(SharedChange) + 'static) {
    actix::spawn(async move {
        let mut changes = set.changes();
        while let Some(change) = changes.next().await {
            apply(match change {
                Change::Reset(all) => SharedChange::Reset(all),
                Change::Put(one) => SharedChange::Put(one),
                Change::Removed(id) => SharedChange::Removed(id),
            });
        }
    });
}

/// Shared documents as Secrets; called on the blocking pool.
struct ClusterDocuments(SecretSet);

impl ClusterDocuments {
    fn wait<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        tokio::runtime::Handle::try_current()
            .map_err(|e| format!("no runtime to reach the cluster from: {e}"))?
            .block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, work)
                    .await
                    .map_err(|_| "no answer from the Kubernetes API".to_owned())?
            })
    }
}

impl SharedDocuments for ClusterDocuments {
    fn put(&self, id: &str, document: Vec<u8>) -> Result<(), String> {
        self.wait(self.0.put(id, document))
    }

    fn delete(&self, id: &str) -> Result<(), String> {
        self.wait(self.0.delete(id))
    }
}

pub async fn backend(
    connected: Connected,
    args: &ServeArgs,
    opencode: &Path,
    org: OrgFiles,
    mut relay: RelaySettings,
    health_timeout: Duration,
) -> anyhow::Result<KubernetesBackend> {
    let k8s = &args.kubernetes;
    let Some(image) = k8s.k8s_image.clone() else {
        bail!("--backend kubernetes needs --k8s-image");
    };
    let Connected { cluster, namespace } = connected;
    let chamberlain = std::env::current_exe()
        .context("cannot find the gateway's own executable (users' pods run it as their probe)")?;
    if let Some(url) = &k8s.k8s_relay_url {
        relay.base_url = url.trim_end_matches('/').to_owned();
    }
    tracing::info!(
        namespace,
        image,
        server = cluster.version,
        relay = relay.base_url,
        "users' OpenCode servers run as Kubernetes pods"
    );
    let settings = Settings {
        namespace,
        image,
        service_account: k8s.k8s_service_account.clone(),
        storage_class: k8s.k8s_storage_class.clone(),
        home_size: k8s.k8s_home_size.clone(),
        cpu: k8s.k8s_cpu.clone(),
        memory: k8s.k8s_memory.clone(),
        opencode: opencode.to_path_buf(),
        opencode_args: args.opencode_args.clone(),
        gc_ram: args.opencode_gc_ram.0,
        chamberlain,
        uid: k8s.k8s_uid,
        port: POD_PORT,
        stop_grace: args.stop_grace,
        request_timeout: REQUEST_TIMEOUT,
        share_step: SHARE_STEP.min(args.idle_timeout / 4),
        max_pods: args.max_instances as usize,
        sweep_after: args.idle_timeout * 2,
        sweep_every: args.idle_timeout.clamp(Duration::from_secs(1), SWEEP_EVERY),
        orphan_after: args.start_timeout * 2,
    };
    Ok(KubernetesBackend::new(
        cluster.client,
        settings,
        org,
        relay,
        health_timeout,
    ))
}
