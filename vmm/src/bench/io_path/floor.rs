//! The least a request can add on this host: a split-ring round trip
//! between two threads with no I/O and no device code in it.
//!
//! Each side touches exactly the cache lines a virtio-blk request moves
//! between the driver's CPU and the device's, in the order their data
//! dependencies force: the driver writes the header, the descriptor, the
//! avail entry and then the avail index; the device sees the index, reads
//! the entry, the descriptor and the header, writes the status, the used
//! entry and then the used index; the driver sees that index and reads
//! the used entry and the status. Each of those reads waits for the line
//! before it, so the round trip is a chain of cross-CPU line transfers
//! that no implementation of the ring can shorten. `added_p50_us` on a
//! 4 KiB QD1 line is ferrite's cost beyond fio's own system call; this
//! is the part of it that belongs to the protocol and the host.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::stats::percentile;

/// One cache line of ring memory (the lines are kept apart as a guest's
/// ring, header and status buffers usually are).
#[repr(align(64))]
#[derive(Default)]
struct Line<T>(T);

#[derive(Default)]
struct Ring {
    /// Descriptor 0: address and len/flags/next packed.
    desc: Line<(AtomicU64, AtomicU64)>,
    /// Available ring: idx and entry 0.
    avail: Line<(AtomicU16, AtomicU16)>,
    /// The request header (type and sector).
    header: Line<(AtomicU64, AtomicU64)>,
    /// The status byte.
    status: Line<AtomicU8>,
    /// Used ring: idx and entry 0 (id, len).
    used: Line<(AtomicU16, AtomicU32, AtomicU32)>,
    stop: Line<AtomicBool>,
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
        ring.header.0 .0.store(0, Ordering::Relaxed);
        ring.header.0 .1.store(i as u64, Ordering::Relaxed);
        ring.desc.0 .0.store(0x1000, Ordering::Relaxed);
        ring.desc.0 .1.store(16 | (1 << 32), Ordering::Relaxed);
        ring.avail.0 .1.store(0, Ordering::Relaxed);
        ring.avail.0 .0.store(idx, rel);
        while ring.used.0 .0.load(acq) != idx {
            std::hint::spin_loop();
        }
        let id = ring.used.0 .1.load(Ordering::Relaxed);
        let status = ring.status.0.load(Ordering::Relaxed);
        std::hint::black_box((id, status));
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
        let addr = ring.desc.0 .0.load(Ordering::Relaxed);
        let sector = ring.header.0 .1.load(Ordering::Relaxed);
        std::hint::black_box((head, addr, sector));
        ring.status.0.store(0, Ordering::Relaxed);
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
