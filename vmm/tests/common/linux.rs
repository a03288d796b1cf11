//! The project's Linux guest for end-to-end tests: finding (or building,
//! once, cached by inputs) the kernel and root disk from `resources/guest/`,
//! running `ferrite` on them with the console read line by line as it
//! comes, and the report file that `scripts/test` prints.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::guest::build;
pub use super::guest::HOST_KVM_ARGS;
use super::probe::kvm_usable;

/// The start of the console line that says the kernel handed over to
/// user space (`Run /sbin/init as init process`).
const RUN_INIT: &str = "Run /";

/// The arguments of a boot of `kernel` with `cmdline` in 256 MiB (the
/// drives and the rest follow).
pub fn boot_args(kernel: &Path, cmdline: String) -> Vec<String> {
    vec![
        "--kernel".to_string(),
        kernel.display().to_string(),
        "--memory".into(),
        "256M".into(),
        "--cmdline".into(),
        cmdline,
    ]
}

/// The guest kernel's directory and the pristine root disk, built or found
/// in the cache; `None` (with a printed reason) where the host cannot run
/// them. Both builds are cached, so calling this from several tests costs
/// one build.
pub fn guest() -> Option<(PathBuf, PathBuf)> {
    if !kvm_usable() {
        return None;
    }
    if !Path::new("/usr/src/linux-source-6.1.tar.xz").exists() {
        eprintln!("SKIP: /usr/src/linux-source-6.1.tar.xz is missing (run scripts/setup)");
        return None;
    }
    static BUILT: std::sync::Mutex<Option<(PathBuf, PathBuf)>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.is_none() {
        let kernel = build("build-kernel.sh");
        let rootfs = build("build-rootfs.sh");
        *built = Some((kernel, rootfs));
    }
    built.clone()
}

/// A running `ferrite` whose console is read line by line.
pub struct Running {
    child: Child,
    start: Instant,
    lines: mpsc::Receiver<(Duration, String)>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
    /// Every console line so far.
    pub console: Vec<String>,
    /// Time from spawn to `Run /... init`, once seen.
    pub to_init: Option<Duration>,
    killed: bool,
}

/// How a run ended.
pub struct Ended {
    /// Exit status (`None`: killed by a signal).
    pub status: Option<i32>,
    /// Every console line.
    pub console: Vec<String>,
    /// What ferrite printed on stderr.
    pub stderr: String,
    /// Time from spawn to `Run /... init`, if reached.
    pub to_init: Option<Duration>,
    /// Time from spawn to exit.
    pub elapsed: Duration,
}

impl Ended {
    /// The last `n` console lines, the status and stderr, for a failure
    /// message.
    pub fn describe(&self, n: usize) -> String {
        let from = self.console.len().saturating_sub(n);
        format!(
            "status {:?}\nstderr: {}\nlast console lines:\n{}",
            self.status,
            self.stderr.trim(),
            self.console[from..].join("\n")
        )
    }

    /// Whether any console line contains `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.console.iter().any(|l| l.contains(needle))
    }
}

impl Running {
    /// Spawns `ferrite` with `args`, its console piped.
    pub fn spawn(args: &[String]) -> Running {
        let start = Instant::now();
        let mut child = super::probe::spawn_ferrite(args);
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((start.elapsed(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Running {
            child,
            start,
            lines,
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
            console: Vec::new(),
            to_init: None,
            killed: false,
        }
    }

    /// Time since spawn.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits up to `wait` for the next console line; `None` on timeout or
    /// once the console closed (see [`Running::closed`]).
    pub fn next_line(&mut self, wait: Duration) -> Option<String> {
        match self.lines.recv_timeout(wait) {
            Ok((at, line)) => {
                if self.to_init.is_none()
                    && line.contains(RUN_INIT)
                    && line.contains("init as init process")
                {
                    self.to_init = Some(at);
                }
                self.console.push(line.clone());
                Some(line)
            }
            Err(_) => None,
        }
    }

    /// Sends SIGKILL (once).
    pub fn kill(&mut self) {
        if !self.killed {
            let _ = self.child.kill();
            self.killed = true;
        }
    }

    /// Reads the console to its end (after an exit or a kill; kills ferrite
    /// first if `limit` passes) and collects the outcome.
    pub fn wait(mut self, limit: Duration) -> Ended {
        loop {
            if self.next_line(Duration::from_millis(200)).is_some() {
                continue;
            }
            if self.stdout_reader.as_ref().unwrap().is_finished() {
                // Drain what the reader sent before it ended.
                while self.next_line(Duration::from_millis(1)).is_some() {}
                break;
            }
            if self.start.elapsed() > limit {
                self.kill();
            }
        }
        self.stdout_reader.take().unwrap().join().unwrap();
        let status = self.child.wait().unwrap().code();
        let stderr = self.stderr_reader.take().unwrap().join().unwrap();
        Ended {
            status,
            console: std::mem::take(&mut self.console),
            stderr,
            to_init: self.to_init,
            elapsed: self.start.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that panicked mid-run must not leave a guest behind.
        if self.stdout_reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Appends `line` to the report that `scripts/test` prints after the
/// suite (cargo hides a passing test's output), and prints it.
pub fn report(line: &str) {
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-guest-report.txt");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()).unwrap();
}
