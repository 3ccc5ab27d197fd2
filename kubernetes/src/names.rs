//! The names and labels of a user's objects. A user's key may hold capitals and `_` and be
//! 64 characters long, which object names and label values may not: every object is named
//! after a digest of the key instead, and the key itself rides in an annotation.

use sha2::{Digest as _, Sha256};

use chamberlain_actors::UserKey;

pub const APP: &str = "chamberlain";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The digest of the user's key: selects a user's pod, home and secrets.
pub const LABEL_USER: &str = "chamberlain.dev/user";
/// Which start of the user's OpenCode a pod and its secret belong to.
pub const LABEL_START: &str = "chamberlain.dev/start";
/// A digest of a start's relay token on its secret: any replica finds the grant by it.
pub const LABEL_RELAY: &str = "chamberlain.dev/relay";
/// The user's id (the token's subject), for the relay's grants and the audit.
pub const ANNOTATION_USER_ID: &str = "chamberlain.dev/user-id";
/// The user's key, as the gateway knows it.
pub const ANNOTATION_USER_KEY: &str = "chamberlain.dev/user-key";
/// The secret holding a pod's password, so that any replica can adopt the pod.
pub const ANNOTATION_SECRET: &str = "chamberlain.dev/secret";
/// When a replica last saw the pod used (milliseconds since the epoch), so that a replica
/// the user no longer reaches does not cull a pod another one serves.
pub const ANNOTATION_LAST_USED: &str = "chamberlain.dev/last-used";
/// The component label of users' pods (the NetworkPolicies select them by it).
pub const COMPONENT_OPENCODE: &str = "opencode";
pub const COMPONENT_HOME: &str = "home";

/// Selects every user's OpenCode pod this gateway made (all replicas').
pub fn opencode_pods() -> String {
    format!("{LABEL_COMPONENT}={COMPONENT_OPENCODE},{LABEL_MANAGED_BY}={APP}")
}

/// 32 hex digits of SHA-256 of `text`: a label value and part of an object name.
fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One user's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserNames {
    /// 32 hex digits of SHA-256 of the key.
    pub digest: String,
    pub key: String,
}

impl UserNames {
    pub fn of(key: &UserKey) -> Self {
        Self {
            digest: digest(key.as_str()),
            key: key.as_str().to_owned(),
        }
    }

    pub fn pod(&self) -> String {
        format!("opencode-{}", self.digest)
    }

    pub fn home(&self) -> String {
        format!("home-{}", self.digest)
    }

    /// The label value that finds the secret of a relay token (a digest: the token itself
    /// stays in the secret's data).
    pub fn relay(token: &str) -> String {
        digest(token)
    }

    /// The secret of one start.
    pub fn secret(&self, start: &str) -> String {
        format!("opencode-{}-{start}", self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_whatever_the_key() {
        for subject in ["alice", "Alice_B", &"x".repeat(64), "a@b.c", ""] {
            let names = UserNames::of(&UserKey::derive(subject));
            for name in [names.pod(), names.home(), names.secret("0123abcd")] {
                assert!(name.len() <= 63, "{name}");
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{name}"
                );
            }
        }
        let (a, b) = (
            UserNames::of(&UserKey::derive("Alice")),
            UserNames::of(&UserKey::derive("alice")),
        );
        assert_ne!(
            a.pod(),
            b.pod(),
            "keys that differ in case are different users"
        );
    }
}
