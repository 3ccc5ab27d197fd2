//! Walling users off from each other by the operating system.
//!
//! Two mechanisms, used together by default when the gateway runs as root:
//! - **uid**: each user's OpenCode (and everything it starts) runs under a Unix uid of its
//!   own ([`uids`]), with no supplementary group but the shared read-only one. Homes are
//!   owned by that uid with mode 0700, so the kernel's ordinary permission checks keep users
//!   out of each other's files and processes, and "everything the user runs" is exactly the
//!   processes of that uid ([`reaper`]).
//! - **landlock**: the child restricts itself to its home, the system and the shared files
//!   ([`sandbox`]); works for any uid, so a non-root gateway still isolates its children
//!   from each other's files (they share the gateway's uid, so signals between them are
//!   blocked by Landlock's signal scope where the kernel has ABI 6).
//!
//! Everything is prepared in the gateway; the child only makes system calls between fork
//! and exec ([`ChildSandbox::apply`]).

pub mod accounts;
pub mod reaper;
pub mod sandbox;
pub mod uids;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{Gid, Uid};
use serde::Serialize;

pub use accounts::AccountFiles;
pub use sandbox::ReadOnly;
pub use uids::{UidError, UidMap, UserIds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    None,
    Uid,
    Landlock,
    Both,
}

impl IsolationMode {
    /// The mode's name, as `/stats` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationMode::None => "none",
            IsolationMode::Uid => "uid",
            IsolationMode::Landlock => "landlock",
            IsolationMode::Both => "both",
        }
    }
}

impl IsolationMode {
    pub fn uses_uid(self) -> bool {
        matches!(self, IsolationMode::Uid | IsolationMode::Both)
    }

    pub fn uses_landlock(self) -> bool {
        matches!(self, IsolationMode::Landlock | IsolationMode::Both)
    }
}

/// Per-user resource limits (`None`: leave the gateway's own).
#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Processes (threads) of the user's uid; only meaningful with a uid per user.
    pub nproc: Option<u64>,
    /// Largest file a process may write, bytes.
    pub fsize: Option<u64>,
    /// Open files per process.
    pub nofile: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("--isolation {0:?} needs the gateway to run as root (to give each user a uid)")]
    NeedsRoot(IsolationMode),
    #[error("--isolation {0:?} needs Landlock, which this kernel does not offer")]
    NoLandlock(IsolationMode),
    #[error("--uid-range {0}-{1} must hold at least two ids above 0 (a shared group, then users)")]
    Range(u32, u32),
    #[error(transparent)]
    Uids(#[from] UidError),
    #[error("building the Landlock ruleset: {0}")]
    Landlock(String),
}

/// What is in force, for the start-up log and `/stats`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IsolationInfo {
    pub mode: IsolationMode,
    pub landlock_abi: Option<u32>,
    /// Signals and abstract sockets confined to the user's own processes (Landlock ABI ≥ 6).
    pub landlock_scoped_signals: bool,
    pub uid_range: Option<(u32, u32)>,
    pub limits: Limits,
    /// Per-user memory and CPU limits by cgroup: not applied by this version; says what
    /// the host would offer.
    pub cgroups: &'static str,
}

pub struct Isolation {
    mode: IsolationMode,
    abi: Option<u32>,
    uids: Option<UidMap>,
    read_only: ReadOnly,
    limits: Limits,
}

/// Settings for [`Isolation::new`].
pub struct IsolationConfig {
    pub mode: IsolationMode,
    pub uid_range: (u32, u32),
    pub uid_map: PathBuf,
    /// Name users' uids in these files (with uids only).
    pub accounts: Option<AccountFiles>,
    /// Shared paths every child may read.
    pub read_only: Vec<PathBuf>,
    pub limits: Limits,
}

impl Isolation {
    /// The mode to use when none is asked for: everything this process can do.
    pub fn best_available() -> IsolationMode {
        let root = Uid::effective().is_root();
        match (root, sandbox::kernel_abi().is_some()) {
            (true, true) => IsolationMode::Both,
            (true, false) => IsolationMode::Uid,
            (false, true) => IsolationMode::Landlock,
            (false, false) => IsolationMode::None,
        }
    }

