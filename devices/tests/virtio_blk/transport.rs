//! Feature negotiation, configuration space, notification and interrupts.

use std::time::Duration;

use crate::common::*;
use devices::bus::BusDevice;
use devices::virtio::test_utils::reg;

#[test]
fn offers_the_design_features_and_refuses_unoffered_bits() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    let f = rig.driver.device_features();
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ] {
        assert_ne!(f & bit(b), 0, "feature bit {b} not offered");
    }
    assert_eq!(f & bit(VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & bit(VIRTIO_BLK_F_MQ), 0);
    assert_eq!(f & bit(VIRTIO_BLK_F_DISCARD) != 0, rig.supports_discard);

    // An unoffered bit (MQ), a bit past 64, or no VERSION_1: FEATURES_OK stays clear.
    assert!(!rig.driver.negotiate(f | bit(VIRTIO_BLK_F_MQ)));
    assert_eq!(rig.driver.status() & 8, 0);
    assert!(!rig.driver.negotiate(f & !bit(VIRTIO_F_VERSION_1)));
    assert!(!rig.driver.negotiate(bit(VIRTIO_F_VERSION_1) | bit(40)));
    // A subset is fine, and the device works with it.
    assert!(rig
        .driver
        .negotiate(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH)));
    rig.driver.start();
    assert_eq!(rig.driver.status(), 15);
    assert_eq!(rig.read(0, 512), pattern(512));

    let Some(ro) = rig_ro() else { return };
    assert_ne!(ro.driver.device_features() & bit(VIRTIO_BLK_F_RO), 0);
}

fn rig_ro() -> Option<Rig> {
    rig(Opts {
        read_only: true,
        ..Opts::default()
    })
}

#[test]
fn config_space_reads_at_any_width_and_ignores_writes() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    rig.init_all();
    let d = &rig.driver;
    assert_eq!(d.read32(0), 0x7472_6976);
    assert_eq!(d.read32(4), 2);
    assert_eq!(d.read32(8), 2, "block device id");
    assert_eq!(d.read32(reg::QUEUE_NUM_MAX), 256);
    let cap = u64::from_le_bytes(d.read_config(0, 8).try_into().unwrap());
    assert_eq!(cap, SECTORS);
    let low = u32::from_le_bytes(d.read_config(0, 4).try_into().unwrap());
    assert_eq!(u64::from(low), SECTORS);
    assert_eq!(d.read_config(0, 2), (SECTORS as u16).to_le_bytes());
    let seg_max = u32::from_le_bytes(d.read_config(12, 4).try_into().unwrap());
    assert_eq!(seg_max, 254);
    let blk_size = u32::from_le_bytes(d.read_config(20, 4).try_into().unwrap());
    assert!(blk_size >= 512 && blk_size.is_power_of_two());
    assert_eq!(d.read_config(34, 2), [1, 0], "num_queues");
    assert_eq!(rig.wce(), 1);
    assert_eq!(d.read_config(0x1000 - 0x100 - 4, 4), [0; 4], "past the end");
    // Only `writeback` is writable.
    let gen = d.read32(reg::CONFIG_GENERATION);
    d.write_config(0, &[0xff; 8]);
    d.write_config(20, &[0; 4]);
    assert_eq!(
        u64::from_le_bytes(d.read_config(0, 8).try_into().unwrap()),
        SECTORS
    );
    assert_eq!(d.read_config(20, 4), blk_size.to_le_bytes());
    assert_eq!(d.read32(reg::CONFIG_GENERATION), gen);
}

#[test]
fn interrupt_status_is_set_before_the_interrupt_and_acked() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    rig.driver
        .init(rig.driver.device_features() & !bit(VIRTIO_RING_F_EVENT_IDX));
    let before = rig.irq.count();
    rig.flush();
    // The interrupt follows the used entry; give it a moment.
    assert!(wait_for(|| rig.irq.count() > before));
    assert_eq!(rig.driver.read32(reg::INTERRUPT_STATUS) & 1, 1);
    rig.driver.write32(reg::INTERRUPT_ACK, 1);
    assert_eq!(rig.driver.read32(reg::INTERRUPT_STATUS), 0);
    assert!(wait_for(|| rig.stats().device.interrupts >= 1));
}

