//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! One 4 KiB window per device: the registers below 0x100, the device's
//! configuration space from 0x100. The transport owns negotiation and the
//! status state machine and nothing else; the device does the work.
//!
//! QueueNotify (offset 0x50) is meant to be a KVM ioeventfd on the device's
//! notify eventfd, so that a notification never takes the bus lock. A plain
//! write that does reach the transport signals the same eventfd.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestMemoryMmap;

use super::queue_config::{set_half, QueueConfig, QueueConfigError};
use super::{ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt};
use crate::{BusDevice, InterruptLine};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify in the window: register the ioeventfd at base + this.
pub const NOTIFY_OFFSET: u64 = 0x50;
/// "virt" in little endian (§4.2.2).
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Vendor ID the device reports ("FRTE"); drivers ignore it.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"FRTE");
/// Start of device-specific configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Register offsets of the virtio-mmio v2 layout (§4.2.2, Table "MMIO
/// Device Register Layout"), for the transport and for drivers.
pub mod reg {
    /// Magic.
    pub const MAGIC: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// DeviceId.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor.
    pub const VENDOR: u64 = 0x00c;
    /// DeviceFeatures.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// DeviceFeaturesSel.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// DriverFeatures.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// DriverFeaturesSel.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// QueueSel.
    pub const QUEUE_SEL: u64 = 0x030;
    /// QueueNumMax.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// QueueNum.
    pub const QUEUE_NUM: u64 = 0x038;
    /// QueueReady.
    pub const QUEUE_READY: u64 = 0x044;
    /// QueueNotify.
    pub const QUEUE_NOTIFY: u64 = super::NOTIFY_OFFSET;
    /// InterruptStatus.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// InterruptAck.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Status.
    pub const STATUS: u64 = 0x070;
    /// QueueDescLow.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// QueueDescHigh.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// QueueDriverLow.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// QueueDriverHigh.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// QueueDeviceLow.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// QueueDeviceHigh.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// ShmSel.
    pub const SHM_SEL: u64 = 0x0ac;
    /// ShmLenLow.
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// ShmLenHigh.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// ShmBaseLow.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// ShmBaseHigh.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// ConfigGeneration.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Device-specific configuration space.
    pub const CONFIG: u64 = super::CONFIG_OFFSET;
}

use reg::*;

const ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device has no notify eventfd for one of its queues.
    #[error("device has no notify eventfd for queue {0}")]
    NoNotifyEventFd(usize),
}

