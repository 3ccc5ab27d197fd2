//! Volumes on the host, and the path rewriting that stands in for mounts.
//!
//! A process on the host cannot see a volume at its `mountPath`, so any env value, command
//! word, arg or `workingDir` that is a mount path or lies under one (longest mount wins, at a
//! `/` boundary) is rewritten to the volume's host directory (plus `subPath`). Paths inside
//! longer strings (`--dir=/data`, shell scripts) are not rewritten.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

/// One container mount: the path the container sees and the host path behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
}

/// `value` with its mount-path prefix replaced by the host directory.
pub fn rewrite(value: &str, mounts: &[Mount]) -> String {
    let best = mounts
        .iter()
        .filter_map(|m| {
            let base = m.container_path.trim_end_matches('/');
            let base = if base.is_empty() { "/" } else { base };
            let rest = value.strip_prefix(base)?;
            let at_boundary = rest.is_empty() || rest.starts_with('/') || base == "/";
            at_boundary.then_some((base.len(), m, rest))
        })
        .max_by_key(|(len, _, _)| *len);
    match best {
        Some((_, m, rest)) => {
            let rest = rest.trim_start_matches('/');
            let host = m.host_path.to_string_lossy();
            if rest.is_empty() {
                host.into_owned()
            } else {
                format!("{}/{rest}", host.trim_end_matches('/'))
            }
        }
        None => value.to_owned(),
    }
}

/// The mounts of a container, given each volume's host directory.
pub fn container_mounts(container: &Value, volumes: &[(String, PathBuf)]) -> Vec<Mount> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let name = m["name"].as_str()?;
            let (_, dir) = volumes.iter().find(|(n, _)| n == name)?;
            let sub = m["subPath"].as_str().unwrap_or("").trim_matches('/');
            if sub.split('/').any(|part| part == "..") {
                return None;
            }
            let host_path = if sub.is_empty() {
                dir.clone()
            } else {
                dir.join(sub)
            };
            Some(Mount {
                container_path: m["mountPath"].as_str()?.to_owned(),
                host_path,
            })
        })
        .collect()
}

/// Why a volume cannot be set up yet (the kubelet retries).
pub struct NotReady {
    pub message: String,
}

/// Reads the store for volume sources.
pub trait Lookup {
    fn secret(&self, name: &str) -> Option<Value>;
    fn config_map(&self, name: &str) -> Option<Value>;
    /// The host directory of a bound claim that is not being deleted.
    fn claim_dir(&self, name: &str) -> Option<PathBuf>;
}

/// Creates the pod's volumes under `pod_dir`; `(volume name, host dir)` for each.
pub fn prepare(
    pod: &Value,
    pod_dir: &Path,
    lookup: &dyn Lookup,
) -> Result<Vec<(String, PathBuf)>, NotReady> {
    let mut out = Vec::new();
    let fail = |message: String| NotReady { message };
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        let dir = pod_dir.join("volumes").join(name);
        let setup = |e: std::io::Error| {
            fail(format!(
                "MountVolume.SetUp failed for volume {name:?} : {e}"
            ))
        };
        if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            let dir = lookup.claim_dir(claim).ok_or_else(|| {
                fail(format!("Unable to attach or mount volumes: unmounted volumes=[{name}]: persistentvolumeclaim {claim:?} not found"))
            })?;
            out.push((name.to_owned(), dir));
        } else if v["emptyDir"].is_object() {
            std::fs::create_dir_all(&dir).map_err(setup)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(setup)?;
            out.push((name.to_owned(), dir));
        } else if v["secret"].is_object() || v["configMap"].is_object() {
            let (source, secret) = if v["secret"].is_object() {
                (&v["secret"], true)
            } else {
                (&v["configMap"], false)
            };
            let source_name = source[if secret { "secretName" } else { "name" }]
                .as_str()
                .unwrap_or("");
            let object = if secret {
                lookup.secret(source_name)
            } else {
                lookup.config_map(source_name)
            };
            let optional = source["optional"].as_bool().unwrap_or(false);
            let kind = if secret { "secret" } else { "configmap" };
            let files = match object {
                Some(o) => files_of(&o, source, secret),
                None if optional => Vec::new(),
                None => {
                    return Err(fail(format!(
                        "MountVolume.SetUp failed for volume {name:?} : {kind} {source_name:?} not found"
                    )))
                }
            };
            std::fs::create_dir_all(&dir).map_err(setup)?;
            for (path, bytes, mode) in files {
                let file = dir.join(path.trim_start_matches('/'));
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(setup)?;
                }
                std::fs::write(&file, bytes).map_err(setup)?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                    .map_err(setup)?;
            }
            out.push((name.to_owned(), dir));
        } else if let Some(path) = v["hostPath"]["path"].as_str() {
            out.push((name.to_owned(), PathBuf::from(path)));
        } else {
            return Err(fail(format!(
                "MountVolume.SetUp failed for volume {name:?} : this fake supports persistentVolumeClaim, emptyDir, secret, configMap and hostPath only"
            )));
        }
    }
    Ok(out)
}

