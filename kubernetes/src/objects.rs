//! The objects of one user's start, as the API server is sent them: the home's volume claim,
//! the start's secret and the pod. Pure: unit-tested without a cluster.
//!
//! Written as JSON and read back into `k8s-openapi`'s types, so a misspelt field is an error
//! in the unit tests rather than a field the API server drops.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use serde_json::{json, Value};

use chamberlain_actors::launcher::GC_RAM_VAR;

use crate::names::{self, UserNames};
use crate::settings::{Amount, Settings};

/// Where the home is mounted in a pod.
pub const HOME: &str = "/home/opencode";
/// The login name in a pod (there is one user per pod).
pub const ACCOUNT: &str = "opencode";
/// The secret's keys.
pub const KEY_PASSWORD: &str = "password";
pub const KEY_RELAY_TOKEN: &str = "relay-token";
/// Secret keys of the organisation's environment for OpenCode are `env.<NAME>`.
pub const ENV_KEY_PREFIX: &str = "env.";

/// What differs between two starts.
pub struct Start<'a> {
    pub names: &'a UserNames,
    pub user_id: &'a str,
    /// Random, 8 hex digits: names the start's secret and labels the pod.
    pub start: &'a str,
    pub password: &'a str,
    pub relay_token: &'a str,
    /// The organisation's environment for OpenCode (its config pointing at the relay).
    pub org_env: &'a [(String, String)],
    /// The user's git identity and other plain variables.
    pub env: &'a [(String, String)],
}

fn labels(names: &UserNames, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::LABEL_NAME.to_owned(), names::APP.to_owned()),
        (names::LABEL_COMPONENT.to_owned(), component.to_owned()),
        (names::LABEL_MANAGED_BY.to_owned(), names::APP.to_owned()),
        (names::LABEL_USER.to_owned(), names.digest.clone()),
    ])
}

fn resources(cpu: &Amount, memory: &Amount) -> Value {
    let mut limits = serde_json::Map::new();
    if let Some(limit) = &cpu.limit {
        limits.insert("cpu".into(), json!(limit));
    }
    if let Some(limit) = &memory.limit {
        limits.insert("memory".into(), json!(limit));
    }
    // The home is a volume of its own; what a pod may write on the node is `/tmp`.
    limits.insert("ephemeral-storage".into(), json!("2Gi"));
    json!({
        "requests": {"cpu": cpu.request, "memory": memory.request, "ephemeral-storage": "256Mi"},
        "limits": limits,
    })
}

/// The user's home: kept across starts, never deleted by the gateway.
pub fn home(settings: &Settings, names: &UserNames) -> PersistentVolumeClaim {
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": names.home(),
            "labels": labels(names, names::COMPONENT_HOME),
            "annotations": {names::ANNOTATION_USER_KEY: names.key},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": settings.home_size}},
        },
    });
    if let Some(class) = &settings.storage_class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    typed(claim)
}

/// The start's secrets: OpenCode's password, the relay token and the organisation's
/// environment (which names the relay token), read by the pod and by a replica adopting it.
pub fn secret(start: &Start<'_>) -> Secret {
    let mut data = BTreeMap::from([
        (KEY_PASSWORD.to_owned(), start.password.to_owned()),
        (KEY_RELAY_TOKEN.to_owned(), start.relay_token.to_owned()),
    ]);
    for (name, value) in start.org_env {
        data.insert(format!("{ENV_KEY_PREFIX}{name}"), value.clone());
    }
    let mut labels = labels(start.names, names::COMPONENT_OPENCODE);
    labels.insert(names::LABEL_START.to_owned(), start.start.to_owned());
    labels.insert(
        names::LABEL_RELAY.to_owned(),
        UserNames::relay(start.relay_token),
    );
    typed(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": start.names.secret(start.start),
            "labels": labels,
            "annotations": {
                names::ANNOTATION_USER_KEY: start.names.key,
                names::ANNOTATION_USER_ID: start.user_id,
            },
        },
        "type": "Opaque",
        "stringData": data,
    }))
}

