//! Crash consistency of every cache mode and engine, checked on crashfs.
//!
//! Each case opens an image on a crashfs mount with `Disk::open`, submits
//! writes (and flushes) through the public API, records which completed
//! successfully, cuts the power and reads the backing file: what survived is
//! judged by crashfs alone, not by the block crate's counters.
//!
//! Promises checked (DESIGN.md, "Cache modes"):
//! - writethrough, directsync: every acknowledged write survives;
//! - writeback, none: every write followed by an acknowledged flush
//!   survives, and acknowledged writes without a flush are lost (crashfs
//!   models the page cache and the disk's volatile cache; the host must not
//!   do more than the guest was told);
//! - unsafe: nothing is promised, and acknowledged + flushed writes are lost;
//! - WCE off in writeback/none makes each write durable (and flushes once at
//!   the change); WCE on in writethrough/directsync makes writes volatile
//!   until a flush;
//! - a flush after a failed flush never reports success for data that is
//!   not durable.
//!
//! crashfs accepts `O_DIRECT` (Linux FUSE sends direct I/O straight to it),
//! so `none` and `directsync` run on it like the other modes; each case
//! checks through crashfs's own counters that the image was opened with
//! `O_DIRECT` exactly in those modes.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs;
use std::path::PathBuf;

use block::{CacheMode, Completion, Disk, DiskConfig, EngineKind, Op, Segment};
use crashfs::{CrashFs, Fault, FaultError};
use tempfile::TempDir;

const BLOCK: usize = 4096;
const IMAGE_SIZE: usize = 1 << 20;
const ENGINES: [EngineKind; 2] = [EngineKind::IoUring, EngineKind::Sync];

/// A mount holding the images of one test; unmounted before the directories
/// are removed (field order is drop order).
struct Rig {
    fs: CrashFs,
    _backing: TempDir,
    _mnt: TempDir,
    images: usize,
}

impl Rig {
    /// Mounts crashfs, or prints `SKIP: <reason>` and returns None.
    fn new() -> Option<Rig> {
        if let Some(reason) = crashfs::unavailable_reason() {
            eprintln!("SKIP: {reason}");
            return None;
        }
        let backing = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let fs = CrashFs::mount(backing.path(), mnt.path()).expect("mount crashfs");
        Some(Rig {
            fs,
            _backing: backing,
            _mnt: mnt,
            images: 0,
        })
    }

    /// A fresh zeroed image, durable; returns its name.
    fn new_image(&mut self) -> String {
        self.images += 1;
        let name = format!("disk{}.img", self.images);
        fs::write(self.fs.backing_path(&name), vec![0u8; IMAGE_SIZE]).unwrap();
        name
    }

    /// Opens `name` through the mount. None (after a SKIP line) when the
    /// engine is not available on this kernel.
    fn open(&self, name: &str, cache: CacheMode, engine: EngineKind) -> Option<Disk> {
        let cfg = DiskConfig {
            path: self.fs.path(name),
            cache,
            read_only: false,
            engine: Some(engine),
        };
        let before = self.fs.stats();
        let disk = Disk::open(&cfg)
            .unwrap_or_else(|e| panic!("open {name} with cache={cache} on crashfs: {e}"));
        if disk.engine_kind() != engine {
            eprintln!(
                "SKIP: engine {engine:?} unavailable (got {:?})",
                disk.engine_kind()
            );
            return None;
        }
        let direct = self.fs.stats().direct_opens > before.direct_opens;
        let want_direct = matches!(cache, CacheMode::None | CacheMode::DirectSync);
        assert_eq!(
            direct, want_direct,
            "cache={cache}: O_DIRECT open seen by crashfs = {direct}"
        );
        Some(disk)
    }

    /// The durable content of `block` in image `name`.
    fn durable_block(&self, name: &str, block: u64) -> Vec<u8> {
        let all = fs::read(self.fs.backing_path(name)).unwrap();
        let at = block as usize * BLOCK;
        all[at..at + BLOCK].to_vec()
    }
}