#[test]
fn notification_through_the_ioeventfd_works_without_the_register() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    rig.init_all();
    let r = rig.driver.blk_request(VIRTIO_BLK_T_IN, 1, &[512], true);
    // What KVM does on a guest write to base + 0x50 with an ioeventfd.
    rig.transport
        .lock()
        .unwrap()
        .notify_eventfd()
        .write(1)
        .unwrap();
    let used = rig.driver.wait_used(1);
    assert_eq!(used, vec![(r.head, 513)]);
    assert_eq!(rig.driver.status_of(&r), OK);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    let f = rig.init_all();
    assert_ne!(f & bit(VIRTIO_RING_F_EVENT_IDX), 0);
    // Interrupt only when the used index moves past 2.
    rig.driver.set_used_event(2);
    let base = rig.irq.count();
    for _ in 0..2 {
        rig.flush();
    }
    assert!(wait_for(|| rig.stats().device.interrupts_suppressed == 2));
    assert_eq!(rig.irq.count(), base, "interrupted before used_event");
    rig.flush();
    assert!(wait_for(|| rig.irq.count() == base + 1));
    // The device asks to be notified for the next available entry (once
    // its poll window after the batch has passed).
    assert!(wait_for(|| rig.driver.avail_event() == 3));
}

#[test]
fn a_polling_io_thread_serves_chains_without_notifications() {
    let Some(mut rig) = rig(Opts {
        poll_max: Duration::from_secs(30),
        poll_yields: false,
        ..Opts::default()
    }) else {
        return;
    };
    assert_ne!(rig.init_all() & bit(VIRTIO_RING_F_EVENT_IDX), 0);
    rig.flush();
    let armed = rig.driver.avail_event();
    // Within the window the device keeps notifications off (avail_event
    // stays behind), and still finds chains published without a kick.
    for n in 1..=3u16 {
        let r = rig.driver.blk_request(VIRTIO_BLK_T_GET_ID, 0, &[20], true);
        assert_eq!(rig.driver.wait_used(1), vec![(r.head, 21)]);
        assert_eq!(rig.driver.avail_event(), armed, "re-armed after {n}");
    }
}

#[test]
fn without_a_poll_window_the_thread_rearms_at_once() {
    let Some(mut rig) = rig(Opts {
        poll_max: Duration::ZERO,
        ..Opts::default()
    }) else {
        return;
    };
    assert_ne!(rig.init_all() & bit(VIRTIO_RING_F_EVENT_IDX), 0);
    for n in 1..=3u16 {
        rig.flush();
        // Armed before it sleeps: the next chain needs a notification.
        assert!(wait_for(|| rig.driver.avail_event() == n), "after {n}");
    }
}

#[test]
fn narrow_or_unaligned_register_accesses_are_ignored() {
    let Some(rig) = rig(Opts::default()) else {
        return;
    };
    let mut t = rig.transport.lock().unwrap();
    let mut b = [0xffu8; 2];
    t.read(0, &mut b);
    assert_eq!(b, [0, 0]);
    t.write(0x70, &[1]);
    let mut s = [0u8; 4];
    t.read(0x70, &mut s);
    assert_eq!(s, [0; 4]);
    t.write(0x71, &[1, 0, 0, 0]);
    t.read(0x70, &mut s);
    assert_eq!(s, [0; 4]);
}

#[test]
fn a_failed_activation_needs_reset_and_is_counted() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    let f = rig.driver.device_features();
    assert!(rig.driver.negotiate(f));
    // DRIVER_OK with queue 0 never made ready: the device cannot start.
    rig.driver.write32(reg::STATUS, 15);
    assert!(rig.wait_needs_reset());
    assert!(wait_for(|| rig.stats().device.activation_failures == 1));
    // A reset and a proper bring-up recover.
    rig.init_all();
    assert_eq!(rig.read(0, 512), pattern(512));
    assert_eq!(rig.stats().device.activation_failures, 1);
}
