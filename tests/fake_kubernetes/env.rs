//! A container's environment as the kubelet builds it, and Kubernetes' `$(VAR)` expansion.
//!
//! `envFrom` comes first, then `env` in order; each `env` value may refer to variables
//! defined before it. `command` and `args` are expanded against the whole environment.

use base64::Engine as _;
use serde_json::Value;

/// Kubernetes' expansion (`third_party/forked/golang/expansion`): `$(NAME)` is replaced when
/// `lookup` knows NAME and left as written otherwise; `$$` is a literal `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 >= bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'$' => {
                out.push(b'$');
                i += 2;
            }
            b'(' => match bytes[i + 2..].iter().position(|b| *b == b')') {
                Some(len) => {
                    let name = &input[i + 2..i + 2 + len];
                    match lookup(name) {
                        Some(value) => out.extend_from_slice(value.as_bytes()),
                        None => out.extend_from_slice(&bytes[i..i + 3 + len]),
                    }
                    i += 3 + len;
                }
                None => {
                    out.extend_from_slice(b"$(");
                    i += 2;
                }
            },
            other => {
                out.push(b'$');
                out.push(other);
                i += 2;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where `env` and `envFrom` references are looked up.
pub trait Sources {
    fn secret(&self, name: &str) -> Option<Value>;
    fn config_map(&self, name: &str) -> Option<Value>;
    /// A `fieldRef.fieldPath` of the pod (`status.podIP`, `metadata.labels['x']`...).
    fn field(&self, path: &str) -> Option<String>;
}

fn secret_value(secret: &Value, key: &str) -> Option<String> {
    let encoded = secret["data"][key].as_str()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_owned(), value)),
    }
}

/// The environment of `container`, or the kubelet's message for why it cannot be built
/// (a `CreateContainerConfigError`).
pub fn resolve(container: &Value, sources: &dyn Sources) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or("");
        let (source, kind) = if from["secretRef"].is_object() {
            (&from["secretRef"], "secret")
        } else if from["configMapRef"].is_object() {
            (&from["configMapRef"], "configmap")
        } else {
            continue;
        };
        let name = source["name"].as_str().unwrap_or("");
        let optional = source["optional"].as_bool().unwrap_or(false);
        let object = if kind == "secret" {
            sources.secret(name)
        } else {
            sources.config_map(name)
        };
        let Some(object) = object else {
            if optional {
                continue;
            }
            return Err(format!("{kind} \"{name}\" not found"));
        };
        let keys: Vec<String> = object["data"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let value = if kind == "secret" {
                secret_value(&object, &key)
            } else {
                object["data"][&key].as_str().map(str::to_owned)
            };
            if let Some(value) = value {
                set(&mut env, &format!("{prefix}{key}"), value);
            }
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or("");
        let value = if let Some(value) = var["value"].as_str() {
            let defined = env.clone();
            let lookup =
                move |n: &str| defined.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            expand(value, &lookup)
        } else if let Some(from) = var.get("valueFrom") {
            match value_from(from, sources)? {
                Some(v) => v,
                None => continue,
            }
        } else {
            String::new()
        };
        set(&mut env, name, value);
    }
    Ok(env)
}

/// A `valueFrom`; `Ok(None)` for an optional reference that is missing.
fn value_from(from: &Value, sources: &dyn Sources) -> Result<Option<String>, String> {
    for (field, kind) in [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")] {
        let Some(r) = from.get(field).filter(|r| r.is_object()) else {
            continue;
        };
        let name = r["name"].as_str().unwrap_or("");
        let key = r["key"].as_str().unwrap_or("");
        let optional = r["optional"].as_bool().unwrap_or(false);
        let object = if kind == "Secret" {
            sources.secret(name)
        } else {
            sources.config_map(name)
        };
        let Some(object) = object else {
            return if optional {
                Ok(None)
            } else {
                Err(format!("{} \"{name}\" not found", kind.to_lowercase()))
            };
        };
        let value = if kind == "Secret" {
            secret_value(&object, key)
        } else {
            object["data"][key].as_str().map(str::to_owned)
        };
        return match value {
            Some(v) => Ok(Some(v)),
            None if optional => Ok(None),
            None => {
                let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
                Err(format!("couldn't find key {key} in {kind} {ns}/{name}"))
            }
        };
    }
    if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
        return sources
            .field(path)
            .map(Some)
            .ok_or_else(|| format!("unsupported fieldPath: {path}"));
    }
    Err("valueFrom has no supported source (resourceFieldRef is not implemented)".into())
}

/// The value of a downward-API `fieldPath` in `pod`.
pub fn pod_field(pod: &Value, path: &str) -> Option<String> {
    let string = |v: &Value| Some(v.as_str().unwrap_or("").to_owned());
    let keyed = |prefix: &str, map: &str| -> Option<Option<String>> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(Some(
            pod["metadata"][map][key].as_str().unwrap_or("").to_owned(),
        ))
    };
    if let Some(v) = keyed("metadata.labels['", "labels") {
        return v;
    }
    if let Some(v) = keyed("metadata.annotations['", "annotations") {
        return v;
    }
    match path {
        "metadata.name" | "metadata.namespace" | "metadata.uid" => {
            string(&pod["metadata"][&path["metadata.".len()..]])
        }
        "spec.nodeName" | "spec.serviceAccountName" => string(&pod["spec"][&path["spec.".len()..]]),
        "status.podIP" | "status.hostIP" => string(&pod["status"][&path["status.".len()..]]),
        "status.podIPs" => string(&pod["status"]["podIP"]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("127.0.3.7".into()),
            "HOME" => Some("/data".into()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        assert_eq!(expand("--bind $(POD_IP)", &lookup), "--bind 127.0.3.7");
        assert_eq!(expand("$(HOME)/x$(HOME)", &lookup), "/data/x/data");
        assert_eq!(expand("$(NOPE)", &lookup), "$(NOPE)");
        assert_eq!(expand("$$(POD_IP)", &lookup), "$(POD_IP)");
        assert_eq!(expand("a$$b", &lookup), "a$b");
        assert_eq!(expand("$(POD_IP", &lookup), "$(POD_IP");
        assert_eq!(expand("$x $", &lookup), "$x $");
        assert_eq!(expand("é$(HOME)é", &lookup), "é/dataé");
    }

    struct Fake;
    impl Sources for Fake {
        fn secret(&self, name: &str) -> Option<Value> {
            (name == "s").then(
                || json!({"metadata": {"namespace": "ns"}, "data": {"k": "dmFsdWU=", "T": "dA=="}}),
            )
        }
        fn config_map(&self, _: &str) -> Option<Value> {
            None
        }
        fn field(&self, path: &str) -> Option<String> {
            pod_field(
                &json!({"metadata": {"name": "p", "labels": {"a": "b"}}, "status": {"podIP": "1.2.3.4"}}),
                path,
            )
        }
    }

    #[test]
    fn resolves_in_order() {
        let c = json!({"envFrom": [{"secretRef": {"name": "s"}, "prefix": "S_"}], "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(IP):1/$(LATER)"},
            {"name": "LATER", "value": "x"},
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
            {"name": "O", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}}
        ]});
        let env = resolve(&c, &Fake).unwrap();
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("S_k"), Some("value"));
        assert_eq!(get("URL"), Some("http://1.2.3.4:1/$(LATER)"));
        assert_eq!(get("K"), Some("value"));
        assert_eq!(get("L"), Some("b"));
        assert_eq!(get("O"), None);
        let missing = json!({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]});
        assert_eq!(
            resolve(&missing, &Fake).unwrap_err(),
            "couldn't find key nope in Secret ns/s"
        );
    }
}
