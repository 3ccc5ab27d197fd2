//! Landlock: what a child may touch on the file system, built in the gateway and applied by
//! the child itself between fork and exec.
//!
//! The child may read and write its own home; read and execute the system (`/usr`, `/etc`,
//! `/bin`, `/lib*`, `/opt`, `/run`, `/proc`, `/sys`) and the OpenCode install; read the
//! organisation's shared files; use the common devices ([`DEVICES`]); and nothing else —
//! not `/tmp`, not `/dev/shm`, not the rest of the data directory. With ABI 6 or later it may also not signal, nor connect to abstract
//! Unix sockets of, processes outside its own Landlock domain.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, Scope, ABI,
};

/// The ABI the rules are written for; older kernels get what they support (best effort),
/// and the ABI actually in force is reported at start-up.
const TARGET: ABI = ABI::V6;

/// System locations every child may read and execute.
pub const SYSTEM_READ: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/run",
    "/proc", "/sys",
];

/// What a child may use under `/dev` (everything else there, `/dev/shm` included, is
/// refused). Terminals are `/dev/ptmx` and `/dev/pts`.
pub const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// The kernel's Landlock ABI version, or `None` when Landlock is unavailable (not built,
/// not enabled at boot, or refused by a seccomp policy).
pub fn kernel_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: nix::libc::c_uint = 1;
    // SAFETY: a null attribute with size 0 and the VERSION flag only queries the ABI.
    let version = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (version > 0).then_some(version as u32)
}

/// Paths every child may read (besides the system): shared files, the OpenCode install.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly(pub Vec<PathBuf>);

/// Builds the ruleset for a child whose home is `home` and returns its file descriptor,
/// ready for `landlock_restrict_self` in the child.
pub fn ruleset(home: &Path, shared: &ReadOnly) -> Result<OwnedFd, String> {
    let fd = build(home, shared).map_err(|e| e.to_string())?;
    fd.ok_or_else(|| "Landlock is not supported by this kernel".to_owned())
}

fn build(home: &Path, shared: &ReadOnly) -> Result<Option<OwnedFd>, RulesetError> {
    let read = AccessFs::from_read(TARGET);
    let all = AccessFs::from_all(TARGET);
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .scope(Scope::from_all(TARGET))?
        .create()?
        .add_rules(path_beneath_rules(SYSTEM_READ, read))?
        .add_rules(path_beneath_rules(&shared.0, read))?
        // Devices a shell and OpenCode use, one by one: not all of /dev, whose `shm` is
        // host memory any user could fill and that outlives their instance.
        .add_rules(path_beneath_rules(DEVICES, all))?
        .add_rules(path_beneath_rules([home], all))?;
    Ok(created.into())
}

/// In the child, between fork and exec: no new privileges (required for an unprivileged
/// process to restrict itself, and it keeps setuid programs from undoing the drop), then
/// the ruleset. Only system calls; nothing allocates.
pub fn restrict_self(fd: i32) -> std::io::Result<()> {
    nix::sys::prctl::set_no_new_privs()?;
    // SAFETY: plain system call on a descriptor the parent created for this purpose.
    let rc = unsafe { nix::libc::syscall(nix::libc::SYS_landlock_restrict_self, fd, 0u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
