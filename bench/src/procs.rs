//! The processes a benchmark runs: the gateway, and an upstream started directly. How they
//! are started is shared with the end-to-end tests (`tests/common/`); what is here is only
//! what the benchmark chooses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

#[path = "../../tests/common/direct_opencode.rs"]
mod direct_opencode;
// The tests use more of it than a benchmark does.
#[allow(dead_code)]
#[path = "../../tests/common/gateway_process.rs"]
mod gateway_process;
#[path = "../../tests/common/process_group.rs"]
mod process_group;

pub use direct_opencode::DirectOpenCode as Upstream;
use gateway_process::{serve_command, GatewayProcess, UidBlock, PATIENCE};
pub use process_group::ProcessGroup;

/// The benchmark's gateways take uids apart from the tests' (a benchmark may run beside a
/// test run, and a gateway ends every process of its uids).
const UIDS: UidBlock = UidBlock {
    variable: "CHAMBERLAIN_BENCH_UID_BASE",
    default: 400_000,
};

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

/// An upstream (`program serve`) started directly with `password`, as the gateway would.
pub fn upstream(program: &Path, args: &[&str], password: &str) -> anyhow::Result<Upstream> {
    Upstream::start(program, args, password, PATIENCE).map_err(anyhow::Error::msg)
}

pub struct Gateway {
    /// First, so that the gateway has ended before its data directory is removed.
    process: GatewayProcess,
    pub public: SocketAddr,
    _data: tempfile::TempDir,
}

impl Gateway {
    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The gateway in front of `opencode` (started with `opencode_args`), with room for
    /// every simulated user and `BENCH_GATEWAY_ARGS` added.
    pub fn start(
        gateway: &Path,
        opencode: &Path,
        opencode_args: &[&str],
    ) -> anyhow::Result<Gateway> {
        let data = tempfile::tempdir()?;
        let mut args: Vec<String> = [
            "--max-instances",
            "64",
            "--max-concurrent-starts",
            "4",
            "--log",
            // The instances' start lines carry OpenCode's own start time (`spawn_ms`).
            "warn,chamberlain::server=info,chamberlain_actors::instance=info",
        ]
        .map(str::to_owned)
        .into();
        let extra = std::env::var("BENCH_GATEWAY_ARGS").unwrap_or_default();
        args.extend(extra.split_whitespace().map(str::to_owned));
        args.extend(opencode_args.iter().map(|a| format!("--opencode-arg={a}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (command, _) = serve_command(gateway, opencode, data.path(), &args, &UIDS);
        let mut process = GatewayProcess::spawn(command).context("start chamberlain")?;
        let listening = process
            .wait_listening(PATIENCE)
            .map_err(anyhow::Error::msg)?;
        let public = listening
            .public
            .strip_prefix("http://")
            .unwrap_or(&listening.public)
            .parse()
            .with_context(|| format!("the gateway's address {}", listening.public))?;
        Ok(Gateway {
            process,
            public,
            _data: data,
        })
    }
}
