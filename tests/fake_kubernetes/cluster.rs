//! What the API handlers and the kubelet share: the store, the node's resources (pod IPs,
//! the state directory, the process spawner) and the kubelet's handle.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::ips::IpPool;
use crate::kubelet;
use crate::process::Spawner;
use crate::store::Store;

pub struct Cluster {
    pub store: Store,
    pub state_dir: PathBuf,
    pub token: Option<String>,
    pub spawner: Spawner,
    pub ips: Mutex<IpPool>,
    pub kubelet: kubelet::Handle,
}

impl Cluster {
    /// The host directory of a claim: `<state-dir>/volumes/<ns>/<claim>`.
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.state_dir.join("volumes").join(namespace).join(claim)
    }

    /// Where a pod's container output goes; init containers get a file each.
    pub fn log_path(&self, namespace: &str, pod: &str, init_container: Option<&str>) -> PathBuf {
        let file = match init_container {
            Some(c) => format!("{namespace}_{pod}_{c}.log"),
            None => format!("{namespace}_{pod}.log"),
        };
        self.state_dir.join("logs").join(file)
    }
}
