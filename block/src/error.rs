//! The crate's one error type: every failure a disk can report, as one line a
//! user can act on, with the offending values in the variant.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong opening a disk or running one of its
/// operations. `Display` is a complete sentence (it already includes the
/// underlying OS error), so print it alone, not its source chain.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// The image path.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// cache=none/directsync asked for O_DIRECT and the file system refused it.
    #[error(
        "disk image {} is on a file system that does not support O_DIRECT \
         (needed by cache=none and cache=directsync); use cache=writeback or cache=writethrough",
        path.display()
    )]
    DirectIoUnsupported {
        /// The image path.
        path: PathBuf,
    },
    /// The path is something a disk cannot be backed by (a directory, a FIFO...).
    #[error("disk image {} is neither a regular file nor a block device", path.display())]
    NotADisk {
        /// The image path.
        path: PathBuf,
    },
    /// Another disk (in this or another process: ferrite, QEMU) holds a
    /// conflicting lock on the image.
    #[error(
        "disk image {} is already in use (locked by another ferrite, QEMU or disk of this VM); \
         stop the other user or give each a different image (read-only users may share)",
        path.display()
    )]
    Locked {
        /// The image path.
        path: PathBuf,
    },
    /// Taking the lock failed for another reason than a conflict.
    #[error("cannot lock disk image {}: {source}", path.display())]
    Lock {
        /// The image path.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Size or alignment discovery failed.
    #[error("cannot read the size or block size of disk image {}: {source}", path.display())]
    Probe {
        /// The image path.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// io_uring was requested but cannot be set up on this host.
    #[error("cannot set up io_uring on this host: {0}; use aio=threads")]
    Engine(io::Error),
    /// A write, discard or write-zeroes on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The request reaches past the end of the disk.
    #[error(
        "request at byte {offset} of {len} bytes goes past the end of the disk ({capacity} bytes)"
    )]
    OutOfRange {
        /// First byte of the request.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Disk capacity in bytes.
        capacity: u64,
    },
    /// Offset or length is not a multiple of the disk's logical block size.
    #[error(
        "request at byte {offset} of {len} bytes is not aligned to the {align}-byte block size"
    )]
    Misaligned {
        /// First byte of the request.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Required alignment in bytes.
        align: u64,
    },
    /// A single request larger than the crate can transfer at once.
    #[error("request of {len} bytes is larger than the {max}-byte limit of one operation")]
    TooLarge {
        /// Length in bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// `queue_depth()` operations are already in flight; retry after a completion.
    #[error("the disk queue is full ({depth} operations in flight)")]
    QueueFull {
        /// The queue depth.
        depth: usize,
    },
    /// The host failed the operation (EIO, ENOSPC, a short transfer...).
    #[error("host I/O error on the disk image: {0}")]
    Io(#[from] io::Error),
    /// An earlier fdatasync failed on a buffered image: the kernel may have
    /// dropped dirty pages, so no later flush can promise durability.
    #[error(
        "an earlier fdatasync of the disk image failed, so cached writes may have been lost; \
         flushes keep failing until the disk is reopened"
    )]
    SyncFailedEarlier,
}

impl BlockError {
    /// The OS error number behind this error, if there is one (EIO, ENOSPC...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BlockError::Open { source, .. }
            | BlockError::Lock { source, .. }
            | BlockError::Probe { source, .. }
            | BlockError::Engine(source)
            | BlockError::Io(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_line(e: &BlockError) -> String {
        let s = e.to_string();
        assert!(!s.contains('\n'), "multi-line message: {s}");
        s
    }

    #[test]
    fn messages_are_one_actionable_line() {
        let p = PathBuf::from("/img/disk.raw");
        let s = one_line(&BlockError::DirectIoUnsupported { path: p.clone() });
        assert!(s.contains("/img/disk.raw") && s.contains("O_DIRECT"), "{s}");
        assert!(
            s.contains("cache=writeback") && s.contains("cache=writethrough"),
            "{s}"
        );
        let s = one_line(&BlockError::Locked { path: p.clone() });
        assert!(s.contains("/img/disk.raw") && s.contains("in use"), "{s}");
        let s = one_line(&BlockError::Open {
            path: p.clone(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(
            s.contains("/img/disk.raw") && s.contains("No such file"),
            "{s}"
        );
        let s = one_line(&BlockError::Io(io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(s.contains("No space left on device"), "{s}");
        let s = one_line(&BlockError::OutOfRange {
            offset: 4096,
            len: 512,
            capacity: 4096,
        });
        assert!(s.contains("4096") && s.contains("512"), "{s}");
        let s = one_line(&BlockError::QueueFull { depth: 128 });
        assert!(s.contains("128"), "{s}");
        one_line(&BlockError::SyncFailedEarlier);
        one_line(&BlockError::ReadOnly);
    }

    #[test]
    fn raw_os_error_is_kept() {
        let e = BlockError::Io(io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(BlockError::ReadOnly.raw_os_error(), None);
    }
}
