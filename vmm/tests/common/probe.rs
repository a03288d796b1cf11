//! Helpers for the tests that boot the probe guest (`probe::PROBE_ELF`)
//! through the `ferrite` binary: write the kernel and images, run ferrite
//! (optionally under strace), and read back what the probe printed.
//!
//! Included with `#[path = "common/probe.rs"] mod probe_util;` so it stands
//! beside `common/mod.rs` without changing it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use block::CacheMode;

/// Every cache mode, in QEMU's order.
pub const MODES: [CacheMode; 5] = CacheMode::ALL;

/// Time limit of one probe boot (a run takes about a second here).
pub const LIMIT: Duration = Duration::from_secs(60);

/// Status of ferrite when the probe passed (debug-exit 0).
pub const PASS: i32 = 1;
/// Status of ferrite when the probe failed (debug-exit 1).
pub const FAIL: i32 = 3;

/// Size of the test images (the probe's discard needs 4 MiB or more).
pub const IMAGE_SIZE: u64 = 8 << 20;

/// Whether KVM can be used; prints SKIP otherwise.
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm is not usable: {e}");
            false
        }
    }
}

/// Whether `strace` runs here; prints SKIP otherwise.
pub fn strace_usable() -> bool {
    match Command::new("strace")
        .args(["-qq", "-e", "trace=none", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("SKIP: strace cannot trace here ({s})");
            false
        }
        Err(e) => {
            eprintln!("SKIP: strace not available: {e}");
            false
        }
    }
}

/// Writes the probe kernel into `dir`.
pub fn probe_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("probe.elf");
    std::fs::write(&path, probe::PROBE_ELF).unwrap();
    path
}

/// Creates a zero-filled (sparse) image of `size` bytes.
pub fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    path
}

/// One image of `size` bytes per cache mode (`<mode>.img` in `dir`) and
/// its `--drive` text: `cache=<mode>` plus what `extra` adds for the mode.
pub fn drive_per_mode(
    dir: &Path,
    size: u64,
    extra: impl Fn(CacheMode) -> String,
) -> (Vec<PathBuf>, Vec<String>) {
    MODES
        .iter()
        .map(|&m| {
            let img = image(dir, &format!("{m}.img"), size);
            let more = extra(m);
            let opts = if more.is_empty() {
                format!("cache={m}")
            } else {
                format!("cache={m},{more}")
            };
            let d = drive(&img, &opts);
            (img, d)
        })
        .unzip()
}

/// `--drive` text for `path` with the given extra options.
pub fn drive(path: &Path, opts: &str) -> String {
    let mut s = format!("file={}", path.display());
    if !opts.is_empty() {
        s.push(',');
        s.push_str(opts);
    }
    s
}

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// Exit status (`None`: killed by a signal).
    pub status: Option<i32>,
    /// The guest's serial output (ferrite's stdout).
    pub stdout: String,
    /// ferrite's stderr.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// One `PROBE kind key=value...` line.
#[derive(Debug, Clone)]
pub struct Line {
    pub kind: String,
    pub fields: HashMap<String, String>,
}

impl Line {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    pub fn num(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

/// Splits a PROBE line (not the cmdline echo).
pub fn parse_line(line: &str) -> Option<Line> {
    let rest = line.trim_end().strip_prefix("PROBE ")?;
    let mut words = rest.split_ascii_whitespace().peekable();
    let kind = match words.peek() {
        Some(w) if !w.contains('=') => words.next()?.to_string(),
        _ => String::new(),
    };
    if kind == "cmdline" {
        return None;
    }
    let fields = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Line { kind, fields })
}

impl Run {
    /// Everything the run printed, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {:?} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// The PROBE lines.
    pub fn lines(&self) -> Vec<Line> {
        self.stdout.lines().filter_map(parse_line).collect()
    }

    /// Lines of `kind` about disk `disk`.
    pub fn disk_lines(&self, kind: &str, disk: u64) -> Vec<Line> {
        self.lines()
            .into_iter()
            .filter(|l| l.kind == kind && l.num("disk") == Some(disk))
            .collect()
    }

    /// The `info` line of disk `disk`.
    pub fn info(&self, disk: u64) -> Line {
        let mut v = self.disk_lines("info", disk);
        assert_eq!(v.len(), 1, "info line of disk {disk}\n{}", self.describe());
        v.remove(0)
    }

