//! The guest's serial output, captured in-process.
//!
//! ferrite's serial port writes to the process's stdout (fd 1), as a
//! console should. The demo boots the probe in this process through the
//! same `run_vm` a plain `ferrite --kernel` uses, so to read what the guest
//! prints it points fd 1 at a pipe for the guest's lifetime; a reader thread
//! folds each line into a [`ProbeReport`] and, with `--verbose`, echoes it
//! to the real stdout as it comes. fd 1 is restored before the table is
//! printed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::output::ProbeReport;

/// Why the output could not be captured.
#[derive(Debug, thiserror::Error)]
#[error("cannot capture the guest's console: {what}: {source}")]
pub struct CaptureError {
    what: &'static str,
    source: io::Error,
}

fn os_err(what: &'static str) -> CaptureError {
    CaptureError {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Runs `boot` with fd 1 going into a pipe; returns what `boot` returned
/// and the probe report built from every line written meanwhile.
pub fn capture<T>(
    verbose: bool,
    boot: impl FnOnce() -> T,
) -> Result<(T, ProbeReport), CaptureError> {
    let _ = io::stdout().flush();
    // SAFETY: dup of fd 1, which main keeps open (pointed at /dev/null if
    // it was closed); the result is checked.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 {
        return Err(os_err("dup stdout"));
    }
    // SAFETY: `saved` is a new descriptor owned by nothing else.
    let saved = unsafe { OwnedFd::from_raw_fd(saved) };
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("create a pipe"));
    }
    // SAFETY: pipe2 succeeded: both are new descriptors owned by nothing else.
    let (read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let echo = saved.try_clone().map_err(|source| CaptureError {
        what: "dup stdout",
        source,
    })?;
    let reader = std::thread::Builder::new()
        .name("demo-console".into())
        .spawn(move || read_lines(read_end, File::from(echo), verbose))
        .map_err(|source| CaptureError {
            what: "start a thread",
            source,
        })?;
    // SAFETY: both descriptors are open; dup2 replaces fd 1 atomically.
    if unsafe { libc::dup2(write_end.as_raw_fd(), 1) } < 0 {
        return Err(os_err("redirect stdout"));
    }
    // fd 1 is now the only write end: the reader sees EOF once it is restored.
    drop(write_end);
    let result = boot();
    let _ = io::stdout().flush();
    // SAFETY: `saved` is open; this puts the original stdout back on fd 1
    // and closes the pipe's last write end.
    let restored = unsafe { libc::dup2(saved.as_raw_fd(), 1) };
    if restored < 0 {
        // Without its stdout the demo cannot report anything anyway.
        return Err(os_err("restore stdout"));
    }
    let report = reader.join().unwrap_or_default();
    Ok((result, report))
}

/// Reads lines until EOF into a report, echoing them to `out` if
/// `verbose`; otherwise says once that an endless stream has started, so
/// that a quiet terminal does not look like a hang.
fn read_lines(pipe: File, mut out: File, verbose: bool) -> ProbeReport {
    let mut report = ProbeReport::default();
    let mut told = false;
    for line in BufReader::new(pipe).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        report.feed(text);
        // Writes to `out` are a courtesy: a closed stdout must not stop the guest.
        if verbose {
            let _ = writeln!(out, "{text}");
        } else if !told && is_endless_stream(text) {
            told = true;
            let _ = writeln!(
                out,
                "stream.count=0: writing until interrupted (Ctrl-C); --verbose shows each ack"
            );
        }
    }
    report
}

/// The header line of a `stream` that never ends.
fn is_endless_stream(line: &str) -> bool {
    line.starts_with("PROBE stream ") && line.split_ascii_whitespace().any(|w| w == "count=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    // capture() itself swaps the process's fd 1, which would swallow the
    // test harness's own output; it is exercised end to end by
    // vmm/tests/probe_demo.rs (the table and --verbose depend on it).

    #[test]
    fn endless_stream_is_recognised() {
        assert!(is_endless_stream(
            "PROBE stream disk=0 count=0 depth=8 flush_every=0"
        ));
        assert!(!is_endless_stream(
            "PROBE stream disk=0 count=10 depth=8 flush_every=0"
        ));
        assert!(!is_endless_stream("PROBE stream disk=0 acks=3 result=ok"));
    }
}
