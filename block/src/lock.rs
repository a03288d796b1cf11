//! Image locking in QEMU's own protocol, so that ferrite and QEMU (a VM,
//! `qemu-io`, `qemu-img`, `qemu-storage-daemon`) see each other's claims.
//!
//! QEMU's raw-file driver describes what an opener does with open file
//! description (OFD) locks on single bytes of the image: a shared lock on
//! byte `100 + p` says "I use permission p", one on byte `200 + p` says "I
//! do not let others use permission p". The permissions are numbered 0
//! consistent read, 1 write, 2 write-unchanged, 3 resize. An opener first
//! takes its own bytes, then tests the others' bytes: a permission it uses
//! that someone refuses to share, or one it refuses to share that someone
//! uses, is a conflict. Taking before testing means two openers racing each
//! other can both fail, never both succeed.
//!
//! ferrite claims what a QEMU VM with a virtio-blk drive claims (read off
//! `/proc/locks` under QEMU 7.2): a writable disk uses consistent read and
//! write and refuses to share write (bytes 100, 101, 201); a read-only disk
//! uses consistent read and refuses to share write (bytes 100, 201). So two
//! writers exclude each other, a reader and a writer exclude each other, and
//! readers share, as with QEMU's defaults; `qemu-io -r` and `qemu-img info
//! -U`, which refuse nothing, may read an image ferrite writes.
//!
//! OFD locks belong to the open file description, not to the process: they
//! live on a descriptor of their own for the disk's whole life, so a second
//! disk on the same image in the same process conflicts too, and reopening
//! the data descriptor (a write-cache switch does) never drops them, as it
//! would drop POSIX locks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::BlockError;

/// Byte `PERM_BASE + p`: "I use permission p" (QEMU's RAW_LOCK_PERM_BASE).
const PERM_BASE: i64 = 100;
/// Byte `SHARED_BASE + p`: "others may not use permission p".
const SHARED_BASE: i64 = 200;
/// QEMU's permission numbers.
const CONSISTENT_READ: i64 = 0;
const WRITE: i64 = 1;

/// A held lock on an image; released when dropped (its descriptor closes).
#[derive(Debug)]
pub(crate) struct ImageLock {
    _fd: File,
}

/// The bytes of one opener's claim.
struct Claim {
    /// Permissions used.
    uses: &'static [i64],
    /// Permissions not shared with others.
    refuses: &'static [i64],
}

fn claim(writable: bool) -> Claim {
    if writable {
        Claim {
            uses: &[CONSISTENT_READ, WRITE],
            refuses: &[WRITE],
        }
    } else {
        Claim {
            uses: &[CONSISTENT_READ],
            refuses: &[WRITE],
        }
    }
}

fn flock(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl.l_pid = 0; // required by F_OFD_*
    fl
}

/// Takes a shared lock on `byte`.
fn take(fd: &File, byte: i64) -> io::Result<()> {
    let fl = flock(libc::F_RDLCK, byte);
    // SAFETY: fd is an open descriptor and fl a valid flock that lives
    // across the call; F_OFD_SETLK only reads it.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description holds any lock on `byte`.
fn held_by_others(fd: &File, byte: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte);
    // SAFETY: fd is an open descriptor and fl a valid flock that lives
    // across the call; F_OFD_GETLK writes only into it.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc == 0 {
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    } else {
        Err(io::Error::last_os_error())
    }
}

impl ImageLock {
    /// Claims the image for a writable or a read-only disk, without
    /// waiting; `BlockError::Locked` when another opener's claim conflicts.
    pub(crate) fn acquire(path: &Path, writable: bool) -> Result<ImageLock, BlockError> {
        // Opened as the data descriptor is, as QEMU does (a read lock
        // needs only read access).
        let fd = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let failed = |source: io::Error| match source.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => BlockError::Locked {
                path: path.to_path_buf(),
            },
            _ => BlockError::Lock {
                path: path.to_path_buf(),
                source,
            },
        };
        let c = claim(writable);
        let own = c
            .uses
            .iter()
            .map(|p| PERM_BASE + p)
            .chain(c.refuses.iter().map(|p| SHARED_BASE + p));
        for byte in own {
            take(&fd, byte).map_err(failed)?;
        }
        let theirs = c
            .uses
            .iter()
            .map(|p| SHARED_BASE + p)
            .chain(c.refuses.iter().map(|p| PERM_BASE + p));
        for byte in theirs {
            if held_by_others(&fd, byte).map_err(failed)? {
                return Err(BlockError::Locked {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(ImageLock { _fd: fd })
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

    /// The bytes are QEMU's: what a QEMU VM with a writable virtio-blk
    /// drive holds (100, 101, 201 in /proc/locks) refuses ferrite, and a
    /// `qemu-io -r`, which holds only byte 100, does not.
    #[test]
    fn the_claim_is_in_qemus_bytes() {
        let img = image();
        let qemu_vm = File::open(img.path()).unwrap();
        for byte in [100, 101, 201] {
            take(&qemu_vm, byte).unwrap();
        }
        for writable in [true, false] {
            assert!(matches!(
                ImageLock::acquire(img.path(), writable),
                Err(BlockError::Locked { .. })
            ));
        }
        drop(qemu_vm);
        let qemu_io_reader = File::open(img.path()).unwrap();
        take(&qemu_io_reader, 100).unwrap();
        let ours = ImageLock::acquire(img.path(), true)
            .expect("shares with a reader that refuses nothing");
        // And that reader's next opener sees ferrite's write claim.
        assert!(held_by_others(&qemu_io_reader, PERM_BASE + WRITE).unwrap());
        assert!(held_by_others(&qemu_io_reader, SHARED_BASE + WRITE).unwrap());
        assert!(!held_by_others(&qemu_io_reader, SHARED_BASE + CONSISTENT_READ).unwrap());
        drop(ours);
    }
}
