//! `--backend kubernetes`: the settings of users' pods from the CLI, and the client of the
//! API server (the service account in a cluster, else KUBECONFIG's current context).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chamberlain_actors::llm::RelaySettings;
use chamberlain_actors::OrgFiles;
use chamberlain_kubernetes::{KubernetesBackend, Settings};

use crate::cli::ServeArgs;

/// The port OpenCode listens on in a pod (each pod has its own address).
const POD_PORT: u16 = 4096;
/// Bound on each API request of a start.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How much newer a pod's use must be before a replica tells the others again (a quarter
/// of the idle timeout when that is shorter).
const SHARE_STEP: Duration = Duration::from_secs(15);

pub async fn backend(
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
    let cluster = chamberlain_kubernetes::connect().await?;
    let namespace = k8s
        .k8s_namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
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
        chamberlain,
        uid: k8s.k8s_uid,
        port: POD_PORT,
        stop_grace: args.stop_grace,
        request_timeout: REQUEST_TIMEOUT,
        share_step: SHARE_STEP.min(args.idle_timeout / 4),
    };
    Ok(KubernetesBackend::new(
        cluster.client,
        settings,
        org,
        relay,
        health_timeout,
    ))
}
