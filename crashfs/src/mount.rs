//! The handle a test holds: mounts crashfs on a background thread, cuts the
//! power, arms faults, and unmounts on drop.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, INodeNo, MountOption};

use crate::fault::Fault;
use crate::fs::{CrashOps, Shared};
use crate::state::{CrashStats, State};

/// Errors of the crashfs handle.
#[derive(Debug, thiserror::Error)]
pub enum CrashFsError {
    /// The backing directory cannot be used.
    #[error("backing directory {path} is not usable: {source}")]
    Backing {
        /// The directory given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Mounting failed although FUSE looked available.
    #[error("cannot mount crashfs on {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What the mount returned.
        source: io::Error,
    },
    /// Unmounting failed, even lazily.
    #[error("cannot unmount crashfs from {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// What umount returned.
        source: io::Error,
    },
    /// Writing volatile data to a backing file failed (sync_all).
    #[error("cannot write volatile data to the backing files: {0}")]
    Sync(io::Error),
}

/// Why FUSE mounts cannot work here, or `None` when they should.
///
/// Tests call this first and print `SKIP: <reason>` when it says no; a mount
/// that then fails is a real failure.
pub fn unavailable_reason() -> Option<String> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && !fusermount_in_path() {
        return Some("not root and no fusermount3 in PATH".to_string());
    }
    None
}

fn fusermount_in_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").is_file())
    })
}

/// A mounted crashfs. Dropping it unmounts (lazily if files are still open).
///
/// Semantics (see the crate docs): file data and sizes are volatile until
/// fsync/fdatasync, or written through an `O_DSYNC`/`O_SYNC` open; directory
/// operations (create, unlink, mkdir, rmdir) and chmod are durable at once.
#[derive(Debug)]
pub struct CrashFs {
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
}

impl CrashFs {
    /// Mounts a crashfs showing the files of `backing` at `mountpoint`
    /// (an existing empty directory), served by a background thread.
    pub fn mount(
        backing: impl AsRef<Path>,
        mountpoint: impl AsRef<Path>,
    ) -> Result<CrashFs, CrashFsError> {
        let backing = backing
            .as_ref()
            .canonicalize()
            .map_err(|source| CrashFsError::Backing {
                path: backing.as_ref().to_path_buf(),
                source,
            })?;
        let mount_err = |source| CrashFsError::Mount {
            path: mountpoint.as_ref().to_path_buf(),
            source,
        };
        let mountpoint = mountpoint.as_ref().canonicalize().map_err(mount_err)?;
        let shared = Arc::new(Shared::new(State::new(backing.clone())));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("crashfs".to_string()),
            MountOption::Subtype("crashfs".to_string()),
            MountOption::RW,
        ];
        let ops = CrashOps {
            shared: shared.clone(),
        };
        let session = fuser::spawn_mount(ops, &mountpoint, &config).map_err(mount_err)?;
        Ok(CrashFs {
            shared,
            session: Some(session),
            mountpoint,
            backing,
        })
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory holding the durable files.
    pub fn backing_dir(&self) -> &Path {
        &self.backing
    }

    /// `rel` under the mount point (what the code under test opens).
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// `rel` in the backing directory (what survived a power cut).
    pub fn backing_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.backing.join(rel)
    }

    /// Power cut: every byte and size change not yet made durable is gone;
    /// the backing files hold exactly what was made durable. The mount stays
    /// up, and the kernel's caches of the files are invalidated so readers
    /// through the mount see the same as the backing files.
    pub fn power_cut(&self) {
        let inodes = self.shared.lock().power_cut();
        // The lock is released first: invalidation may wait for a request
        // that the session thread must still be able to serve.
        if let Some(session) = &self.session {
            let notifier = session.notifier();
            for ino in inodes {
                // ENOENT only means the kernel holds nothing for that inode.
                let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
            }
        }
    }

    /// Makes everything volatile durable, as `sync(2)` would.
    pub fn sync_all(&self) -> Result<(), CrashFsError> {
        self.shared.lock().sync_all().map_err(CrashFsError::Sync)
    }

    /// Arms (or clears, with `None`) a fault on FUSE writes. A failed write
    /// changes nothing.
    pub fn fail_writes(&self, fault: Option<Fault>) {
        self.shared.lock().write_fault.set(fault);
    }

    /// Arms (or clears) a fault on syncs: fsync/fdatasync requests and the
    /// durability step of `O_DSYNC` writes. Like Linux after a writeback
    /// error, the data that was dirty stays readable but is no longer dirty:
    /// a later fsync succeeds without writing it and a power cut loses it.
    /// Counting for [`Fault::after`]: an `O_DSYNC` write is one sync, and the
    /// fsync the kernel sends after it (on success) is another.
    pub fn fail_fsyncs(&self, fault: Option<Fault>) {
        self.shared.lock().fsync_fault.set(fault);
    }

    /// Counters so far.
    pub fn stats(&self) -> CrashStats {
        self.shared.lock().stats()
    }

    /// Unmounts now, reporting failure (drop does the same silently).
    pub fn unmount(mut self) -> Result<(), CrashFsError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), CrashFsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // On failure (EBUSY: a file is still open) the session is dropped
        // without joining, so nothing here can hang; detach lazily instead.
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(source) => lazy_unmount(&self.mountpoint).map_err(|_| CrashFsError::Unmount {
                path: self.mountpoint.clone(),
                source,
            }),
        }
    }
}

fn lazy_unmount(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("crashfs: {e}");
        }
    }
}
