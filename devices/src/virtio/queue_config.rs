//! What the driver wrote about one queue through the transport registers.
//!
//! `virtio_queue::Queue` is the run-time queue the device thread owns; this is
//! the plain record the transport keeps while the driver sets the queue up,
//! turned into a `Queue` (and checked against guest memory) at DRIVER_OK.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Why a queue the driver marked ready cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueConfigError {
    /// The size or a ring address broke an alignment or power-of-two rule.
    #[error("queue {index}: {source:?}")]
    Invalid {
        /// Queue index.
        index: usize,
        /// What virtio-queue refused.
        source: virtio_queue::Error,
    },
    /// A ring lies (partly) outside guest memory.
    #[error("queue {index}: a ring lies outside guest memory (desc {desc:#x}, avail {avail:#x}, used {used:#x}, size {size})")]
    OutsideMemory {
        /// Queue index.
        index: usize,
        /// Descriptor table address.
        desc: u64,
        /// Available (driver) ring address.
        avail: u64,
        /// Used (device) ring address.
        used: u64,
        /// Queue size.
        size: u16,
    },
}

/// One queue's registers (virtio 1.2 §4.2.2: QueueNum, QueueReady, and the
/// three ring addresses as low/high halves).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// QueueNumMax.
    pub max_size: u16,
    /// QueueNum, as written (checked only at activation).
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// QueueDesc{Low,High}.
    pub desc: u64,
    /// QueueDriver{Low,High} (the available ring).
    pub avail: u64,
    /// QueueDevice{Low,High} (the used ring).
    pub used: u64,
}

/// Replaces the low or high half of a 64-bit register pair.
pub fn set_half(reg: &mut u64, high: bool, value: u32) {
    *reg = if high {
        (*reg & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*reg & !0xffff_ffff) | u64::from(value)
    };
}

impl QueueConfig {
    /// A queue as the spec says it is after reset: size at its maximum, not
    /// ready, addresses zero.
    pub fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    /// Back to the reset state (virtio 1.2 §4.2.2.1: QueueReady reads 0
    /// after reset).
    pub fn reset(&mut self) {
        *self = QueueConfig::new(self.max_size);
    }

    /// Builds the run-time queue for queue `index`, refusing sizes and
    /// addresses the spec forbids and rings outside guest memory.
    pub fn build(
        &self,
        index: usize,
        mem: &GuestMemoryMmap,
        event_idx: bool,
    ) -> Result<Queue, QueueConfigError> {
        let invalid = |source| QueueConfigError::Invalid { index, source };
        let mut queue = Queue::new(self.max_size).map_err(invalid)?;
        // virtio 1.2 §2.7: split queue sizes are powers of two up to the maximum.
        queue.try_set_size(self.size).map_err(invalid)?;
        // §2.7.2: descriptor table 16-byte, driver ring 2-byte, device ring
        // 4-byte aligned (checked by virtio-queue).
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(invalid)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(invalid)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.used))
            .map_err(invalid)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(QueueConfigError::OutsideMemory {
                index,
                desc: self.desc,
                avail: self.avail,
                used: self.used,
                size: self.size,
            });
        }
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn halves_compose() {
        let mut reg = 0;
        set_half(&mut reg, false, 0x1234_5678);
        set_half(&mut reg, true, 0x9abc_def0);
        assert_eq!(reg, 0x9abc_def0_1234_5678);
        set_half(&mut reg, false, 1);
        assert_eq!(reg, 0x9abc_def0_0000_0001);
    }

    #[test]
    fn builds_a_valid_queue() {
        let mut cfg = QueueConfig::new(256);
        cfg.size = 16;
        cfg.desc = 0x1000;
        cfg.avail = 0x2000;
        cfg.used = 0x3000;
        let q = cfg.build(0, &mem(), true).unwrap();
        assert_eq!(q.size(), 16);
        assert!(q.event_idx_enabled());
    }

    #[test]
    fn refuses_bad_sizes_alignment_and_memory() {
        let mut cfg = QueueConfig::new(256);
        cfg.desc = 0x1000;
        cfg.avail = 0x2000;
        cfg.used = 0x3000;
        for size in [0, 3, 512] {
            cfg.size = size;
            assert!(matches!(
                cfg.build(0, &mem(), false),
                Err(QueueConfigError::Invalid { .. })
            ));
        }
        cfg.size = 16;
        cfg.used = 0x3002;
        assert!(matches!(
            cfg.build(0, &mem(), false),
            Err(QueueConfigError::Invalid { .. })
        ));
        cfg.used = 0xfff0;
        assert!(matches!(
            cfg.build(0, &mem(), false),
            Err(QueueConfigError::OutsideMemory { .. })
        ));
        cfg.reset();
        assert_eq!(cfg, QueueConfig::new(256));
    }
}
