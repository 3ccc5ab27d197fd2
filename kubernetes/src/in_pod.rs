//! What the gateway's binary does inside a user's pod (the pod runs the gateway's image):
//! `__prepare-home` lays out the home in the user's volume (an init container, as the user),
//! and `__probe-opencode` is the readiness probe, which asks OpenCode's health with the
//! password only the pod's environment holds. Plain blocking code: no runtime starts.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use chamberlain_actors::launcher::basic_authorization;
use chamberlain_actors::Workspace;

/// Creates the home's directories (OpenCode's XDG places, `workspace/`, the temporary
/// directory); what is there already is kept.
pub fn prepare_home(home: &Path) -> io::Result<()> {
    let workspace = Workspace::at(home);
    for dir in workspace.layout() {
        let path = home.join(dir);
        std::fs::create_dir_all(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name} is not an address or port: {value}")]
    Invalid { name: &'static str, value: String },
    #[error("asking OpenCode: {0}")]
    Io(#[from] io::Error),
    #[error("OpenCode answered {0:?}")]
    Status(String),
}

fn var(name: &'static str) -> Result<String, ProbeError> {
    std::env::var(name).map_err(|_| ProbeError::Missing(name))
}

/// `GET /global/health` on the pod's address with OpenCode's password: success is a 200.
pub fn probe_opencode(timeout: Duration) -> Result<(), ProbeError> {
    let ip = var("POD_IP")?;
    let port = var("CHAMBERLAIN_OPENCODE_PORT")?;
    let password = var("OPENCODE_SERVER_PASSWORD")?;
    let addr: SocketAddr = format!("{ip}:{port}")
        .parse()
        .or_else(|_| format!("[{ip}]:{port}").parse())
        .map_err(|_| ProbeError::Invalid {
            name: "POD_IP",
            value: format!("{ip}:{port}"),
        })?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /global/health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic_authorization(&password)
    )?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line.lines().next().unwrap_or("").to_owned();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_is_laid_out_and_what_is_there_is_kept() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("workspace/project")).unwrap();
        prepare_home(home.path()).unwrap();
        prepare_home(home.path()).unwrap();
        assert!(home.path().join(".local/share").is_dir());
        assert!(home.path().join(".tmp").is_dir());
        assert!(home.path().join("workspace/project").is_dir());
    }
}
