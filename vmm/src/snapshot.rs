//! Throwaway copies of disk images: `--drive ...,snapshot=on` and
//! `ferrite run --image` boot a copy, so the user's image never changes
//! (QEMU's `snapshot=on`). The copy is a reflink where the file system can
//! share extents (btrfs, XFS: instant, no space used), else a plain copy
//! (`copy_file_range`, which the kernel may still speed up). A
//! copy-on-write overlay would need an image format ferrite does not
//! have; the copy costs time and space proportional to the image.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a throwaway copy could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot copy {src} to {dst} for snapshot=on: {source}")]
pub struct SnapshotError {
    src: PathBuf,
    dst: PathBuf,
    source: io::Error,
}

/// How the copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyKind {
    /// Shared extents.
    Reflink,
    /// Bytes copied.
    Copy,
}

/// Copies `src` to `dst` (created or truncated), by reflink if possible.
pub fn throwaway_copy(src: &Path, dst: &Path) -> Result<CopyKind, SnapshotError> {
    let err = |source| SnapshotError {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
        source,
    };
    let from = File::open(src).map_err(err)?;
    let to = File::create(dst).map_err(err)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    if rc == 0 {
        return Ok(CopyKind::Reflink);
    }
    drop((from, to));
    std::fs::copy(src, dst).map_err(err)?;
    Ok(CopyKind::Copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_has_the_bytes_and_the_source_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, b"disk bytes").unwrap();
        throwaway_copy(&a, &b).unwrap();
        std::fs::write(&b, b"changed").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"disk bytes");
        let missing = throwaway_copy(&dir.path().join("none"), &b).unwrap_err();
        assert!(missing.to_string().contains("none"));
    }
}
