//! The host failing under the disk, and the host's own view of what the disk
//! did: ENOSPC on a full ext4, a file system refusing O_DIRECT, injected
//! fdatasync errors (sticky on buffered images), and sync counts checked
//! from the file system's side (crashfs) rather than the disk's counters.

#[macro_use]
mod common;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use block::{BlockError, CacheMode, Disk, EngineKind, Op};
use common::*;
use crashfs::{Fault, FaultError};

/// A file system mounted for one test, unmounted on drop.
struct Mounted {
    dir: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Mounted {
    /// Runs `mount ARGS... SCRATCH/mnt`; None (after printing SKIP) when
    /// it fails.
    fn new(
        scratch: tempfile::TempDir,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> Option<Mounted> {
        let dir = scratch.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = Command::new("mount").args(&args).arg(&dir).output();
        match out {
            Ok(o) if o.status.success() => Some(Mounted {
                dir,
                _scratch: scratch,
            }),
            Ok(o) => {
                eprintln!(
                    "SKIP: mount {args:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn enospc_surfaces(engine: EngineKind) {
    for mode in [CacheMode::Writeback, CacheMode::None, CacheMode::DirectSync] {
        let Some(m) = mount_loop_ext4() else { return };
        let img = image(&m.dir, 16 << 20);
        let mut d = open(&img, mode, engine);
        let chunk = vec![0x5au8; 1 << 20];
        let mut failure = None;
        for i in 0..16u64 {
            let c = write_at(&mut d, i << 20, &chunk, 0, &[]);
            if let Err(e) = c.result {
                failure = Some(e);
                break;
            }
        }
        let e = failure.unwrap_or_else(|| panic!("{mode}: 16 MiB fit in a 4 MiB file system"));
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{mode}: {e}");
        assert!(matches!(e, BlockError::Io(_)));
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert_eq!(d.stats().errors, 1, "{mode}");
        // The disk keeps working: reads and flushes still succeed.
        read_at(&mut d, 0, 4096, 0, &[]);
        drop(d);
    }
}

/// `mount -o loop FS DIR` of a fresh 4 MiB ext4.
fn mount_loop_ext4() -> Option<Mounted> {
    let scratch = scratch();
    let fs_img = scratch.path().join("fs.ext4");
    std::fs::File::create(&fs_img)
        .and_then(|f| f.set_len(4 << 20))
        .expect("fs image");
    match Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&fs_img)
        .output()
    {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!("SKIP: mkfs.ext4 failed: {other:?}");
            return None;
        }
    }
    Mounted::new(
        scratch,
        [OsStr::new("-o"), OsStr::new("loop"), fs_img.as_os_str()],
    )
}

/// ramfs has no O_DIRECT: cache=none and directsync are refused with one
/// clear error naming the file; buffered modes work.
#[test]
fn direct_io_refused_with_advice() {
    let Some(m) = Mounted::new(scratch(), ["-t", "ramfs", "ramfs"]) else {
        return;
    };
    let img = image(&m.dir, 1 << 20);
    for mode in [CacheMode::None, CacheMode::DirectSync] {
        match Disk::open(&config(&img, mode, EngineKind::Sync, false)) {
            Err(e @ BlockError::DirectIoUnsupported { .. }) => {
                let s = e.to_string();
                assert!(s.contains(&img.display().to_string()), "{s}");
                assert!(
                    s.contains("cache=writeback") && s.contains("cache=writethrough"),
                    "{s}"
                );
            }
            Err(e) => panic!("{mode}: wrong error: {e}"),
            Ok(_) => panic!("{mode}: ramfs accepted O_DIRECT"),
        }
    }
    for mode in [CacheMode::Writeback, CacheMode::Writethrough] {
        Disk::open(&config(&img, mode, EngineKind::Sync, false)).expect("buffered open on ramfs");
    }
}

/// After a failed fdatasync on a buffered image every later flush fails;
/// on an O_DIRECT image the next flush is tried again.
fn failed_fdatasync_is_sticky_when_buffered(engine: EngineKind) {
    for mode in [CacheMode::Writeback, CacheMode::None] {
        let Some(c) = crashfs_with_image() else {
            return;
        };
        let img = c.fs.path("disk.img");
        let mut d = open(&img, mode, engine);
        write_at(&mut d, 0, &pattern(8192, 1), 0, &[])
            .result
            .expect("write");
        c.fs.fail_fsyncs(Some(Fault::once(FaultError::Eio)));
        let e = op(&mut d, Op::Flush).result.expect_err("flush must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{mode}: {e}");
        let again = op(&mut d, Op::Flush).result;
        if mode.direct() {
            again.expect("O_DIRECT: the next flush is tried and succeeds");
        } else {
            let e = again.expect_err("buffered: later flushes keep failing");
            assert!(matches!(e, BlockError::SyncFailedEarlier), "{e}");
            write_at(&mut d, 0, &pattern(8192, 2), 0, &[])
                .result
                .expect("writes still work");
            assert!(op(&mut d, Op::Flush).result.is_err());
        }
        assert_eq!(d.stats().errors, if mode.direct() { 1 } else { 3 });
        assert!(c.fs.stats().failed_fsyncs >= 1);
    }
}

/// With the write cache off, a write whose durability step fails completes
/// with the error (O_DSYNC in writethrough, RWF_DSYNC in writeback).
fn durable_write_failure_surfaces(engine: EngineKind) {
    for mode in [CacheMode::Writethrough, CacheMode::Writeback] {
        let Some(c) = crashfs_with_image() else {
            return;
        };
        let mut d = open(&c.fs.path("disk.img"), mode, engine);
        d.set_write_cache(false).expect("wce off");
        c.fs.fail_fsyncs(Some(Fault::once(FaultError::Eio)));
        let r = write_at(&mut d, 4096, &pattern(4096, 3), 0, &[]).result;
        let e = r.expect_err("durable write must report the failed sync");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{mode}: {e}");
        assert_eq!(d.stats().errors, 1);
        write_at(&mut d, 4096, &pattern(4096, 3), 0, &[])
            .result
            .expect("next write");
    }
}

/// The file system's count of syncs equals the disk's host_syncs in every
/// mode, across write-cache switches; it saw O_DIRECT and O_DSYNC opens
/// exactly where the mode asks; what the disk said was durable survives a
/// power cut.
fn file_system_sees_the_syncs(engine: EngineKind) {
    for mode in CacheMode::ALL {
        let Some(c) = crashfs_with_image() else {
            return;
        };
        let mut d = open(&c.fs.path("disk.img"), mode, engine);
        let base = c.fs.stats().fsyncs;
        let data = pattern(4096, 7);
        for wce in [true, false, true] {
            d.set_write_cache(wce).expect("switch");
            for i in 0..3u64 {
                write_at(&mut d, i * 4096, &data, 0, &[])
                    .result
                    .expect("write");
            }
            op(&mut d, Op::Flush).result.expect("flush");
            op(&mut d, Op::Flush).result.expect("flush");
        }
        let s = d.stats();
        let fs = c.fs.stats();
        assert_eq!(fs.direct_opens > 0, mode.direct(), "{mode}: {fs:?}");
        let reopens_dsync = matches!(mode, CacheMode::Writethrough | CacheMode::DirectSync);
        assert_eq!(fs.dsync_opens > 0, reopens_dsync, "{mode}: {fs:?}");
        let fs_syncs = fs.fsyncs - base;
        assert_eq!(
            fs_syncs, s.host_syncs,
            "{mode}: file system vs disk ({s:?})"
        );
        match mode {
            CacheMode::Unsafe => assert_eq!(s.host_syncs, 0),
            _ => assert!(s.host_syncs > 0),
        }
        // Durable writes survive a power cut.
        d.set_write_cache(false).expect("wce off");
        write_at(&mut d, 65536, &data, 0, &[])
            .result
            .expect("write");
        drop(d);
        c.fs.power_cut();
        let back = std::fs::read(c.fs.backing_path("disk.img")).expect("backing");
        let survived = back.get(65536..65536 + 4096) == Some(&data[..]);
        assert_eq!(survived, mode != CacheMode::Unsafe, "{mode}");
    }
}

/// ramfs can neither punch holes nor zero ranges: discard is a no-op and
/// write-zeroes falls back to writing zeros, durably when WCE is off.
fn write_zeroes_fallback(engine: EngineKind) {
    let Some(m) = Mounted::new(scratch(), ["-t", "ramfs", "ramfs"]) else {
        return;
    };
    let img = image(&m.dir, 3 << 20);
    std::fs::write(&img, vec![0xeeu8; 3 << 20]).expect("seed");
    let mut d = open(&img, CacheMode::Writethrough, engine);
    assert!(!d.supports_discard() && d.supports_write_zeroes());
    op(
        &mut d,
        Op::Discard {
            offset: 0,
            len: 4096,
        },
    )
    .result
    .expect("discard is a hint");
    let z = Op::WriteZeroes {
        offset: 4096,
        len: (2 << 20) + 8192,
        may_unmap: true,
    };
    op(&mut d, z).result.expect("write zeroes");
    let all = std::fs::read(&img).expect("read");
    assert!(
        all[..4096].iter().all(|&b| b == 0xee),
        "discard changed nothing"
    );
    assert!(
        all[4096..(2 << 20) + 12288].iter().all(|&b| b == 0),
        "zeroed"
    );
    assert!(
        all[(2 << 20) + 12288..].iter().all(|&b| b == 0xee),
        "tail untouched"
    );
    let s = d.stats();
    assert_eq!((s.discards, s.write_zeroes, s.errors), (1, 1, 0));
}

/// A loop device with 4096-byte sectors: size from BLKGETSIZE64, block size
/// from the device, O_DIRECT requests bounced, 512-aligned reads and writes
/// widened to whole blocks in every mode, misaligned discards refused.
fn block_device_4k_sectors(engine: EngineKind) {
    // `losetup --find --show` run by two threads at once can hand both the
    // same free device: one engine's test at a time.
    static LOOP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOOP.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch();
    let backing = image(dir.path(), 8 << 20);
    let out = Command::new("losetup")
        .args(["--find", "--show", "--sector-size", "4096"])
        .arg(&backing)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        other => {
            eprintln!("SKIP: cannot attach a loop device: {other:?}");
            return;
        }
    };
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let dev = Path::new(&dev);
    let mut d = open(dev, CacheMode::None, engine);
    assert!(d.is_block_device());
    assert_eq!(d.capacity(), 8 << 20);
    assert_eq!(d.logical_block_size(), 4096);
    let data = pattern(16384, 8);
    write_at(&mut d, 8192, &data, 1, &[])
        .result
        .expect("bounced write");
    assert!(read_at(&mut d, 8192, 16384, 1, &[]) == data);
    assert!(d.stats().bounced >= 2);
    // SAFETY: no segments.
    let r = unsafe {
        d.submit(
            Op::WriteZeroes {
                offset: 512,
                len: 4096,
                may_unmap: false,
            },
            1,
        )
    };
    assert!(
        matches!(r, Err(BlockError::Misaligned { align: 4096, .. })),
        "{r:?}"
    );
    op(
        &mut d,
        Op::WriteZeroes {
            offset: 8192,
            len: 4096,
            may_unmap: false,
        },
    )
    .result
    .expect("zeroes");
    assert!(read_at(&mut d, 8192, 4096, 0, &[]).iter().all(|&b| b == 0));
    op(&mut d, Op::Flush).result.expect("flush");
    drop(d);
    let back = std::fs::read(&backing).expect("backing");
    assert!(
        back[12288..8192 + 16384] == data[4096..],
        "reached the backing file"
    );
    // §5.2.5: 512-byte units on a 4Kn device, in every mode: a sector
    // inside a block and a range across a block boundary.
    for mode in CacheMode::ALL {
        let mut d = reopen(dev, mode, engine);
        let base = 65536 * (mode as u64 + 1);
        for (off, len, seed) in [(base + 512, 512, 1u8), (base + 7680, 1024, 2)] {
            let data = pattern(len, seed + mode as u8);
            write_at(&mut d, off, &data, 0, &[])
                .result
                .expect("read-modify-write");
            assert!(read_at(&mut d, off, len, 0, &[]) == data, "{mode} {off}");
        }
        assert_eq!(d.stats().read_modify_writes, 2, "{mode}");
        op(&mut d, Op::Flush).result.expect("flush");
    }
}

/// Opens `path` right after a `Disk` on it was dropped. Its lock can
/// outlive the drop by a moment: another test's thread that spawns a
/// process (losetup, mount) holds a copy of every descriptor until the
/// child's exec closes it, and an OFD lock lasts as long as any copy.
fn reopen(path: &Path, mode: CacheMode, engine: EngineKind) -> Disk {
    let cfg = config(path, mode, engine, false);
    for _ in 0..200 {
        match Disk::open(&cfg) {
            Err(BlockError::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.expect("open disk"),
        }
    }
    panic!("{}: still locked after 2 s", path.display());
}

per_engine!(
    enospc_surfaces,
    failed_fdatasync_is_sticky_when_buffered,
    durable_write_failure_surfaces,
    file_system_sees_the_syncs,
    write_zeroes_fallback,
    block_device_4k_sectors,
);
