//! Runs the probe guest in a child `ferrite` (this same executable), so the
//! demo boots exactly as a user's `ferrite --kernel ... --drive ...` would,
//! and follows its serial output line by line.
//!
//! A child rather than an in-process VM: the guest's exit through the
//! debug-exit port, the console and the per-disk statistics are the
//! binary's behaviour, and the child's exit status is the probe's verdict.
//! Stop signals (blocked by `main`) are forwarded to the child as SIGTERM,
//! which ferrite turns into a clean stop.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::DemoError;
use crate::signals::StopSignals;

/// Debug-exit status of a probe that passed (it writes 0: `(0 << 1) | 1`).
pub const STATUS_PROBE_PASS: i32 = 1;
/// Debug-exit status of a probe that failed (it writes 1).
pub const STATUS_PROBE_FAIL: i32 = 3;

/// One boot of the probe.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The probe ELF on disk.
    pub kernel: PathBuf,
    /// The kernel command line (ferrite appends the disks).
    pub cmdline: String,
    /// vCPUs.
    pub cpus: u8,
    /// `--drive` values, in order.
    pub drives: Vec<String>,
    /// Where ferrite writes `--stats-json`.
    pub stats: PathBuf,
}

/// How the child ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status, `None` if a signal killed it.
    pub status: Option<i32>,
    /// What it printed on stderr (ferrite's own one-line errors).
    pub stderr: String,
    /// The stop signal that made the demo stop the child, if any.
    pub interrupted: Option<i32>,
}

impl Launch {
    /// The arguments of the child `ferrite`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--kernel".to_string(),
            self.kernel.display().to_string(),
            "--cmdline".to_string(),
            self.cmdline.clone(),
            "--memory".to_string(),
            "32M".to_string(),
            "--cpus".to_string(),
            self.cpus.to_string(),
            "--stats-json".to_string(),
            self.stats.display().to_string(),
        ];
        for d in &self.drives {
            args.push("--drive".to_string());
            args.push(d.clone());
        }
        args
    }

    /// Boots the probe and hands every serial line to `on_line` as it
    /// arrives; returns when the child has exited.
    pub fn run(&self, mut on_line: impl FnMut(&str)) -> Result<Finished, DemoError> {
        let exe = std::env::current_exe().map_err(DemoError::Spawn)?;
        let signals = StopSignals::new().map_err(DemoError::Spawn)?;
        let mut child = Command::new(exe)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(DemoError::Spawn)?;
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take();
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(pipe) = stderr_pipe.as_mut() {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });
        let mut interrupted = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => on_line(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if let Some(sig) = signals.next() {
                interrupted.get_or_insert(sig);
                // SAFETY: signals our own child, which has not been reaped
                // yet (we wait for it below), so the pid is still its own.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let _ = reader.join();
        let status = child.wait().map_err(DemoError::Spawn)?;
        let stderr = stderr_reader.join().unwrap_or_default();
        let _ = std::io::stdout().flush();
        Ok(Finished {
            status: status.code(),
            stderr,
            interrupted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_arguments() {
        let l = Launch {
            kernel: "/d/probe.elf".into(),
            cmdline: "probe=rw stream.count=3".into(),
            cpus: 2,
            drives: vec!["file=/d/a.img,cache=none".into(), "file=/d/b".into()],
            stats: "/d/s.json".into(),
        };
        let args = l.args();
        let pos = |a: &str| args.iter().position(|x| x == a).unwrap();
        assert_eq!(args[pos("--kernel") + 1], "/d/probe.elf");
        assert_eq!(args[pos("--cmdline") + 1], "probe=rw stream.count=3");
        assert_eq!(args[pos("--cpus") + 1], "2");
        assert_eq!(args[pos("--stats-json") + 1], "/d/s.json");
        let drives: Vec<_> = args
            .windows(2)
            .filter(|w| w[0] == "--drive")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(drives, ["file=/d/a.img,cache=none", "file=/d/b"]);
    }
}
