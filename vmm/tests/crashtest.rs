//! `ferrite crashtest` end to end, in the project's Linux guest on ext4:
//! an application that writes N records to one file and then durably
//! records "committed N" in another is caught in `writeback` mode when it
//! does not fsync the records first (a state has the commit and not the
//! records), and passes every state when it does. Every state of both
//! passes the host's `e2fsck -fn` after its journal is replayed
//! (`--fsck`): ext4's journal relies on FLUSH, so this also checks
//! ferrite's own ordering.
//!
//! Each Linux boot costs 10-30 s on a host whose KVM emulates guest kernel
//! code; the test boots 2 x (1 + 6) times.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "common/guest.rs"]
mod guest;
#[path = "common/probe.rs"]
mod probe_common;

use guest::{build, HOST_KVM_ARGS};

/// Writes 20 records, then commits "20" with an fsync (busybox `sync
/// FILE`); `$1` = "fixed" fsyncs the records before the commit.
const APP: &str = r#"#!/bin/sh
mkdir -p /data
i=1
while [ $i -le 20 ]; do echo "record $i"; i=$((i+1)); done > /data/records
[ "$1" != fixed ] || sync /data/records
echo "committed 20" > /data/commit
sync /data/commit
"#;

/// Every committed record must be there.
const CHECK: &str = r#"#!/bin/sh
c=$(sed -n 's/^committed //p' /data/commit 2>/dev/null)
have=$(grep -c '^record ' /data/records 2>/dev/null)
have=${have:-0}
echo "committed ${c:-none}, records $have"
[ -z "$c" ] || [ "$have" -ge "$c" ]
"#;

/// The kernel, or `None` with SKIP printed.
fn kernel() -> Option<PathBuf> {
    if !probe_common::kvm_usable() {
        return None;
    }
    let cached = std::env::var_os("FERRITE_GUEST_KERNEL_DIR").is_some();
    if !cached && !Path::new("/usr/src/linux-source-6.1.tar.xz").exists() {
        eprintln!("SKIP: no kernel: /usr/src/linux-source-6.1.tar.xz is missing (run scripts/setup) and FERRITE_GUEST_KERNEL_DIR is not set");
        return None;
    }
    let e2fsck = Command::new("e2fsck")
        .arg("-V")
        .stderr(Stdio::null())
        .status();
    if !e2fsck.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: e2fsck (e2fsprogs) is not on PATH");
        return None;
    }
    Some(build("build-kernel.sh").join("vmlinux"))
}

/// States per workload: enough for the least state at every flush point
/// of these logs (6-7 FLUSHes, and the end), so the one right after the
/// commit's fsync, which catches the bug, is always among them.
const STATES: usize = 10;

/// Runs crashtest on `app` with `args`; returns its status and JSON report.
fn crashtest(kernel: &Path, rootfs: &Path, work: &Path, variant: &str) -> (i32, serde_json::Value) {
    let json = work.join(format!("{variant}.json"));
    let t = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .env(
            "FERRITE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferrite-cache"),
        )
        .arg("crashtest")
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(rootfs)
        .args(["--memory", "256M", "--cmdline", HOST_KVM_ARGS])
        .args(["--workload", &format!("/app/run {variant}")])
        .args(["--check", "/app/check", "--cache", "writeback"])
        .args([
            "--states",
            &STATES.to_string(),
            "--seed",
            "1",
            "--fsck",
            "--json",
        ])
        .arg(&json)
        .stdin(Stdio::null())
        .status()
        .expect("run ferrite");
    eprintln!("{variant}: {:.0} s", t.elapsed().as_secs_f64());
    let report = std::fs::read_to_string(&json).expect("the JSON report");
    (
        status.code().unwrap_or(-1),
        serde_json::from_str(&report).unwrap(),
    )
}

#[test]
fn a_missing_fsync_is_caught_and_its_fix_passes_every_state() {
    let Some(kernel) = kernel() else { return };
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("app")).unwrap();
    for (name, text) in [("run", APP), ("check", CHECK)] {
        let path = rootfs.join("app").join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    let (status, report) = crashtest(&kernel, &rootfs, work.path(), "buggy");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), STATES, "{report:#}");
    assert!(
        rows.iter().all(|r| r["fsck"]["passed"] == true),
        "e2fsck failed on a state: {report:#}"
    );
    let caught: Vec<&serde_json::Value> = rows.iter().filter(|r| r["status"] == 1).collect();
    assert!(
        !caught.is_empty(),
        "the missing fsync was not caught: {report:#}"
    );
    assert!(
        caught.iter().all(|r| r["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("committed 20, records "))),
        "{report:#}"
    );
    assert_eq!(status, 1, "{report:#}");

    let (status, report) = crashtest(&kernel, &rootfs, work.path(), "fixed");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), STATES, "{report:#}");
    assert!(
        rows.iter()
            .all(|r| r["status"] == 0 && r["fsck"]["passed"] == true),
        "{report:#}"
    );
    assert_eq!(status, 0, "{report:#}");
}
