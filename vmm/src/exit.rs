//! Why the VMM stops, and the exit status each reason maps to.
//!
//! The first reason reported wins: a guest that writes to the debug-exit
//! port and then triple-faults exits with the debug status. Reports come
//! from devices (through [`ExitHandler`]), vCPU threads and the event loop;
//! each sets the stop flag the vCPU loops poll and wakes the event loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::legacy::{ExitHandler, GuestExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status for a VMM error.
pub const STATUS_VMM_ERROR: i32 = 1;
/// Exit status for bad arguments.
pub const STATUS_USAGE: i32 = 2;
/// Exit status when the guest kernel panicked (plain mode and `ferrite
/// run`): even, so it cannot be a debug-exit status, and the status
/// virtme-ng users know (255) would be one.
pub const STATUS_GUEST_PANIC: i32 = 254;

/// Why the guest stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitCause {
    /// A device asked (i8042 reset, debug-exit port).
    Guest(GuestExit),
    /// A vCPU triple-faulted: a PC resets (Linux `reboot=t`).
    TripleFault,
    /// KVM reported a guest shutdown or reset system event.
    SystemEvent,
    /// Every vCPU halted with no way to wake up.
    AllHalted,
    /// A vCPU could not go on; the message names the exit and the guest RIP.
    VcpuFailed(String),
    /// SIGINT, SIGTERM or SIGHUP reached the VMM.
    Signal(i32),
    /// The user typed Ctrl-A X on the console.
    ConsoleQuit,
    /// The guest kernel panicked; the panic line as the console showed it.
    GuestPanic(String),
    /// ferrite itself stopped the guest (`ferrite run`'s time limits); the
    /// caller that asked knows why.
    HostStop,
}

impl ExitCause {
    /// The process exit status: 0 for a reset or power-off (and, as QEMU
    /// does, for a signal or the console's quit key), the debug-exit status,
    /// or 1 for a failure.
    pub fn status(&self) -> i32 {
        match self {
            ExitCause::Guest(exit) => i32::from(exit.exit_status()),
            ExitCause::TripleFault
            | ExitCause::SystemEvent
            | ExitCause::AllHalted
            | ExitCause::Signal(_)
            | ExitCause::ConsoleQuit
            | ExitCause::HostStop => 0,
            ExitCause::VcpuFailed(_) => STATUS_VMM_ERROR,
            ExitCause::GuestPanic(_) => STATUS_GUEST_PANIC,
        }
    }

    /// The line to print on stderr, if this exit deserves one.
    pub fn message(&self) -> Option<String> {
        match self {
            ExitCause::VcpuFailed(why) => Some(format!("ferrite: {why}")),
            ExitCause::Signal(sig) => Some(format!("ferrite: terminating on signal {sig}")),
            ExitCause::GuestPanic(line) => {
                Some(format!("ferrite: the guest kernel panicked: {line}"))
            }
            _ => None,
        }
    }
}

/// Collects the first exit cause and wakes whoever waits for it.
pub struct ExitController {
    cause: Mutex<Option<ExitCause>>,
    stop: AtomicBool,
    event: EventFd,
}

impl ExitController {
    /// A controller with nothing reported yet.
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            cause: Mutex::new(None),
            stop: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Records `cause` unless one was recorded before; stops the vCPUs and
    /// wakes the event loop either way.
    pub fn report(&self, cause: ExitCause) {
        {
            let mut slot = self.cause.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(cause);
            }
        }
        self.stop.store(true, Ordering::Release);
        // A full counter still leaves the fd readable: nothing is lost.
        let _ = self.event.write(1);
    }

    /// The first reported cause, if any.
    pub fn cause(&self) -> Option<ExitCause> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The flag vCPU loops poll.
    pub fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// Readable once a cause was reported (for poll).
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl ExitHandler for ExitController {
    fn request_exit(&self, exit: GuestExit) {
        self.report(ExitCause::Guest(exit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_design() {
        assert_eq!(ExitCause::Guest(GuestExit::Reset).status(), 0);
        assert_eq!(
            ExitCause::Guest(GuestExit::DebugExit { value: 0x31 }).status(),
            0x63
        );
        assert_eq!(ExitCause::TripleFault.status(), 0);
        assert_eq!(ExitCause::VcpuFailed("x".into()).status(), 1);
        assert_eq!(
            ExitCause::VcpuFailed("vCPU 0: boom".into())
                .message()
                .unwrap(),
            "ferrite: vCPU 0: boom"
        );
        assert_eq!(ExitCause::TripleFault.message(), None);
        let panic = ExitCause::GuestPanic("Kernel panic - not syncing: x".into());
        assert_eq!(panic.status(), 254);
        assert!(panic.message().unwrap().contains("not syncing: x"));
    }

    #[test]
    fn first_cause_wins_and_stop_is_set() {
        let c = ExitController::new().unwrap();
        assert!(!c.stop_flag().load(Ordering::Acquire));
        c.request_exit(GuestExit::DebugExit { value: 1 });
        c.report(ExitCause::TripleFault);
        assert_eq!(
            c.cause(),
            Some(ExitCause::Guest(GuestExit::DebugExit { value: 1 }))
        );
        assert!(c.stop_flag().load(Ordering::Acquire));
        assert!(c.event().read().unwrap() >= 1);
    }
}
