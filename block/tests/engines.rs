//! End-to-end tests of a disk, written once and run against each engine
//! (the `per_engine!` list at the end instantiates them).

#[macro_use]
mod common;

use block::{BlockError, CacheMode, Disk, EngineKind, Op, QUEUE_DEPTH};
use common::*;

const MIB: u64 = 1 << 20;

fn open_flags_per_mode(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    for mode in CacheMode::ALL {
        for read_only in [false, true] {
            let d = Disk::open(&config(&img, mode, engine, read_only)).expect("open");
            let f = fd_flags(d.data_fd());
            let sw = mode.switches();
            let what = format!("{mode} read_only={read_only}: flags {f:o}");
            assert_eq!(f & 3, if read_only { 0 } else { 2 }, "{what}");
            assert_eq!(f & O_DIRECT != 0, sw.direct, "{what}");
            assert_eq!(f & O_DSYNC != 0, !sw.writeback, "{what}");
            assert_eq!(f & O_SYNC_ONLY, 0, "O_SYNC instead of O_DSYNC: {what}");
            assert_eq!(
                d.data_open_flags() as u32 & (O_DIRECT | O_DSYNC | 3),
                f & (O_DIRECT | O_DSYNC | 3)
            );
            assert_eq!(d.write_cache(), mode.default_write_cache());
        }
    }
}

/// Data written from and read into buffers at every awkward address and
/// segment split round-trips, in every mode; O_DIRECT modes bounce exactly
/// the misaligned requests.
fn unaligned_buffers_round_trip(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), 4 * MIB);
    for mode in CacheMode::ALL {
        let mut d = open(&img, mode, engine);
        let base = 64 * 1024 * (mode as u64 + 1);
        let cases: [(usize, &[usize]); 5] = [
            (0, &[]),
            (1, &[]),
            (7, &[100, 412, 3]),
            (512, &[1536]),
            (4095, &[1, 1, 1]),
        ];
        for (i, &(skew, lens)) in cases.iter().enumerate() {
            let data = pattern(8192, i as u8 + mode as u8);
            let off = base + i as u64 * 8192;
            let before = d.stats().bounced;
            let c = write_at(&mut d, off, &data, skew, lens);
            assert_eq!(c.result.expect("write"), 8192, "{mode} skew {skew}");
            let misaligned = skew % d.mem_alignment() != 0
                || lens
                    .iter()
                    .any(|l| l % (d.logical_block_size() as usize).max(d.mem_alignment()) != 0);
            let bounced = d.stats().bounced - before;
            if mode.direct() {
                assert_eq!(
                    bounced,
                    u64::from(misaligned),
                    "{mode} skew {skew} lens {lens:?}"
                );
            } else {
                assert_eq!(bounced, 0, "buffered {mode} never bounces");
            }
            for (rskew, rlens) in [(0usize, &[][..]), (3, &[513, 511][..])] {
                let back = read_at(&mut d, off, 8192, rskew, rlens);
                assert!(
                    back == data,
                    "{mode}: read back differs (skews {skew}/{rskew})"
                );
            }
        }
        let mut out = Vec::new();
        d.wait_idle(&mut out);
        assert!(out.is_empty());
        assert_eq!(d.in_flight(), 0);
    }
    let st = std::fs::read(&img).expect("read image");
    let want = pattern(8192, 1 + CacheMode::None as u8);
    let off = (64 * 1024 * (CacheMode::None as usize + 1)) + 8192;
    assert!(
        st[off..off + 8192] == want[..],
        "image file holds what cache=none wrote"
    );
}

/// A forced alignment sends even buffered-mode requests through the bounce
/// buffer, so that path is tested whatever the file system.
fn forced_alignment_bounces(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    let cfg = config(&img, CacheMode::Writeback, engine, false);
    let mut d = Disk::open_with_mem_alignment(&cfg, 4096).expect("open");
    assert_eq!(d.mem_alignment(), 4096);
    let data = pattern(16384, 9);
    write_at(&mut d, 8192, &data, 512, &[])
        .result
        .expect("write");
    assert_eq!(d.stats().bounced, 1);
    write_at(&mut d, 65536, &data, 0, &[])
        .result
        .expect("aligned write");
    assert_eq!(d.stats().bounced, 1, "aligned request must not bounce");
    assert!(read_at(&mut d, 8192, 16384, 1, &[511, 1]) == data);
    assert_eq!(d.stats().bounced, 2);
    let s = d.stats();
    assert_eq!(
        (s.reads, s.writes, s.bytes_read, s.bytes_written),
        (1, 2, 16384, 32768)
    );
}

fn fill(d: &mut Disk, off: u64, len: usize, byte: u8) {
    write_at(d, off, &vec![byte; len], 0, &[])
        .result
        .expect("fill");
    op(d, Op::Flush).result.expect("flush");
}

