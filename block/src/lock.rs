//! Image locking the way QEMU does it: open file description (OFD) locks on
//! a file descriptor of their own, held for the disk's whole life.
//!
//! OFD locks belong to the open file description, not to the process, so a
//! second disk on the same image in the same process conflicts too, and
//! closing or reopening the data descriptor (a write-cache switch does)
//! never drops the lock as a POSIX lock would.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::BlockError;

/// A held lock on an image; released when dropped (its descriptor closes).
#[derive(Debug)]
pub(crate) struct ImageLock {
    _fd: File,
}

impl ImageLock {
    /// Takes an exclusive lock for a writable disk, a shared one for a
    /// read-only disk, without waiting.
    pub(crate) fn acquire(path: &Path, writable: bool) -> Result<ImageLock, BlockError> {
        // A write lock needs a descriptor open for writing.
        let fd = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        // SAFETY: flock is plain old data; all-zero is a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = if writable {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 0;
        fl.l_len = 0; // the whole file, whatever its size
        fl.l_pid = 0; // required by F_OFD_*
                      // SAFETY: fd is an open descriptor we own and fl a valid flock that
                      // lives across the call; F_OFD_SETLK only reads it.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if rc == 0 {
            return Ok(ImageLock { _fd: fd });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Err(BlockError::Locked {
                path: path.to_path_buf(),
            }),
            _ => Err(BlockError::Lock {
                path: path.to_path_buf(),
                source: err,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        f.as_file().set_len(4096).expect("set_len");
        f
    }

    #[test]
    fn writers_exclude_everyone() {
        let img = image();
        let held = ImageLock::acquire(img.path(), true).expect("first lock");
        for writable in [true, false] {
            match ImageLock::acquire(img.path(), writable) {
                Err(BlockError::Locked { path }) => assert_eq!(path, img.path()),
                other => panic!("second lock (writable={writable}) not refused: {other:?}"),
            }
        }
        drop(held);
        ImageLock::acquire(img.path(), true).expect("lock after release");
    }

    #[test]
    fn readers_share_but_exclude_writers() {
        let img = image();
        let _a = ImageLock::acquire(img.path(), false).expect("reader a");
        let _b = ImageLock::acquire(img.path(), false).expect("reader b");
        assert!(matches!(
            ImageLock::acquire(img.path(), true),
            Err(BlockError::Locked { .. })
        ));
    }
}
