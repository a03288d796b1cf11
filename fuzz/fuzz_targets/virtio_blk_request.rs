//! The virtio-blk request path, end to end: descriptor chains, headers,
//! segments and buffers built from the input in guest memory, processed by
//! the real device (transport, I/O thread, sync engine) over a real 32 KiB
//! image. Checks: nothing panics or hangs; no image byte outside a write's,
//! discard's or write-zeroes' own range changes (none at all on a read-only
//! disk); no guest byte outside a device-writable buffer or the used ring
//! changes.

#![no_main]

use std::cell::RefCell;

use devices::virtio::test_utils::reg;
use ferrite_fuzz::cases::BlkCase;
use ferrite_fuzz::layout::Flat;
use ferrite_fuzz::model::{covered, effects};
use ferrite_fuzz::rig::{rigs, Rig, IMAGE_LEN};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Optional features, one input bit each.
const OPTIONAL: [u32; 7] = [
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_RO,
];

/// Outcome counts, printed every FERRITE_FUZZ_STATS cases when that is set
/// (to see how much of the input space reaches the precise checks).
mod stats {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::OnceLock;

    pub static CASES: AtomicU64 = AtomicU64::new(0);
    pub static ACTIVATED: AtomicU64 = AtomicU64::new(0);
    pub static SELF_MODIFYING: AtomicU64 = AtomicU64::new(0);
    pub static IMAGE_CHANGED: AtomicU64 = AtomicU64::new(0);
    pub static MEMORY_CHANGED: AtomicU64 = AtomicU64::new(0);

    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Reports when dropped, i.e. at the end of the case however it ends.
    pub struct Report;

    impl Drop for Report {
        fn drop(&mut self) {
            report();
        }
    }

    fn report() {
        static EVERY: OnceLock<u64> = OnceLock::new();
        let every = *EVERY.get_or_init(|| {
            std::env::var("FERRITE_FUZZ_STATS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        });
        let n = CASES.load(Relaxed);
        if every > 0 && n.is_multiple_of(every) {
            eprintln!(
                "STATS cases={n} activated={} self_modifying={} image_changed={} memory_changed={}",
                ACTIVATED.load(Relaxed),
                SELF_MODIFYING.load(Relaxed),
                IMAGE_CHANGED.load(Relaxed),
                MEMORY_CHANGED.load(Relaxed)
            );
        }
    }
}

thread_local! {
    /// Guest memory before and after the device ran, reused across inputs
    /// (two fresh 72 KiB images per input cost more than the device did).
    static IMAGES: RefCell<(Flat, Flat)> = RefCell::new((Flat::default(), Flat::default()));
}

fuzz_target!(|case: BlkCase| {
    IMAGES.with(|images| {
        let (before, after) = &mut *images.borrow_mut();
        run(&case, before, after);
    });
});

fn run(case: &BlkCase, before: &mut Flat, after: &mut Flat) {
    stats::bump(&stats::CASES);
    let _report = stats::Report;
    let rigs = rigs();
    let mut rig = rigs[usize::from(case.disk) % rigs.len()]
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    rig.reset();

    before.clear();
    let geom = case.queue.build(before);
    before.store(&rig.mem);

    let offered = rig.device_features();
    let mut features = Rig::base_features();
    for (i, bit) in OPTIONAL.iter().enumerate() {
        if case.features & (1 << i) != 0 {
            features |= 1 << bit;
        }
    }
    if case.features & 0x80 == 0 {
        features &= offered;
    }
    if rig.negotiate(features) {
        rig.start(geom);
        stats::bump(&stats::ACTIVATED);
    }
    rig.settle(case.wce);
    assert_eq!(
        rig.read32(reg::STATUS),
        0,
        "Status must read 0 after a reset"
    );

    after.load(&rig.mem);
    let changed = rig.image_changes();
    assert_eq!(rig.image_len(), IMAGE_LEN, "the image changed size");
    if rig.read_only {
        assert!(
            changed.is_empty(),
            "a read-only image changed at {changed:?}"
        );
    }
    let fx = effects(before, geom, rig.read_only);
    // A chain whose buffers overlap the rings, descriptors or headers makes
    // the outcome depend on the order of the device's own writes; only the
    // checks above hold for it.
    if fx.self_modifying() {
        stats::bump(&stats::SELF_MODIFYING);
        return;
    }
    if !changed.is_empty() {
        stats::bump(&stats::IMAGE_CHANGED);
    }
    if before.0 != after.0 {
        stats::bump(&stats::MEMORY_CHANGED);
    }
    for at in ferrite_fuzz::diff::changed_offsets(&before.0, &after.0) {
        let (b, a) = (before.0[at], after.0[at]);
        assert!(
            covered(&fx.grants, at as u64),
            "guest byte {at:#x} changed ({b:#x} -> {a:#x}) outside every device-writable buffer; grants {:x?}",
            fx.grants
        );
    }
    for at in changed {
        assert!(
            covered(&fx.claims, at),
            "image byte {at:#x} changed outside every request's range; claims {:x?}",
            fx.claims
        );
    }
}
