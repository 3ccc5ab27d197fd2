//! Setting up isolation at start-up: which mode is in force, the data directory's owners
//! and modes applied when users get uids of their own (the layout itself is
//! [`crate::data_dir`]'s), and refusing to start when users could not reach what they need
//! (or could reach what they must not).

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use chamberlain_actors::isolation::{
    reaper, AccountFiles, Isolation, IsolationConfig, IsolationMode, Limits,
};

use clap::ValueEnum;

use crate::data_dir::DataDir;

/// What the operator chose: `--isolation`, `--system-accounts`, `--uid-range`, `--limit-*`.
#[derive(Debug, Clone)]
pub struct IsolationSettings {
    pub requested: IsolationArg,
    pub system_accounts: SystemAccounts,
    /// First and last uid given to users.
    pub uid_range: (u32, u32),
    pub limits: Limits,
}

/// How users are walled off from each other (see README, "Isolation").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// Everything this process can do: uid + Landlock as root, Landlock otherwise.
    Auto,
    /// A Unix uid per user (needs root).
    Uid,
    /// Landlock file-system rules (and signal scope on ABI 6+), any uid.
    Landlock,
    /// Both.
    Both,
    /// Nothing beyond a cleared environment and separate homes (development only).
    None,
}

/// `--system-accounts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SystemAccounts {
    /// On when users have uids and the gateway runs in a container.
    Auto,
    #[value(alias = "true")]
    On,
    #[value(alias = "false")]
    Off,
}

/// `oom_score_adj` of the gateway itself: the kernel's last choice when memory runs out
/// (users' processes are its first, see `CHILD_OOM_SCORE_ADJ`).
const GATEWAY_OOM_SCORE_ADJ: &str = "-900";

/// The gateway's own process: last in line for the OOM killer (needs privilege; without it
/// the score stays and the log says so), and as many open files as its hard limit allows
/// (every user's requests and websockets hold descriptors of the gateway's).
pub fn harden_gateway() {
    match fs::write("/proc/self/oom_score_adj", GATEWAY_OOM_SCORE_ADJ) {
        Ok(()) => tracing::debug!(
            oom_score_adj = GATEWAY_OOM_SCORE_ADJ,
            "gateway protected from the OOM killer"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot lower the gateway's oom_score_adj: under memory pressure the kernel may pick the gateway")
        }
    }
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(
                from = soft,
                to = hard,
                "raised the gateway's open-file limit"
            ),
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the gateway's open-file limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the gateway's open-file limit"),
    }
}

pub fn requested_mode(arg: IsolationArg) -> IsolationMode {
    match arg {
        IsolationArg::Auto => Isolation::best_available(),
        IsolationArg::Uid => IsolationMode::Uid,
        IsolationArg::Landlock => IsolationMode::Landlock,
        IsolationArg::Both => IsolationMode::Both,
        IsolationArg::None => IsolationMode::None,
    }
}

/// Builds the isolation in force, prepares the data directory for it, and logs what users
/// are protected by.
pub fn setup(
    settings: &IsolationSettings,
    data_dir: &DataDir,
    program: &Path,
    helper: &Path,
) -> anyhow::Result<Isolation> {
    let mut mode = requested_mode(settings.requested);
    if mode.uses_uid() {
        let reachable = reachable_by_others(program, "the OpenCode executable")
            .and_then(|()| reachable_by_others(helper, "the gateway's own executable"))
            .and_then(|()| reachable_by_others(data_dir.path(), "the data directory"));
        match reachable {
            Ok(()) => {}
            // `auto` means "everything that works here": say why uids are off and go on.
            Err(e) if settings.requested == IsolationArg::Auto => {
                mode = if mode.uses_landlock() {
                    IsolationMode::Landlock
                } else {
                    IsolationMode::None
                };
                tracing::warn!(
                    reason = %format!("{e:#}"),
                    fallback = mode.as_str(),
                    "isolation: no uid per user; users' OpenCode runs as the gateway's own uid"
                );
            }
            Err(e) => return Err(e),
        }
    }
    let system_accounts = match settings.system_accounts {
        SystemAccounts::On if !mode.uses_uid() => {
            tracing::warn!("--system-accounts is ignored: users have no uids of their own to name");
            false
        }
        SystemAccounts::On => true,
        SystemAccounts::Off => false,
        SystemAccounts::Auto => {
            let on = mode.uses_uid() && in_container();
            if mode.uses_uid() && !on {
                tracing::info!(
                    "users' uids are not named in /etc/passwd (not in a container; \
                     --system-accounts on to name them here)"
                );
            }
            on
        }
    };
    // The organisation's keys and config reach OpenCode in its environment; users read
    // only the repository library.
    // The gateway's executable: work in a home runs in it, as the user (`as_user`).
    let mut read_only = vec![data_dir.repos(), helper.to_owned()];
    // The OpenCode install (a single executable that reads itself).
    if let Some(dir) = program.parent() {
        read_only.push(dir.to_owned());
    }
    let isolation = Isolation::new(IsolationConfig {
        mode,
        uid_range: settings.uid_range,
        uid_map: data_dir.uid_map(),
        accounts: system_accounts.then(|| AccountFiles {
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            homes: data_dir.users(),
        }),
        read_only,
        limits: settings.limits,
    })
    .context("cannot set up isolation")?;
    if let (Some(shared_gid), Some(range)) = (isolation.shared_gid(), isolation.uid_range()) {
        let leftovers = claim_uid_range(range, &isolation.known_uids())?;
        data_dir.secure(shared_gid)?;
        // A gateway that died leaves users' terminals and jobs running under their uids.
        for uid in leftovers {
            tracing::warn!(uid, "ending processes left from an earlier run");
            match reaper::end_uid(uid, reaper::KILL_WAIT) {
                Ok(ended) if ended.left == 0 => {}
                Ok(ended) => tracing::error!(
                    uid,
                    left = ended.left,
                    "processes left from an earlier run survived SIGKILL"
                ),
                Err(e) => tracing::error!(uid, error = %e, "cannot end leftover processes"),
            }
        }
    }
    let info = isolation.info();
    match mode {
        IsolationMode::None => tracing::warn!(
            "isolation: none — every user's OpenCode and terminals run as the gateway's own uid \
             with no sandbox: users can read and change each other's files. Development only"
        ),
        _ => tracing::info!(
            mode = info.mode.as_str(),
            landlock_abi = info.landlock_abi,
            scoped_signals = info.landlock_scoped_signals,
            uid_first = info.uid_range.map(|r| r.0),
            uid_last = info.uid_range.map(|r| r.1),
            limit_nproc = info.limits.nproc,
            limit_fsize = info.limits.fsize,
            limit_nofile = info.limits.nofile,
            "isolation in force"
        ),
    }
    Ok(isolation)
}