/// Why DRIVER_OK failed (the device is then put in DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
enum ActivationFailure {
    #[error(transparent)]
    Queue(#[from] QueueConfigError),
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    #[error(transparent)]
    Device(#[from] ActivateError),
}

/// How far a driver ever got with a device, kept across resets: what a VMM
/// needs to say why a guest did not use its disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverSeen {
    /// The guest read a register of the window (a driver probed it).
    pub read_registers: bool,
    /// The driver set DRIVER_OK (it took the device into use).
    pub driver_ok: bool,
}

/// A virtio device behind a virtio-mmio register window; put it on the MMIO
/// bus in an `Arc<Mutex<_>>`.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    /// Device status as the driver wrote it (NEEDS_RESET lives in `interrupt`).
    status: u8,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver accepted a bit in a feature word past the first 64 bits;
    /// none is ever offered, so FEATURES_OK must be refused.
    driver_features_beyond: bool,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    config_generation: u32,
    seen: DriverSeen,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`; `mem` is the guest memory its queues live in and
    /// `irq` the line for its interrupts (an irqfd under KVM).
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        irq: Arc<dyn InterruptLine>,
    ) -> Result<Self, TransportError> {
        let queues: Vec<QueueConfig> = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueConfig::new(max))
            .collect();
        if let Some(index) = (0..queues.len()).find(|&i| device.queue_notify_evt(i).is_none()) {
            return Err(TransportError::NoNotifyEventFd(index));
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            queues,
            config_generation: 0,
            seen: DriverSeen::default(),
        })
    }

    /// The device behind the window.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u8 {
        if self.interrupt.needs_reset() {
            self.status | NEEDS_RESET
        } else {
            self.status
        }
    }

    /// How far a driver ever got (not reset by a device reset).
    pub fn driver_seen(&self) -> DriverSeen {
        self.seen
    }

    /// Features both sides agreed on (zero before FEATURES_OK).
    pub fn negotiated_features(&self) -> u64 {
        if self.status & FEATURES_OK != 0 {
            self.driver_features
        } else {
            0
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK
    /// (§3.1.1 step 7 happens in that window; §4.2.2.2 forbids changing a
    /// live queue).
    fn queue_setup_allowed(&self) -> bool {
        self.status & (FEATURES_OK | DRIVER_OK | FAILED) == FEATURES_OK
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC => MAGIC_VALUE,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.device_features() as u32,
                1 => (self.device.device_features() >> 32) as u32,
                _ => 0,
            },
            // §4.2.2.1: 0 for a queue that does not exist.
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => u32::from(self.status()),
            // No shared memory regions: length reads as -1 (§4.2.2).
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            // Write-only or reserved.
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW
            | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                self.write_queue_register(offset, value)
            }
            QUEUE_NOTIFY => {
                // Without an ioeventfd the write lands here; deliver it the
                // same way. A failed eventfd write means the counter is
                // saturated, i.e. a notification is already pending.
                if let Some(evt) = self.device.queue_notify_evt(value as usize) {
                    let _ = evt.write(1);
                }
            }
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value as u8),
            SHM_SEL => {}
            // Read-only or reserved: ignored (§4.2.2.2 forbids the driver to
            // write them; nothing to do if it does).
            _ => {}
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_setup_allowed() {
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        match offset {
            QUEUE_NUM => {
                if let Ok(size) = u16::try_from(value) {
                    q.size = size;
                }
            }
            QUEUE_READY => q.ready = value == 1,
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => set_half(&mut q.desc, offset & 4 != 0, value),
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => set_half(&mut q.avail, offset & 4 != 0, value),
            _ => set_half(&mut q.used, offset & 4 != 0, value),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // §3.1.1: features are written after DRIVER and before FEATURES_OK;
        // later writes would change what was agreed, so they are dropped.
        if self.status & (DRIVER | FEATURES_OK) != DRIVER {
            return;
        }
        match self.driver_features_sel {
            0 => set_half(&mut self.driver_features, false, value),
            1 => set_half(&mut self.driver_features, true, value),
            _ => self.driver_features_beyond |= value != 0,
        }
    }

    /// §2.2.1: the driver MUST NOT accept a feature the device did not offer;
    /// §6.1: a modern device may refuse a driver without VERSION_1.
    fn features_acceptable(&self) -> bool {
        let offered = self.device.device_features();
        !self.driver_features_beyond
            && self.driver_features & !offered == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn write_status(&mut self, value: u8) {
        // §4.2.2.1 / §2.4: writing 0 resets the device.
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET is the device's bit; the driver cannot set or clear it.
        let new = value & !NEEDS_RESET;
        let old = self.status;
        // §3.1.1: the driver only ever adds bits, short of a reset.
        if new & old != old {
            return;
        }
        let added = new & !old;
        if added & FEATURES_OK != 0 {
            let in_order = new & (ACKNOWLEDGE | DRIVER) == ACKNOWLEDGE | DRIVER;
            if !in_order || !self.features_acceptable() {
                // §3.1.1 step 6: the device leaves FEATURES_OK clear to say no.
                self.status = new & !(FEATURES_OK | DRIVER_OK);
                return;
            }
        }
        if added & DRIVER_OK != 0 {
            if new & FEATURES_OK == 0 {
                self.status = new & !DRIVER_OK;
                return;
            }
            self.status = new;
            self.seen.driver_ok = true;
            if let Err(e) = self.activate() {
                // The driver set everything up and the device cannot use it:
                // that is what DEVICE_NEEDS_RESET is for (§2.1.2). The
                // guest sees only that bit, so the host is told why.
                eprintln!(
                    "ferrite: virtio device type {} failed DRIVER_OK and needs a reset: {e}",
                    self.device.device_type()
                );
                self.device.activation_failed(&e);
                let _ = self.interrupt.set_needs_reset();
            }
            return;
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<(), ActivationFailure> {
        let features = self.driver_features;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, cfg) in self.queues.iter().enumerate() {
            if !cfg.ready {
                return Err(ActivationFailure::QueueNotReady(index));
            }
            queues.push(cfg.build(index, &self.mem, event_idx)?);
        }
        self.device.activate(ActivateContext {
            mem: self.mem.clone(),
            queues,
            features,
            interrupt: self.interrupt.clone(),
        })?;
        Ok(())
    }

    fn reset(&mut self) {
        // The device drains first, so nothing touches guest memory once the
        // driver reads status 0 back (§2.4.1).
        self.device.reset();
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(QueueConfig::reset);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.seen.read_registers = true;
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        // §4.2.2.2: registers are read 32 bits at a time, aligned.
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            let features = self.negotiated_features();
            if self
                .device
                .write_config(offset - CONFIG_OFFSET, data, features)
            {
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;
    use std::sync::Mutex;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    /// What the dummy device saw, shared with the test.
    #[derive(Default)]
    struct Seen {
        activations: Vec<(u64, u16)>,
        resets: u32,
        config: [u8; 8],
    }

    struct Dummy {
        evt: EventFd,
        seen: Arc<Mutex<Seen>>,
        fail_activation: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn queue_notify_evt(&self, index: usize) -> Option<&EventFd> {
            (index == 0).then_some(&self.evt)
        }
        fn device_features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | 0b101
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let cfg = self.seen.lock().unwrap().config;
            for (i, b) in data.iter_mut().enumerate() {
                *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8], _features: u64) -> bool {
            if offset == 0 && data.len() == 1 {
                self.seen.lock().unwrap().config[0] = data[0];
                return true;
            }
            false
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail_activation {
                return Err(ActivateError::WorkerGone);
            }
            let size = ctx.queues[0].size();
            self.seen
                .lock()
                .unwrap()
                .activations
                .push((ctx.features, size));
            Ok(())
        }
        fn reset(&mut self) {
            self.seen.lock().unwrap().resets += 1;
        }
    }

    fn transport(fail: bool) -> (MmioTransport<Dummy>, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen {
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            ..Seen::default()
        }));
        let dev = Dummy {
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            seen: seen.clone(),
            fail_activation: fail,
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let t = MmioTransport::new(dev, mem, Arc::new(CountingInterrupt::default())).unwrap();
        (t, seen)
    }

    fn rd(t: &mut MmioTransport<Dummy>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport<Dummy>, low: u32, high: u32) -> u32 {
        wr(t, STATUS, 1);
        wr(t, STATUS, 3);
        wr(t, DRIVER_FEATURES_SEL, 0);
        wr(t, DRIVER_FEATURES, low);
        wr(t, DRIVER_FEATURES_SEL, 1);
        wr(t, DRIVER_FEATURES, high);
        wr(t, STATUS, 3 | 8);
        rd(t, STATUS)
    }

    fn setup_queue(t: &mut MmioTransport<Dummy>) {
        wr(t, QUEUE_SEL, 0);
        wr(t, QUEUE_NUM, 8);
        wr(t, QUEUE_DESC_LOW, 0x1000);
        wr(t, QUEUE_DRIVER_LOW, 0x2000);
        wr(t, QUEUE_DEVICE_LOW, 0x3000);
        wr(t, QUEUE_READY, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(rd(&mut t, MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, VERSION), 2);
        assert_eq!(rd(&mut t, DEVICE_ID), 42);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 16);
        wr(&mut t, QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 0);
        wr(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1);
        wr(&mut t, DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), (1 << 29) | 0b101);
        assert_eq!(rd(&mut t, SHM_LEN_LOW), u32::MAX);
        // Narrow register reads are refused, config reads of any width work.
        let mut two = [0xffu8; 2];
        t.read(MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        let mut eight = [0u8; 8];
        t.read(CONFIG_OFFSET, &mut eight);
        assert_eq!(eight, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn features_ok_refused_for_unoffered_bits_or_no_version_1() {
        let (mut t, _) = transport(false);
        assert_eq!(negotiate(&mut t, 0b10, 1), 3, "bit 1 not offered");
        wr(&mut t, STATUS, 0);
        assert_eq!(negotiate(&mut t, 0b1, 0), 3, "no VERSION_1");
        wr(&mut t, STATUS, 0);
        assert_eq!(negotiate(&mut t, 0b1, 1 | 2), 3, "bit 33 not offered");
        wr(&mut t, STATUS, 0);
        // A word past the first 64 bits.
        wr(&mut t, STATUS, 1);
        wr(&mut t, STATUS, 3);
        wr(&mut t, DRIVER_FEATURES_SEL, 2);
        wr(&mut t, DRIVER_FEATURES, 1);
        assert_eq!(negotiate(&mut t, 0b1, 1), 3);
        wr(&mut t, STATUS, 0);
        assert_eq!(negotiate(&mut t, 0b101, 1), 3 | 8);
        assert_eq!(t.negotiated_features(), (1 << 32) | 0b101);
        // Features are frozen after FEATURES_OK.
        wr(&mut t, DRIVER_FEATURES_SEL, 0);
        wr(&mut t, DRIVER_FEATURES, 0);
        assert_eq!(t.negotiated_features(), (1 << 32) | 0b101);
    }

    #[test]
    fn driver_ok_activates_with_the_queue_and_reset_clears_everything() {
        let (mut t, seen) = transport(false);
        assert_eq!(t.driver_seen(), DriverSeen::default());
        negotiate(&mut t, 1 << 29, 1);
        assert!(t.driver_seen().read_registers && !t.driver_seen().driver_ok);
        // Queue registers before FEATURES_OK would have been ignored; now they count.
        setup_queue(&mut t);
        assert_eq!(rd(&mut t, QUEUE_READY), 1);
        wr(&mut t, STATUS, 15);
        assert_eq!(rd(&mut t, STATUS), 15);
        assert_eq!(
            seen.lock().unwrap().activations,
            vec![((1 << 32) | (1 << 29), 8)]
        );
        // Live queue registers cannot change.
        wr(&mut t, QUEUE_READY, 0);
        assert_eq!(rd(&mut t, QUEUE_READY), 1);
        let gen = rd(&mut t, CONFIG_GENERATION);
        wr(&mut t, STATUS, 0);
        assert_eq!(rd(&mut t, STATUS), 0);
        assert_eq!(rd(&mut t, QUEUE_READY), 0);
        assert_eq!(seen.lock().unwrap().resets, 1);
        // What the driver got to outlives the reset.
        assert!(t.driver_seen().driver_ok);
        assert_ne!(rd(&mut t, CONFIG_GENERATION), gen);
    }

    #[test]
    fn failed_activation_or_bad_queue_needs_reset() {
        let (mut t, _) = transport(true);
        negotiate(&mut t, 0, 1);
        setup_queue(&mut t);
        wr(&mut t, STATUS, 15);
        assert_eq!(rd(&mut t, STATUS), 15 | 0x40);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 2);

        let (mut t, seen) = transport(false);
        negotiate(&mut t, 0, 1);
        setup_queue(&mut t);
        wr(&mut t, QUEUE_DEVICE_LOW, 0xfff0);
        wr(&mut t, STATUS, 15);
        assert_eq!(rd(&mut t, STATUS) & 0x40, 0x40);
        assert!(seen.lock().unwrap().activations.is_empty());
        wr(&mut t, STATUS, 0);
        assert_eq!(rd(&mut t, STATUS), 0);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 0);
    }

    #[test]
    fn status_bits_only_grow_and_driver_ok_needs_features_ok() {
        let (mut t, seen) = transport(false);
        wr(&mut t, STATUS, 1);
        wr(&mut t, STATUS, 3);
        wr(&mut t, STATUS, 1);
        assert_eq!(rd(&mut t, STATUS), 3);
        wr(&mut t, STATUS, 3 | 4);
        assert_eq!(rd(&mut t, STATUS), 3);
        assert!(seen.lock().unwrap().activations.is_empty());
        wr(&mut t, STATUS, 3 | 0x40);
        assert_eq!(rd(&mut t, STATUS), 3, "the driver cannot set NEEDS_RESET");
    }

    #[test]
    fn notify_write_signals_the_eventfd_and_ack_clears() {
        let (mut t, _) = transport(false);
        wr(&mut t, QUEUE_NOTIFY, 0);
        assert_eq!(t.device().evt.read().unwrap(), 1);
        wr(&mut t, QUEUE_NOTIFY, 5);
        assert!(t.device().evt.read().is_err(), "no queue 5");
        t.interrupt.signal_used_buffer().unwrap();
        t.interrupt.signal_config_change().unwrap();
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 3);
        wr(&mut t, INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), 2);
    }

    #[test]
    fn config_writes_bump_the_generation() {
        let (mut t, seen) = transport(false);
        let gen = rd(&mut t, CONFIG_GENERATION);
        t.write(CONFIG_OFFSET, &[9]);
        assert_eq!(seen.lock().unwrap().config[0], 9);
        assert_eq!(rd(&mut t, CONFIG_GENERATION), gen + 1);
        t.write(CONFIG_OFFSET + 1, &[9]);
        assert_eq!(rd(&mut t, CONFIG_GENERATION), gen + 1);
    }
}
