//! The virtio-mmio register window of a real virtio-blk device: sequences
//! of reads and writes of width 1, 2, 4 and 8 at any offset, with shortcuts
//! for the moves a driver makes (status transitions, negotiation, queue
//! setup with any ring addresses, notifies, resets, config writes) and
//! guest memory the live I/O thread reads. Checks: nothing panics or hangs;
//! the identity registers never change; a reset always leaves Status,
//! InterruptStatus and QueueReady at 0; registers refuse accesses that are
//! not 32 bits wide and aligned (they read as zero).

#![no_main]

use devices::virtio::mmio::{CONFIG_OFFSET, MAGIC_VALUE, VENDOR_ID};
use devices::virtio::test_utils::reg;
use ferrite_fuzz::cases::{Op, RegCase};
use ferrite_fuzz::chain::QueueGeom;
use ferrite_fuzz::layout::{Flat, MEM_END};
use ferrite_fuzz::rig::{rigs, Rig};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MAX_OPS: usize = 256;

fn check_reset(rig: &mut Rig) {
    assert_eq!(rig.read32(reg::STATUS), 0, "Status after reset");
    assert_eq!(
        rig.read32(reg::INTERRUPT_STATUS),
        0,
        "InterruptStatus after reset"
    );
    assert_eq!(rig.read32(reg::QUEUE_READY), 0, "QueueReady after reset");
}

fn apply(rig: &mut Rig, op: &Op, flat: &mut Flat) {
    match op {
        Op::Read { width, offset } => {
            let offset = u64::from(*offset);
            let mut data = vec![0xa5u8; width.bytes()];
            rig.read(offset, &mut data);
            if offset < CONFIG_OFFSET && (data.len() != 4 || offset % 4 != 0) {
                assert!(
                    data.iter().all(|&b| b == 0),
                    "a {}-byte register read at {offset:#x} returned {data:?}",
                    data.len()
                );
            }
        }
        Op::Write {
            width,
            offset,
            value,
        } => rig.write(u64::from(*offset), &value.to_le_bytes()[..width.bytes()]),
        Op::Reg { index, value } => rig.write32(u64::from(index % 64) * 4, *value),
        Op::Status(s) => {
            rig.write32(reg::STATUS, u32::from(*s));
            if *s == 0 {
                check_reset(rig);
            }
        }
        Op::Negotiate { drop, add } => {
            let f = (rig.device_features() & !drop) | add;
            rig.negotiate(f);
        }
        Op::Queue {
            sel,
            size,
            rings,
            ready,
        } => {
            let addr = |a| match a {
                ferrite_fuzz::chain::Addr::Alloc => 0,
                ferrite_fuzz::chain::Addr::At(x) => u64::from(x) % (MEM_END + 0x1000),
                ferrite_fuzz::chain::Addr::Raw(x) => x,
            };
            rig.write32(reg::QUEUE_SEL, u32::from(*sel));
            rig.write32(reg::QUEUE_NUM, u32::from(*size));
            for (low, a) in [
                (reg::QUEUE_DESC_LOW, addr(rings.desc)),
                (reg::QUEUE_DRIVER_LOW, addr(rings.avail)),
                (reg::QUEUE_DEVICE_LOW, addr(rings.used)),
            ] {
                rig.write32(low, a as u32);
                rig.write32(low + 4, (a >> 32) as u32);
            }
            rig.write32(reg::QUEUE_READY, *ready);
        }
        Op::Start(queue) => {
            flat.clear();
            let geom: QueueGeom = queue.build(flat);
            flat.store(&rig.mem);
            rig.start(geom);
        }
        Op::Notify(v) => rig.write32(reg::QUEUE_NOTIFY, *v),
        Op::Ack(bits) => rig.write32(reg::INTERRUPT_ACK, *bits),
        Op::Config { offset, data } => {
            let data = &data[..data.len().min(8)];
            rig.write(CONFIG_OFFSET + u64::from(*offset), data);
        }
        Op::Memory { addr, bytes } => {
            let bytes = &bytes[..bytes.len().min(64)];
            // Bytes past the end of memory are dropped, like a driver's
            // stray store would fault.
            let at = GuestAddress(u64::from(*addr) % (MEM_END + 0x100));
            let _ = rig.mem.write_slice(bytes, at);
        }
        Op::Reset => {
            rig.reset();
            check_reset(rig);
        }
    }
}

fuzz_target!(|case: RegCase| {
    let rigs = rigs();
    let mut rig = rigs[usize::from(case.disk) % rigs.len()]
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    rig.reset();
    check_reset(&mut rig);
    let mut flat = Flat::default();
    flat.store(&rig.mem);
    for op in case.ops.iter().take(MAX_OPS) {
        apply(&mut rig, op, &mut flat);
    }
    assert_eq!(rig.read32(0x000), MAGIC_VALUE);
    assert_eq!(rig.read32(0x004), 2, "Version");
    assert_eq!(rig.read32(0x008), 2, "DeviceID (block)");
    assert_eq!(rig.read32(0x00c), VENDOR_ID);
    // Leave the device idle for the next case (and the image as it was).
    rig.reset();
    rig.image_changes();
});
