//! The io_uring engine's unit tests.

use super::*;
use std::os::fd::AsRawFd;

/// A write that names no bytes: pushed, held and never run, or run
/// at once as a zero-length write.
fn null_write(dsync: bool) -> HostOp {
    HostOp::Writev {
        iov: std::ptr::null(),
        count: 0,
        offset: 0,
        dsync,
    }
}

#[test]
fn the_engine_runs_plain_page_cache_writes_itself() {
    let efd = eventfd();
    let f = tempfile::tempfile().expect("temp");
    let write = null_write;
    for (opened, page_cache) in [(Opened::PageCache, true), (Opened::Direct, false)] {
        let Some(e) = engine(&f, &efd, opened) else {
            return;
        };
        assert_eq!(e.runs_inline(&write(false)), page_cache);
        assert!(!e.runs_inline(&write(true)), "RWF_DSYNC stays on the ring");
        assert!(!e.runs_inline(&HostOp::Fdatasync));
    }
}

/// The eventfd an engine signals.
fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// How the test's descriptor counts as opened (the engine only looks
/// at the flags; the file itself is a plain temporary file).
#[derive(Clone, Copy, Debug)]
enum Opened {
    /// `writeback`, `unsafe`.
    PageCache,
    /// `none`: O_DIRECT.
    Direct,
    /// `writethrough`: O_DSYNC.
    Dsync,
    /// `directsync`: O_DIRECT | O_DSYNC.
    DirectDsync,
    /// On tmpfs.
    Memory,
}

/// An engine on `f`, or None (with a SKIP line) without io_uring.
fn engine(f: &std::fs::File, efd: &EventFd, opened: Opened) -> Option<UringEngine> {
    use Opened::*;
    let data = DataFd {
        fd: f.as_raw_fd(),
        direct: matches!(opened, Direct | DirectDsync),
        dsync: matches!(opened, Dsync | DirectDsync),
        worker_only: matches!(opened, Memory),
    };
    let e = UringEngine::new(data, efd, 8).ok();
    if e.is_none() {
        eprintln!("SKIP: no io_uring here");
    }
    e
}

/// A thread that only polls the ring (no system call of its own) still
/// sees a completion whose posting the kernel left to it
/// (`COOP_TASKRUN`): `has_completions` makes the entry the ring asks
/// for. Without it the completion would wait for the thread's next
/// timer tick. An `O_DIRECT` read is completed that way: from the
/// device's interrupt, through work queued on the submitting thread.
#[test]
fn a_completion_left_to_this_thread_is_seen_by_polling() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    #[repr(align(4096))]
    struct Block([u8; 4096]);
    let efd = eventfd();
    // In the crate's directory: a real file system, where O_DIRECT
    // reads go to the device (tmpfs would complete them inline).
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
    let path = dir.path().join("image");
    let image = std::fs::File::create(&path).expect("image");
    image.write_all_at(&[7u8; 8192], 0).expect("image");
    // On the device, not only in the page cache: a read that must
    // write back first goes to a worker thread.
    image.sync_all().expect("image");
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let Ok(f) = opened else {
        eprintln!("SKIP: no O_DIRECT in {}", dir.path().display());
        return;
    };
    let Some(mut e) = engine(&f, &efd, Opened::Direct) else {
        return;
    };
    let mut bufs = [Block([0; 4096]), Block([0; 4096])];
    let iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.0.as_mut_ptr().cast(),
            iov_len: 4096,
        })
        .collect();
    // The interrupt's own CPU runs the work as the interrupt returns
    // to this thread; on any other CPU it waits for the thread. Which
    // CPU takes the disk's interrupt is the host's choice: try each.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| {
            // SAFETY: `set` is a plain bitmask the calls fill in.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) == 0
                    && libc::CPU_ISSET(c, &set)
            }
        })
        .collect();
    let mut flagged = 0;
    for round in 0..(25 * cpus.len() as u64) {
        if round % 25 == 0 {
            let cpu = cpus[(round / 25) as usize];
            // SAFETY: as above; this test's own thread only.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
            }
        }
        // Two reads, so that neither is held back to run on this thread.
        for (i, one) in iov.iter().enumerate() {
            let read = HostOp::Readv {
                iov: one,
                count: 1,
                offset: 4096 * i as u64,
            };
            // SAFETY: `iov` and `bufs` outlive the reaps below.
            let pushed = unsafe { e.push(read, 2 * round + i as u64) };
            assert_eq!(pushed.ok(), Some(Pushed::Queued));
        }
        e.kick().expect("kick");
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "completions lost");
            if e.ring.completion().is_empty() && e.ring.submission().taskrun() {
                // Work waits for this thread and nothing is posted:
                // polling must post it.
                flagged += 1;
                assert!(e.has_completions(), "the waiting work was not run");
            }
            e.reap(&mut out);
            std::hint::spin_loop();
        }
        assert!(out.iter().all(|c| c.res == 4096), "{out:?}");
    }
    assert!(bufs.iter().all(|b| b.0.iter().all(|&x| x == 7)));
    if flagged == 0 {
        eprintln!("SKIP: on none of CPUs {cpus:?} did the ring leave a completion to this thread");
    }
}

