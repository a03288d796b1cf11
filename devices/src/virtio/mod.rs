//! Virtio devices over the virtio-mmio transport.
//!
//! The split follows the virtio spec's own: [`mmio`] is the transport (the
//! register window a vCPU reads and writes, feature negotiation, the device
//! status state machine, queue setup), [`VirtioDevice`] is what a device type
//! plugs into it, and [`block`] is the one device type ferrite has. The
//! transport runs on vCPU threads under the bus lock; a device does its real
//! work on its own thread and talks back through [`VirtioInterrupt`].

pub mod block;
pub mod mmio;
pub mod mmio_driver;
pub mod queue_config;
pub mod ring_index;
pub mod split_ring;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::InterruptLine;

/// Everything a device needs to start serving its queues at DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory; the device keeps this clone (and so the mapping) alive
    /// for as long as it may touch a buffer.
    pub mem: GuestMemoryMmap,
    /// The queues the driver set up, in index order, already validated
    /// against `mem`.
    pub queues: Vec<Queue>,
    /// The features both sides agreed on at FEATURES_OK.
    pub features: u64,
    /// Where to raise used-buffer and configuration-change interrupts.
    pub interrupt: Arc<VirtioInterrupt>,
}

/// Why a device could not start; the transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The device's worker thread is gone (it was shut down).
    #[error("the device's I/O thread is not running")]
    WorkerGone,
    /// The driver set up fewer queues than the device serves.
    #[error("the device needs {wanted} queues, the driver set up {got}")]
    MissingQueue {
        /// Queues the device serves.
        wanted: usize,
        /// Queues handed over.
        got: usize,
    },
    /// The disk could not apply what the negotiated features demand (the
    /// write cache off for a driver without FLUSH).
    #[error("the disk could not apply the negotiated features: {0}")]
    Disk(#[from] ::block::BlockError),
}

/// A device type behind the virtio-mmio transport.
///
/// Calls come from vCPU threads (under the transport's lock); a device that
/// needs time for anything must hand it to its own thread.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The eventfd the transport signals when the driver notifies queue
    /// `index`; the VMM registers the same one as a KVM ioeventfd.
    fn queue_notify_evt(&self, index: usize) -> Option<&EventFd>;
    /// Feature bits the device offers.
    fn device_features(&self) -> u64;
    /// Reads device-specific configuration at `offset` from its start; bytes
    /// past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to configuration space; `features` are the negotiated
    /// ones. Writes the spec does not allow are ignored. Returns whether the
    /// configuration changed (the transport then bumps ConfigGeneration).
    fn write_config(&mut self, offset: u64, data: &[u8], features: u64) -> bool;
    /// Starts serving the queues (DRIVER_OK).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// DRIVER_OK failed (in the transport or in `activate`) and the device
    /// is now in DEVICE_NEEDS_RESET: count it where the device reports.
    fn activation_failed(&mut self, _error: &(dyn std::error::Error + 'static)) {}
    /// Device reset (status 0): stop touching guest memory, drop the queues,
    /// restore defaults. Returns once nothing is in flight.
    fn reset(&mut self);
}

/// The device's half of the interrupt protocol: InterruptStatus bits, the
/// DEVICE_NEEDS_RESET flag, and the line that carries them to the guest.
///
/// Shared by the transport (which reads and acknowledges) and the device's
/// I/O thread (which raises), hence atomics.
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    line: Arc<dyn InterruptLine>,
}

impl VirtioInterrupt {
    /// Wraps the line the VMM gave the device (an irqfd under KVM).
    pub fn new(line: Arc<dyn InterruptLine>) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            line,
        }
    }

    /// Tells the driver it has used buffers (InterruptStatus bit 0). The bit
    /// is set before the line is raised so a driver that runs at once sees it.
    pub fn signal_used_buffer(&self) -> io::Result<()> {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        self.line.trigger()
    }

    /// Tells the driver its configuration changed (InterruptStatus bit 1).
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.status
            .fetch_or(VIRTIO_MMIO_INT_CONFIG, Ordering::SeqCst);
        self.line.trigger()
    }

    /// Puts the device in DEVICE_NEEDS_RESET and tells the driver (virtio
    /// 1.2 §2.1.2: the device SHOULD set it on an error it cannot recover
    /// from, and MUST send a configuration change notification).
    pub fn set_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change()
    }

    /// Whether DEVICE_NEEDS_RESET is set.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the bits the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: no pending interrupt, no pending reset request.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;

    #[test]
    fn bits_are_set_before_the_line_and_cleared_by_ack() {
        let line = Arc::new(CountingInterrupt::default());
        let irq = VirtioInterrupt::new(line.clone());
        irq.signal_used_buffer().unwrap();
        assert_eq!(irq.status(), 1);
        irq.set_needs_reset().unwrap();
        assert_eq!(irq.status(), 3);
        assert!(irq.needs_reset());
        assert_eq!(line.count(), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
        irq.reset();
        assert_eq!(irq.status(), 0);
        assert!(!irq.needs_reset());
    }
}
