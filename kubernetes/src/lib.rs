//! The Kubernetes backend (`--backend kubernetes`): each user's OpenCode runs as a pod with
//! a volume for the home, created by the gateway through the API server, instead of as a
//! child process. It plugs into the instance state machine through the same seam as the
//! local backend (`chamberlain_actors::instance::Backend`), so idle culling, busy
//! detection, crash restarts, eviction and the instance limit work as they do locally.
//!
//! - `settings.rs` — what the operator chooses: namespace, image, sizes.
//! - `names.rs` — object names and labels from a user's key.
//! - `objects.rs` — the home's claim, a start's secret, the pod (pure).
//! - `backend.rs` — `KubernetesBackend`: a start prepared (adopting a pod another replica
//!   or an earlier gateway left running), health and busy questions.
//! - `pod.rs` — one start's pod: created or adopted, watched (events become the starting
//!   page's steps, readiness becomes `Listening`, its end `Exited`), deleted.
//! - `grants.rs` — the relay's grants of pods another replica started, found by a digest
//!   of the token on the start's secret.
//! - `documents.rs` — small documents every replica shares (personal access tokens), one
//!   Secret each, watched.
//! - `sweep.rs` — once a minute on every replica: pods no gateway used for twice the idle
//!   timeout, ended pods nobody cleared, secrets without their pod.
//! - `in_pod.rs` — the two things the gateway's binary does inside a user's pod: lay out the
//!   home (an init container) and answer the readiness probe.
//!
//! The truth about who runs where is in the cluster (labels, annotations, the start's
//! secret), not in a gateway's memory: any replica can adopt any user's pod.

mod backend;
pub mod documents;
mod grants;
pub mod in_pod;
mod names;
mod objects;
mod pod;
mod settings;
mod sweep;

pub use backend::KubernetesBackend;
pub use grants::SharedGrants;
pub use settings::{quantity, Amount, QuantityError, Settings};

/// The API server the backend talks to.
pub struct Cluster {
    pub client: kube::Client,
    /// The gateway's own namespace in a cluster, else the kubeconfig context's.
    pub default_namespace: String,
    /// The API server's version, e.g. `v1.33.2`.
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no Kubernetes credentials (no service account in a cluster, and no usable KUBECONFIG): {0}")]
    Credentials(String),
    #[error("the Kubernetes API server does not answer: {0}")]
    Unreachable(String),
}

/// Connects with the service account in a cluster, else KUBECONFIG's current context, and
/// asks the server's version (so that a wrong address fails at start-up, not at a start).
pub async fn connect() -> Result<Cluster, ConnectError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| ConnectError::Credentials(e.to_string()))?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    Ok(Cluster {
        default_namespace: client.default_namespace().to_owned(),
        client,
        version: version.git_version,
    })
}