/// The pod: OpenCode on its pod's address, behind the user's walls (non-root, no service
/// account token, `RuntimeDefault` seccomp, read-only root, every capability dropped).
pub fn pod(settings: &Settings, start: &Start<'_>) -> Pod {
    let names = start.names;
    let secret = names.secret(start.start);
    let from_secret = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
    let plain = |name: &str, value: &str| json!({"name": name, "value": value});
    let mut env = vec![
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        plain("HOME", HOME),
        plain("USER", ACCOUNT),
        plain("LOGNAME", ACCOUNT),
        plain("XDG_CONFIG_HOME", &format!("{HOME}/.config")),
        plain("XDG_DATA_HOME", &format!("{HOME}/.local/share")),
        plain("XDG_STATE_HOME", &format!("{HOME}/.local/state")),
        plain("XDG_CACHE_HOME", &format!("{HOME}/.cache")),
        plain("TMPDIR", &format!("{HOME}/.tmp")),
        plain("OPENCODE_DISABLE_AUTOUPDATE", "1"),
        plain("CHAMBERLAIN_OPENCODE_PORT", &settings.port.to_string()),
        from_secret("OPENCODE_SERVER_PASSWORD", KEY_PASSWORD),
    ];
    if let Some(bytes) = settings.gc_ram {
        env.push(plain(GC_RAM_VAR, &bytes.to_string()));
    }
    for (name, _) in start.org_env {
        env.push(from_secret(name, &format!("{ENV_KEY_PREFIX}{name}")));
    }
    env.extend(start.env.iter().map(|(name, value)| plain(name, value)));
    let mut command = vec![
        settings.opencode.display().to_string(),
        "serve".to_owned(),
        "--hostname".to_owned(),
        // Expanded by the kubelet from the variable above.
        "$(POD_IP)".to_owned(),
        "--port".to_owned(),
        settings.port.to_string(),
    ];
    command.extend(settings.opencode_args.iter().cloned());
    let chamberlain = settings.chamberlain.display().to_string();
    let mut labels = labels(names, names::COMPONENT_OPENCODE);
    labels.insert(names::LABEL_START.to_owned(), start.start.to_owned());
    let container_security = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    });
    let mounts = json!([
        {"name": "home", "mountPath": HOME},
        {"name": "tmp", "mountPath": "/tmp"},
    ]);
    typed(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.pod(),
            "labels": labels,
            "annotations": {
                names::ANNOTATION_USER_KEY: names.key,
                names::ANNOTATION_SECRET: secret,
                names::ANNOTATION_USER_ID: start.user_id,
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": settings.service_account,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": settings.stop_grace.as_secs(),
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": settings.uid,
                "runAsGroup": settings.uid,
                "fsGroup": settings.uid,
                // A home of many files is not walked at every start.
                "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumes": [
                {"name": "home", "persistentVolumeClaim": {"claimName": names.home()}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            ],
            "initContainers": [{
                // The home's layout, made by the user in their own volume.
                "name": "home",
                "image": settings.image,
                "command": [chamberlain, "__prepare-home", HOME],
                "env": [plain("HOME", HOME)],
                "securityContext": container_security,
                "volumeMounts": mounts,
                "resources": resources(&settings.cpu, &settings.memory),
            }],
            "containers": [{
                "name": "opencode",
                "image": settings.image,
                "command": command,
                "workingDir": format!("{HOME}/workspace"),
                "env": env,
                "ports": [{"name": "opencode", "containerPort": settings.port}],
                "readinessProbe": {
                    // OpenCode's health, asked with its password (held in the environment).
                    "exec": {"command": [settings.chamberlain.display().to_string(), "__probe-opencode"]},
                    "periodSeconds": 1,
                    "timeoutSeconds": 2,
                    "failureThreshold": 3,
                },
                "resources": resources(&settings.cpu, &settings.memory),
                "securityContext": container_security,
                "volumeMounts": mounts,
            }],
        },
    }))
}

