//! The real Linux guest, booted by `ferrite` once per cache mode and once
//! from the `bzImage`.
//!
//! The kernel and the root disk come from `resources/guest/` (built once,
//! cached under `target/` by their inputs). Each boot mounts the ext4 root
//! read-write from `/dev/vda` and runs the disk's `/init`, which checks from
//! inside the guest what a user would (cache type per mode, toggling it, a
//! write, `sync`, reading back, writes with the cache switched to write
//! through) and reports through the debug-exit port. The test then checks
//! from the host what ferrite did: the block size it announced is the one
//! the guest sees, the flushes came exactly when the guest sees a write-back
//! cache, the writes made with the cache switched to write through were
//! durable, and the image changed as a read-write mount changes it. Every
//! boot must reach `/init`'s pass verdict where `/dev/kvm` works
//! (HOST-KVM.md says how user space runs on emulating hosts too).

#[path = "common/guest.rs"]
mod guest;
#[path = "common/linux.rs"]
mod linux;
#[path = "common/probe.rs"]
mod probe;

use std::path::Path;
use std::time::Duration;

use block::CacheMode;
use linux::{guest, report, Ended, Running, HOST_KVM_ARGS};

/// Longest a single boot may take (about a minute here, under a second on
/// hardware).
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// ferrite's status when `/init` passed (debug-exit 0x10) and failed (0x11).
const INIT_PASS: i32 = 33;
const INIT_FAIL: i32 = 35;
/// Blocks `/init` writes with `O_DIRECT` after switching the cache to write
/// through (`DURABLE_BLOCKS` in `resources/guest/rootfs/init`).
const DURABLE_BLOCKS: u64 = 16;
/// Offset of the ext4 superblock's `s_mnt_count` (u16 LE) in the image.
const MNT_COUNT_OFFSET: usize = 1024 + 0x34;

/// What one boot showed.
struct Boot {
    ended: Ended,
    stats: serde_json::Value,
    image: Vec<u8>,
}

impl Boot {
    fn disk(&self) -> &serde_json::Value {
        &self.stats["disks"][0]
    }

    /// The value of the guest's `GUEST key=value` line.
    fn guest_value(&self, key: &str) -> Option<String> {
        let prefix = format!("GUEST {key}=");
        self.ended
            .console
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
    }
}

/// Boots `kernel` with a private copy of the root disk in `mode`.
fn boot(kernel: &Path, rootfs: &Path, mode: CacheMode) -> Boot {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = dir.path().join("rootfs.ext4");
    std::fs::copy(rootfs, &image).unwrap();
    let stats = dir.path().join("stats.json");
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda rw ferrite.cache={mode} reboot=k panic=-1 {HOST_KVM_ARGS}"
    );
    let mut args = linux::boot_args(kernel, cmdline);
    args.extend([
        "--drive".into(),
        format!("file={},cache={mode}", image.display()),
        "--stats-json".into(),
        stats.display().to_string(),
    ]);
    let ended = Running::spawn(&args).wait(BOOT_LIMIT);
    let stats = std::fs::read(&stats)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    Boot {
        ended,
        stats,
        image: std::fs::read(&image).unwrap(),
    }
}

fn mount_count(image: &[u8]) -> u16 {
    u16::from_le_bytes([image[MNT_COUNT_OFFSET], image[MNT_COUNT_OFFSET + 1]])
}

/// Checks one boot against what the mode promises, from inside the guest
/// (`/init`'s verdict) and from the host (the image and `--stats-json`).
fn check(label: &str, mode: CacheMode, pristine: &[u8], b: &Boot) {
    let e = &b.ended;
    let describe = || e.describe(40);
    let to_init = e
        .to_init
        .unwrap_or_else(|| panic!("{label}: the kernel never ran /init\n{}", describe()));
    match e.status {
        Some(INIT_PASS) => {}
        Some(INIT_FAIL) => panic!("{label}: /init reported a failure\n{}", describe()),
        other => panic!(
            "{label}: /init gave no verdict (exit {other:?}); user space must run here\n{}",
            describe()
        ),
    }
    let sectors = pristine.len() / 512;
    let found = format!("[vda] {sectors} 512-byte logical blocks");
    assert!(e.has(&found), "{label}: no `{found}`\n{}", describe());
    assert!(
        e.console
            .iter()
            .any(|l| l.contains("Mounted root (ext4 filesystem) on device")
                && !l.contains("readonly")),
        "{label}: the ext4 root was not mounted read-write\n{}",
        describe()
    );

    // The kernel changed the image as a read-write mount does.
    let (before, after) = (mount_count(pristine), mount_count(&b.image));
    assert_eq!(
        after,
        before.wrapping_add(1),
        "{label}: the superblock's mount count went from {before} to {after}"
    );

    let disk = b.disk();
    assert_eq!(
        disk["cache"].as_str(),
        Some(mode.name()),
        "{label}: stats: {disk}"
    );
    // The block size the guest sees is the one ferrite announced.
    let announced = disk["block_size"].as_u64();
    let seen = b
        .guest_value("vda_logical_block_size")
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        announced.is_some() && seen == announced,
        "{label}: ferrite announced block size {announced:?}, the guest sees {seen:?}"
    );

    // A write-back cache as the guest sees it draws flushes (`sync` and
    // ext4's journal commits); a write-through one draws none (the block
    // layer drops them).
    let counter = |name: &str| {
        disk["disk"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{label}: no `{name}` in --stats-json: {}", b.stats))
    };
    let exit_flush = u64::from(mode != CacheMode::Unsafe);
    let guest_flushes = counter("flushes").saturating_sub(exit_flush);
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
    // The O_DIRECT writes /init made with the cache switched to write
    // through were durable when they completed: ferrite wrote them with
    // O_DSYNC or RWF_DSYNC (every mode but unsafe, which promises nothing
    // and syncs nothing).
    assert_eq!(
        b.guest_value("durable_writes").as_deref(),
        Some(DURABLE_BLOCKS.to_string().as_str()),
        "{label}: /init did not write its blocks with the cache in write through\n{}",
        describe()
    );
    let dsync_writes = counter("dsync_writes");
    if mode == CacheMode::Unsafe {
        assert_eq!(counter("host_syncs"), 0, "{label}: unsafe synced: {disk}");
    } else {
        assert!(
            dsync_writes >= DURABLE_BLOCKS,
            "{label}: {dsync_writes} durable writes, at least {DURABLE_BLOCKS} expected \
             after the guest switched to write through (stats {disk})"
        );
    }
    assert_eq!(counter("errors"), 0, "{label}: {disk}");

    report(&format!(
        "{label}: verified userspace (/init passed); Run /init after {:.1} s, verdict after \
         {:.1} s; block size {}; {guest_flushes} guest flushes; {dsync_writes} durable writes; \
         mount count {before} -> {after}",
        to_init.as_secs_f64(),
        e.elapsed.as_secs_f64(),
        announced.unwrap_or(0),
    ));
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
