//! Finding the project's Linux guest for tests: `resources/guest/`'s build
//! scripts (cached by their inputs) and what this host's KVM needs on the
//! kernel command line.
//!
//! Included with `#[path = "common/guest.rs"] mod guest;` (`common/linux.rs`
//! builds on it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What a host whose KVM emulates guest kernel code needs on the kernel
/// command line (HOST-KVM.md); harmless on real hardware.
pub const HOST_KVM_ARGS: &str = "noxsave clearcpuid=popcnt,smap,erms,fsrm";

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ sits in the repository")
        .to_path_buf()
}

/// Runs one of `resources/guest/`'s build scripts and returns the path it
/// prints last (`FERRITE_GUEST_KERNEL_DIR` / `FERRITE_GUEST_ROOTFS_DIR`
/// point them at an existing cache).
pub fn build(script: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("resources/guest").join(script))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(out.status.success(), "{script} failed ({})", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("a result path").trim())
}
