//! The validation a real API server does that our client code could get wrong: names, labels,
//! annotations, secret keys, the shape of a pod spec and which pod fields may change.
//!
//! Each check returns `(field, message)` causes for a 422 `Invalid` Status, worded like the
//! real ones. Much of the real validation is missing (resources, affinity, quantities...).

use serde_json::Value;

use crate::resources::Resource;

pub type Causes = Vec<(String, String)>;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn invalid(value: &str, why: &str) -> String {
    format!("Invalid value: {value:?}: {why}")
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// A label value or the name part of a qualified key.
fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_subdomain) && !name.is_empty() && is_label_value(name)
}

pub fn object_name(resource: Resource, name: &str) -> Causes {
    let ok = match resource {
        Resource::Services => is_label(name) && name.as_bytes()[0].is_ascii_lowercase(),
        _ => is_subdomain(name),
    };
    if ok {
        return Vec::new();
    }
    let why = if resource == Resource::Services {
        DNS1035_MSG
    } else {
        SUBDOMAIN_MSG
    };
    vec![("metadata.name".into(), invalid(name, why))]
}

/// Labels and annotations: qualified keys, label values, string values only.
pub fn metadata(object: &Value) -> Causes {
    let mut causes = Vec::new();
    for (field, values_are_labels) in [("labels", true), ("annotations", false)] {
        let Some(map) = object["metadata"].get(field) else {
            continue;
        };
        if map.is_null() {
            continue;
        }
        let Some(map) = map.as_object() else {
            causes.push((
                format!("metadata.{field}"),
                "must be a map of strings".into(),
            ));
            continue;
        };
        for (key, value) in map {
            let path = format!("metadata.{field}");
            if !is_qualified_name(key) {
                causes.push((path.clone(), invalid(key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')")));
            }
            match value.as_str() {
                None => causes.push((path, format!("Invalid value: {value}: must be a string"))),
                Some(v) if values_are_labels && !is_label_value(v) => {
                    let why = if v.len() > 63 {
                        "must be no more than 63 characters"
                    } else {
                        LABEL_VALUE_MSG
                    };
                    causes.push((path, invalid(v, why)));
                }
                Some(_) => {}
            }
        }
    }
    let size: usize = object["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    if size > 256 * 1024 {
        causes.push((
            "metadata.annotations".into(),
            "Too long: must have at most 262144 bytes".into(),
        ));
    }
    causes
}

pub fn secret(object: &Value) -> Causes {
    let mut causes = Vec::new();
    let mut total = 0;
    if let Some(data) = object["data"].as_object() {
        for (key, value) in data {
            let key_ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !key_ok {
                causes.push((format!("data[{key}]"), invalid(key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")));
            }
            total += value.as_str().map_or(0, |v| v.len() * 3 / 4);
        }
    }
    if total > 1024 * 1024 {
        causes.push((
            "data".into(),
            "Too long: must have at most 1048576 bytes".into(),
        ));
    }
    causes
}

fn container_causes(c: &Value, path: &str, volumes: &[&str], causes: &mut Causes) {
    match c["name"].as_str() {
        Some(n) if is_label(n) => {}
        Some(n) => causes.push((format!("{path}.name"), invalid(n, LABEL_MSG))),
        None => causes.push((format!("{path}.name"), "Required value".into())),
    }
    if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
        causes.push((format!("{path}.image"), "Required value".into()));
    }
    for (i, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = m["name"].as_str().unwrap_or("");
        if !volumes.contains(&name) {
            causes.push((
                format!("{path}.volumeMounts[{i}].name"),
                format!("Not found: {name:?}"),
            ));
        }
        if m["mountPath"].as_str().is_none_or(str::is_empty) {
            causes.push((
                format!("{path}.volumeMounts[{i}].mountPath"),
                "Required value".into(),
            ));
        }
    }
    for (i, e) in c["env"].as_array().into_iter().flatten().enumerate() {
        let name = e["name"].as_str().unwrap_or("");
        let ok = !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            causes.push((format!("{path}.env[{i}].name"), invalid(name, "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')")));
        }
    }
    for (i, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
        let port = p["containerPort"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push((
                format!("{path}.ports[{i}].containerPort"),
                format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
            ));
        }
    }
}

pub fn pod_spec(object: &Value) -> Causes {
    let spec = &object["spec"];
    let mut causes = Vec::new();
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let containers = spec["containers"].as_array().filter(|c| !c.is_empty());
    if containers.is_none() {
        causes.push(("spec.containers".into(), "Required value".into()));
    }
    let mut names = Vec::new();
    for (list, field) in [
        (&spec["initContainers"], "initContainers"),
        (&spec["containers"], "containers"),
    ] {
        for (i, c) in list.as_array().into_iter().flatten().enumerate() {
            let path = format!("spec.{field}[{i}]");
            container_causes(c, &path, &volumes, &mut causes);
            if let Some(n) = c["name"].as_str() {
                if names.contains(&n) {
                    causes.push((format!("{path}.name"), format!("Duplicate value: {n:?}")));
                }
                names.push(n);
            }
        }
    }
    let mut seen = Vec::new();
    for (i, name) in volumes.iter().enumerate() {
        if !is_label(name) {
            causes.push((format!("spec.volumes[{i}].name"), invalid(name, LABEL_MSG)));
        }
        if seen.contains(name) {
            causes.push((
                format!("spec.volumes[{i}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        seen.push(name);
    }
    if let Some(policy) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&policy) {
            causes.push(("spec.restartPolicy".into(), format!("Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\"")));
        }
    }
    causes
}

/// A pod's spec is immutable but for images, `activeDeadlineSeconds` and tolerations.
pub fn pod_update(old: &Value, new: &Value) -> Causes {
    let strip = |spec: &Value| {
        let mut spec = spec.clone();
        for list in ["containers", "initContainers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                if let Some(c) = c.as_object_mut() {
                    c.remove("image");
                }
            }
        }
        if let Some(s) = spec.as_object_mut() {
            s.remove("activeDeadlineSeconds");
            s.remove("tolerations");
        }
        spec
    };
    if strip(&old["spec"]) == strip(&new["spec"]) {
        return Vec::new();
    }
    vec![("spec".into(), "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_labels() {
        assert!(object_name(Resource::Pods, "opencode-alice.x").is_empty());
        assert!(!object_name(Resource::Pods, "Alice").is_empty());
        assert!(!object_name(Resource::Services, "1abc").is_empty());
        let bad = json!({"metadata": {"labels": {"user": "alice@example.com", "ok/x": "y"}}});
        assert_eq!(metadata(&bad).len(), 1);
    }

    #[test]
    fn pod_shape() {
        let pod = json!({"spec": {"volumes": [{"name": "data"}], "containers": [
            {"name": "c", "image": "i", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}});
        assert_eq!(pod_spec(&pod).len(), 1);
        assert_eq!(pod_spec(&json!({"spec": {}})).len(), 1);
    }
}