/// A block-sized, page-aligned buffer (valid for O_DIRECT without bouncing).
struct Buf {
    ptr: *mut u8,
}

impl Buf {
    fn layout() -> Layout {
        Layout::from_size_align(BLOCK, BLOCK).unwrap()
    }

    fn new(content: &[u8]) -> Buf {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(Buf::layout()) };
        assert!(!ptr.is_null());
        // SAFETY: ptr is valid for BLOCK bytes and content is BLOCK long.
        unsafe { std::ptr::copy_nonoverlapping(content.as_ptr(), ptr, BLOCK) };
        Buf { ptr }
    }

    /// The buffer as two segments, to exercise scatter-gather.
    fn segments(&self) -> Vec<Segment> {
        let half = BLOCK / 2;
        vec![
            Segment {
                addr: self.ptr,
                len: half,
            },
            Segment {
                // SAFETY: half < BLOCK, inside the allocation.
                addr: unsafe { self.ptr.add(half) },
                len: half,
            },
        ]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in Buf::new with this layout, freed once.
        unsafe { dealloc(self.ptr, Buf::layout()) }
    }
}

/// What a write of `block` with `tag` puts in the image: distinct per
/// block and per write, never all zeroes.
fn pattern(block: u64, tag: u8) -> Vec<u8> {
    let mut data = vec![tag; BLOCK];
    data[..8].copy_from_slice(&block.to_le_bytes());
    data[8] = 0xfe;
    data
}