/// The objects above are written by this crate: a shape `k8s-openapi` cannot read is a bug
/// here, which the unit tests catch.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    match serde_json::from_value(value) {
        Ok(typed) => typed,
        Err(e) => panic!("a Kubernetes object this crate builds is malformed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use chamberlain_actors::UserKey;

    fn settings() -> Settings {
        Settings {
            namespace: "team".into(),
            image: "chamberlain:test".into(),
            service_account: "chamberlain-opencode".into(),
            storage_class: Some("gp3".into()),
            home_size: "10Gi".into(),
            cpu: Amount::parse("250m:2").unwrap(),
            memory: Amount::parse("768Mi").unwrap(),
            opencode: "/opt/opencode/bin/opencode".into(),
            opencode_args: vec!["--pure".into()],
            gc_ram: Some(1 << 30),
            chamberlain: "/usr/local/bin/chamberlain".into(),
            uid: 1000,
            port: 4096,
            stop_grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            share_step: Duration::from_secs(15),
            max_pods: 25,
            sweep_after: Duration::from_secs(3600),
            sweep_every: Duration::from_secs(60),
            orphan_after: Duration::from_secs(120),
        }
    }

    #[test]
    fn a_pod_runs_opencode_as_the_user_with_its_secrets_by_reference() {
        let names = UserNames::of(&UserKey::derive("alice"));
        let org = [(
            "OPENCODE_CONFIG_CONTENT".to_owned(),
            "{\"provider\":{}}".to_owned(),
        )];
        let git = [("GIT_AUTHOR_NAME".to_owned(), "Alice".to_owned())];
        let start = Start {
            names: &names,
            user_id: "alice",
            start: "0a1b2c3d",
            password: "secret-password",
            relay_token: "relay-token-value",
            org_env: &org,
            env: &git,
        };
        let pod = pod(&settings(), &start);
        let text = serde_json::to_string(&pod).unwrap();
        assert!(!text.contains("secret-password") && !text.contains("relay-token-value"));
        assert!(
            !text.contains("provider"),
            "the org's config stays in the secret"
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let security = spec.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_user, Some(1000));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let container = &spec.containers[0];
        assert_eq!(
            container.command.as_ref().unwrap()[..6],
            [
                "/opt/opencode/bin/opencode",
                "serve",
                "--hostname",
                "$(POD_IP)",
                "--port",
                "4096"
            ]
        );
        let limits = container
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert_eq!(limits["cpu"].0, "2");
        assert!(!limits.contains_key("memory"));
        assert_eq!(limits["ephemeral-storage"].0, "2Gi");
        let env = container.env.as_ref().unwrap();
        let password = env
            .iter()
            .find(|e| e.name == "OPENCODE_SERVER_PASSWORD")
            .unwrap();
        let by_ref = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (by_ref.name.as_str(), by_ref.key.as_str()),
            (names.secret("0a1b2c3d").as_str(), "password")
        );
        let gc_ram = env.iter().find(|e| e.name == GC_RAM_VAR).unwrap();
        assert_eq!(gc_ram.value.as_deref(), Some("1073741824"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[names::LABEL_USER], names.digest);
        assert_eq!(labels[names::LABEL_COMPONENT], "opencode");
        let secret = secret(&start);
        let data = secret.string_data.as_ref().unwrap();
        assert_eq!(data["password"], "secret-password");
        assert_eq!(data["env.OPENCODE_CONFIG_CONTENT"], "{\"provider\":{}}");
    }

    #[test]
    fn a_home_has_its_size_and_class() {
        let names = UserNames::of(&UserKey::derive("alice"));
        let claim = home(&settings(), &names);
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("gp3"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "10Gi"
        );
        assert_eq!(claim.metadata.name.unwrap(), names.home());
    }
}