    /// `(pass, reason)` from the verdict line.
    pub fn verdict(&self) -> Option<(bool, String)> {
        self.lines()
            .into_iter()
            .find(|l| l.kind.is_empty() && l.get("verdict").is_some())
            .map(|l| {
                (
                    l.get("verdict") == Some("pass"),
                    l.get("reason").unwrap_or("").to_string(),
                )
            })
    }

    /// Asserts the probe passed and ferrite exited with the pass status.
    pub fn assert_pass(&self) {
        assert_eq!(
            self.verdict(),
            Some((true, "ok".to_string())),
            "{}",
            self.describe()
        );
        assert_eq!(self.status, Some(PASS), "{}", self.describe());
    }

    /// Every scenario line of disk `disk` says `result=ok`.
    pub fn assert_disk_ok(&self, disk: u64, scenarios: &[&str]) {
        for s in scenarios {
            let lines = self.disk_lines(s, disk);
            let results: Vec<_> = lines.iter().filter_map(|l| l.get("result")).collect();
            assert!(
                !results.is_empty() && results.iter().all(|r| *r == "ok"),
                "scenario {s} on disk {disk}\n{}",
                self.describe()
            );
        }
    }
}

/// Runs `program args...` with no stdin, killing it after `limit`.
pub fn run_command(program: &str, args: &[String], limit: Duration) -> Run {
    run_watched(program, args, limit, |_| {})
}

/// Like `run_command`, and also returns the child's peak resident memory
/// (`VmHWM` of /proc/PID/status, KiB), sampled while it runs: a high-water
/// mark, so the last sample holds any peak reached before it.
pub fn run_command_peak_rss(program: &str, args: &[String], limit: Duration) -> (Run, u64) {
    let mut peak = 0;
    let run = run_watched(program, args, limit, |pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        peak = peak.max(hwm.unwrap_or(0));
    });
    (run, peak)
}

/// Runs `program`, calling `watch` with its pid every few milliseconds.
fn run_watched(program: &str, args: &[String], limit: Duration, mut watch: impl FnMut(u32)) -> Run {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    loop {
        watch(child.id());
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.wait().unwrap();
    Run {
        status: status.code(),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// ferrite's arguments to boot the probe with `cmdline` and `drives`.
pub fn probe_args(kernel: &Path, cmdline: &str, drives: &[String], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        kernel.display().to_string(),
        "--cmdline".into(),
        cmdline.into(),
        "--memory".into(),
        "32M".into(),
    ];
    for d in drives {
        args.push("--drive".into());
        args.push(d.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Boots the probe through the `ferrite` binary.
pub fn run_probe(kernel: &Path, cmdline: &str, drives: &[String], extra: &[&str]) -> Run {
    run_command(
        env!("CARGO_BIN_EXE_ferrite"),
        &probe_args(kernel, cmdline, drives, extra),
        LIMIT,
    )
}

/// Runs `ferrite demo args...`.
pub fn run_demo(args: &[&str]) -> Run {
    let mut all = vec!["demo".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run_command(env!("CARGO_BIN_EXE_ferrite"), &all, LIMIT)
}

/// Reads `--stats-json`.
pub fn stats(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("stats {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The probe's `fill_pattern(seed)`: u64 i is `(seed + i) * 0x9e3779b97f4a7c15`.
pub fn pattern(seed: u64, bytes: usize) -> Vec<u8> {
    (0..bytes as u64 / 8)
        .flat_map(|i| (seed + i).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes())
        .collect()
}

/// A `stream` block: `seq` as a little-endian u64, repeated over 4 KiB.
pub fn stream_block(seq: u64) -> Vec<u8> {
    (0..512).flat_map(|_| seq.to_le_bytes()).collect()
}

/// Whether `block` (4 KiB) is a stream block, and its seq.
pub fn stream_seq(block: &[u8]) -> Option<u64> {
    let first = u64::from_le_bytes(block.get(..8)?.try_into().ok()?);
    (block.len() == 4096 && block.chunks(8).all(|c| c == first.to_le_bytes())).then_some(first)
}

/// Spawns `ferrite` with `args`, no stdin, stdout and stderr piped.
pub fn spawn_ferrite(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrite")
}