    pub fn new(cfg: IsolationConfig) -> Result<Self, IsolationError> {
        let abi = sandbox::kernel_abi();
        if cfg.mode.uses_uid() && !Uid::effective().is_root() {
            return Err(IsolationError::NeedsRoot(cfg.mode));
        }
        if cfg.mode.uses_landlock() && abi.is_none() {
            return Err(IsolationError::NoLandlock(cfg.mode));
        }
        let (first, last) = cfg.uid_range;
        let uids = if cfg.mode.uses_uid() {
            if first == 0 || last <= first {
                return Err(IsolationError::Range(first, last));
            }
            let map = UidMap::load(cfg.uid_map, first, last)?;
            Some(match cfg.accounts {
                Some(files) => map.with_accounts(files),
                None => map,
            })
        } else {
            None
        };
        let mut limits = cfg.limits;
        if !cfg.mode.uses_uid() {
            // RLIMIT_NPROC counts every process of the uid, and without a uid per user that
            // uid is the gateway's own: the limit would count the gateway and every user.
            limits.nproc = None;
        }
        Ok(Isolation {
            mode: cfg.mode,
            abi: if cfg.mode.uses_landlock() { abi } else { None },
            uids,
            read_only: ReadOnly(cfg.read_only),
            limits,
        })
    }

    pub fn mode(&self) -> IsolationMode {
        self.mode
    }

    pub fn info(&self) -> IsolationInfo {
        IsolationInfo {
            mode: self.mode,
            landlock_abi: self.abi,
            landlock_scoped_signals: self.abi.is_some_and(|a| a >= 6),
            uid_range: self.uid_range(),
            limits: self.limits,
            cgroups: cgroup_support(),
        }
    }

    /// `--uid-range` when users have uids of their own.
    pub fn uid_range(&self) -> Option<(u32, u32)> {
        self.uids.as_ref().map(UidMap::range)
    }

    /// The shared group, when users have uids of their own.
    pub fn shared_gid(&self) -> Option<u32> {
        self.uids.as_ref().map(UidMap::shared_gid)
    }

    /// The user's ids (allocated on first use), or `None` without uid isolation. Blocking.
    pub fn ids(&self, key: &crate::workspace::UserKey) -> Result<Option<UserIds>, UidError> {
        self.uids.as_ref().map(|m| m.ids(key)).transpose()
    }

    /// Every uid ever given to a user.
    pub fn known_uids(&self) -> Vec<u32> {
        self.uids.as_ref().map(UidMap::all).unwrap_or_default()
    }

    /// The user's uid if one was ever allocated; never allocates.
    pub fn existing_uid(&self, key: &crate::workspace::UserKey) -> Option<u32> {
        self.uids.as_ref().and_then(|m| m.existing(key))
    }

    /// Everything the child needs to wall itself off, built in the gateway. Opens the
    /// ruleset's paths, so call it just before spawning.
    pub fn child_sandbox(
        &self,
        home: &Path,
        ids: Option<UserIds>,
    ) -> Result<ChildSandbox, IsolationError> {
        let landlock = if self.mode.uses_landlock() {
            Some(sandbox::ruleset(home, &self.read_only).map_err(IsolationError::Landlock)?)
        } else {
            None
        };
        let drop_capabilities = ids.is_none() && landlock.is_some() && Uid::effective().is_root();
        Ok(ChildSandbox {
            ids,
            landlock,
            limits: clamp(self.limits),
            drop_capabilities,
        })
    }
}

/// What the host offers for per-user memory and CPU limits. Nothing is applied yet: users
/// are bounded by rlimits, the OOM killer's order and the disk quota.
fn cgroup_support() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "not applied (the host has cgroup v2; per-user memory and CPU limits are not implemented yet)"
    } else {
        "not applied (no cgroup v2 hierarchy at /sys/fs/cgroup on this host)"
    }
}

/// Limits above the gateway's own hard limits cannot be raised by an unprivileged child, and
/// raising them is not the point: keep each at most the current hard limit.
fn clamp(limits: Limits) -> Limits {
    let hard = |r: Resource| getrlimit(r).map(|(_, h)| h).unwrap_or(u64::MAX);
    Limits {
        nproc: limits.nproc.map(|n| n.min(hard(Resource::RLIMIT_NPROC))),
        fsize: limits.fsize.map(|n| n.min(hard(Resource::RLIMIT_FSIZE))),
        nofile: limits.nofile.map(|n| n.min(hard(Resource::RLIMIT_NOFILE))),
    }
}

/// One child's walls. Must outlive the spawn (it owns the ruleset descriptor).
pub struct ChildSandbox {
    pub ids: Option<UserIds>,
    landlock: Option<OwnedFd>,
    limits: Limits,
    /// The child stays uid 0 (root gateway, Landlock only): it gives up every capability.
    drop_capabilities: bool,
}

/// The plain values [`ChildSandbox::apply`] needs, copied into the pre-exec closure.
#[derive(Clone, Copy)]
pub struct ChildSteps {
    ids: Option<UserIds>,
    landlock_fd: Option<i32>,
    limits: Limits,
    drop_capabilities: bool,
}

