//! Spotting a guest kernel panic on the serial console.
//!
//! A panicking Linux prints `Kernel panic - not syncing: <why>`, a stack
//! dump, and `---[ end Kernel panic - not syncing: <why> ]---`; then it
//! resets (`panic=N`), spins (`panic=0`), or, on a host whose KVM emulates
//! guest kernel code, stops on an emulation failure. A reset would exit 0,
//! so a crashing kernel would look like a pass: the console is watched, and
//! the run ends with [`ExitCause::GuestPanic`] at the end line, or takes
//! that cause over from whatever else ended it (see [`PanicSeen::settle`]).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use devices::legacy::GuestExit;

use crate::exit::{ExitCause, ExitController};

/// What starts a panic report.
pub const PANIC_MARK: &str = "Kernel panic - not syncing";
/// What ends it.
const END_MARK: &str = "---[ end Kernel panic";
/// A line longer than this is cut (the guest decides line lengths).
pub const MAX_LINE: usize = 4096;

/// Splits a byte stream into lines (without `\r\n`), whatever the writes'
/// sizes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `bytes`; calls `each` with every completed line.
    pub fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                let end = self.line.len() - usize::from(self.line.last() == Some(&b'\r'));
                each(&self.line[..end]);
                self.line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            self.line.push(b);
        }
    }

    /// The unfinished line, if any.
    pub fn pending(&self) -> &[u8] {
        &self.line
    }
}

/// The panic line once one was seen, shared between the console (vCPU
/// thread) and whoever reads the outcome.
#[derive(Clone, Debug, Default)]
pub struct PanicSeen(Arc<Mutex<Option<String>>>);

impl PanicSeen {
    /// The panic line, if the guest panicked.
    pub fn line(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Looks at one console line; returns true at the end of a panic report.
    pub fn observe(&self, line: &str) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.is_none() {
            if let Some(at) = line.find(PANIC_MARK) {
                *seen = Some(line[at..].trim_end().to_string());
            }
            return false;
        }
        line.contains(END_MARK)
    }

    /// The cause to report: a panic takes over a reset, a halt or an
    /// emulation failure, but not a debug-exit verdict written before it.
    pub fn settle(&self, cause: ExitCause) -> ExitCause {
        match (self.line(), &cause) {
            (_, ExitCause::Guest(GuestExit::DebugExit { .. }) | ExitCause::GuestPanic(_)) => cause,
            (Some(line), _) => ExitCause::GuestPanic(line),
            (None, _) => cause,
        }
    }
}

/// The console of a plain boot: passes every byte to `out` and stops the
/// guest once a panic report is complete.
pub struct PanicWatch<W: Write> {
    out: W,
    exit: Arc<ExitController>,
    seen: PanicSeen,
    lines: LineSplitter,
}

impl<W: Write> PanicWatch<W> {
    /// Watches what the guest writes to `out`.
    pub fn new(out: W, exit: Arc<ExitController>, seen: PanicSeen) -> Self {
        Self {
            out,
            exit,
            seen,
            lines: LineSplitter::default(),
        }
    }
}

impl<W: Write> Write for PanicWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The console is a courtesy: the watch runs even if stdout is gone.
        let written = self
            .out
            .write(buf)
            .unwrap_or(buf.len())
            .max(1)
            .min(buf.len());
        let (seen, exit) = (&self.seen, &self.exit);
        self.lines.feed(&buf[..written], |line| {
            if seen.observe(&String::from_utf8_lossy(line)) {
                if let Some(panic) = seen.line() {
                    exit.report(ExitCause::GuestPanic(panic));
                }
            }
        });
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_writes_and_lose_their_cr() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.feed(b"ab", |l| got.push(l.to_vec()));
        s.feed(b"c\r\nd\n\ne", |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"abc".to_vec(), b"d".to_vec(), b"".to_vec()]);
        assert_eq!(s.pending(), b"e");
    }

    #[test]
    fn a_panic_report_stops_the_guest_at_its_end() {
        let exit = ExitController::new().unwrap();
        let seen = PanicSeen::default();
        let mut watch = PanicWatch::new(Vec::new(), exit.clone(), seen.clone());
        watch
            .write_all(b"[ 1.0] Kernel panic - not syncing: sysrq triggered crash\r\n")
            .unwrap();
        assert_eq!(exit.cause(), None);
        watch.write_all(b"CPU: 0 PID: 1\r\n").unwrap();
        watch
            .write_all(
                b"[ 1.1] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\r\n",
            )
            .unwrap();
        assert_eq!(
            exit.cause(),
            Some(ExitCause::GuestPanic(
                "Kernel panic - not syncing: sysrq triggered crash".into()
            ))
        );
        assert!(watch.out.starts_with(b"[ 1.0] Kernel panic"));
    }

    #[test]
    fn a_panic_takes_over_a_reset_but_not_a_verdict() {
        let seen = PanicSeen::default();
        assert_eq!(seen.settle(ExitCause::TripleFault), ExitCause::TripleFault);
        seen.observe("Kernel panic - not syncing: VFS: Unable to mount root fs");
        assert!(matches!(
            seen.settle(ExitCause::Guest(GuestExit::Reset)),
            ExitCause::GuestPanic(_)
        ));
        assert!(matches!(
            seen.settle(ExitCause::VcpuFailed("x".into())),
            ExitCause::GuestPanic(_)
        ));
        let verdict = ExitCause::Guest(GuestExit::DebugExit { value: 0x10 });
        assert_eq!(seen.settle(verdict.clone()), verdict);
    }
}
