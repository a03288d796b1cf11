//! A disk stopped by its error policy (`werror=`/`rerror=` `stop` or
//! `enospc`, see `block::ErrorPolicy`): the I/O thread says so once on
//! stderr, retries the held requests every [`RETRY_EVERY`] from a timerfd
//! in its epoll and at once on [`super::io_thread::Control::Resume`] (the
//! VMM sends it on SIGUSR1), and says once when the disk runs again.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use block::Disk;
use vmm_sys_util::timerfd::TimerFd;

/// How often held requests are retried without being asked.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Whether the disk is stopped, and the retry timer.
pub(crate) struct Stall {
    timer: TimerFd,
    stopped: bool,
    /// "disk N" or "disk": how the lines name it.
    name: String,
    path: PathBuf,
}

impl Stall {
    pub(crate) fn new(name: String, path: PathBuf) -> io::Result<Stall> {
        Ok(Stall {
            timer: TimerFd::new()?,
            stopped: false,
            name,
            path,
        })
    }

    /// After a batch: one line and the timer armed when the disk has just
    /// stopped, one line and the timer off when it has just resumed.
    pub(crate) fn update(&mut self, disk: &Disk) {
        match (disk.stopped(), self.stopped) {
            (Some(why), false) => {
                self.stopped = true;
                eprintln!("{}", self.stopped_line(&why));
                // Without the timer, only the user's signal retries.
                let _ = self.timer.reset(RETRY_EVERY, Some(RETRY_EVERY));
            }
            (None, true) => {
                self.stopped = false;
                eprintln!("ferrite: {} ({}) resumed", self.name, self.path.display());
                let _ = self.timer.clear();
            }
            _ => {}
        }
    }

    /// The timer fired (epoll said so, so the read does not block).
    pub(crate) fn expired(&mut self) {
        let _ = self.timer.wait();
    }

    fn stopped_line(&self, why: &io::Error) -> String {
        let what = if why.raw_os_error() == Some(libc::ENOSPC) {
            "free space"
        } else {
            "fix the cause"
        };
        format!(
            "ferrite: {} ({}) stopped: {}; {what}, then send SIGUSR1 (or wait) to retry",
            self.name,
            self.path.display(),
            os_reason(why)
        )
    }
}

impl AsRawFd for Stall {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// "no space left on device" from "No space left on device (os error 28)".
fn os_reason(e: &io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s);
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_line_names_the_disk_the_cause_and_the_signal() {
        let s = Stall::new("disk 0".into(), "/img".into()).unwrap();
        let line = s.stopped_line(&io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(
            line,
            "ferrite: disk 0 (/img) stopped: no space left on device; \
             free space, then send SIGUSR1 (or wait) to retry"
        );
        let line = s.stopped_line(&io::Error::from_raw_os_error(libc::EIO));
        assert!(line.contains("input/output error; fix the cause"), "{line}");
    }
}