impl ChildSandbox {
    /// Whether the child is walled off at all (a uid of its own or Landlock).
    pub fn is_walled(&self) -> bool {
        self.ids.is_some() || self.landlock.is_some()
    }

    #[cfg(test)]
    pub(crate) fn for_test(ids: Option<UserIds>) -> Self {
        ChildSandbox {
            ids,
            landlock: None,
            limits: Limits::default(),
            drop_capabilities: false,
        }
    }

    pub fn steps(&self) -> ChildSteps {
        ChildSteps {
            ids: self.ids,
            landlock_fd: self.landlock.as_ref().map(|fd| fd.as_raw_fd()),
            limits: self.limits,
            drop_capabilities: self.drop_capabilities,
        }
    }
}

impl ChildSteps {
    /// Limits and the group drop, done while still privileged. Between fork and exec.
    pub fn before_uid_change(&self) -> io::Result<()> {
        // Under memory pressure the kernel kills a user's process, never the gateway (which
        // lowered its own score at start; children inherit it and must raise theirs).
        prefer_for_oom_kill()?;
        let set = |r: Resource, v: Option<u64>| -> io::Result<()> {
            match v {
                Some(v) => Ok(setrlimit(r, v, v)?),
                None => Ok(()),
            }
        };
        set(Resource::RLIMIT_FSIZE, self.limits.fsize)?;
        set(Resource::RLIMIT_NOFILE, self.limits.nofile)?;
        set(Resource::RLIMIT_NPROC, self.limits.nproc)?;
        if let Some(ids) = self.ids {
            nix::unistd::setgroups(&[Gid::from_raw(ids.shared_gid)])?;
            let gid = Gid::from_raw(ids.gid);
            nix::unistd::setresgid(gid, gid, gid)?;
        }
        Ok(())
    }

    /// The uid drop. Between fork and exec, after [`Self::before_uid_change`]. The parent-
    /// death signal must be set after this: changing credentials clears it.
    pub fn change_uid(&self) -> io::Result<()> {
        if let Some(ids) = self.ids {
            let uid = Uid::from_raw(ids.uid);
            nix::unistd::setresuid(uid, uid, uid)?;
        }
        Ok(())
    }

    /// Landlock last, right before exec. Without Landlock but with a uid, still no new
    /// privileges: setuid programs must not undo the drop.
    pub fn restrict(&self) -> io::Result<()> {
        match self.landlock_fd {
            Some(fd) => sandbox::restrict_self(fd)?,
            None if self.ids.is_some() => nix::sys::prctl::set_no_new_privs()?,
            None => {}
        }
        if self.drop_capabilities {
            drop_all_capabilities()?;
        }
        Ok(())
    }
}

/// A child that stays uid 0 (a root gateway with Landlock only) gives up every capability,
/// for good: the bounding set is emptied, root gains nothing at exec (`SECBIT_NOROOT`, locked),
/// and the current sets are cleared. It keeps uid 0's ownership of root's files (which
/// Landlock confines to reading outside the home, but not `chmod`): only a uid of its own
/// makes a user safe to have (see README, *Isolation*). Between fork and exec: system calls
/// on stack values only.
fn drop_all_capabilities() -> io::Result<()> {
    use nix::libc;
    const PR_CAPBSET_DROP: libc::c_int = 24;
    const PR_SET_SECUREBITS: libc::c_int = 28;
    // NOROOT, NO_SETUID_FIXUP and KEEP_CAPS off, each locked.
    const SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20;
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: prctl and capset with constant arguments and pointers to live stack values.
    unsafe {
        for cap in 0..64 {
            // Capabilities this kernel does not know answer EINVAL: there is nothing to drop.
            if libc::prctl(PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::prctl(PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut header = Header {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `oom_score_adj` of every user's process: first in line for the OOM killer.
pub const CHILD_OOM_SCORE_ADJ: &[u8] = b"1000";

/// Writes [`CHILD_OOM_SCORE_ADJ`] to `/proc/self/oom_score_adj`. Between fork and exec:
/// only system calls on constant data. Raising one's own score needs no privilege.
fn prefer_for_oom_kill() -> io::Result<()> {
    // SAFETY: open/write/close on a constant, NUL-terminated path and constant bytes.
    unsafe {
        let fd = nix::libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            nix::libc::O_WRONLY | nix::libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = nix::libc::write(
            fd,
            CHILD_OOM_SCORE_ADJ.as_ptr().cast(),
            CHILD_OOM_SCORE_ADJ.len(),
        );
        nix::libc::close(fd);
        if written < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