#[test]
fn a_lone_durable_write_runs_at_kick_and_two_go_to_the_ring() {
    let efd = eventfd();
    let f = tempfile::tempfile().expect("temp");
    let Some(mut e) = engine(&f, &efd, Opened::Direct) else {
        return;
    };
    let bufs = [[1u8; 512], [2u8; 512]];
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let write = |i: usize| HostOp::Writev {
        iov: &iov[i],
        count: 1,
        offset: 512 * i as u64,
        // Durable by the write's own flag (RWF_DSYNC).
        dsync: true,
    };
    // Alone: held, run by kick on this thread, signalled by the disk.
    // SAFETY: `iov` and `bufs` outlive the reaps below.
    assert_eq!(unsafe { e.push(write(0), 7) }.ok(), Some(Pushed::Queued));
    assert!(e.signals_completions());
    e.kick().expect("kick");
    assert!(!e.signals_completions() && e.has_completions());
    let mut out = Vec::new();
    e.reap(&mut out);
    assert_eq!(out, [RawCompletion { tag: 7, res: 512 }]);
    assert!(e.signals_completions());
    // Two in one batch: both go to the ring, in order.
    for i in 0..2 {
        // SAFETY: `iov` and `bufs` outlive the reaps below.
        let pushed = unsafe { e.push(write(i), i as u64) };
        assert_eq!(pushed.ok(), Some(Pushed::Queued));
    }
    assert_eq!(e.in_ring, 2);
    e.kick().expect("kick");
    assert!(e.done.is_empty());
    out.clear();
    while out.len() < 2 {
        e.wait().expect("wait");
        e.reap(&mut out);
    }
    assert_eq!(e.in_ring, 0);
    out.sort_by_key(|c| c.tag);
    assert_eq!(out.iter().map(|c| c.res).collect::<Vec<_>>(), [512, 512]);
    let mut back = [0u8; 1024];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut back, 0).expect("read");
    assert!(back[..512].iter().all(|&b| b == 1) && back[512..].iter().all(|&b| b == 2));
}

#[test]
fn direct_io_goes_to_the_kernel_at_each_push_and_page_cache_io_at_kick() {
    let efd = eventfd();
    let f = tempfile::tempfile().expect("temp");
    for (opened, each) in [
        (Opened::Direct, true),
        (Opened::DirectDsync, true),
        (Opened::PageCache, false),
        // Buffered, durable per write: its reads are page-cache reads.
        (Opened::Dsync, false),
    ] {
        let Some(mut e) = engine(&f, &efd, opened) else {
            return;
        };
        // Two durable zero-length writes: neither is held once both
        // are pushed, nor run on this thread.
        for tag in 0..2 {
            // SAFETY: the writes name no memory.
            let pushed = unsafe { e.push(null_write(true), tag) };
            assert_eq!(pushed.ok(), Some(Pushed::Queued));
        }
        assert_eq!(e.in_ring, 2);
        assert_eq!(e.ring.submission().is_empty(), each, "{opened:?}");
        e.kick().expect("kick");
        assert!(e.ring.submission().is_empty());
        let mut out = Vec::new();
        while out.len() < 2 {
            e.wait().expect("wait");
            e.reap(&mut out);
        }
        out.sort_by_key(|c| c.tag);
        assert_eq!(
            out.iter().map(|c| (c.tag, c.res)).collect::<Vec<_>>(),
            [(0, 0), (1, 0)]
        );
    }
}

#[test]
fn only_direct_reads_and_writes_without_sync_await_the_device() {
    let efd = eventfd();
    let f = tempfile::tempfile().expect("temp");
    let read = HostOp::Readv {
        iov: std::ptr::null(),
        count: 0,
        offset: 0,
    };
    use Opened::*;
    let cases = [
        (Direct, read, true),
        (Direct, null_write(false), true),
        (Direct, null_write(true), false),
        (Direct, HostOp::Fdatasync, false),
        (DirectDsync, read, true),
        (DirectDsync, null_write(false), false),
        (Dsync, read, false),
        (PageCache, read, false),
    ];
    for (opened, op, awaits) in cases {
        let Some(mut e) = engine(&f, &efd, opened) else {
            return;
        };
        // Two, so that neither is held back to run on this thread.
        for tag in 0..2 {
            // SAFETY: the operations name no memory.
            let pushed = unsafe { e.push(op, tag) };
            assert_eq!(pushed.ok(), Some(Pushed::Queued));
        }
        assert_eq!(e.awaits_device(), awaits, "{opened:?} {op:?}");
        let mut out = Vec::new();
        while out.len() < 2 {
            e.wait().expect("wait");
            e.reap(&mut out);
        }
        assert!(!e.awaits_device(), "{opened:?} {op:?}: all reaped");
        out.sort_by_key(|c| c.tag);
        let tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        assert_eq!(
            tags,
            [0, 1],
            "{opened:?} {op:?}: the tags come back as pushed"
        );
    }
}

