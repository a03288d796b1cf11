//! The pure virtio-blk request parser, `Request::parse`, over chains built
//! from the input (no device, no file: the fastest of the three targets).
//! Checks: nothing panics; an accepted request obeys every rule of
//! DESIGN.md "Requests" (sector-multiple data inside the capacity, buffers
//! inside guest memory and pointing the right way, nothing that writes on a
//! read-only disk, discard / write-zeroes only when offered and within the
//! limits), and finishing it reports the bytes it wrote.

#![no_main]

use std::cell::RefCell;

use devices::virtio::block::request::{
    total_len, DiskLimits, GuestRange, Request, RequestKind, ID_BYTES,
};
use ferrite_fuzz::cases::ParseCase;
use ferrite_fuzz::layout::{guest_memory, in_memory, Flat};
use ferrite_fuzz::model::{covered, effects};
use ferrite_fuzz::rig::SECTORS;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

thread_local! {
    static MEM: RefCell<(GuestMemoryMmap, Flat)> = RefCell::new((guest_memory(), Flat::default()));
}

fn inside(ranges: &[GuestRange]) -> bool {
    ranges.iter().all(|r| in_memory(r.addr.0, u64::from(r.len)))
}

fn check(kind: &RequestKind, limits: &DiskLimits, grants: &[(u64, u64)]) {
    let in_capacity = |sector: u64, sectors: u64| {
        sector
            .checked_add(sectors)
            .is_some_and(|end| end <= limits.capacity_sectors)
    };
    let writable = |ranges: &[GuestRange]| {
        ranges
            .iter()
            .filter(|r| r.len > 0)
            .all(|r| covered(grants, r.addr.0) && covered(grants, r.addr.0 + u64::from(r.len) - 1))
    };
    match kind {
        RequestKind::Read { sector, data } | RequestKind::Write { sector, data } => {
            let len = total_len(data);
            assert_eq!(len % 512, 0, "data of {len} bytes accepted");
            assert!(
                in_capacity(*sector, len / 512),
                "{kind:?} past the capacity"
            );
            assert!(inside(data), "{kind:?} outside guest memory");
            if matches!(kind, RequestKind::Write { .. }) {
                assert!(!limits.read_only, "write accepted on a read-only disk");
            } else {
                assert!(
                    writable(data),
                    "read into a device-readable buffer: {kind:?}"
                );
            }
        }
        RequestKind::Flush => {}
        RequestKind::GetId { data } => {
            assert!(inside(data), "{kind:?} outside guest memory");
            assert!(
                writable(data),
                "GET_ID into a device-readable buffer: {kind:?}"
            );
        }
        RequestKind::Discard { sector, sectors } => {
            assert!(
                limits.discard && !limits.read_only,
                "discard accepted: {limits:?}"
            );
            assert!(*sectors <= limits.max_zeroing_sectors);
            assert!(in_capacity(*sector, u64::from(*sectors)));
        }
        RequestKind::WriteZeroes {
            sector, sectors, ..
        } => {
            assert!(
                limits.write_zeroes && !limits.read_only,
                "write-zeroes accepted: {limits:?}"
            );
            assert!(*sectors <= limits.max_zeroing_sectors);
            assert!(in_capacity(*sector, u64::from(*sectors)));
        }
    }
}

fuzz_target!(|case: ParseCase| {
    let limits = DiskLimits {
        capacity_sectors: SECTORS,
        read_only: case.limits.read_only,
        discard: case.limits.discard,
        write_zeroes: case.limits.write_zeroes,
        max_zeroing_sectors: u32::from(case.limits.max_zeroing_sectors),
        max_zeroing_segments: u32::from(case.limits.max_zeroing_segments % 4),
    };
    MEM.with(|m| {
        let (mem, flat) = &mut *m.borrow_mut();
        flat.clear();
        let geom = case.queue.build(flat);
        flat.store(mem);
        let fx = effects(flat, geom, false);
        let Ok(mut queue) = virtio_queue::Queue::new(256) else {
            return;
        };
        if queue.try_set_size(geom.size).is_err()
            || queue
                .try_set_desc_table_address(GuestAddress(geom.desc))
                .is_err()
            || queue
                .try_set_avail_ring_address(GuestAddress(geom.avail))
                .is_err()
            || queue
                .try_set_used_ring_address(GuestAddress(geom.used))
                .is_err()
        {
            return;
        }
        queue.set_ready(true);
        let Ok(iter) = queue.iter(&*mem) else {
            return;
        };
        let chains: Vec<_> = iter.collect();
        // Every chain is parsed before any is finished: a status byte the
        // device writes may land on a later chain's descriptor (a guest may
        // point a writable buffer at its own descriptor table), and the
        // model saw memory as it was before the device ran.
        let mut parsed = Vec::with_capacity(chains.len());
        for chain in chains {
            let head = chain.head_index();
            let Ok(request) = Request::parse(chain, mem, &limits) else {
                continue;
            };
            assert_eq!(request.head(), head);
            check(&request.kind, &limits, &fx.grants);
            parsed.push(request);
        }
        for request in parsed {
            let head = request.head();
            let written = match &request.kind {
                RequestKind::Read { data, .. } => total_len(data),
                RequestKind::GetId { data } => total_len(data).min(ID_BYTES as u64),
                _ => 0,
            };
            let (_, in_flight) = request.begin();
            let done = in_flight.finish(mem, Ok(()));
            assert_eq!(done.head, head);
            assert_eq!(u64::from(done.used_len), written + 1, "used length");
        }
    });
});
