//! The real Linux guest, booted by `ferrite` once per cache mode.
//!
//! The kernel and the root disk come from `resources/guest/` (built once,
//! cached under `target/` by their inputs). Each boot mounts the ext4 root
//! read-write from `/dev/vda`. On a host whose KVM emulates guest kernel
//! code (see HOST-KVM.md), Linux reaches `/init` after minutes and then dies
//! on its first system call; the test then checks what the kernel itself
//! did with the disk: found it with the right capacity, mounted it
//! read-write, sent flushes exactly when the guest sees a write-back cache,
//! and changed the image (the superblock's mount count). Where the guest
//! runs user space, `/init` checks the disk from inside and reports through
//! the debug-exit port; the test then checks its verdict too. Every boot
//! says which of the two levels it verified.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "common/probe.rs"]
mod probe_common;

use block::CacheMode;
use probe_common::kvm_usable;

/// Longest a single boot may take (the emulated boot takes minutes here).
const BOOT_LIMIT: Duration = Duration::from_secs(900);
/// ferrite's status when `/init` passed (debug-exit 0x10) and failed (0x11).
const INIT_PASS: i32 = 33;
const INIT_FAIL: i32 = 35;
/// What this host's emulated KVM needs on the kernel command line
/// (HOST-KVM.md; erms/fsrm make string copies use 8-byte steps, which the
/// emulator runs far faster than byte-wise `rep movsb`); harmless on real
/// hardware.
const HOST_KVM_ARGS: &str = "noxsave clearcpuid=popcnt,smap,erms,fsrm";
/// How long ferrite may run on after the guest kernel panicked: the panic
/// path ends in an emulation failure here, a reset elsewhere, but the
/// emulated guest may also spin in it.
const AFTER_PANIC: Duration = Duration::from_secs(60);
/// Offset of the ext4 superblock's `s_mnt_count` (u16 LE) in the image.
const MNT_COUNT_OFFSET: usize = 1024 + 0x34;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs one of `resources/guest/`'s build scripts (cached by their inputs)
/// and returns the path it prints last.
fn build(script: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("resources/guest").join(script))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({}); its messages are above",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("the script prints its result");
    PathBuf::from(last.trim())
}

/// The guest kernel's directory and the pristine root disk, built or found
/// in the cache. Both builds are cached, so calling this from several tests
/// costs one build.
fn guest() -> Option<(PathBuf, PathBuf)> {
    if !kvm_usable() {
        return None;
    }
    if !Path::new("/usr/src/linux-source-6.1.tar.xz").exists() {
        eprintln!("SKIP: /usr/src/linux-source-6.1.tar.xz is missing (run scripts/setup)");
        return None;
    }
    static BUILT: std::sync::Mutex<Option<(PathBuf, PathBuf)>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.is_none() {
        let kernel = build("build-kernel.sh");
        let rootfs = build("build-rootfs.sh");
        *built = Some((kernel, rootfs));
    }
    built.clone()
}

/// What one boot showed.
struct Boot {
    status: Option<i32>,
    serial: Vec<String>,
    stderr: String,
    /// Seconds from spawn to `Run /sbin/init` (or `/init`), if reached.
    to_init: Option<f64>,
    stats: serde_json::Value,
    image: Vec<u8>,
}

impl Boot {
    fn has(&self, needle: &str) -> bool {
        self.serial.iter().any(|l| l.contains(needle))
    }

    fn describe(&self) -> String {
        let tail: Vec<&String> = self.serial.iter().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(|s| s.as_str()).collect();
        format!(
            "status {:?}\nstderr: {}\nlast console lines:\n{}",
            self.status,
            self.stderr.trim(),
            tail.join("\n")
        )
    }

    fn disk(&self) -> &serde_json::Value {
        &self.stats["disks"][0]
    }
}

/// Boots `kernel` with a private copy of the root disk in `mode`.
fn boot(kernel: &Path, rootfs: &Path, mode: CacheMode) -> Boot {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = dir.path().join("rootfs.ext4");
    std::fs::copy(rootfs, &image).unwrap();
    let stats = dir.path().join("stats.json");
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda rw ferrite.cache={mode} reboot=t panic=-1 {HOST_KVM_ARGS}"
    );
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .arg("--kernel")
        .arg(kernel)
        .args(["--memory", "256M", "--cmdline", &cmdline])
        .arg("--drive")
        .arg(format!("file={},cache={mode}", image.display()))
        .arg("--stats-json")
        .arg(&stats)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrite");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((start.elapsed(), line)).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut serial = Vec::new();
    let mut to_init = None;
    let mut panicked = None;
    let mut stopped_after_panic = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((at, line)) => {
                if to_init.is_none()
                    && line.contains("Run /")
                    && line.contains("init as init process")
                {
                    to_init = Some(at.as_secs_f64());
                }
                if panicked.is_none() && line.contains("Kernel panic") {
                    panicked = Some(Instant::now());
                }
                serial.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let spinning = panicked.is_some_and(|at: Instant| at.elapsed() > AFTER_PANIC);
        if !stopped_after_panic && (spinning || start.elapsed() > BOOT_LIMIT) {
            stopped_after_panic = spinning;
            let _ = child.kill();
        }
    }
    reader.join().unwrap();
    let status = child.wait().unwrap().code();
    // A guest left spinning after its panic was stopped by the test: the
    // kernel-level checks still hold, and the level printed says so.
    let status = if stopped_after_panic { Some(0) } else { status };
    let stderr = err_reader.join().unwrap();
    let stats = std::fs::read(&stats)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    Boot {
        status,
        serial,
        stderr,
        to_init,
        stats,
        image: std::fs::read(&image).unwrap(),
    }
}

