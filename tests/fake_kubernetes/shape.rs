//! Type checks on the fields the fake reads or fills in, done before anything else touches a
//! body. A real server fails to decode such a body (400 BadRequest); here it also keeps the
//! rest of the code free of panics on a client's `"spec": "oops"`.

use serde_json::Value;

use crate::resources::Resource;

#[derive(Clone, Copy)]
enum Ty {
    Object,
    ObjectArray,
    StringArray,
    StringMap,
}

impl Ty {
    fn fits(self, v: &Value) -> bool {
        match self {
            Ty::Object => v.is_object(),
            Ty::ObjectArray => v.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
            Ty::StringArray => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Ty::StringMap => v
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string)),
        }
    }

    fn go_name(self) -> &'static str {
        match self {
            Ty::Object => "struct",
            Ty::ObjectArray => "[]struct",
            Ty::StringArray => "[]string",
            Ty::StringMap => "map[string]string",
        }
    }
}

fn check(v: &Value, path: &str, field: &str, ty: Ty) -> Result<(), String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(x) if ty.fits(x) => Ok(()),
        Some(x) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {path}.{field} of type {}",
            json_type(x),
            ty.go_name()
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn container(c: &Value, path: &str) -> Result<(), String> {
    for f in ["env", "envFrom", "ports", "volumeMounts"] {
        check(c, path, f, Ty::ObjectArray)?;
    }
    for f in ["command", "args"] {
        check(c, path, f, Ty::StringArray)?;
    }
    for f in [
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "securityContext",
        "resources",
    ] {
        check(c, path, f, Ty::Object)?;
    }
    for f in ["readinessProbe", "livenessProbe", "startupProbe"] {
        for h in ["httpGet", "exec", "tcpSocket"] {
            check(&c[f], &format!("{path}.{f}"), h, Ty::Object)?;
        }
        check(
            &c[f]["exec"],
            &format!("{path}.{f}.exec"),
            "command",
            Ty::StringArray,
        )?;
        check(
            &c[f]["httpGet"],
            &format!("{path}.{f}.httpGet"),
            "httpHeaders",
            Ty::ObjectArray,
        )?;
    }
    Ok(())
}

/// `Ok` when every checked field has the type the API defines.
pub fn check_object(resource: Resource, object: &Value) -> Result<(), String> {
    if !object.is_object() {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type {}",
            json_type(object),
            resource.kind()
        ));
    }
    check(object, resource.kind(), "metadata", Ty::Object)?;
    check(object, resource.kind(), "spec", Ty::Object)?;
    check(object, resource.kind(), "status", Ty::Object)?;
    let meta = &object["metadata"];
    check(meta, "ObjectMeta", "labels", Ty::Object)?;
    check(meta, "ObjectMeta", "annotations", Ty::Object)?;
    for f in [
        "name",
        "generateName",
        "namespace",
        "resourceVersion",
        "uid",
    ] {
        if meta.get(f).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.{f} of type string",
                json_type(&meta[f])
            ));
        }
    }
    match resource {
        Resource::Pods => {
            let spec = &object["spec"];
            for f in ["containers", "initContainers", "volumes"] {
                check(spec, "Pod.spec", f, Ty::ObjectArray)?;
            }
            check(spec, "Pod.spec", "securityContext", Ty::Object)?;
            for f in ["containers", "initContainers"] {
                for (i, c) in spec[f].as_array().into_iter().flatten().enumerate() {
                    container(c, &format!("Pod.spec.{f}[{i}]"))?;
                }
            }
            for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
                for f in ["secret", "persistentVolumeClaim", "emptyDir", "configMap"] {
                    check(v, &format!("Pod.spec.volumes[{i}]"), f, Ty::Object)?;
                }
                check(&v["secret"], "SecretVolumeSource", "items", Ty::ObjectArray)?;
            }
            Ok(())
        }
        Resource::Secrets => {
            check(object, "Secret", "data", Ty::StringMap)?;
            check(object, "Secret", "stringData", Ty::StringMap)
        }
        Resource::ConfigMaps => check(object, "ConfigMap", "data", Ty::StringMap),
        Resource::Events => check(object, "Event", "involvedObject", Ty::Object),
        Resource::Services => check(&object["spec"], "Service.spec", "ports", Ty::ObjectArray),
        _ => Ok(()),
    }
}
