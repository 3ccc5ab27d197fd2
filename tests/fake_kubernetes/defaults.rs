//! The defaults a real API server fills in on create, so objects read back have the shape
//! clients see in a cluster (a subset: the fields our code or kube-rs might look at).

use serde_json::{json, Value};

use crate::resources::Resource;

/// Sets `field` to `value` unless present.
fn default(object: &mut Value, field: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.entry(field).or_insert(value);
    }
}

fn probe(probe: &mut Value) {
    if !probe.is_object() {
        return;
    }
    default(probe, "timeoutSeconds", json!(1));
    default(probe, "periodSeconds", json!(10));
    default(probe, "successThreshold", json!(1));
    default(probe, "failureThreshold", json!(3));
    if probe["httpGet"].is_object() {
        default(&mut probe["httpGet"], "path", json!("/"));
        default(&mut probe["httpGet"], "scheme", json!("HTTP"));
    }
}

fn container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    let latest = !last.contains(':') && !image.contains('@') || last.ends_with(":latest");
    default(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    for p in c["ports"].as_array_mut().into_iter().flatten() {
        default(p, "protocol", json!("TCP"));
    }
    for kind in ["readinessProbe", "livenessProbe", "startupProbe"] {
        probe(&mut c[kind]);
    }
}

pub fn apply(resource: Resource, object: &mut Value) {
    match resource {
        Resource::Pods => {
            let spec = &mut object["spec"];
            default(spec, "restartPolicy", json!("Always"));
            default(spec, "terminationGracePeriodSeconds", json!(30));
            default(spec, "dnsPolicy", json!("ClusterFirst"));
            default(spec, "schedulerName", json!("default-scheduler"));
            default(spec, "securityContext", json!({}));
            default(spec, "enableServiceLinks", json!(true));
            default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            default(spec, "priority", json!(0));
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array_mut().into_iter().flatten() {
                    container(c);
                }
            }
            for v in spec["volumes"].as_array_mut().into_iter().flatten() {
                if v["secret"].is_object() {
                    default(&mut v["secret"], "defaultMode", json!(0o644));
                }
            }
        }
        Resource::Secrets => default(object, "type", json!("Opaque")),
        Resource::PersistentVolumeClaims => {
            default(&mut object["spec"], "volumeMode", json!("Filesystem"));
            default(&mut object["spec"], "storageClassName", json!("fake-local"));
        }
        Resource::Services => {
            let spec = &mut object["spec"];
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            for p in spec["ports"].as_array_mut().into_iter().flatten() {
                default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                default(p, "targetPort", port);
            }
        }
        _ => {}
    }
}
