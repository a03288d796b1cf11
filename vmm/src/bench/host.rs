//! What the benchmarks need to know about the host: whether KVM is
//! emulated, and a directory on a real file system for O_DIRECT images.

use std::path::{Path, PathBuf};

/// Why KVM is a software emulation here, if it is: no vmx/svm CPU flag,
/// or the `kvm_pvm` module loaded.
pub fn kvm_emulated() -> Option<String> {
    let mut why = Vec::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        why.push("no vmx/svm flag in /proc/cpuinfo");
    }
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    if modules.lines().any(|l| l.starts_with("kvm_pvm "))
        || Path::new("/sys/module/kvm_pvm").exists()
    {
        why.push("the kvm_pvm module is loaded");
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Whether `dir` is on a disk-backed file system that accepts O_DIRECT.
pub fn direct_io_ok(dir: &Path) -> bool {
    // tmpfs and ramfs: no device under them, so no storage to measure.
    if block::on_memory_fs(dir) != Some(false) {
        return false;
    }
    block::probe_direct_io(dir).is_ok()
}

/// The directory for scratch images: `given` if any (it must do O_DIRECT),
/// else the first of $TMPDIR, /tmp, /var/tmp and the current directory
/// that is on a real file system.
pub fn scratch_dir(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        return if direct_io_ok(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(format!(
                "{} is not on a disk-backed file system that accepts O_DIRECT (tmpfs, ramfs?)",
                dir.display()
            ))
        };
    }
    let mut candidates = vec![std::env::temp_dir(), PathBuf::from("/var/tmp")];
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd);
    }
    candidates
        .into_iter()
        .find(|d| direct_io_ok(d))
        .ok_or_else(|| {
            "no directory for the scratch image accepts O_DIRECT; give one with --dir".to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramfs_like_dirs_are_refused() {
        // /proc is neither tmpfs nor a disk; O_DIRECT creation fails there.
        assert!(!direct_io_ok(Path::new("/proc")));
        assert!(scratch_dir(Some(Path::new("/proc"))).is_err());
    }

    #[test]
    fn target_dir_is_usable_or_skipped() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        if block::on_memory_fs(dir) == Some(true) {
            eprintln!("SKIP: the source tree is on tmpfs or ramfs");
            return;
        }
        assert!(direct_io_ok(dir));
    }

    #[test]
    fn emulation_report_is_consistent_with_cpuinfo() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = cpuinfo.contains(" vmx") || cpuinfo.contains(" svm");
        if !hw {
            assert!(kvm_emulated().is_some_and(|w| w.contains("vmx/svm")));
        }
    }
}
