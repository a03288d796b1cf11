//! The least a request can add on this host: a split-ring round trip
//! between two threads with no I/O and no device code in it.
//!
//! Each side touches exactly the cache lines a virtio-blk request moves
//! between the driver's CPU and the device's, and each read waits for the
//! one its address comes from, as in the protocol: the driver writes the
//! header (with the status byte beside it, as Linux's `virtblk_req` and
//! the bench driver lay them out), the descriptors, the avail entry and
//! then the avail index; the device sees the index, reads the entry, the
//! descriptor that entry names, the header that descriptor points to, then
//! writes the status, the used entry and the used index; the driver sees
//! that index, reads the used entry and the status of the request it
//! names. No implementation of the split ring can overlap these transfers,
//! since each address is only known once the line before it has arrived.
//! `added_p50_us` on a 4 KiB QD1 line is ferrite's cost beyond fio's own
//! system call; this is the part of it that belongs to the protocol and
//! the host.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::stats::percentile;

/// One cache line of ring memory (the lines are kept apart as a guest's
/// ring and request buffers usually are).
#[repr(align(64))]
#[derive(Default)]
struct Line<T>(T);

/// Slots in the tables: the round trip uses slot 1, so that a wrong index
/// could not land on it by chance.
const SLOTS: usize = 2;

#[derive(Default)]
struct Ring {
    /// Descriptors, a line per chain: the header's address and
    /// len/flags/next packed.
    desc: [Line<(AtomicU64, AtomicU64)>; SLOTS],
    /// Available ring: idx and entry 0.
    avail: Line<(AtomicU16, AtomicU16)>,
    /// Request buffers: the header (type and sector) and the status byte.
    req: [Line<(AtomicU64, AtomicU64, AtomicU8)>; SLOTS],
    /// Used ring: idx and entry 0 (id, len).
    used: Line<(AtomicU16, AtomicU32, AtomicU32)>,
    stop: Line<AtomicBool>,
}

/// The table slot an index or address names (always in range).
fn slot(v: u64) -> usize {
    (v as usize) % SLOTS
}

/// Round trips of the ring alone, at most `n` of them or for at most
/// `budget`: p50 and p99 in µs (None if none completed).
pub fn ring_round_trip(n: usize, budget: Duration) -> Option<(f64, f64)> {
    let ring = Arc::new(Ring::default());
    let device = {
        let r = Arc::clone(&ring);
        std::thread::spawn(move || serve(&r))
    };
    let (acq, rel) = (Ordering::Acquire, Ordering::Release);
    let mut times = Vec::with_capacity(n);
    let began = Instant::now();
    for i in 1..=n {
        if began.elapsed() > budget {
            break;
        }
        let idx = i as u16;
        let start = Instant::now();
        let req = &ring.req[1].0;
        req.0.store(0, Ordering::Relaxed);
        req.1.store(i as u64, Ordering::Relaxed);
        req.2.store(0xff, Ordering::Relaxed);
        let desc = &ring.desc[1].0;
        desc.0.store(1, Ordering::Relaxed);
        desc.1.store(16 | (1 << 32), Ordering::Relaxed);
        ring.avail.0 .1.store(1, Ordering::Relaxed);
        ring.avail.0 .0.store(idx, rel);
        while ring.used.0 .0.load(acq) != idx {
            std::hint::spin_loop();
        }
        let id = ring.used.0 .1.load(Ordering::Relaxed);
        let status = ring.req[slot(u64::from(id))].0 .2.load(Ordering::Relaxed);
        std::hint::black_box(status);
        times.push(start.elapsed().as_nanos() as u64);
    }
    ring.stop.0.store(true, rel);
    let _ = device.join();
    let us = |p: Option<u64>| p.map(|ns| ns as f64 / 1000.0);
    Some((
        us(percentile(&mut times, 50.0))?,
        us(percentile(&mut times, 99.0))?,
    ))
}

/// The device side: one completion per avail index it sees.
fn serve(ring: &Ring) {
    let (acq, rel) = (Ordering::Acquire, Ordering::Release);
    let mut seen = 0u16;
    loop {
        let idx = ring.avail.0 .0.load(acq);
        if idx == seen {
            if ring.stop.0.load(Ordering::Relaxed) {
                return;
            }
            std::hint::spin_loop();
            continue;
        }
        seen = idx;
        let head = ring.avail.0 .1.load(Ordering::Relaxed);
        let header_at = ring.desc[slot(u64::from(head))]
            .0
             .0
            .load(Ordering::Relaxed);
        let req = &ring.req[slot(header_at)].0;
        std::hint::black_box(req.1.load(Ordering::Relaxed));
        req.2.store(0, Ordering::Relaxed);
        ring.used.0 .1.store(u32::from(head), Ordering::Relaxed);
        ring.used.0 .2.store(1, Ordering::Relaxed);
        ring.used.0 .0.store(idx, rel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_measured_and_ordered() {
        let (p50, p99) = ring_round_trip(2000, Duration::from_secs(5)).expect("some round trips");
        assert!(p50 > 0.0 && p99 >= p50, "p50 {p50} p99 {p99}");
    }
}
