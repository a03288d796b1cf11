//! `werror=`/`rerror=` on a disk whose file system fails writes (crashfs
//! with an injected ENOSPC or EIO): a held write is not answered, a flush
//! after it and a write over its bytes wait for it while unrelated
//! requests go on, a retry while the fault lasts holds it again, and once
//! the fault is gone a retry completes all of them in order with the data
//! in the image; `ignore` answers success without the data, `report`
//! answers the error, `enospc` reports other errors; a drain answers a
//! held request with its error instead of waiting for ever.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use block::{CacheMode, Completion, Disk, EngineKind, ErrorAction, ErrorPolicy, Op, Segment};
use common::*;
use crashfs::{Fault, FaultError};

fn open_with(rig: &Crash, engine: EngineKind, write: ErrorAction) -> Disk {
    let mut d = open(&rig.fs.path("disk.img"), CacheMode::Writeback, engine);
    d.set_error_policy(ErrorPolicy {
        write,
        read: ErrorAction::Report,
    });
    d
}

fn seg(buf: &mut [u8]) -> Vec<Segment> {
    vec![Segment {
        addr: buf.as_mut_ptr(),
        len: buf.len(),
    }]
}

fn write(offset: u64, buf: &mut [u8]) -> Op {
    Op::Write {
        offset,
        segments: seg(buf),
    }
}

fn read(offset: u64, buf: &mut [u8]) -> Op {
    Op::Read {
        offset,
        segments: seg(buf),
    }
}

/// Submits and kicks `op` tagged `tag`.
///
/// # Safety
/// As `Disk::submit`: its segments outlive the completion.
unsafe fn submit(d: &mut Disk, op: Op, tag: u64) {
    // SAFETY: forwarded.
    unsafe { d.submit(op, tag) }.expect("submit");
    d.kick().expect("kick");
}

/// Completions that arrive within `wait`, in order.
fn collect(d: &mut Disk, want: usize, wait: Duration) -> Vec<Completion> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < end {
        d.drain_completions(&mut out);
        std::thread::sleep(Duration::from_millis(5));
    }
    d.drain_completions(&mut out);
    out
}

const QUIET: Duration = Duration::from_millis(300);
const SOON: Duration = Duration::from_secs(10);

fn held_write_waits_then_completes_in_order(engine: EngineKind) {
    let Some(rig) = crashfs_with_image() else {
        return;
    };
    let mut d = open_with(&rig, engine, ErrorAction::Enospc);
    let (mut a, mut b, mut r) = (pattern(8192, 1), pattern(4096, 2), vec![0u8; 4096]);
    rig.fs.fail_writes(Some(Fault::always(FaultError::Enospc)));
    // SAFETY: the buffers live to the end of the test.
    unsafe { submit(&mut d, write(0, &mut a), 1) };
    assert!(
        collect(&mut d, 1, QUIET).is_empty(),
        "a held write was answered"
    );
    let why = d.stopped().expect("the disk is stopped");
    assert_eq!(why.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(d.stats().stops, 1);

    // A flush and a write over the held one's bytes wait; a read
    // elsewhere does not.
    // SAFETY: the buffers live to the end of the test.
    unsafe { submit(&mut d, Op::Flush, 2) };
    // SAFETY: the buffers live to the end of the test.
    unsafe { submit(&mut d, write(4096, &mut b), 3) };
    // SAFETY: the buffers live to the end of the test.
    unsafe { submit(&mut d, read(65536, &mut r), 4) };
    let got = collect(&mut d, 1, QUIET);
    let tags: Vec<u64> = got.iter().map(|c| c.user_data).collect();
    assert_eq!(tags, [4], "only the unrelated read completes");

    // Still full: the retry holds it again, no new stop.
    assert_eq!(d.retry_stopped(), 1);
    assert!(collect(&mut d, 1, QUIET).is_empty());
    assert_eq!((d.stats().stops, d.stats().stop_retries), (1, 1));
    assert!(d.stopped().is_some());

    rig.fs.fail_writes(None);
    assert_eq!(d.retry_stopped(), 1);
    let got = collect(&mut d, 3, SOON);
    let tags: Vec<u64> = got.iter().map(|c| c.user_data).collect();
    assert_eq!(tags.len(), 3, "{tags:?}");
    assert_eq!(tags[0], 1, "the held write completes first: {tags:?}");
    for c in &got {
        assert!(c.result.is_ok(), "{c:?}");
    }
    assert!(d.stopped().is_none());
    let s = d.stats();
    assert_eq!((s.errors, s.stops, s.stop_retries), (0, 1, 2));
    // The later write over the held one's second block came after it.
    assert_eq!(read_at(&mut d, 0, 4096, 0, &[]), a[..4096]);
    assert_eq!(read_at(&mut d, 4096, 4096, 0, &[]), b);
}

fn ignore_loses_the_data_and_report_answers_the_error(engine: EngineKind) {
    let Some(rig) = crashfs_with_image() else {
        return;
    };
    let mut d = open_with(&rig, engine, ErrorAction::Ignore);
    rig.fs.fail_writes(Some(Fault::always(FaultError::Enospc)));
    let c = write_at(&mut d, 0, &pattern(4096, 7), 0, &[]);
    assert_eq!(c.result.expect("ignored"), 4096);
    assert_eq!(d.stats().errors_ignored, 1);

    d.set_error_policy(ErrorPolicy::default());
    let e = write_at(&mut d, 0, &pattern(4096, 7), 0, &[])
        .result
        .expect_err("report");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));

    // enospc holds ENOSPC only.
    d.set_error_policy(ErrorPolicy {
        write: ErrorAction::Enospc,
        read: ErrorAction::Report,
    });
    rig.fs.fail_writes(Some(Fault::always(FaultError::Eio)));
    let e = write_at(&mut d, 0, &pattern(4096, 7), 0, &[])
        .result
        .expect_err("EIO is reported under enospc");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(d.stats().stops, 0);
    rig.fs.fail_writes(None);
    assert_eq!(read_at(&mut d, 0, 4096, 0, &[]), vec![0u8; 4096]);
}

fn a_drain_answers_a_held_write_with_its_error(engine: EngineKind) {
    let Some(rig) = crashfs_with_image() else {
        return;
    };
    let mut d = open_with(&rig, engine, ErrorAction::Stop);
    let mut a = pattern(4096, 3);
    rig.fs.fail_writes(Some(Fault::always(FaultError::Eio)));
    // SAFETY: `a` outlives the completion (wait_idle below).
    unsafe { submit(&mut d, write(0, &mut a), 1) };
    assert!(collect(&mut d, 1, QUIET).is_empty());
    let mut out = Vec::new();
    d.wait_idle(&mut out);
    assert_eq!(out.len(), 1);
    let e = out[0].result.as_ref().expect_err("given up");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(d.stopped().is_none());
}

per_engine!(
    held_write_waits_then_completes_in_order,
    ignore_loses_the_data_and_report_answers_the_error,
    a_drain_answers_a_held_write_with_its_error,
);