/// `got` is `want` 512-byte blocks, give or take two extent-tree blocks
/// the file system may add or drop when extents split.
fn assert_near(got: u64, want: u64, what: &str) {
    assert!(
        got.abs_diff(want) <= 16,
        "{what}: {got} blocks, expected about {want}"
    );
}

/// Discard punches a hole (zeros, fewer blocks); write-zeroes zeroes in place
/// or, with may_unmap, deallocates.
fn discard_and_write_zeroes(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), 4 * MIB);
    let mut d = open(&img, CacheMode::Writeback, engine);
    assert!(d.supports_discard() && d.supports_write_zeroes());
    fill(&mut d, 0, 4 * MIB as usize, 0xab);
    let full = st_blocks(&img);
    assert!(full >= 8192, "image fully allocated: {full} blocks");

    op(
        &mut d,
        Op::Discard {
            offset: MIB,
            len: MIB,
        },
    )
    .result
    .expect("discard");
    let after_discard = st_blocks(&img);
    assert_near(full - after_discard, 2048, "discard frees 1 MiB");
    assert!(read_at(&mut d, MIB, MIB as usize, 0, &[])
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        std::fs::metadata(&img).expect("stat").len(),
        4 * MIB,
        "size kept"
    );

    let z = Op::WriteZeroes {
        offset: 2 * MIB,
        len: 512 * 1024,
        may_unmap: false,
    };
    op(&mut d, z).result.expect("write zeroes");
    assert_near(
        st_blocks(&img),
        after_discard,
        "zeroing in place keeps blocks",
    );
    let z = Op::WriteZeroes {
        offset: 3 * MIB,
        len: 512 * 1024,
        may_unmap: true,
    };
    op(&mut d, z).result.expect("write zeroes unmap");
    assert_near(
        after_discard - st_blocks(&img),
        1024,
        "may_unmap deallocates 512 KiB",
    );

    let all = read_at(&mut d, 0, 4 * MIB as usize, 0, &[]);
    let m = MIB as usize;
    assert!(
        all[..m].iter().all(|&b| b == 0xab),
        "before the discard untouched"
    );
    assert!(all[2 * m..2 * m + m / 2].iter().all(|&b| b == 0));
    assert!(
        all[2 * m + m / 2..3 * m].iter().all(|&b| b == 0xab),
        "between untouched"
    );
    assert!(all[3 * m..3 * m + m / 2].iter().all(|&b| b == 0));
    assert!(
        all[3 * m + m / 2..].iter().all(|&b| b == 0xab),
        "tail untouched"
    );
    let s = d.stats();
    assert_eq!((s.discards, s.write_zeroes, s.errors), (1, 2, 0));
}

/// A read-only disk reads and flushes, refuses every modification, holds a
/// shared lock, and its descriptor is O_RDONLY.
fn read_only_refuses_writes(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    std::fs::write(&img, pattern(MIB as usize, 3)).expect("seed");
    let cfg = config(&img, CacheMode::None, engine, true);
    let mut d = Disk::open(&cfg).expect("open ro");
    assert!(d.read_only() && !d.supports_discard() && !d.supports_write_zeroes());
    assert_eq!(fd_flags(d.data_fd()) & 3, 0);
    let mut buf = Skewed::new(4096, 0);
    let segments = buf.segments(&[]);
    // SAFETY: buf outlives the call; a refused op is never queued.
    let r = unsafe {
        d.submit(
            Op::Write {
                offset: 0,
                segments,
            },
            1,
        )
    };
    assert!(matches!(r, Err(BlockError::ReadOnly)), "{r:?}");
    // SAFETY: no segments.
    let r = unsafe {
        d.submit(
            Op::Discard {
                offset: 0,
                len: 4096,
            },
            2,
        )
    };
    assert!(matches!(r, Err(BlockError::ReadOnly)));
    // SAFETY: no segments.
    let r = unsafe {
        d.submit(
            Op::WriteZeroes {
                offset: 0,
                len: 4096,
                may_unmap: false,
            },
            3,
        )
    };
    assert!(matches!(r, Err(BlockError::ReadOnly)));
    assert_eq!(d.in_flight(), 0);
    op(&mut d, Op::Flush)
        .result
        .expect("flush on read-only succeeds");
    assert!(read_at(&mut d, 4096, 4096, 1, &[]) == pattern(MIB as usize, 3)[4096..8192]);
    assert_eq!(d.stats().errors, 3);
    // Readers share; a writer is refused.
    let _second = Disk::open(&cfg).expect("second reader");
    let w = Disk::open(&config(&img, CacheMode::Writeback, engine, false));
    assert!(matches!(w, Err(BlockError::Locked { .. })));
}

