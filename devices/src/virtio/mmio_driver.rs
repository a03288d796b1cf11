//! The driver's side of the virtio-mmio register protocol (virtio 1.2
//! §3.1.1 and §4.2.3): the steps that bring a device up, as Linux's
//! `virtio_mmio` takes them. The device tests' driver, the fuzz rig and
//! `ferrite bench --io-path`'s in-process driver all use these, over any
//! [`BusDevice`] (a transport, or a locked shared one).

use super::mmio::reg;
use crate::BusDevice;

/// Device status bits (§2.1) as a driver writes and reads them.
pub mod status {
    /// ACKNOWLEDGE: the guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// DRIVER: the guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// DRIVER_OK: the driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// FEATURES_OK: feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// DEVICE_NEEDS_RESET: the device hit an error it cannot recover from.
    pub const NEEDS_RESET: u32 = 0x40;
}

/// Where a split virtqueue's three parts are in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Driver (available) ring.
    pub avail: u64,
    /// Device (used) ring.
    pub used: u64,
}

/// Reads a 32-bit register.
pub fn read32(dev: &mut (impl BusDevice + ?Sized), offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit register.
pub fn write32(dev: &mut (impl BusDevice + ?Sized), offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

/// The 64 feature bits the device offers.
pub fn device_features(dev: &mut (impl BusDevice + ?Sized)) -> u64 {
    write32(dev, reg::DEVICE_FEATURES_SEL, 0);
    let low = read32(dev, reg::DEVICE_FEATURES);
    write32(dev, reg::DEVICE_FEATURES_SEL, 1);
    let high = read32(dev, reg::DEVICE_FEATURES);
    u64::from(low) | (u64::from(high) << 32)
}

/// From a reset device: ACKNOWLEDGE, DRIVER, `features` as they are, then
/// FEATURES_OK; returns whether the device kept FEATURES_OK.
pub fn negotiate(dev: &mut (impl BusDevice + ?Sized), features: u64) -> bool {
    write32(dev, reg::STATUS, status::ACKNOWLEDGE);
    write32(dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(dev, reg::DRIVER_FEATURES_SEL, 0);
    write32(dev, reg::DRIVER_FEATURES, features as u32);
    write32(dev, reg::DRIVER_FEATURES_SEL, 1);
    write32(dev, reg::DRIVER_FEATURES, (features >> 32) as u32);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write32(dev, reg::STATUS, s);
    read32(dev, reg::STATUS) & status::FEATURES_OK != 0
}

/// Sets up queue `index` with `size` entries at `addrs` and marks it ready
/// (DRIVER_OK is the caller's next step).
pub fn set_queue(dev: &mut (impl BusDevice + ?Sized), index: u32, size: u16, addrs: QueueAddrs) {
    write32(dev, reg::QUEUE_SEL, index);
    write32(dev, reg::QUEUE_NUM, u32::from(size));
    for (low, addr) in [
        (reg::QUEUE_DESC_LOW, addrs.desc),
        (reg::QUEUE_DRIVER_LOW, addrs.avail),
        (reg::QUEUE_DEVICE_LOW, addrs.used),
    ] {
        write32(dev, low, addr as u32);
        write32(dev, low + 4, (addr >> 32) as u32);
    }
    write32(dev, reg::QUEUE_READY, 1);
}

/// Adds DRIVER_OK to the status; returns whether the device then reports
/// it (and not DEVICE_NEEDS_RESET).
pub fn driver_ok(dev: &mut (impl BusDevice + ?Sized)) -> bool {
    let s = read32(dev, reg::STATUS);
    write32(dev, reg::STATUS, s | status::DRIVER_OK);
    let now = read32(dev, reg::STATUS);
    now & status::DRIVER_OK != 0 && now & status::NEEDS_RESET == 0
}