/// `(relative path, content, mode)` of a secret or config map volume.
fn files_of(object: &Value, source: &Value, secret: bool) -> Vec<(String, Vec<u8>, u32)> {
    let default_mode = source["defaultMode"].as_u64().unwrap_or(0o644) as u32;
    let content = |key: &str| -> Option<Vec<u8>> {
        let v = object["data"][key].as_str()?;
        if secret {
            base64::engine::general_purpose::STANDARD.decode(v).ok()
        } else {
            Some(v.as_bytes().to_vec())
        }
    };
    match source["items"].as_array() {
        Some(items) => items
            .iter()
            .filter_map(|item| {
                let key = item["key"].as_str()?;
                let path = item["path"].as_str().unwrap_or(key).to_owned();
                if path.split('/').any(|part| part == "..") {
                    return None;
                }
                let mode = item["mode"].as_u64().map_or(default_mode, |m| m as u32);
                Some((path, content(key)?, mode))
            })
            .collect(),
        None => object["data"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, _)| Some((key.clone(), content(key)?, default_mode)))
            .collect(),
    }
}

/// What the kubelet does for `fsGroup`: the volume's files get that group, group read/write
/// (read only for secret and config map volumes), and directories the setgid bit, so a
/// process with the group as a supplementary one can use them. The owner is left alone (a
/// fresh claim stays owned by the fake's user).
pub fn apply_fs_group(dir: &Path, gid: u32, read_only: bool) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(std::io::Error::from)?;
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = match (meta.is_dir(), read_only) {
        (true, false) => mode | 0o2070,
        (true, true) => mode | 0o2050,
        (false, false) => mode | 0o060,
        (false, true) => mode | 0o040,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(wanted))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            apply_fs_group(&entry?.path(), gid, read_only)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<Mount> {
        vec![
            Mount {
                container_path: "/data".into(),
                host_path: "/state/volumes/ns/c".into(),
            },
            Mount {
                container_path: "/data/secrets/".into(),
                host_path: "/state/pods/u/s".into(),
            },
        ]
    }

    #[test]
    fn rewrites_at_boundaries_longest_first() {
        let m = mounts();
        assert_eq!(rewrite("/data", &m), "/state/volumes/ns/c");
        assert_eq!(rewrite("/data/", &m), "/state/volumes/ns/c");
        assert_eq!(rewrite("/data/x/y", &m), "/state/volumes/ns/c/x/y");
        assert_eq!(rewrite("/data/secrets/token", &m), "/state/pods/u/s/token");
        assert_eq!(rewrite("/database", &m), "/database");
        assert_eq!(rewrite("--dir=/data", &m), "--dir=/data");
        assert_eq!(rewrite("relative/data", &m), "relative/data");
    }

    #[test]
    fn sub_paths_join_the_volume() {
        let c = serde_json::json!({"volumeMounts": [{"name": "v", "mountPath": "/home/u", "subPath": "home"}]});
        let got = container_mounts(&c, &[("v".into(), "/h".into())]);
        assert_eq!(
            got,
            vec![Mount {
                container_path: "/home/u".into(),
                host_path: "/h/home".into()
            }]
        );
    }
}
