//! The console of a `ferrite run` guest: the serial port's bytes, split
//! into init's frames (the command's stdout and stderr, passed on to
//! ferrite's own as they come) and everything else (kernel messages: kept
//! for the failure report, shown on stderr with `--verbose`). It also
//! watches for a kernel panic and records what the watchdog and the
//! verdict need in a shared [`RunState`].

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::frame::{self, Frame};
use super::ktap::Ktap;
use crate::exit::{ExitCause, ExitController};
use crate::panic_watch::{LineSplitter, PanicSeen};

/// Console lines kept for a failure report.
pub const TAIL_LINES: usize = 20;

/// What the console saw, shared with the watchdog and the verdict.
#[derive(Debug, Default)]
pub struct RunState {
    /// When init said the command starts.
    pub started: Option<Instant>,
    /// When the command's first output arrived.
    pub first_output: Option<Instant>,
    /// The status init reported in its `X` frame.
    pub exit_status: Option<i32>,
    /// Init's own failure, if it had one.
    pub init_error: Option<String>,
    /// The last console lines that were not frames.
    pub tail: VecDeque<String>,
    /// The KTAP parser, with `--ktap`.
    pub ktap: Option<Ktap>,
    /// Set by the watchdog when a time limit expired.
    pub timed_out: Option<super::watchdog::Limit>,
    /// Set when the guest has stopped: the watchdog leaves.
    pub done: bool,
    /// When set, the command's stdout and stderr go here instead of to
    /// ferrite's own (`ferrite crashtest` reports them per state).
    pub captured: Option<Vec<u8>>,
}

/// [`RunState`] with the condition variable the watchdog sleeps on.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<RunState>,
    changed: Condvar,
}

impl Shared {
    /// Locks the state, even after a panic elsewhere.
    pub fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the watchdog after a change.
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Sleeps until notified or `until`.
    pub fn wait_until<'a>(
        &self,
        guard: MutexGuard<'a, RunState>,
        until: Option<Instant>,
    ) -> MutexGuard<'a, RunState> {
        match until {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                match self.changed.wait_timeout(guard, left) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                }
            }
            None => self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
        }
    }
}

/// The serial console's sink for one `ferrite run`.
pub struct RunConsole {
    shared: Arc<Shared>,
    exit: Arc<ExitController>,
    panic: PanicSeen,
    lines: LineSplitter,
    verbose: bool,
}

impl RunConsole {
    /// A console that reports into `shared` and stops the guest through `exit`.
    pub fn new(
        shared: Arc<Shared>,
        exit: Arc<ExitController>,
        panic: PanicSeen,
        verbose: bool,
    ) -> Self {
        Self {
            shared,
            exit,
            panic,
            lines: LineSplitter::default(),
            verbose,
        }
    }

    fn line(&self, line: &[u8]) {
        match frame::parse(line) {
            Some(frame) => self.frame(frame),
            None => self.kernel_line(&String::from_utf8_lossy(line)),
        }
    }

    fn frame(&self, frame: Frame) {
        let mut state = self.shared.lock();
        match frame {
            Frame::Started => {
                state.started = Some(Instant::now());
                drop(state);
                self.shared.notify();
            }
            Frame::Stdout(bytes) => {
                state.first_output.get_or_insert_with(Instant::now);
                if let Some(ktap) = state.ktap.as_mut() {
                    ktap.feed(&bytes);
                }
                if let Some(c) = state.captured.as_mut() {
                    c.extend_from_slice(&bytes);
                    return;
                }
                drop(state);
                // A closed stdout must not stop the guest.
                let mut out = io::stdout().lock();
                let _ = out.write_all(&bytes).and_then(|()| out.flush());
            }
            Frame::Stderr(bytes) => {
                state.first_output.get_or_insert_with(Instant::now);
                if let Some(c) = state.captured.as_mut() {
                    c.extend_from_slice(&bytes);
                    return;
                }
                drop(state);
                let _ = io::stderr().write_all(&bytes);
            }
            Frame::Exit(status) => state.exit_status = Some(status),
            Frame::InitError(why) => state.init_error = Some(why),
        }
    }

    fn kernel_line(&self, line: &str) {
        if self.verbose {
            let _ = writeln!(io::stderr(), "{line}");
        }
        let end_of_panic = self.panic.observe(line);
        {
            let mut state = self.shared.lock();
            if state.tail.len() == TAIL_LINES {
                state.tail.pop_front();
            }
            state.tail.push_back(line.to_string());
        }
        if end_of_panic {
            if let Some(panic) = self.panic.line() {
                self.exit.report(ExitCause::GuestPanic(panic));
            }
        }
    }
}

impl Write for RunConsole {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = Vec::new();
        self.lines.feed(buf, |l| done.push(l.to_vec()));
        for line in done {
            self.line(&line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> (RunConsole, Arc<Shared>, Arc<ExitController>) {
        let shared = Arc::new(Shared::default());
        let exit = ExitController::new().unwrap();
        let c = RunConsole::new(shared.clone(), exit.clone(), PanicSeen::default(), false);
        (c, shared, exit)
    }

    #[test]
    fn frames_fill_the_state_and_kernel_lines_the_tail() {
        let (mut c, shared, _) = console();
        c.write_all(b"[ 0.1] booting\r\n\x1bFS\r\n\x1bFX4").unwrap();
        c.write_all(b"2\r\n\x1bFEroot: gone\r\n").unwrap();
        let state = shared.lock();
        assert!(state.started.is_some());
        assert_eq!(state.exit_status, Some(42));
        assert_eq!(state.init_error.as_deref(), Some("root: gone"));
        assert_eq!(state.tail, ["[ 0.1] booting"]);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let (mut c, shared, _) = console();
        for i in 0..TAIL_LINES + 5 {
            c.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        let state = shared.lock();
        assert_eq!(state.tail.len(), TAIL_LINES);
        assert_eq!(state.tail[0], "line 5");
    }

    #[test]
    fn a_complete_panic_report_stops_the_guest() {
        let (mut c, _, exit) = console();
        c.write_all(b"Kernel panic - not syncing: Attempted to kill init!\n")
            .unwrap();
        assert_eq!(exit.cause(), None);
        c.write_all(b"---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n")
            .unwrap();
        assert!(matches!(exit.cause(), Some(ExitCause::GuestPanic(_))));
    }
}
