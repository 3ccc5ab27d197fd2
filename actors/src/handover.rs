//! The few things root must do to a home, done without ever following a name the user
//! controls: every step opens the next directory relative to a descriptor already held,
//! with `O_NOFOLLOW`, and acts on descriptors (`fchown`, `fchmod`) or on entries of a held
//! directory with `AT_SYMLINK_NOFOLLOW`. A symlink planted anywhere is an entry like any
//! other: it is never walked through.
//!
//! - A home that is not yet owned by the user's uid (made before uids were switched on) is
//!   handed over, once, all the way down — but never a hard-linked file (it may be another
//!   name of a file outside the home) and never across a mount point; device nodes are
//!   removed (chown clears set-uid and set-gid bits of what it hands over).
//! - The `~/.local/share/opencode` directory older versions kept root's (to hold a link to
//!   the organisation's keys) is given to the user.
//!
//! Everything else in a home is done as the user (`as_user`).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, Gid, Uid};

use crate::isolation::UserIds;

/// Deeper trees are not handed over below this depth (and the log says so).
const MAX_DEPTH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} belongs to uid {owner}, another user's; refusing to use it as this user's home"
    )]
    ForeignOwner { path: PathBuf, owner: u32 },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(Errno) -> HandoverError + '_ {
    move |e| HandoverError::Io {
        path: path.to_owned(),
        source: io::Error::from(e),
    }
}

fn open_dir_at<Fd: AsFd>(dir: Fd, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn is_device(st: &FileStat) -> bool {
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    kind == SFlag::S_IFCHR || kind == SFlag::S_IFBLK
}

fn is_reg(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// What [`ensure_owned`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handover {
    pub entries: u64,
    /// Hard-linked files left as they were.
    pub skipped_links: u64,
    pub too_deep: u64,
    /// Device nodes removed (a home is no place for one).
    pub removed_devices: u64,
}

/// Makes sure `home` is the user's: mode 0700, owned by `ids`; a home owned by the gateway
/// (or any uid outside `range`) is handed over entirely; one owned by another uid of `range`
/// is refused. Then the older versions' root-owned OpenCode data directory is given over.
pub fn ensure_owned(
    home: &Path,
    ids: UserIds,
    range: (u32, u32),
) -> Result<Option<Handover>, HandoverError> {
    let fd = nix::fcntl::open(
        home,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOTDIR | Errno::ELOOP => HandoverError::NotADirectory(home.to_owned()),
        e => io_at(home)(e),
    })?;
    let st = fstat(&fd).map_err(io_at(home))?;
    let mut done = None;
    if st.st_uid != ids.uid {
        if (range.0..=range.1).contains(&st.st_uid) {
            return Err(HandoverError::ForeignOwner {
                path: home.to_owned(),
                owner: st.st_uid,
            });
        }
        let mut counts = Handover::default();
        chown_tree(&fd, st.st_dev, ids, 0, &mut counts).map_err(io_at(home))?;
        fchown(
            &fd,
            Some(Uid::from_raw(ids.uid)),
            Some(Gid::from_raw(ids.gid)),
        )
        .map_err(io_at(home))?;
        done = Some(counts);
    }
    fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(io_at(home))?;
    give_over_legacy_data_dir(&fd, home, ids, range)?;
    Ok(done)
}

/// `~/.local/share/opencode` when it is not the user's (older versions made it root's,
/// sticky and group-writable).
fn give_over_legacy_data_dir(
    home_fd: &OwnedFd,
    home: &Path,
    ids: UserIds,
    range: (u32, u32),
) -> Result<(), HandoverError> {
    let mut fd = None;
    for name in [c".local", c"share", c"opencode"] {
        let parent = fd.as_ref().unwrap_or(home_fd);
        match open_dir_at(parent, name) {
            Ok(next) => fd = Some(next),
            // Missing, or not a directory (a symlink included): nothing of ours is there.
            Err(_) => return Ok(()),
        }
    }
    let Some(fd) = fd else { return Ok(()) };
    let path = home.join(".local/share/opencode");
    let st = fstat(&fd).map_err(io_at(&path))?;
    if st.st_uid == ids.uid || (range.0..=range.1).contains(&st.st_uid) {
        return Ok(());
    }
    tracing::info!(path = %path.display(), "giving an older version's OpenCode data directory to the user");
    fchown(
        &fd,
        Some(Uid::from_raw(ids.uid)),
        Some(Gid::from_raw(ids.gid)),
    )
    .map_err(io_at(&path))?;
    fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(io_at(&path))
}

