//! The bounce memory a disk holds is bounded whatever the caller submits:
//! requests far larger than the budget, misaligned in memory and in 512-byte
//! units on a 4096-byte host block (so both bounced and read-modify-written),
//! several in flight, some with every segment pointing at the same memory,
//! round-trip correctly on each engine while `bounce_bytes_peak` stays
//! within one chunk per request in flight and never above `bounce_budget`.

#[macro_use]
mod common;

use block::{CacheMode, Disk, EngineKind, Op, Segment, BOUNCE_CHUNK};
use common::*;

/// Far larger than the budget (8 MiB), and not a whole number of chunks.
const BIG: usize = 3 * (8 << 20) + 1536;
const IMAGE: u64 = 64 << 20;
const BLOCK: u32 = 4096;

/// Every buffer whose address or length is not a multiple of 4096 bounces,
/// on any file system and in any mode; the host block is 4096.
fn open_strict(img: &std::path::Path, mode: CacheMode, engine: EngineKind) -> Disk {
    Disk::open_with_alignment(&config(img, mode, engine, false), 4096, BLOCK).expect("open")
}

/// Submits every op at once, then waits: all are in flight together.
///
/// # Safety
/// The ops' segments stay valid and untouched until this returns.
unsafe fn run_together(d: &mut Disk, ops: Vec<Op>) {
    let n = ops.len();
    for (i, op) in ops.into_iter().enumerate() {
        // SAFETY: forwarded from this function's contract.
        unsafe { d.submit(op, i as u64) }.expect("submit");
    }
    d.kick().expect("kick");
    let mut out = Vec::new();
    d.wait_idle(&mut out);
    assert_eq!(out.len(), n);
    for c in out {
        c.result.expect("request");
    }
}

fn large_misaligned_requests_round_trip_within_the_budget(engine: EngineKind) {
    let dir = scratch();
    for mode in [CacheMode::DirectSync, CacheMode::None, CacheMode::Writeback] {
        let img = image(dir.path(), IMAGE);
        let mut d = open_strict(&img, mode, engine);
        let (chunk, budget) = (d.bounce_chunk(), d.bounce_budget());
        assert_eq!((chunk, budget), (BOUNCE_CHUNK, 128 * BOUNCE_CHUNK));
        let mut model = vec![0u8; IMAGE as usize];

        // One write three times the budget, at a sub-block offset, from an
        // odd address split into odd segments: bounced and read-modify-written.
        let data = pattern(BIG, 5);
        let c = write_at(&mut d, 512, &data, 1, &[4096 * 3 + 512, 1 << 20]);
        assert_eq!(c.result.expect("big write") as usize, BIG, "{mode}");
        model[512..512 + BIG].copy_from_slice(&data);
        assert!(d.stats().bounce_bytes_peak <= chunk as u64, "{mode}");

        // 200 segments over the same odd 128 KiB: what a hostile guest sends.
        let mut same = Skewed::new(128 << 10, 3);
        same.bytes().copy_from_slice(&pattern(128 << 10, 9));
        let seg = same.segments(&[])[0];
        let at = 36 << 20;
        // SAFETY: `same` outlives the call and nothing else touches it.
        unsafe {
            run_together(
                &mut d,
                vec![Op::Write {
                    offset: at as u64,
                    segments: vec![seg; 200],
                }],
            )
        };
        for k in 0..200 {
            model[at + k * (128 << 10)..at + (k + 1) * (128 << 10)].copy_from_slice(same.bytes());
        }

        // Four large misaligned reads in flight at once, sub-block too.
        let mut bufs: Vec<Skewed> = (0..4).map(|i| Skewed::new(BIG, 1 + i)).collect();
        let offsets = [1024u64, 3584, 512 + (20 << 20), 7 << 20];
        let ops = bufs
            .iter_mut()
            .zip(offsets)
            .map(|(b, offset)| Op::Read {
                offset,
                segments: b.segments(&[1 << 20, 512]),
            })
            .collect();
        // SAFETY: `bufs` outlives the call and nothing else touches them.
        unsafe { run_together(&mut d, ops) };
        for (b, off) in bufs.iter_mut().zip(offsets) {
            let want = &model[off as usize..off as usize + BIG];
            assert!(b.bytes() == want, "{mode}: read at {off}");
        }

        let s = d.stats();
        assert!(s.bounce_bytes_peak > 0, "{mode}: nothing bounced");
        assert!(
            s.bounce_bytes_peak <= 4 * chunk as u64 && s.bounce_bytes_peak <= budget as u64,
            "{mode}: {} bytes of bounce buffers held, chunk {chunk}",
            s.bounce_bytes_peak
        );
        assert_eq!(s.errors, 0, "{mode}");
        op(&mut d, Op::Flush).result.expect("flush");
        drop(d);
        assert!(
            std::fs::read(&img).expect("image") == model,
            "{mode}: image"
        );
    }
}

/// A full queue of maximum-size bounced reads: the peak is one chunk per
/// request, the budget, not the requests' size.
fn a_full_queue_of_large_bounced_reads_holds_the_budget_at_most(engine: EngineKind) {
    let dir = scratch();
    let img = image(dir.path(), IMAGE);
    let mut d = open_strict(&img, CacheMode::DirectSync, engine);
    let depth = d.queue_depth();
    // Every request reads 254 x 8 KiB (about 2 MiB, 32 chunks) into the
    // same odd buffer.
    let mut target = Skewed::new(8 << 10, 1);
    let seg: Segment = target.segments(&[])[0];
    let ops = (0..depth)
        .map(|i| Op::Read {
            offset: (i as u64 % 2) * 4096,
            segments: vec![seg; 254],
        })
        .collect();
    // SAFETY: `target` outlives the call; the reads write it concurrently,
    // which is the hostile case being measured (bytes, no references).
    unsafe { run_together(&mut d, ops) };
    let s = d.stats();
    assert!(
        s.bounce_bytes_peak <= d.bounce_budget() as u64,
        "{} > budget {}",
        s.bounce_bytes_peak,
        d.bounce_budget()
    );
    assert_eq!(s.reads, depth as u64);
}

per_engine!(
    large_misaligned_requests_round_trip_within_the_budget,
    a_full_queue_of_large_bounced_reads_holds_the_budget_at_most,
);
