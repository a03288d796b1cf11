//! Landlock: once a thread of a running VM is set up, the only files it can
//! open are the VM's images (a write-cache switch reopens them) and the
//! `--stats-json` file. A bug in a device model can then no more read or
//! write the user's other files than it can make arbitrary system calls.
//!
//! The ruleset is built once, before any thread starts ([`FsSandbox::new`]),
//! and every thread applies it to itself together with its seccomp filter
//! (Landlock, like seccomp, binds a thread and the threads it creates
//! afterwards). Rules are on the files themselves, by inode: a path later
//! swapped for a symlink to another file stays refused. Where the kernel
//! has no Landlock, ferrite says so in one line and runs without it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, ABI,
};

/// The Landlock ABI ferrite asks for (Linux 6.10: `IOCTL_DEV` among the
/// rights); older kernels enforce what they know (best effort).
const WANTED_ABI: ABI = ABI::V5;

/// Why the sandbox could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// A file to allow could not be opened for its rule.
    #[error("cannot add a Landlock rule for {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The crate's reason.
        source: landlock::PathFdError,
    },
    /// A rule for `path` could not be added.
    #[error("cannot add a Landlock rule for {path}: {source}")]
    Rule {
        /// The file.
        path: PathBuf,
        /// The crate's reason.
        source: landlock::RulesetError,
    },
    /// The ruleset could not be created or applied.
    #[error("cannot apply the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// The ruleset's descriptor could not be duplicated for a thread.
    #[error("cannot apply the Landlock ruleset: {0}")]
    Dup(#[from] std::io::Error),
}

/// A file the VM may open after start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedFile {
    /// The file (it must exist when the sandbox is built).
    pub path: PathBuf,
    /// Whether it may be opened for writing (and truncated).
    pub writable: bool,
}

/// The ruleset, or nothing where Landlock is unavailable or not wanted.
#[derive(Clone, Debug, Default)]
pub struct FsSandbox {
    ruleset: Option<Arc<RulesetCreated>>,
}

/// Whether the running kernel has Landlock (its ABI version, or why not).
fn kernel_abi() -> Result<i64, std::io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the VERSION flag the call
    // only returns the ABI version; it reads and writes no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl FsSandbox {
    /// A sandbox that restricts nothing (`--no-seccomp`, `demo`, `bench`).
    pub fn off() -> FsSandbox {
        FsSandbox::default()
    }

    /// Builds the ruleset that allows `files` only. Prints one line and
    /// returns a sandbox that restricts nothing where the kernel has no
    /// Landlock.
    pub fn new(files: &[AllowedFile]) -> Result<FsSandbox, LandlockError> {
        if let Err(e) = kernel_abi() {
            eprintln!(
                "ferrite: Landlock is not available ({e}): the VM's threads can open any file"
            );
            return Ok(FsSandbox::off());
        }
        let handled = AccessFs::from_all(WANTED_ABI);
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(handled)?
            .create()?;
        for f in files {
            let mut access = AccessFs::ReadFile | AccessFs::IoctlDev;
            if f.writable {
                access |= AccessFs::WriteFile | AccessFs::Truncate;
            }
            let fd = PathFd::new(&f.path).map_err(|source| LandlockError::Open {
                path: f.path.clone(),
                source,
            })?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|source| LandlockError::Rule {
                    path: f.path.clone(),
                    source,
                })?;
        }
        Ok(FsSandbox {
            ruleset: Some(Arc::new(ruleset)),
        })
    }

    /// Applies the ruleset to the calling thread (and the threads it
    /// creates from now on).
    pub fn restrict_current_thread(&self) -> Result<(), LandlockError> {
        let Some(ruleset) = &self.ruleset else {
            return Ok(());
        };
        let status = ruleset.try_clone()?.restrict_self()?;
        debug_assert!(status.ruleset != RulesetStatus::NotEnforced);
        Ok(())
    }

    /// Whether a ruleset will be applied.
    pub fn is_on(&self) -> bool {
        self.ruleset.is_some()
    }
}

/// Hidden switch for the tests (not in `--help`): with
/// `FERRITE_LANDLOCK_SELFTEST=PATH`, each disk's I/O thread tries to open
/// PATH right after its sandbox is on and prints one line with the result.
pub const SELFTEST_ENV: &str = "FERRITE_LANDLOCK_SELFTEST";

/// Runs the self-test of [`SELFTEST_ENV`] on the calling thread.
pub fn selftest(thread: &str) {
    let Some(path) = std::env::var_os(SELFTEST_ENV) else {
        return;
    };
    let path = Path::new(&path);
    let outcome = match std::fs::File::open(path) {
        Ok(_) => "allowed".to_string(),
        Err(e) => format!("denied ({e})"),
    };
    eprintln!(
        "ferrite: landlock selftest on {thread}: open {}: {outcome}",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (Landlock binds the thread for good): the
    /// allowed file opens, its neighbour does not.
    #[test]
    fn only_the_allowed_files_open_after_restriction() {
        if kernel_abi().is_err() {
            eprintln!("SKIP: no Landlock on this kernel");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let other = dir.path().join("other.txt");
        std::fs::write(&image, b"image").unwrap();
        std::fs::write(&other, b"secret").unwrap();
        let sandbox = FsSandbox::new(&[AllowedFile {
            path: image.clone(),
            writable: true,
        }])
        .unwrap();
        assert!(sandbox.is_on());
        std::thread::spawn(move || {
            sandbox.restrict_current_thread().unwrap();
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&image)
                .expect("the image opens read-write");
            let err = std::fs::File::open(&other).expect_err("another file must not open");
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
            let err = std::fs::File::create(dir.path().join("new")).expect_err("no new files");
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        })
        .join()
        .unwrap();
    }
}
