//! The processes a benchmark runs: the gateway, and an upstream started directly.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

pub struct Binaries {
    pub gateway: PathBuf,
    pub fake: PathBuf,
    root: PathBuf,
}

impl Binaries {
    /// The release binaries next to this one (`target/release/`), or the paths in
    /// `CHAMBERLAIN_BIN` / `FAKE_OPENCODE_BIN`.
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("binary directory")?.to_path_buf();
        let pick = |var: &str, name: &str| -> anyhow::Result<PathBuf> {
            let path = std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(name));
            if !path.exists() {
                bail!(
                    "{} not found; run `cargo build --release --bins` first (or set {var})",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Binaries {
            gateway: pick("CHAMBERLAIN_BIN", "chamberlain")?,
            fake: pick("FAKE_OPENCODE_BIN", "fake-opencode")?,
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        })
    }

    pub fn opencode(&self) -> anyhow::Result<PathBuf> {
        let path = self.root.join("node_modules/.bin/opencode");
        if !path.exists() {
            bail!("{} not found; run `npm install` first", path.display());
        }
        Ok(path)
    }
}

/// Reads a child's output lines on a thread, sending those that match `pick` back.
fn watch<R: std::io::Read + Send + 'static>(
    reader: R,
    pick: impl Fn(&str) -> Option<String> + Send + 'static,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if let Some(found) = pick(&line) {
                let _ = tx.send(found);
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str) -> anyhow::Result<String> {
    rx.recv_timeout(Duration::from_secs(60))
        .with_context(|| format!("{what} did not start"))
}

pub struct Upstream {
    child: Child,
    pub addr: SocketAddr,
    password: String,
    _home: tempfile::TempDir,
}

impl Upstream {
    /// `program serve --hostname 127.0.0.1 --port 0 args…` with a password, as the gateway
    /// would start it.
    pub fn start(program: &Path, args: &[&str], password: &str) -> anyhow::Result<Upstream> {
        let home = tempfile::tempdir()?;
        let mut child = Command::new(program)
            .args(["serve", "--hostname", "127.0.0.1", "--port", "0"])
            .args(args)
            .current_dir(home.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("OPENCODE_SERVER_PASSWORD", password)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let rx = watch(stdout, |line| {
            line.split("listening on http://")
                .nth(1)
                .map(|s| s.trim().trim_end_matches('/').to_owned())
        });
        let addr = wait_line(&rx, "upstream")?.parse()?;
        Ok(Upstream {
            child,
            addr,
            password: password.to_owned(),
            _home: home,
        })
    }

    pub fn authorization(&self) -> String {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("opencode:{}", self.password));
        format!("Basic {token}")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Gateway {
    child: Child,
    pub public: SocketAddr,
    _data: tempfile::TempDir,
}

impl Gateway {
    pub fn start(
        gateway: &Path,
        opencode: &Path,
        opencode_args: &[&str],
    ) -> anyhow::Result<Gateway> {
        let data = tempfile::tempdir()?;
        let mut cmd = Command::new(gateway);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--opencode-bin")
        .arg(opencode)
        .args(["--max-instances", "64", "--max-concurrent-starts", "4"])
        .args(["--log", "warn,chamberlain::server=info"])
        .args(
            std::env::var("BENCH_GATEWAY_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for arg in opencode_args {
            cmd.arg(format!("--opencode-arg={arg}"));
        }
        let mut child = cmd.spawn().context("start chamberlain")?;
        let stderr = child.stderr.take().context("stderr")?;
        let rx = watch(stderr, |line| {
            line.split("public=http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        });
        let public = wait_line(&rx, "gateway")?.parse()?;
        Ok(Gateway {
            child,
            public,
            _data: data,
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM: the gateway stops its instances before it exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