/// Where the locks on uid ranges live: one file per range, held while a gateway runs.
const RANGE_LOCKS: &str = "/run/chamberlain";

/// A gateway ends every process of the uids it hands out, so two gateways sharing uids end
/// each other's users. Holds an exclusive lock named after the range for as long as the
/// gateway runs (the descriptor is leaked on purpose; the kernel drops the lock at exit),
/// and refuses to start when processes of the range exist that are not this gateway's
/// users (another gateway's, or someone else's). Returns the uids of this gateway's users
/// that still have processes (left by an earlier run), from the same look at `/proc`.
fn claim_uid_range(range: (u32, u32), known: &[u32]) -> anyhow::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(RANGE_LOCKS) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create {RANGE_LOCKS} for the --uid-range lock"))
        }
    }
    // Only the gateway's: a directory someone else could write (or a link) would let them
    // take the lock, or replace the admin socket.
    let meta =
        fs::symlink_metadata(RANGE_LOCKS).with_context(|| format!("cannot read {RANGE_LOCKS}"))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        bail!("{RANGE_LOCKS} must be a directory of the gateway's own (it is not): remove it");
    }
    fs::set_permissions(RANGE_LOCKS, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {RANGE_LOCKS}"))?;
    let path = Path::new(RANGE_LOCKS).join(format!("uid-range-{}-{}.lock", range.0, range.1));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the --uid-range lock {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) } != 0 {
        bail!(
            "--uid-range {}-{} is in use by another gateway on this host (it holds {}); \
             give each gateway a range of its own",
            range.0,
            range.1,
            path.display()
        );
    }
    // (pid, uid) of every process of the range: this gateway's users', and the others'.
    type Processes = Vec<(u32, u32)>;
    let (ours, strangers): (Processes, Processes) = reaper::processes_in(range.0, range.1)
        .into_iter()
        .partition(|(_, uid)| known.contains(uid));
    if let Some((pid, uid)) = strangers.first() {
        bail!(
            "--uid-range {}-{} is not free: {} process(es) run under its uids that this gateway \
             never gave out (e.g. pid {pid}, uid {uid}). Another gateway or program uses these \
             uids; choose another range (and keep state/uids.json with it)",
            range.0,
            range.1,
            strangers.len()
        );
    }
    std::mem::forget(file);
    let mut leftovers: Vec<u32> = ours.into_iter().map(|(_, uid)| uid).collect();
    leftovers.sort_unstable();
    leftovers.dedup();
    Ok(leftovers)
}

/// Whether users' uids can reach `path`: every directory above it must let others pass; a
/// file must let them read and execute it. (The data directory itself is made passable by
/// the gateway.)
fn reachable_by_others(path: &Path, what: &str) -> anyhow::Result<()> {
    for ancestor in path.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() {
            continue;
        }
        let meta = fs::metadata(ancestor)
            .with_context(|| format!("cannot read {}", ancestor.display()))?;
        if meta.mode() & 0o001 == 0 {
            bail!(
                "{what} {} cannot be reached by users' uids: {} has mode {:o} (others need x). \
                 Move it, or chmod o+x {}",
                path.display(),
                ancestor.display(),
                meta.mode() & 0o7777,
                ancestor.display()
            );
        }
    }
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let need = if meta.is_dir() { 0 } else { 0o005 };
    if meta.mode() & need != need {
        bail!(
            "{what} {} cannot be used by users' uids: mode {:o}",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Whether this process runs in a container (whose `/etc` is its own): the marker files
/// docker and podman leave, or the `container` variable they give process 1.
fn in_container() -> bool {
    let marker = ["/.dockerenv", "/run/.containerenv"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    marker
        || std::fs::read("/proc/1/environ").is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"container="))
        })
}