/// A second writable opener, in this same process, is refused with a
/// message naming the image; after the first closes it succeeds.
fn lock_refuses_second_opener(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    let first = open(&img, CacheMode::Writethrough, engine);
    for ro in [false, true] {
        match Disk::open(&config(&img, CacheMode::Writeback, engine, ro)) {
            Err(e @ BlockError::Locked { .. }) => {
                assert!(e.to_string().contains(&img.display().to_string()), "{e}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("second opener (read_only={ro}) accepted"),
        }
    }
    drop(first);
    open(&img, CacheMode::Writeback, engine);
}

/// WCE switches: O_DSYNC dropped and restored by reopening in
/// writethrough/directsync (O_DIRECT kept), RWF_DSYNC per write in
/// writeback/none after one flush, nothing at all in unsafe.
fn write_cache_switching(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    let data = pattern(4096, 5);
    for mode in CacheMode::ALL {
        let mut d = open(&img, mode, engine);
        let direct = if mode.direct() { O_DIRECT } else { 0 };
        // Start from the default, go to the other setting, come back.
        for (step, wce) in [!mode.default_write_cache(), mode.default_write_cache()]
            .into_iter()
            .enumerate()
        {
            let before = d.stats();
            d.set_write_cache(wce).expect("switch");
            assert_eq!(d.write_cache(), wce);
            let s = d.stats();
            let f = fd_flags(d.data_fd());
            let fd_dsync = !wce && matches!(mode, CacheMode::Writethrough | CacheMode::DirectSync);
            let what = format!("{mode} step {step} wce={wce} flags {f:o}");
            assert_eq!(f & O_DSYNC != 0, fd_dsync, "{what}");
            assert_eq!(f & O_DIRECT, direct, "{what}");
            assert_eq!(f & O_SYNC_ONLY, 0, "{what}");
            let synced = !wce && mode != CacheMode::Unsafe;
            assert_eq!(
                s.fdatasyncs - before.fdatasyncs,
                u64::from(synced),
                "flush at the change: {what}"
            );

            write_at(&mut d, 0, &data, 0, &[]).result.expect("write");
            let durable = !wce && mode != CacheMode::Unsafe;
            let s2 = d.stats();
            assert_eq!(
                s2.dsync_writes - s.dsync_writes,
                u64::from(durable),
                "{what}"
            );
            assert_eq!(s2.host_syncs, s2.fdatasyncs + s2.dsync_writes);
        }
        assert!(read_at(&mut d, 0, 4096, 0, &[]) == data);
    }
}

/// What a guest flush costs per mode, counted by the disk.
fn flush_rules(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    for mode in CacheMode::ALL {
        let mut d = open(&img, mode, engine);
        let syncs = |d: &Disk| d.stats().fdatasyncs;
        // Flush with nothing written.
        op(&mut d, Op::Flush).result.expect("flush");
        let always = matches!(mode, CacheMode::Writeback | CacheMode::None);
        assert_eq!(syncs(&d), u64::from(always), "{mode}: clean flush");
        write_at(&mut d, 0, &pattern(4096, 1), 0, &[])
            .result
            .expect("write");
        op(&mut d, Op::Flush).result.expect("flush");
        op(&mut d, Op::Flush).result.expect("flush");
        let want = match mode {
            CacheMode::Writeback | CacheMode::None => 3,
            CacheMode::Writethrough | CacheMode::DirectSync => 1,
            CacheMode::Unsafe => 0,
        };
        assert_eq!(syncs(&d), want, "{mode}: after write + 2 flushes");
        op(
            &mut d,
            Op::Discard {
                offset: 0,
                len: 4096,
            },
        )
        .result
        .expect("discard");
        op(&mut d, Op::Flush).result.expect("flush");
        let want = want + u64::from(mode != CacheMode::Unsafe);
        assert_eq!(syncs(&d), want, "{mode}: a discard dirties");
        assert_eq!(d.stats().flushes, 4);
    }
}

/// Up to the queue depth in flight at once; one more is QueueFull; the
/// eventfd signals; completions carry their tags.
fn queue_depth_and_eventfd(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), 4 * MIB);
    let mut d = open(&img, CacheMode::None, engine);
    assert_eq!(d.queue_depth(), QUEUE_DEPTH);
    let mut bufs: Vec<Skewed> = (0..QUEUE_DEPTH)
        .map(|i| {
            let mut b = Skewed::new(4096, if i % 2 == 0 { 0 } else { 3 });
            b.bytes().copy_from_slice(&pattern(4096, i as u8));
            b
        })
        .collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        let segments = b.segments(&[]);
        // SAFETY: bufs outlive wait_idle below and are untouched meanwhile.
        unsafe {
            d.submit(
                Op::Write {
                    offset: i as u64 * 4096,
                    segments,
                },
                1000 + i as u64,
            )
        }
        .expect("submit");
    }
    assert_eq!(d.in_flight(), QUEUE_DEPTH);
    // SAFETY: a flush has no segments (and is refused anyway).
    let full = unsafe { d.submit(Op::Flush, 1) };
    assert!(
        matches!(full, Err(BlockError::QueueFull { depth }) if depth == QUEUE_DEPTH),
        "{full:?}"
    );
    d.kick().expect("kick");
    let mut pfd = libc::pollfd {
        fd: d.completion_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "eventfd signals completions");
    let mut out = Vec::new();
    d.wait_idle(&mut out);
    assert_eq!(out.len(), QUEUE_DEPTH);
    let mut tags: Vec<u64> = out.iter().map(|c| c.user_data).collect();
    tags.sort_unstable();
    assert!(tags.iter().copied().eq(1000..1000 + QUEUE_DEPTH as u64));
    assert!(out.iter().all(|c| matches!(c.result, Ok(4096))));
    out.clear();
    d.drain_completions(&mut out);
    assert!(out.is_empty());
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert_eq!(n, 0, "eventfd cleared by drain");
    let back = read_at(&mut d, 5 * 4096, 4096, 0, &[]);
    assert!(back == pattern(4096, 5));
}

