//! Termination signals as events: SIGINT, SIGTERM and SIGHUP are blocked in
//! every thread and read from a signalfd by the event loop, which stops the
//! guest cleanly (disks flushed, terminal restored, stats written) instead
//! of dying mid-write. SIGUSR1 ([`RESUME_SIGNAL`]) is blocked and read the
//! same way: it tells disks stopped by `werror=`/`rerror=` to retry now
//! (once the user has freed space), instead of killing ferrite.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The signals that stop ferrite.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The signal that makes stopped disks retry their held requests at once.
pub const RESUME_SIGNAL: libc::c_int = libc::SIGUSR1;

/// The stop signals, and with `resume` the resume signal too.
fn signal_set(resume: bool) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        if resume {
            libc::sigaddset(&mut set, RESUME_SIGNAL);
        }
    }
    set
}

/// Blocks the stop signals and the resume signal in the calling thread and
/// so in every thread it creates afterwards. Call first thing in `main`.
pub fn block_stop_signals() -> io::Result<()> {
    let set = signal_set(true);
    // SAFETY: a valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A non-blocking signalfd for the stop signals.
pub struct StopSignals {
    fd: OwnedFd,
}

impl StopSignals {
    /// Opens the signalfd (the signals must already be blocked).
    pub fn new() -> io::Result<Self> {
        Self::open(false)
    }

    /// Like `new`, and the fd also reads [`RESUME_SIGNAL`]: for the VM's
    /// event loop, which has disks to resume.
    pub fn with_resume() -> io::Result<Self> {
        Self::open(true)
    }

    fn open(resume: bool) -> io::Result<Self> {
        let set = signal_set(resume);
        // SAFETY: -1 asks for a new fd; `set` is valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The next pending signal of the fd's set, if any.
    pub fn next(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as libc::c_int)
    }

    /// Waits for the next stop signal (`None` if the wait was interrupted).
    pub fn wait(&self) -> Option<libc::c_int> {
        let mut fd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call; no timeout.
        let rc = unsafe { libc::poll(&mut fd, 1, -1) };
        if rc < 1 {
            return None;
        }
        self.next()
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_fd() {
        // The test harness runs tests on their own threads; the mask is per
        // thread, and raise() targets the calling thread.
        block_stop_signals().unwrap();
        let signals = StopSignals::new().unwrap();
        assert_eq!(signals.next(), None);
        // SAFETY: SIGHUP is blocked in this thread, so it stays pending.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        assert_eq!(signals.next(), Some(libc::SIGHUP));
    }
}
