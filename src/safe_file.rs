//! Where an output really lands, and files opened without following a symlink.
//!
//! Outputs are written beside their target and renamed onto it. A rename replaces whatever
//! the name holds: a symlink would become a regular file (its target left stale) and a device
//! node (`/dev/stdout`, as root) would be replaced. So a target is first resolved
//! ([`resolve_target`]): a symlink is followed to the file it names, and a target that exists
//! but is not a regular file is reported as [`Target::Special`], for the caller to write in
//! place or refuse. Lock files and `.partial` files are opened with `O_NOFOLLOW`
//! ([`open_no_follow`]): a symlink planted there is refused, never written through.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What writing to a path would replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Nothing there yet (a dangling symlink resolves to where it points).
    Absent(PathBuf),
    /// A regular file (a symlink resolved to it), to be replaced by rename.
    Regular(PathBuf),
    /// A device node, FIFO or socket: never replaced, only written in place (or refused).
    Special(PathBuf),
    /// A folder.
    Folder(PathBuf),
}

impl Target {
    /// The resolved path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Absent(p) | Self::Regular(p) | Self::Special(p) | Self::Folder(p) => p,
        }
    }
}

/// Resolves `path` through symlinks to what a write would land on. A path that exists is
/// classified by what it names (magic links such as `/dev/stdout` included, kept as
/// written when special); a dangling symlink resolves to where it points (up to 40 levels).
pub fn resolve_target(path: &Path) -> Target {
    if let Ok(meta) = std::fs::metadata(path) {
        let resolved = || path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        return if meta.is_file() {
            Target::Regular(resolved())
        } else if meta.is_dir() {
            Target::Folder(resolved())
        } else {
            Target::Special(path.to_path_buf())
        };
    }
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&current) {
            Ok(link) => {
                let dir = current.parent().unwrap_or(Path::new("")).to_path_buf();
                current = dir.join(link);
            }
            Err(_) => return Target::Absent(current),
        }
    }
    // A loop of links: reported as named, absent; opening it says ELOOP.
    Target::Absent(path.to_path_buf())
}

/// Writes `bytes` into a device node, FIFO or socket in place (opened for writing, never
/// created, truncated or replaced). A FIFO nobody reads is an error, not a hang.
pub fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // Blocking again once open: a full pipe waits for its reader instead of failing.
    // SAFETY: fcntl on a descriptor this function owns, with integer arguments.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    file.write_all(bytes)?;
    file.flush()
}

/// Opens `path` for reading and writing, creating it when absent, without truncating it and
/// without following a symlink (`O_NOFOLLOW`: a symlink there is an error, `ELOOP`).
/// Anything but a regular file is refused too (an `InvalidInput` error).
pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a symlink; esmfuzz does not write through it (remove the link)",
                )
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is not a regular file; esmfuzz writes only regular files here (move it away)",
        ));
    }
    Ok(file)
}

/// Whether `file` (open) is still the file `path` names: the same device and inode. A file
/// renamed away or replaced after it was opened is not.
pub fn still_named(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlink_resolves_to_the_file_it_names_and_a_dangling_one_to_where_it_points() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.npy");
        std::fs::write(&real, b"x").unwrap();
        let link = dir.path().join("link.npy");
        symlink(&real, &link).unwrap();
        assert_eq!(
            resolve_target(&link),
            Target::Regular(real.canonicalize().unwrap())
        );
        let dangling = dir.path().join("dangling.npy");
        symlink("later.npy", &dangling).unwrap();
        assert_eq!(
            resolve_target(&dangling),
            Target::Absent(dir.path().join("later.npy"))
        );
        let looped = dir.path().join("loop");
        symlink("loop", &looped).unwrap();
        assert!(matches!(resolve_target(&looped), Target::Absent(_)));
        assert!(matches!(
            resolve_target(Path::new("/dev/null")),
            Target::Special(_)
        ));
    }

    #[test]
    fn a_device_node_or_fifo_is_special_never_regular() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(resolve_target(&fifo), Target::Special(_)));
        let link = dir.path().join("to-fifo");
        symlink(&fifo, &link).unwrap();
        assert!(matches!(resolve_target(&link), Target::Special(_)));
        assert!(open_no_follow(&fifo).is_err());
    }

    #[test]
    fn open_no_follow_refuses_a_symlink_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        std::fs::write(&precious, b"keep").unwrap();
        let link = dir.path().join(".esmfuzz.lock");
        symlink(&precious, &link).unwrap();
        let e = open_no_follow(&link).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep");
        let plain = dir.path().join("plain");
        let file = open_no_follow(&plain).unwrap();
        assert!(still_named(&file, &plain));
        std::fs::rename(&plain, dir.path().join("moved")).unwrap();
        assert!(!still_named(&file, &plain));
    }
}