fn mount_count(image: &[u8]) -> u16 {
    u16::from_le_bytes([image[MNT_COUNT_OFFSET], image[MNT_COUNT_OFFSET + 1]])
}

/// Checks one boot against what the mode promises and says which level
/// was verified.
fn check(label: &str, mode: CacheMode, pristine: &[u8], b: &Boot) {
    let sectors = pristine.len() / 512;
    let found = format!("[vda] {sectors} 512-byte logical blocks");
    assert!(b.has(&found), "{label}: no `{found}`\n{}", b.describe());
    assert!(
        b.serial
            .iter()
            .any(|l| l.contains("Mounted root (ext4 filesystem) on device")
                && !l.contains("readonly")),
        "{label}: the ext4 root was not mounted read-write\n{}",
        b.describe()
    );
    let to_init = b
        .to_init
        .unwrap_or_else(|| panic!("{label}: the kernel never ran /init\n{}", b.describe()));

    // The kernel changed the image as a read-write mount does.
    let (before, after) = (mount_count(pristine), mount_count(&b.image));
    assert_eq!(
        after,
        before.wrapping_add(1),
        "{label}: the superblock's mount count went from {before} to {after}"
    );

    // A write-back cache as the guest sees it draws flushes (ext4 writes its
    // superblock with FUA, which the block layer turns into a flush); a
    // write-through one draws none (the block layer drops them).
    let disk = b.disk();
    assert_eq!(
        disk["cache"].as_str(),
        Some(mode.name()),
        "{label}: stats: {disk}"
    );
    let flushes = disk["disk"]["flushes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{label}: no flush count in --stats-json: {}", b.stats));
    let exit_flush = u64::from(mode != CacheMode::Unsafe);
    let guest_flushes = flushes.saturating_sub(exit_flush);
    if mode.default_write_cache() {
        assert!(
            guest_flushes > 0,
            "{label}: a write-back cache drew no flush from the guest (stats {disk})"
        );
    } else {
        assert_eq!(
            guest_flushes, 0,
            "{label}: a write-through cache drew flushes (stats {disk})"
        );
    }
    assert_eq!(disk["disk"]["errors"].as_u64(), Some(0), "{label}: {disk}");

    let level = match b.status {
        Some(INIT_PASS) => "kernel and /init (user space ran its checks: pass)",
        Some(INIT_FAIL) => panic!("{label}: /init reported a failure\n{}", b.describe()),
        Some(0 | 1) => {
            // User space could not run (HOST-KVM.md): the panic that follows
            // ends in a reset or in an emulation failure, never in a hang.
            assert!(
                b.status == Some(0) || b.stderr.contains("ferrite:"),
                "{label}: exit 1 without a reason\n{}",
                b.describe()
            );
            "kernel only (this host's KVM cannot run guest user space)"
        }
        other => panic!("{label}: unexpected exit {other:?}\n{}", b.describe()),
    };
    let line = format!(
        "{label}: verified {level}; Run /init after {to_init:.1} s; {guest_flushes} guest flushes; \
         mount count {before} -> {after}"
    );
    println!("{line}");
    // cargo hides a passing test's output: scripts/test prints this file.
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-guest-report.txt");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()).unwrap();
}

fn boot_and_check(mode: CacheMode, kernel_file: &str) {
    let Some((kdir, rootfs)) = guest() else {
        return;
    };
    let pristine = std::fs::read(&rootfs).unwrap();
    let b = boot(&kdir.join(kernel_file), &rootfs, mode);
    check(&format!("{kernel_file} cache={mode}"), mode, &pristine, &b);
}

#[test]
fn linux_writeback() {
    boot_and_check(CacheMode::Writeback, "vmlinux");
}

#[test]
fn linux_none() {
    boot_and_check(CacheMode::None, "vmlinux");
}

#[test]
fn linux_writethrough() {
    boot_and_check(CacheMode::Writethrough, "vmlinux");
}

#[test]
fn linux_directsync() {
    boot_and_check(CacheMode::DirectSync, "vmlinux");
}

#[test]
fn linux_unsafe() {
    boot_and_check(CacheMode::Unsafe, "vmlinux");
}

#[test]
fn linux_bzimage_directsync() {
    boot_and_check(CacheMode::DirectSync, "bzImage");
}
