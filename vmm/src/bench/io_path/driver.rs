//! A minimal in-process virtio-blk driver: it negotiates through the
//! virtio-mmio registers as Linux's `virtio_mmio`/`virtio_blk` do, keeps one
//! split virtqueue in guest memory, notifies through the queue-notify eventfd
//! (what a KVM ioeventfd signals) and waits for completions either on the
//! interrupt eventfd (what an irqfd carries, acknowledged through
//! InterruptStatus/InterruptACK as Linux's handler does) or by polling the
//! used ring.
//!
//! It is built to cost little per request: every chain is laid out once
//! (slot `s` owns descriptors `3s`, `3s+1`, `3s+2` and fixed header, data
//! and status areas), so a submission writes a header, the data
//! descriptor, one ring slot and the available index. The ring is written
//! through `devices::virtio::split_ring`, as the device tests and the fuzz
//! targets write theirs.

use std::sync::atomic::{fence, Ordering};

use std::sync::Arc;
use std::time::{Duration, Instant};

use block::stage_timing::{self, Point};
use devices::virtio::block::poll::Spin;
use devices::virtio::block::BlockDevice;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::ring_index::RingIndex;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use devices::virtio::split_ring::{self, Buf, Desc, RingMemory, SplitRing};
use vmm_sys_util::eventfd::EventFd;

use super::BenchError;

use devices::virtio::mmio::reg::{
    INTERRUPT_ACK, INTERRUPT_STATUS, QUEUE_NUM_MAX, QUEUE_SEL, STATUS,
};
use devices::virtio::mmio_driver::{self, status};

/// Where the rings start in guest memory.
const RING_BASE: u64 = 0x1_0000;
/// Where the per-slot data buffers start (1 MiB aligned).
pub const DATA_BASE: u64 = 0x10_0000;
/// Guest memory besides the data buffers.
const META_SIZE: u64 = DATA_BASE;
/// How long a request may take before the driver gives up.
const TIMEOUT: Duration = Duration::from_secs(60);

/// How the driver learns about completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitMode {
    /// Sleep on the interrupt eventfd at once (the irqfd path of a VM whose
    /// vCPU halts without polling).
    Irq,
    /// Spin on the used ring for up to 200 µs, then sleep on the interrupt
    /// eventfd: a halted vCPU under KVM's default halt polling
    /// (`halt_poll_ns` = 200000).
    Hybrid,
    /// Spin on the used ring (a polling guest driver).
    Poll,
}

/// How long `Hybrid` spins before sleeping (KVM's default halt_poll_ns).
const HALT_POLL: Duration = Duration::from_micros(200);

/// What one request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqKind {
    /// Device-to-driver data.
    Read,
    /// Driver-to-device data.
    Write,
}

/// A completed request: its slot and whether it succeeded.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// The slot it was submitted in.
    pub slot: usize,
    /// Status byte was VIRTIO_BLK_S_OK.
    pub ok: bool,
}

/// The driver and the device it drives.
pub struct Driver {
    transport: MmioTransport<BlockDevice>,
    mem: GuestMemoryMmap,
    notify: EventFd,
    irq: Arc<EventFd>,
    wait: WaitMode,
    slots: usize,
    slot_bytes: u64,
    ring: SplitRing,
    /// The used index, read directly as a guest reads its own ring.
    used_idx: Option<RingIndex>,
    meta: u64,
    avail_idx: u16,
    /// `avail_idx` at the last notification decision.
    notified_idx: u16,
    last_used: u16,
    /// Notifications sent and interrupts waited for.
    pub notifies: u64,
    /// Times the driver slept on the interrupt eventfd.
    pub sleeps: u64,
    /// `Hybrid` offers its CPU to other tasks while it spins, as KVM's
    /// halt polling stops when another task is runnable on the vCPU's CPU.
    pub halt_poll_yields: bool,
}

impl Driver {
    /// Guest memory for `slots` requests of at most `slot_bytes` each.
    pub fn guest_memory(slots: usize, slot_bytes: u64) -> Result<GuestMemoryMmap, BenchError> {
        let size = META_SIZE + slots as u64 * slot_bytes.next_multiple_of(4096);
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
            .map_err(|e| BenchError::GuestMemory(e.to_string()))
    }