/// Submits `ops` (each with its buffer, if any), in batches no larger than
/// the queue, and waits for all of them. Returns each op's result in order.
fn run(disk: &mut Disk, ops: Vec<(Op, Option<Buf>)>) -> Vec<Completion> {
    let mut results: Vec<Option<Completion>> = (0..ops.len()).map(|_| None).collect();
    let mut queue = ops.into_iter().enumerate().peekable();
    while queue.peek().is_some() {
        let mut held = Vec::new();
        while disk.in_flight() < disk.queue_depth() {
            let Some((i, (op, buf))) = queue.next() else {
                break;
            };
            // SAFETY: the segments point into `buf`, kept in `held` until
            // wait_idle below has returned every completion of this batch.
            unsafe { disk.submit(op, i as u64) }.expect("submit");
            held.push(buf);
        }
        disk.kick().expect("kick");
        let mut done = Vec::new();
        disk.wait_idle(&mut done);
        drop(held);
        for c in done {
            let i = c.user_data as usize;
            assert!(results[i].is_none(), "two completions for op {i}");
            results[i] = Some(c);
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.unwrap_or_else(|| panic!("op {i} never completed")))
        .collect()
}

/// Writes `blocks` with `tag`; returns the blocks whose write was acknowledged.
fn write_blocks(disk: &mut Disk, blocks: std::ops::Range<u64>, tag: u8) -> Vec<u64> {
    let ops = blocks
        .clone()
        .map(|b| {
            let buf = Buf::new(&pattern(b, tag));
            let op = Op::Write {
                offset: b * BLOCK as u64,
                segments: buf.segments(),
            };
            (op, Some(buf))
        })
        .collect();
    let done = run(disk, ops);
    blocks
        .zip(done)
        .filter_map(|(b, c)| match c.result {
            Ok(n) if n as usize == BLOCK => Some(b),
            Ok(n) => panic!("write of block {b} returned {n} bytes"),
            Err(_) => None,
        })
        .collect()
}

/// Flushes; true when the flush was acknowledged.
fn flush(disk: &mut Disk) -> bool {
    run(disk, vec![(Op::Flush, None)])
        .pop()
        .is_some_and(|c| c.result.is_ok())
}

/// Asserts that every block in `blocks` holds `tag`'s pattern after the cut.
fn assert_survived(rig: &Rig, name: &str, blocks: &[u64], tag: u8, what: &str) {
    for &b in blocks {
        assert_eq!(
            rig.durable_block(name, b),
            pattern(b, tag),
            "{what}: block {b} was acknowledged but did not survive the power cut"
        );
    }
}

/// Asserts that every block in `blocks` is back to zero after the cut.
fn assert_lost(rig: &Rig, name: &str, blocks: &[u64], what: &str) {
    for &b in blocks {
        assert_eq!(
            rig.durable_block(name, b),
            vec![0u8; BLOCK],
            "{what}: block {b} survived although nothing made it durable"
        );
    }
}

fn image_path(rig: &Rig, name: &str) -> PathBuf {
    rig.fs.backing_path(name)
}

#[test]
fn acknowledged_writes_survive_as_each_mode_promises() {
    let Some(mut rig) = Rig::new() else {
        return;
    };
    for cache in CacheMode::ALL {
        for engine in ENGINES {
            let what = format!("cache={cache} engine={engine:?}");
            let name = rig.new_image();
            let Some(mut disk) = rig.open(&name, cache, engine) else {
                continue;
            };
            let flushed = write_blocks(&mut disk, 0..8, 1);
            assert_eq!(flushed.len(), 8, "{what}: writes failed");
            assert!(flush(&mut disk), "{what}: flush failed");
            let unflushed = write_blocks(&mut disk, 8..16, 2);
            assert_eq!(unflushed.len(), 8, "{what}: writes failed");
            rig.fs.power_cut();
            drop(disk);
            match cache {
                CacheMode::Writethrough | CacheMode::DirectSync => {
                    assert_survived(&rig, &name, &flushed, 1, &what);
                    assert_survived(&rig, &name, &unflushed, 2, &what);
                }
                CacheMode::Writeback | CacheMode::None => {
                    assert_survived(&rig, &name, &flushed, 1, &what);
                    assert_lost(&rig, &name, &unflushed, &what);
                }
                CacheMode::Unsafe => {
                    // No promise: even the flushed writes are gone.
                    assert_lost(&rig, &name, &flushed, &what);
                    assert_lost(&rig, &name, &unflushed, &what);
                }
            }
            eprintln!("{what}: ok ({})", image_path(&rig, &name).display());
        }
    }
}

#[test]
fn write_cache_off_makes_every_write_durable() {
    let Some(mut rig) = Rig::new() else {
        return;
    };
    for cache in [CacheMode::Writeback, CacheMode::None] {
        for engine in ENGINES {
            let what = format!("cache={cache} engine={engine:?} WCE=0");
            let name = rig.new_image();
            let Some(mut disk) = rig.open(&name, cache, engine) else {
                continue;
            };
            assert!(disk.write_cache(), "{what}: WCE should start on");
            let before = write_blocks(&mut disk, 0..4, 1);
            disk.set_write_cache(false).expect("set_write_cache(false)");
            assert!(!disk.write_cache());
            let after = write_blocks(&mut disk, 4..12, 2);
            assert_eq!((before.len(), after.len()), (4, 8), "{what}: writes failed");
            rig.fs.power_cut();
            drop(disk);
            // The switch flushed what was written before it.
            assert_survived(&rig, &name, &before, 1, &what);
            assert_survived(&rig, &name, &after, 2, &what);
        }
    }
}

#[test]
fn write_cache_on_in_writethrough_needs_a_flush() {
    let Some(mut rig) = Rig::new() else {
        return;
    };
    for cache in [CacheMode::Writethrough, CacheMode::DirectSync] {
        for engine in ENGINES {
            let what = format!("cache={cache} engine={engine:?} WCE=1");
            let name = rig.new_image();
            let Some(mut disk) = rig.open(&name, cache, engine) else {
                continue;
            };
            assert!(!disk.write_cache(), "{what}: WCE should start off");
            disk.set_write_cache(true).expect("set_write_cache(true)");
            let flushed = write_blocks(&mut disk, 0..4, 1);
            assert!(flush(&mut disk), "{what}: flush failed");
            let unflushed = write_blocks(&mut disk, 4..8, 2);
            assert_eq!(
                (flushed.len(), unflushed.len()),
                (4, 4),
                "{what}: writes failed"
            );
            rig.fs.power_cut();
            drop(disk);
            assert_survived(&rig, &name, &flushed, 1, &what);
            // The guest was told it has a volatile cache: no more than that.
            assert_lost(&rig, &name, &unflushed, &what);
        }
    }
}

#[test]
fn write_zeroes_is_durable_like_a_write() {
    let Some(mut rig) = Rig::new() else {
        return;
    };
    for cache in [
        CacheMode::Writeback,
        CacheMode::None,
        CacheMode::Writethrough,
        CacheMode::DirectSync,
    ] {
        for engine in ENGINES {
            let what = format!("cache={cache} engine={engine:?} write-zeroes");
            let name = rig.new_image();
            let Some(mut disk) = rig.open(&name, cache, engine) else {
                continue;
            };
            if !disk.supports_write_zeroes() {
                eprintln!("SKIP: {what}: the disk offers no write-zeroes on crashfs");
                continue;
            }
            let written = write_blocks(&mut disk, 0..4, 1);
            assert!(flush(&mut disk), "{what}: flush failed");
            let op = Op::WriteZeroes {
                offset: BLOCK as u64,
                len: 2 * BLOCK as u64,
                may_unmap: true,
            };
            let zeroed = run(&mut disk, vec![(op, None)]);
            assert!(zeroed[0].result.is_ok(), "{what}: write-zeroes failed");
            if matches!(cache, CacheMode::Writeback | CacheMode::None) {
                assert!(flush(&mut disk), "{what}: flush failed");
            }
            rig.fs.power_cut();
            drop(disk);
            assert_eq!(written.len(), 4);
            assert_survived(&rig, &name, &[0, 3], 1, &what);
            assert_lost(&rig, &name, &[1, 2], &what);
        }
    }
}

#[test]
fn flush_after_a_failed_flush_never_lies() {
    let Some(mut rig) = Rig::new() else {
        return;
    };
    for engine in ENGINES {
        let what = format!("cache=writeback engine={engine:?} after EIO");
        let name = rig.new_image();
        let Some(mut disk) = rig.open(&name, CacheMode::Writeback, engine) else {
            continue;
        };
        let written = write_blocks(&mut disk, 0..4, 1);
        assert_eq!(written.len(), 4);
        let failed_before = rig.fs.stats().failed_fsyncs;
        rig.fs.fail_fsyncs(Some(Fault::once(FaultError::Eio)));
        assert!(!flush(&mut disk), "{what}: flush hid the host EIO");
        assert_eq!(rig.fs.stats().failed_fsyncs, failed_before + 1);
        rig.fs.fail_fsyncs(None);
        // The host now says fsync succeeds, but the data it failed to
        // write is gone from its dirty set (Linux behaviour, modelled by
        // crashfs): an acknowledged flush would be a lie.
        let second = flush(&mut disk);
        rig.fs.power_cut();
        drop(disk);
        if second {
            assert_survived(&rig, &name, &written, 1, &what);
        }
        assert!(!second, "{what}: the retried flush reported success");
    }
}

#[test]
fn failed_write_is_not_acknowledged() {
    let Some(mut rig) = Rig::new() else {
        return;
    };
    for engine in ENGINES {
        for error in [FaultError::Eio, FaultError::Enospc] {
            let what = format!("cache=writethrough engine={engine:?} {error:?}");
            let name = rig.new_image();
            let Some(mut disk) = rig.open(&name, CacheMode::Writethrough, engine) else {
                continue;
            };
            rig.fs.fail_writes(Some(Fault::once(error)));
            let acked = write_blocks(&mut disk, 0..1, 1);
            assert!(acked.is_empty(), "{what}: failed write was acknowledged");
            rig.fs.fail_writes(None);
            let acked = write_blocks(&mut disk, 1..2, 2);
            assert_eq!(acked, vec![1], "{what}: the disk did not recover");
            rig.fs.power_cut();
            drop(disk);
            assert_lost(&rig, &name, &[0], &what);
            assert_survived(&rig, &name, &[1], 2, &what);
        }
    }
}
