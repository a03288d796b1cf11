//! The debug-exit port (QEMU's `isa-debug-exit`): a write of `v` ends the VMM
//! with status `(v << 1) | 1`, so a CI guest can report a verdict that cannot
//! be confused with a clean power-off (status 0).

use std::sync::Arc;

use super::{ExitHandler, GuestExit};
use crate::BusDevice;

/// The port the debug-exit device answers on, by convention.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// How wide the port is: accesses of 1, 2 or 4 bytes are all accepted.
pub const DEBUG_EXIT_LEN: u64 = 4;

/// The debug-exit device.
pub struct DebugExit {
    exit: Arc<dyn ExitHandler>,
}

impl DebugExit {
    /// A device that reports writes to `exit`.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        Self { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing to read; QEMU's device answers all ones too.
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a write at the port's base counts; the value is as wide as the
        // access (`out dx, al` or `out dx, eax`).
        if offset != 0 || data.is_empty() || data.len() > 4 {
            return;
        }
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        self.exit.request_exit(GuestExit::DebugExit {
            value: u32::from_le_bytes(bytes),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::RecordingExit;

    #[test]
    fn byte_and_dword_writes_request_an_exit() {
        let rec = Arc::new(RecordingExit::default());
        let mut dev = DebugExit::new(rec.clone());
        dev.write(0, &[0x10]);
        dev.write(0, &[0x01, 0x02, 0, 0]);
        assert_eq!(
            rec.requests(),
            vec![
                GuestExit::DebugExit { value: 0x10 },
                GuestExit::DebugExit { value: 0x201 }
            ]
        );
    }

    #[test]
    fn writes_off_base_are_ignored_and_reads_are_all_ones() {
        let rec = Arc::new(RecordingExit::default());
        let mut dev = DebugExit::new(rec.clone());
        dev.write(1, &[1]);
        let mut data = [0u8; 2];
        dev.read(0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert!(rec.requests().is_empty());
    }
}