    /// Brings `device` up like a guest would, with one queue, room for
    /// `slots` requests of at most `slot_bytes` each in `mem` (made by
    /// [`Driver::guest_memory`] with the same numbers).
    pub fn new(
        device: BlockDevice,
        mem: GuestMemoryMmap,
        slots: usize,
        slot_bytes: u64,
        wait: WaitMode,
    ) -> Result<Driver, BenchError> {
        let notify = device
            .notify_eventfd()
            .try_clone()
            .map_err(BenchError::EventFd)?;
        // Blocking: the driver sleeps on it in `Irq` mode.
        let irq = Arc::new(EventFd::new(0).map_err(BenchError::EventFd)?);
        let mut t = MmioTransport::new(device, mem.clone(), irq.clone())
            .map_err(|e| BenchError::Device(e.to_string()))?;
        mmio_driver::write32(&mut t, STATUS, 0);
        let offered = mmio_driver::device_features(&mut t);
        // What Linux's virtio_blk takes for plain reads and writes.
        let wanted = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_RING_F_EVENT_IDX);
        let features = offered & wanted;
        if features & (1 << VIRTIO_RING_F_EVENT_IDX) == 0
            || features & (1 << VIRTIO_F_VERSION_1) == 0
        {
            return Err(BenchError::Device(format!(
                "device offers {offered:#x}, without VERSION_1 or EVENT_IDX"
            )));
        }
        if !mmio_driver::negotiate(&mut t, features) {
            return Err(BenchError::Device("FEATURES_OK refused".into()));
        }
        mmio_driver::write32(&mut t, QUEUE_SEL, 0);
        let max = mmio_driver::read32(&mut t, QUEUE_NUM_MAX);
        let qsize = u16::try_from(max.min(256)).unwrap_or(256);
        if usize::from(qsize) < 3 * slots {
            return Err(BenchError::Device(format!(
                "queue of {qsize} entries is too small for {slots} requests"
            )));
        }
        let ring = SplitRing::at(RING_BASE, qsize);
        let meta = ring.end();
        if meta + 32 * slots as u64 > META_SIZE {
            return Err(BenchError::Device("too many slots".into()));
        }
        mmio_driver::set_queue(&mut t, 0, qsize, ring.addrs());
        let used_idx = RingIndex::new(&mem, GuestAddress(ring.addrs().used + 2));
        let mut d = Driver {
            transport: t,
            mem,
            notify,
            irq,
            wait,
            slots,
            slot_bytes: slot_bytes.next_multiple_of(4096),
            used_idx,
            ring,
            meta,
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            notifies: 0,
            sleeps: 0,
            halt_poll_yields: true,
        };
        d.lay_out_chains()?;
        d.set_used_event()?;
        if !mmio_driver::driver_ok(&mut d.transport) {
            return Err(BenchError::Device("DRIVER_OK refused".into()));
        }
        Ok(d)
    }

    fn mem_err(e: vm_memory::GuestMemoryError) -> BenchError {
        BenchError::GuestMemory(e.to_string())
    }

    fn header(&self, slot: usize) -> u64 {
        self.meta + 32 * slot as u64
    }

    fn status_addr(&self, slot: usize) -> u64 {
        self.header(slot) + 16
    }

    /// Guest address of `slot`'s data buffer.
    pub fn data_addr(&self, slot: usize) -> u64 {
        DATA_BASE + self.slot_bytes * slot as u64
    }

    fn ring_err() -> BenchError {
        BenchError::GuestMemory("a ring access fell outside guest memory".into())
    }

    /// The buffers of `slot`'s chain: header, `len` bytes of data (device-
    /// writable for a read), status.
    fn chain(&self, slot: usize, len: u32, read: bool) -> [Buf; 3] {
        let data = GuestAddress(self.data_addr(slot));
        [
            Buf::readable(GuestAddress(self.header(slot)), 16),
            Buf {
                addr: data,
                len,
                writable: read,
            },
            Buf::writable(GuestAddress(self.status_addr(slot)), 1),
        ]
    }

    /// Header → data → status for every slot; submissions only patch them.
    fn lay_out_chains(&mut self) -> Result<(), BenchError> {
        for s in 0..self.slots {
            let d = 3 * s as u16;
            let bufs = self.chain(s, 0, false);
            if !split_ring::write_chain(&mut self.mem, self.ring.desc, &[d, d + 1, d + 2], &bufs) {
                return Err(Self::ring_err());
            }
        }
        Ok(())
    }

    /// Fills `slot`'s data buffer with `byte` (so writes carry data).
    pub fn fill(&self, slot: usize, byte: u8) -> Result<(), BenchError> {
        let v = vec![byte; self.slot_bytes as usize];
        self.mem
            .write_slice(&v, GuestAddress(self.data_addr(slot)))
            .map_err(Self::mem_err)
    }

    /// Makes a request available in `slot` (no notification yet: see
    /// [`Driver::kick`]).
    pub fn submit(
        &mut self,
        slot: usize,
        kind: ReqKind,
        sector: u64,
        len: u32,
    ) -> Result<(), BenchError> {
        let (ty, data_flags) = match kind {
            ReqKind::Read => (VIRTIO_BLK_T_IN, VRING_DESC_F_WRITE as u16),
            ReqKind::Write => (VIRTIO_BLK_T_OUT, 0),
        };
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&ty.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        let h = self.header(slot);
        self.mem
            .write_slice(&hdr, GuestAddress(h))
            .map_err(Self::mem_err)?;
        self.mem
            .write_obj(0xffu8, GuestAddress(self.status_addr(slot)))
            .map_err(Self::mem_err)?;
        let d = 3 * slot as u16;
        // Only the data descriptor changes; the others were laid out once.
        let data = Desc {
            addr: self.data_addr(slot),
            len,
            flags: data_flags | VRING_DESC_F_NEXT as u16,
            next: d + 2,
        };
        stage_timing::mark(Point::Submitted);
        let ok = self.ring.write_desc(&mut self.mem, d + 1, data)
            && self.ring.make_available(&mut self.mem, self.avail_idx, d);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        ok.then_some(()).ok_or_else(Self::ring_err)
    }

    /// Notifies the device if EVENT_IDX says it wants to hear about the
    /// requests made available since the last call (§2.7.10).
    pub fn kick(&mut self) -> Result<(), BenchError> {
        let old = self.notified_idx;
        let new = self.avail_idx;
        if old == new {
            return Ok(());
        }
        self.notified_idx = new;
        // The index store must be visible before avail_event is read, or the
        // device could go to sleep while we decide not to wake it.
        fence(Ordering::SeqCst);
        let event = self
            .mem
            .get_index(self.ring.avail_event())
            .ok_or_else(Self::ring_err)?;
        if need_event(event, new, old) {
            self.notifies += 1;
            self.notify.write(1).map_err(BenchError::EventFd)?;
        }
        Ok(())
    }

    fn used_idx(&self) -> Result<u16, BenchError> {
        if let Some(idx) = &self.used_idx {
            return Ok(idx.load());
        }
        self.ring.used_idx(&self.mem).ok_or_else(Self::ring_err)
    }

    /// Asks for an interrupt at the next used entry.
    fn set_used_event(&mut self) -> Result<(), BenchError> {
        let at = self.ring.used_event();
        self.mem
            .put_index(at, self.last_used)
            .then_some(())
            .ok_or_else(Self::ring_err)
    }

    /// Takes every used entry there is into `out`; returns how many.
    pub fn reap(&mut self, out: &mut Vec<Done>) -> Result<usize, BenchError> {
        let idx = self.used_idx()?;
        let mut n = 0;
        while self.last_used != idx {
            let (id, _) = self
                .ring
                .used_entry(&self.mem, self.last_used)
                .ok_or_else(Self::ring_err)?;
            self.last_used = self.last_used.wrapping_add(1);
            stage_timing::mark(Point::Reaped);
            stage_timing::driver_filed();
            let slot = id as usize / 3;
            if slot >= self.slots || !id.is_multiple_of(3) {
                return Err(BenchError::Device(format!(
                    "used entry names descriptor {id}"
                )));
            }
            let status: u8 = self
                .mem
                .read_obj(GuestAddress(self.status_addr(slot)))
                .map_err(Self::mem_err)?;
            out.push(Done {
                slot,
                ok: status == 0,
            });
            n += 1;
        }
        Ok(n)
    }

    /// Waits until at least one used entry is there, then takes them all.
    pub fn wait(&mut self, out: &mut Vec<Done>) -> Result<usize, BenchError> {
        let start = Instant::now();
        let deadline = start + TIMEOUT;
        // KVM stops halt polling when another task wants the vCPU's CPU.
        let mut halt_poll = Spin::new(HALT_POLL, self.halt_poll_yields);
        loop {
            let n = self.reap(out)?;
            if n > 0 {
                if self.wait != WaitMode::Poll {
                    // Interrupts stay on, as for a guest that halts: the
                    // device raises one for the next completion.
                    self.set_used_event()?;
                }
                return Ok(n);
            }
            let spin = match self.wait {
                WaitMode::Poll => true,
                WaitMode::Hybrid => halt_poll.keep_going(),
                WaitMode::Irq => false,
            };
            match spin {
                true => std::hint::spin_loop(),
                false => {
                    // Re-arm, then look again before sleeping: an entry added
                    // before used_event was visible sent no interrupt.
                    self.set_used_event()?;
                    fence(Ordering::SeqCst);
                    if self.used_idx()? != self.last_used {
                        continue;
                    }
                    self.sleeps += 1;
                    self.irq.read().map_err(BenchError::EventFd)?;
                    // What Linux's vm_interrupt does: read and acknowledge.
                    let bits = mmio_driver::read32(&mut self.transport, INTERRUPT_STATUS);
                    mmio_driver::write32(&mut self.transport, INTERRUPT_ACK, bits);
                    if bits & 2 != 0
                        && mmio_driver::read32(&mut self.transport, STATUS) & status::NEEDS_RESET
                            != 0
                    {
                        return Err(BenchError::Device("device needs reset".into()));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::Device(
                    "a request did not complete in 60 s".into(),
                ));
            }
        }
    }

    /// Resets the device (it drains in-flight requests) and gives back the
    /// transport, to shut the device down or read its report.
    pub fn into_transport(mut self) -> MmioTransport<BlockDevice> {
        mmio_driver::write32(&mut self.transport, STATUS, 0);
        self.transport
    }
}

/// vring_need_event (virtio 1.2 §2.7.10): whether moving the index from
/// `old` to `new` crosses `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_follows_the_spec() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 0));
        assert!(need_event(2, 3, 0));
        assert!(need_event(u16::MAX, 0, u16::MAX));
        assert!(!need_event(10, 3, 2));
    }
}