/// Refused requests: out of range, misaligned.
fn refuses_bad_ranges(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB + 100);
    let mut d = open(&img, CacheMode::DirectSync, engine);
    assert_eq!(d.capacity(), MIB);
    // SAFETY: no segments.
    let r = unsafe {
        d.submit(
            Op::Discard {
                offset: MIB - 512,
                len: 1024,
            },
            1,
        )
    };
    assert!(
        matches!(r, Err(BlockError::OutOfRange { capacity, .. }) if capacity == MIB),
        "{r:?}"
    );
    // SAFETY: no segments.
    let r = unsafe {
        d.submit(
            Op::WriteZeroes {
                offset: 100,
                len: 512,
                may_unmap: false,
            },
            1,
        )
    };
    assert!(matches!(r, Err(BlockError::Misaligned { .. })), "{r:?}");
    // SAFETY: no segments.
    let r = unsafe {
        d.submit(
            Op::Discard {
                offset: u64::MAX - 511,
                len: 1024,
            },
            1,
        )
    };
    assert!(matches!(r, Err(BlockError::OutOfRange { .. })), "{r:?}");
    assert_eq!(d.in_flight(), 0);
    assert_eq!(d.stats().errors, 3);
}

/// The image shrinking under the disk makes reads past its new end fail
/// instead of returning fewer bytes than asked.
fn short_read_is_an_error(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    for mode in [CacheMode::Writeback, CacheMode::None] {
        let mut d = open(&img, mode, engine);
        write_at(&mut d, 0, &pattern(8192, 4), 0, &[])
            .result
            .expect("write");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .and_then(|f| f.set_len(4096))
            .expect("shrink");
        let mut buf = Skewed::new(8192, 0);
        let segments = buf.segments(&[]);
        // SAFETY: buf outlives the completed op.
        let c = unsafe {
            run(
                &mut d,
                Op::Read {
                    offset: 0,
                    segments,
                },
            )
        };
        let e = c.result.expect_err("read across the new end must fail");
        assert!(e.to_string().contains("short read"), "{mode}: {e}");
        assert_eq!(d.stats().errors, 1);
        drop(d);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .and_then(|f| f.set_len(MIB))
            .expect("regrow");
    }
}

/// With the write cache off, a write-zeroes is durable at completion (an
/// fdatasync follows the fallocate), so the next flush has nothing to do;
/// with it on, the flush does the sync.
fn write_zeroes_durable_when_cache_off(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), MIB);
    for mode in CacheMode::ALL {
        let mut d = open(&img, mode, engine);
        let z = Op::WriteZeroes {
            offset: 0,
            len: 65536,
            may_unmap: false,
        };
        op(&mut d, z).result.expect("write zeroes");
        let durable = !d.write_cache() && mode != CacheMode::Unsafe;
        assert_eq!(d.stats().fdatasyncs, u64::from(durable), "{mode}");
        op(&mut d, Op::Flush).result.expect("flush");
        let want = u64::from(mode != CacheMode::Unsafe);
        assert_eq!(d.stats().fdatasyncs, want, "{mode}: one sync either way");
    }
}

per_engine!(
    open_flags_per_mode,
    unaligned_buffers_round_trip,
    forced_alignment_bounces,
    discard_and_write_zeroes,
    read_only_refuses_writes,
    lock_refuses_second_opener,
    write_cache_switching,
    flush_rules,
    queue_depth_and_eventfd,
    refuses_bad_ranges,
    short_read_is_an_error,
    write_zeroes_durable_when_cache_off,
);
