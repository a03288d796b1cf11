//! Legacy PC devices: 8250 serial, i8042 reset line, debug-exit port.
//!
//! These sit on the port-I/O bus. None of them knows how the VMM stops: a
//! guest's request to reset or to exit reaches the VMM through the
//! [`ExitHandler`] it hands in, so the same devices serve the `ferrite`
//! binary and the unit tests.

pub mod debug_exit;
pub mod i8042;
pub mod serial;

pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use serial::{Serial, SerialOutput};

/// Why a device asks the VMM to stop the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest pulsed the reset line (i8042 command 0xFE, or output-port bit 0 cleared).
    Reset,
    /// The guest wrote `value` to the debug-exit port.
    DebugExit {
        /// The value written (little-endian, as wide as the access).
        value: u32,
    },
}

impl GuestExit {
    /// The process exit status this request maps to: 0 for a reset, and
    /// QEMU `isa-debug-exit`'s `(value << 1) | 1` for a debug exit (the
    /// status byte keeps its low 8 bits).
    pub fn exit_status(self) -> u8 {
        match self {
            GuestExit::Reset => 0,
            GuestExit::DebugExit { value } => ((value << 1) | 1) as u8,
        }
    }
}

/// Receives a device's request to stop the guest. Implementations must not
/// block: they are called on a vCPU thread with the device locked.
pub trait ExitHandler: Send + Sync {
    /// The guest asked to stop; the VMM decides what happens next.
    fn request_exit(&self, exit: GuestExit);
}

/// An exit handler that records requests, for tests.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default)]
pub struct RecordingExit {
    requests: std::sync::Mutex<Vec<GuestExit>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl RecordingExit {
    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<GuestExit> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl ExitHandler for RecordingExit {
    fn request_exit(&self, exit: GuestExit) {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(exit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_isa_debug_exit() {
        assert_eq!(GuestExit::Reset.exit_status(), 0);
        assert_eq!(GuestExit::DebugExit { value: 0 }.exit_status(), 1);
        assert_eq!(GuestExit::DebugExit { value: 0x10 }.exit_status(), 0x21);
        // Only the low byte of the status survives, as with QEMU.
        assert_eq!(GuestExit::DebugExit { value: 0x80 }.exit_status(), 1);
    }
}