fn chown_tree(
    dir: &OwnedFd,
    dev: u64,
    ids: UserIds,
    depth: usize,
    counts: &mut Handover,
) -> nix::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)));
    let mut listing = Dir::openat(
        dir,
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let names: Vec<(std::ffi::CString, Option<Type>)> = listing
        .iter()
        .flatten()
        .filter(|e| e.file_name() != c"." && e.file_name() != c"..")
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .collect();
    for (name, _) in names {
        let st = match fstatat(
            dir,
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if st.st_dev != dev {
            continue;
        }
        counts.entries += 1;
        if is_dir(&st) {
            if depth >= MAX_DEPTH {
                counts.too_deep += 1;
                continue;
            }
            let child = match open_dir_at(dir, name.as_c_str()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                Err(e) => return Err(e),
            };
            // The entry may have changed between the two looks; act on what was opened.
            let opened = fstat(&child)?;
            if opened.st_dev != dev {
                continue;
            }
            chown_tree(&child, dev, ids, depth + 1, counts)?;
            fchown(&child, uid, gid)?;
        } else if is_reg(&st) && st.st_nlink > 1 {
            counts.skipped_links += 1;
        } else if is_device(&st) {
            // Only a user who ran as root could have made it; as theirs it could be a disk.
            match nix::unistd::unlinkat(
                dir,
                name.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => counts.removed_devices += 1,
                Err(e) => return Err(e),
            }
        } else {
            // Symlinks themselves (never their targets), files, pipes, sockets.
            match fchownat(
                dir,
                name.as_c_str(),
                uid,
                gid,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    /// Changing owners needs root; CI runs as root. Fail, never skip.
    fn need_root() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test changes file owners and must run as root"
        );
    }

    const IDS: UserIds = UserIds {
        uid: 4_000_123,
        gid: 4_000_123,
        shared_gid: 4_000_000,
    };
    const RANGE: (u32, u32) = (4_000_000, 4_000_999);

    #[test]
    fn a_home_is_handed_over_without_following_links() {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "root's").unwrap();
        let home = dir.path().join("home");
        fs::create_dir_all(home.join("workspace/p")).unwrap();
        fs::write(home.join("workspace/p/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, home.join("workspace/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), home.join("file-link")).unwrap();
        fs::hard_link(outside.join("secret"), home.join("hard")).unwrap();
        nix::sys::stat::mknod(
            &home.join("disk"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(7, 0),
        )
        .unwrap();

        let done = ensure_owned(&home, IDS, RANGE).unwrap().unwrap();
        assert_eq!((done.skipped_links, done.removed_devices), (1, 1));
        assert!(fs::symlink_metadata(home.join("disk")).is_err());
        for p in ["", "workspace", "workspace/p", "workspace/p/f"] {
            assert_eq!(fs::metadata(home.join(p)).unwrap().uid(), IDS.uid, "{p}");
        }
        assert_eq!(
            fs::symlink_metadata(home.join("workspace/link"))
                .unwrap()
                .uid(),
            IDS.uid
        );
        // What the links point at is untouched.
        assert_eq!(fs::metadata(&outside).unwrap().uid(), 0);
        assert_eq!(fs::metadata(outside.join("secret")).unwrap().uid(), 0);
        // Once the user's, a second call hands nothing over.
        assert_eq!(ensure_owned(&home, IDS, RANGE).unwrap(), None);
    }

    #[test]
    fn a_home_that_is_a_link_or_another_users_is_refused() {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            ensure_owned(&link, IDS, RANGE),
            Err(HandoverError::NotADirectory(_))
        ));
        std::os::unix::fs::chown(&real, Some(RANGE.0 + 7), None).unwrap();
        assert!(matches!(
            ensure_owned(&real, IDS, RANGE),
            Err(HandoverError::ForeignOwner { .. })
        ));
    }

    #[test]
    fn the_legacy_data_directory_is_given_over_but_not_through_a_link() {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".local/share/opencode")).unwrap();
        std::os::unix::fs::chown(&home, Some(IDS.uid), Some(IDS.gid)).unwrap();
        for p in [".local", ".local/share"] {
            std::os::unix::fs::chown(home.join(p), Some(IDS.uid), Some(IDS.gid)).unwrap();
        }
        ensure_owned(&home, IDS, RANGE).unwrap();
        let meta = fs::metadata(home.join(".local/share/opencode")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (IDS.uid, 0o700));

        // `share` replaced by a link to a root directory: nothing is followed.
        let victim = dir.path().join("victim");
        fs::create_dir_all(victim.join("opencode")).unwrap();
        fs::remove_dir_all(home.join(".local/share")).unwrap();
        std::os::unix::fs::symlink(&victim, home.join(".local/share")).unwrap();
        ensure_owned(&home, IDS, RANGE).unwrap();
        assert_eq!(fs::metadata(victim.join("opencode")).unwrap().uid(), 0);
    }
}
