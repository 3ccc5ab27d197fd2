//! nginx `proxy_pass` in front of the same upstream: the reference a team would reach for,
//! measured in the same run as the gateway so that the ratio means something on a shared
//! machine.
//!
//! Started only when an `nginx` binary is found (`NGINX_BIN`, else `PATH`, else
//! `/usr/sbin/nginx`); the bench says so when it is not. Set up the way a production proxy
//! would be: one worker per core, keep-alive connections to the upstream, the upstream's
//! credentials added by the proxy (as the gateway adds them), and no access log for
//! successful requests (the gateway logs only failures at its default level either), and
//! no limit on requests per client connection (the gateway has none).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procs::ProcessGroup;

pub struct Nginx {
    /// First, so that nginx has ended before its directory is removed.
    _group: ProcessGroup,
    pub addr: SocketAddr,
    pub version: String,
    _dir: tempfile::TempDir,
}

/// The nginx binary to compare with, if there is one.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX_BIN") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
}

fn config(listen: SocketAddr, upstream: SocketAddr, authorization: &str, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # The load generator keeps its connections for the whole run (nginx would close each
    # after 1000 requests by default; the gateway does not).
    keepalive_requests 100000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream opencode {{
        server {upstream};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://opencode;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "{authorization}";
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// nginx on a free loopback port, proxying to `upstream` with `authorization` added.
    pub fn start(
        program: &Path,
        upstream: SocketAddr,
        authorization: &str,
    ) -> anyhow::Result<Nginx> {
        let version = Command::new(program)
            .arg("-v")
            .output()
            .with_context(|| format!("run {}", program.display()))?;
        let version = String::from_utf8_lossy(&version.stderr).trim().to_owned();
        let dir = tempfile::tempdir()?;
        let listen = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(listen, upstream, authorization, dir.path()))?;
        let mut command = Command::new(program);
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut group = ProcessGroup::spawn(&mut command).context("start nginx")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(listen).is_err() {
            if let Some(status) = group.child().try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {listen} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            _group: group,
            addr: listen,
            version,
            _dir: dir,
        })
    }
}
