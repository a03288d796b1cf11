//! The scratch directory and images of `ferrite demo`.
//!
//! `cache=none` and `directsync` open images with `O_DIRECT`, which some
//! file systems refuse (tmpfs before Linux 6.6, for one), so the directory
//! is chosen where an `O_DIRECT` open works: `--dir`, else the system
//! temporary directory, the current directory or `$XDG_RUNTIME_DIR`, in
//! that order. It is removed, images and all, when the demo ends.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::DemoError;

/// Size of each scratch image: room for every scenario (discard uses
/// sector 2048 on disks of 4 MiB or more), sparse on the host.
pub const IMAGE_SIZE: u64 = 8 << 20;

/// A directory this process created and removes on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a fresh directory under `parent` (or the first usable
    /// default location) and checks that `O_DIRECT` works in it.
    pub fn create(parent: Option<&Path>) -> Result<Self, DemoError> {
        match parent {
            Some(p) => Self::create_in(p, true),
            None => {
                let mut tried = Vec::new();
                for p in default_parents() {
                    match Self::create_in(&p, true) {
                        Ok(dir) => return Ok(dir),
                        Err(e) => tried.push(e.to_string()),
                    }
                }
                Err(DemoError::NoScratchDir(tried.join("; ")))
            }
        }
    }

    /// Creates a fresh directory under `parent` without the O_DIRECT check
    /// (for files that are never opened with it).
    pub fn create_plain(parent: &Path) -> Result<Self, DemoError> {
        Self::create_in(parent, false)
    }

    fn create_in(parent: &Path, direct: bool) -> Result<Self, DemoError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("ferrite-demo-{}-{nanos:08x}", std::process::id()));
        fs::create_dir(&path).map_err(|source| DemoError::Scratch {
            path: path.clone(),
            source,
        })?;
        let dir = Self { path };
        if !direct {
            return Ok(dir);
        }
        // Dropping `dir` on failure removes what was created.
        block::probe_direct_io(&dir.path).map_err(|source| DemoError::NoDirectIo {
            path: parent.to_path_buf(),
            source,
        })?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates an empty (sparse) image of [`IMAGE_SIZE`] named `name`.
    pub fn image(&self, name: &str) -> Result<PathBuf, DemoError> {
        let path = self.path.join(name);
        let err = |source| DemoError::Scratch {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(err)?;
        file.set_len(IMAGE_SIZE).map_err(err)?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in a temp dir harms nobody.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Where to look for a scratch directory when `--dir` is not given.
fn default_parents() -> Vec<PathBuf> {
    let mut out = vec![std::env::temp_dir()];
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd);
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(run));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_checks_and_removes() {
        let parent = std::env::temp_dir();
        let path;
        {
            let dir = ScratchDir::create(Some(&parent)).unwrap();
            path = dir.path().to_path_buf();
            let img = dir.image("a.img").unwrap();
            assert_eq!(fs::metadata(&img).unwrap().len(), IMAGE_SIZE);
            assert!(dir.image("a.img").is_err(), "an image is never reused");
        }
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn missing_parent_is_one_clear_error() {
        let e = ScratchDir::create(Some(Path::new("/nonexistent/ferrite"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ferrite"), "{e}");
    }

    #[test]
    fn refuses_a_file_system_without_o_direct() {
        // /dev/shm is tmpfs; tmpfs accepts O_DIRECT only since Linux 6.6,
        // so this checks whichever answer the kernel gives is reported.
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("SKIP: no /dev/shm");
            return;
        }
        let direct_ok = block::probe_direct_io(shm).is_ok();
        match ScratchDir::create(Some(shm)) {
            Ok(_) => assert!(direct_ok),
            Err(e) => {
                assert!(!direct_ok);
                assert!(e.to_string().contains("O_DIRECT"), "{e}");
            }
        }
    }
}
