//! The bus that routes a guest's port or MMIO access to the device behind it.
//!
//! One [`Bus`] serves port I/O and another MMIO. Ranges are fixed before the
//! first vCPU runs, so the map itself needs no lock: vCPU threads share the
//! bus through an `Arc` and lock only the device they reach.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device that answers reads and writes inside its bus range.
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset` from the range's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes what the guest writes at `offset` from the range's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a range could not be added to the bus.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range has no bytes.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Start of the refused range.
        base: u64,
    },
    /// The range runs past the end of the address space.
    #[error("bus range at {base:#x} with length {len:#x} wraps around the address space")]
    Wraps {
        /// Start of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// The range overlaps one that is already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Start of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
        /// Start of the range already there.
        other_base: u64,
        /// Length of the range already there.
        other_len: u64,
    },
}

#[derive(Clone)]
struct Range {
    len: u64,
    device: SharedDevice,
}

/// Maps non-overlapping address ranges to devices.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`, refusing overlaps.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base.checked_add(len).ok_or(BusError::Wraps { base, len })?;
        // Only the nearest range below `end` can overlap, since ranges are disjoint.
        if let Some((&other_base, other)) = self.ranges.range(..end).next_back() {
            if other_base + other.len > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    /// The device whose range holds all of `[addr, addr + size)`, and the
    /// offset of `addr` inside it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= range.len).then_some((offset, &range.device))
    }

    /// Routes a read; false when no device holds the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; false when no device holds the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, taking it over even if another thread panicked while
/// holding it: device state stays consistent per access, and refusing the
/// guest every later access would only turn one failure into a hang.
pub fn lock(device: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with its offset's low byte.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> (Arc<Mutex<Recorder>>, SharedDevice) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let shared: SharedDevice = dev.clone();
        (dev, shared)
    }

    #[test]
    fn routes_to_the_device_with_its_offset() {
        let mut bus = Bus::new();
        let (dev, shared) = recorder();
        bus.insert(shared, 0x1000, 0x100).unwrap();

        let mut data = [0u8; 4];
        assert!(bus.read(0x1010, &mut data));
        assert_eq!(data, [0x10; 4]);
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));
        assert_eq!(
            dev.lock().unwrap().last_write,
            Some((0xfc, vec![1, 2, 3, 4]))
        );
    }

    #[test]
    fn accesses_outside_or_across_the_end_are_unhandled() {
        let mut bus = Bus::new();
        let (_, shared) = recorder();
        bus.insert(shared, 0x1000, 0x100).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x1100, &mut data));
        assert!(!bus.read(0x10fe, &mut data), "access crossing the end");
        assert!(!bus.write(u64::MAX, &[0; 2]));
    }

    #[test]
    fn refuses_overlaps_zero_length_and_wrapping() {
        let mut bus = Bus::new();
        let (_, a) = recorder();
        bus.insert(a.clone(), 0x1000, 0x100).unwrap();
        for (base, len) in [(0x1000, 0x100), (0xf00, 0x101), (0x10ff, 1), (0x1010, 4)] {
            assert_eq!(
                bus.insert(a.clone(), base, len),
                Err(BusError::Overlap {
                    base,
                    len,
                    other_base: 0x1000,
                    other_len: 0x100
                })
            );
        }
        assert_eq!(
            bus.insert(a.clone(), 0x2000, 0),
            Err(BusError::ZeroLength { base: 0x2000 })
        );
        assert_eq!(
            bus.insert(a.clone(), u64::MAX, 2),
            Err(BusError::Wraps {
                base: u64::MAX,
                len: 2
            })
        );
        // Touching neighbours are fine.
        bus.insert(a.clone(), 0xf00, 0x100).unwrap();
        bus.insert(a, 0x1100, 0x10).unwrap();
    }

    #[test]
    fn poisoned_device_still_answers() {
        let mut bus = Bus::new();
        let (dev, shared) = recorder();
        bus.insert(shared, 0, 8).unwrap();
        let poisoner = dev.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(bus.write(0, &[7]));
    }
}
