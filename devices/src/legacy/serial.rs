//! The 8250/16550A UART on COM1, built on `vm-superio`'s register model.
//!
//! Output bytes go to a writer the VMM chooses (stdout for `ferrite`).
//! Input arrives from the VMM's event loop through [`Serial::queue_input`];
//! bytes that do not fit the UART's 64-byte FIFO wait in a bounded backlog
//! and move into the FIFO as the guest drains it, so a paste into the
//! console is not cut at 64 bytes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;

use crate::{BusDevice, InterruptLine};

/// COM1's first port.
pub const COM1_BASE: u64 = 0x3f8;
/// Eight registers.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;

/// Input bytes kept beyond the FIFO; more than that and the event loop
/// should stop reading its input until the guest catches up.
pub const INPUT_BACKLOG: usize = 64 * 1024;

/// Where the guest's output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// Adapts the crate's interrupt line to `vm-superio`'s trigger.
struct IrqTrigger(Arc<dyn InterruptLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// The UART.
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, SerialOutput>,
    backlog: VecDeque<u8>,
}

impl Serial {
    /// A UART that writes the guest's output to `out` and raises `irq`.
    pub fn new(irq: Arc<dyn InterruptLine>, out: SerialOutput) -> Self {
        Self {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
            backlog: VecDeque::new(),
        }
    }

    /// Room left for input before the backlog is full.
    pub fn input_room(&self) -> usize {
        INPUT_BACKLOG.saturating_sub(self.backlog.len())
    }

    /// Queues input for the guest; returns how many bytes were taken (fewer
    /// than `bytes.len()` only when the backlog is full).
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.input_room());
        self.backlog.extend(&bytes[..taken]);
        self.refill_fifo();
        taken
    }

    /// Moves backlog bytes into the FIFO while it has room.
    fn refill_fifo(&mut self) {
        while !self.backlog.is_empty() && self.uart.fifo_capacity() > 0 {
            let (front, _) = self.backlog.as_slices();
            // A failed interrupt leaves the byte in the FIFO with the line
            // status set; the guest still finds it when it polls.
            let moved = match self.uart.enqueue_raw_bytes(front) {
                Ok(n) => n,
                Err(vm_superio::serial::Error::Trigger(_)) => front.len().min(1),
                Err(_) => 0,
            };
            if moved == 0 {
                break;
            }
            self.backlog.drain(..moved);
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) else {
            return;
        };
        *first = self.uart.read(offset);
        self.refill_fifo();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        // A closed or full output (stdout gone) loses the byte, as a UART
        // with nothing attached would; the guest must not stall on it.
        let _ = self.uart.write(offset, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingInterrupt;
    use std::sync::Mutex;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that always fails, like a closed stdout.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    const LSR: u64 = 5;
    const IER: u64 = 1;
    const LSR_DATA_READY: u8 = 1;

    fn read(dev: &mut Serial, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn writes_to_the_data_register_reach_the_output() {
        let irq = Arc::new(CountingInterrupt::default());
        let out = Capture::default();
        let mut dev = Serial::new(irq, Box::new(out.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_beyond_the_fifo_waits_in_the_backlog() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut dev = Serial::new(irq.clone(), Box::new(io::sink()));
        // Enable the received-data interrupt.
        dev.write(IER, &[1]);
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(dev.queue_input(&input), 200);
        assert!(irq.count() > 0);
        let mut got = Vec::new();
        while read(&mut dev, LSR) & LSR_DATA_READY != 0 {
            got.push(read(&mut dev, 0));
        }
        assert_eq!(got, input);
    }

    #[test]
    fn backlog_is_bounded() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut dev = Serial::new(irq, Box::new(io::sink()));
        let big = vec![b'x'; INPUT_BACKLOG * 2];
        let taken = dev.queue_input(&big);
        assert_eq!(taken, INPUT_BACKLOG);
        // 64 bytes moved on into the FIFO, which frees as much backlog.
        assert_eq!(dev.queue_input(&big), 64);
        assert_eq!(dev.input_room(), 0);
        assert_eq!(dev.queue_input(b"more"), 0);
    }

    #[test]
    fn a_broken_output_loses_bytes_without_failing() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut dev = Serial::new(irq, Box::new(Broken));
        dev.write(0, b"x");
        // The transmitter still reports empty, so the guest does not stall.
        assert_ne!(read(&mut dev, LSR) & 0x20, 0);
    }
}