#[test]
fn every_lone_operation_but_a_page_cache_write_is_held() {
    let efd = eventfd();
    let f = tempfile::tempfile().expect("temp");
    let write = null_write;
    let read = HostOp::Readv {
        iov: std::ptr::null(),
        count: 0,
        offset: 0,
    };
    let discard = HostOp::Fallocate {
        offset: 0,
        len: 512,
        mode: 0,
    };
    for (opened, page_cache) in [(Opened::Direct, false), (Opened::PageCache, true)] {
        let Some(mut e) = engine(&f, &efd, opened) else {
            return;
        };
        // Pushed alone, each is held (taken back here, never run), but
        // for the page-cache write, which runs at once.
        let mut held = |op: HostOp| {
            // SAFETY: a held operation is taken back unrun; the one that
            // runs at once is a write of no bytes.
            let pushed = unsafe { e.push(op, 1) }.expect("push");
            assert_eq!(e.in_ring, 0, "{op:?} went to the ring");
            let held = e.held.take().is_some();
            assert_eq!(held, matches!(pushed, Pushed::Queued), "{op:?}");
            held
        };
        assert_eq!(held(write(false)), !page_cache);
        assert!(held(write(true)));
        assert!(held(HostOp::Fdatasync));
        assert!(held(read));
        assert!(held(discard));
    }
}

/// With a caller that spins longer than the device's answers, a lone
/// operation the device completes by itself goes to the ring at once,
/// and its answer time is measured; one that a worker thread would carry
/// is still held, and so is the first once answers grow slower than the
/// spin.
#[test]
fn a_lone_device_bound_operation_goes_to_the_ring_while_the_spin_outlasts_its_answers() {
    let efd = eventfd();
    let f = tempfile::tempfile().expect("temp");
    let read = || HostOp::Readv {
        iov: std::ptr::null(),
        count: 0,
        offset: 0,
    };
    let Some(mut e) = engine(&f, &efd, Opened::Direct) else {
        return;
    };
    // Pushes `op` alone; true if it went to the ring, which then answers.
    let to_ring = |e: &mut UringEngine, op: HostOp| {
        // SAFETY: the operations name no memory; a held one is taken
        // back unrun.
        assert_eq!(unsafe { e.push(op, 3) }.ok(), Some(Pushed::Queued));
        if e.held.take().is_some() {
            assert_eq!(e.in_ring, 0);
            return false;
        }
        assert_eq!((e.in_ring, e.lone.map(|l| l.0)), (1, Some(3)));
        let mut out = Vec::new();
        while out.is_empty() {
            e.wait().expect("wait");
            e.reap(&mut out);
        }
        assert_eq!(out, [RawCompletion { tag: 3, res: 0 }]);
        assert!(e.lone.is_none(), "the answer was not measured");
        true
    };
    assert!(!to_ring(&mut e, read()), "a caller that does not spin");
    e.set_spin_window(Duration::from_secs(1));
    assert!(to_ring(&mut e, read()), "untried answers");
    assert!(to_ring(&mut e, read()), "answers within the spin");
    assert!(!to_ring(&mut e, null_write(true)), "a durable write");
    assert!(!to_ring(&mut e, HostOp::Fdatasync));
    for _ in 0..8 {
        e.answers.note(Duration::from_secs(10));
    }
    assert!(!to_ring(&mut e, read()), "answers slower than the spin");
}

#[test]
fn on_tmpfs_every_operation_runs_on_the_disks_thread() {
    let efd = eventfd();
    let shm = std::path::Path::new("/dev/shm");
    let Ok(f) = tempfile::tempfile_in(shm) else {
        eprintln!("SKIP: no /dev/shm here");
        return;
    };
    assert!(crate::open::file_on_memory_fs(&f), "/dev/shm is a tmpfs");
    let disk_file = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
    assert!(!crate::open::file_on_memory_fs(&disk_file));
    let Some(e) = engine(&f, &efd, Opened::Memory) else {
        return;
    };
    let read = HostOp::Readv {
        iov: std::ptr::null(),
        count: 0,
        offset: 0,
    };
    for op in [read, null_write(true), null_write(false), HostOp::Fdatasync] {
        assert!(e.runs_inline(&op), "{op:?}");
    }
}

#[test]
fn a_lone_read_runs_at_kick() {
    let efd = eventfd();
    let f = tempfile::tempfile().expect("temp");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[9u8; 512], 512).expect("write");
    let Some(mut e) = engine(&f, &efd, Opened::Direct) else {
        return;
    };
    let mut buf = [0u8; 512];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let read = HostOp::Readv {
        iov: &iov,
        count: 1,
        offset: 512,
    };
    // SAFETY: `iov` and `buf` outlive the reap below.
    assert_eq!(unsafe { e.push(read, 3) }.ok(), Some(Pushed::Queued));
    assert_eq!(e.in_ring, 0, "held, not on the ring");
    e.kick().expect("kick");
    let mut out = Vec::new();
    e.reap(&mut out);
    assert_eq!(out, [RawCompletion { tag: 3, res: 512 }]);
    assert!(buf.iter().all(|&b| b == 9));
}
