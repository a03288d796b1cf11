//! The part of the i8042 keyboard controller a guest needs to reboot.
//!
//! Linux's `reboot=k` (and many other kernels) pulse the CPU reset line
//! through the controller: command 0xFE on port 0x64, or clearing bit 0 of
//! the output port with command 0xD1. That ends the VMM with status 0.
//! Enough of the controller's command set answers for a driver probing it
//! to see a sane, empty controller: self tests pass, the configuration byte
//! reads back, and no keyboard or mouse ever answers.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{ExitHandler, GuestExit};
use crate::BusDevice;

/// First port of the controller (data, 0x60); the range ends with 0x64.
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64; 0x61..=0x63 belong to others and read as all ones.
pub const I8042_LEN: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// Status bit: the output buffer holds a byte for the guest.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Status bit: the controller passed its self test.
const STATUS_SYSTEM: u8 = 1 << 2;
/// Status bit: the keyboard is not inhibited.
const STATUS_UNLOCKED: u8 = 1 << 4;

/// Configuration byte bits the disable commands change.
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
/// What a PC firmware leaves in the configuration byte: keyboard interrupt
/// on, system flag, translation.
const CTR_DEFAULT: u8 = 0x45;

/// Output buffer bound: the guest reads what it asked for, but nothing may
/// let it grow the VMM's memory.
const OUTPUT_CAPACITY: usize = 16;

/// The i8042 controller.
pub struct I8042 {
    exit: Arc<dyn ExitHandler>,
    config: u8,
    output_port: u8,
    /// A command that takes its argument from the next data-port write.
    pending: Option<u8>,
    output: VecDeque<u8>,
}

impl I8042 {
    /// A controller that reports reset requests to `exit`.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        Self {
            exit,
            config: CTR_DEFAULT,
            // Bit 0 (reset line not asserted) and bit 1 (A20 enabled).
            output_port: 0x03,
            pending: None,
            output: VecDeque::new(),
        }
    }

    fn push_output(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_CAPACITY {
            self.output.push_back(byte);
        }
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_empty() {
            0
        } else {
            STATUS_OUTPUT_FULL
        };
        STATUS_SYSTEM | STATUS_UNLOCKED | full
    }

    fn command(&mut self, cmd: u8) {
        self.pending = None;
        match cmd {
            0x20 => self.push_output(self.config),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.pending = Some(cmd),
            0xa7 => self.config |= CTR_AUX_DISABLED,
            0xa8 => self.config &= !CTR_AUX_DISABLED,
            // Self test passed; keyboard interface test passed.
            0xaa => self.push_output(0x55),
            0xab => self.push_output(0x00),
            0xad => self.config |= CTR_KBD_DISABLED,
            0xae => self.config &= !CTR_KBD_DISABLED,
            0xd0 => self.push_output(self.output_port),
            // 0xF0..=0xFF pulse output-port lines whose bit is clear; bit 0
            // is the CPU reset line (0xFE is the usual reset command).
            0xf0..=0xff if cmd & 1 == 0 => self.exit.request_exit(GuestExit::Reset),
            // Everything else (A20 gate, password, mouse test...) is accepted
            // and has no visible effect.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(0x60) => self.config = value,
            Some(0xd1) => {
                self.output_port = value;
                if value & 1 == 0 {
                    self.exit.request_exit(GuestExit::Reset);
                }
            }
            // "Write keyboard/mouse output buffer": the byte comes back as if
            // the device had sent it.
            Some(0xd2) | Some(0xd3) => self.push_output(value),
            // A byte for a device that is not there (keyboard, or mouse after
            // 0xD4) gets no answer, like an empty PS/2 port.
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => self.output.pop_front().unwrap_or(0),
            COMMAND => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            DATA => self.data(value),
            COMMAND => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::RecordingExit;

    fn controller() -> (Arc<RecordingExit>, I8042) {
        let rec = Arc::new(RecordingExit::default());
        let dev = I8042::new(rec.clone());
        (rec, dev)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn command_fe_requests_a_reset() {
        let (rec, mut dev) = controller();
        dev.write(COMMAND, &[0xfe]);
        assert_eq!(rec.requests(), vec![GuestExit::Reset]);
    }

    #[test]
    fn clearing_output_port_bit0_requests_a_reset() {
        let (rec, mut dev) = controller();
        dev.write(COMMAND, &[0xd1]);
        dev.write(DATA, &[0x03]);
        assert!(rec.requests().is_empty(), "bit 0 still set: no reset");
        dev.write(COMMAND, &[0xd1]);
        dev.write(DATA, &[0x02]);
        assert_eq!(rec.requests(), vec![GuestExit::Reset]);
    }

    #[test]
    fn pulses_that_leave_the_reset_line_alone_do_nothing() {
        let (rec, mut dev) = controller();
        dev.write(COMMAND, &[0xff]);
        dev.write(COMMAND, &[0xf1]);
        assert!(rec.requests().is_empty());
    }

    #[test]
    fn self_test_and_config_byte_read_back() {
        let (_, mut dev) = controller();
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND, &[0xaa]);
        assert_ne!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA), 0x55);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);

        dev.write(COMMAND, &[0x60]);
        dev.write(DATA, &[0x30]);
        dev.write(COMMAND, &[0x20]);
        assert_eq!(read(&mut dev, DATA), 0x30);
        dev.write(COMMAND, &[0xae]);
        dev.write(COMMAND, &[0x20]);
        assert_eq!(read(&mut dev, DATA), 0x20);
    }

    #[test]
    fn output_buffer_is_bounded_and_other_ports_read_ones() {
        let (_, mut dev) = controller();
        for _ in 0..100 {
            dev.write(COMMAND, &[0xaa]);
        }
        assert_eq!(dev.output.len(), OUTPUT_CAPACITY);
        assert_eq!(read(&mut dev, 1), 0xff);
        // Keyboard commands go unanswered.
        dev.write(DATA, &[0xff]);
        assert_eq!(dev.output.len(), OUTPUT_CAPACITY);
    }
}
