//! How a device raises its interrupt without knowing how it is delivered.

use std::io;
use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line: under KVM an irqfd, in tests a counter.
pub trait InterruptLine: Send + Sync {
    /// Raises the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

impl InterruptLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// An interrupt line that counts how often it was raised, for tests.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    count: std::sync::atomic::AtomicU64,
}

#[cfg(any(test, feature = "test-utils"))]
impl CountingInterrupt {
    /// How many times the line was raised so far.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl InterruptLine for CountingInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_line_signals_the_fd() {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        fd.trigger().unwrap();
        fd.trigger().unwrap();
        assert_eq!(fd.read().unwrap(), 2);
    }

    #[test]
    fn counting_line_counts() {
        let line = CountingInterrupt::default();
        line.trigger().unwrap();
        assert_eq!(line.count(), 1);
    }
}
