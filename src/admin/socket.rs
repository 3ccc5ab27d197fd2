//! The admin API's Unix socket (`--admin-socket`): created mode 0600 by the gateway's uid,
//! and every connection tagged with its peer's uid from the kernel (`SO_PEERCRED`), which
//! `guard.rs` checks. The credentials are the connecting process's, taken when it
//! connected: nothing to race, unlike a lookup in `/proc/net/tcp`.

use std::any::Any;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use actix_web::dev::Extensions;
use anyhow::{bail, Context};

/// The peer of a connection to the admin socket: its uid, if the kernel said.
#[derive(Clone, Copy, Debug)]
pub struct UnixPeer(pub Option<u32>);

/// Binds the socket at `path`: a stale socket there is removed, anything else is refused;
/// a missing parent directory is created mode 0700.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let shown = path.display();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| {
                    format!("cannot create the directory of --admin-socket {shown}")
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {shown}"))?,
        Ok(_) => bail!("--admin-socket {shown} exists and is not a socket; refusing to replace it"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("--admin-socket {shown}")),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {shown} (admin)"))?;
    // Until this chmod the umask decides; the peer check below holds either way.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {shown} private"))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || !meta.file_type().is_socket() {
        bail!("--admin-socket {shown} changed under the gateway");
    }
    Ok(listener)
}

/// For `HttpServer::on_connect`: records the connecting process's uid.
pub fn record_peer(conn: &dyn Any, ext: &mut Extensions) {
    let uid = conn
        .downcast_ref::<actix_web::rt::net::UnixStream>()
        .and_then(|stream| stream.peer_cred().ok())
        .map(|cred| cred.uid());
    ext.insert(UnixPeer(uid));
}

/// Removes the socket at shutdown, if it is still one.
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_privately_replacing_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/admin.sock");
        let first = bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(dir.path().join("run"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        drop(first);
        // The file of a listener that went away is replaced.
        let _second = bind(&path).unwrap();
        remove(&path);
        assert!(!path.exists());

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep").unwrap();
        let err = bind(&file).err().unwrap().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
