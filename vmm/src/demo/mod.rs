//! `ferrite demo`: boots the built-in probe guest (`probe::PROBE_ELF`) once
//! with one scratch disk per cache mode, or with the user's `--drive`s, and
//! prints, per disk, what the guest saw (FLUSH, the write cache) next to
//! what the host did (writes, flushes, host syncs) and the verdict.
//!
//! The probe boots in this process through the same `run_vm` as
//! `ferrite --kernel`, from the image embedded in the binary; its serial
//! output is captured (see [`capture`]). ferrite's exit status is the
//! probe's verdict (debug-exit 0 or 1 gives 1 or 3); the demo's is 0 for a
//! pass, 1 otherwise, with one line saying why.

mod capture;
mod output;
mod scratch;
mod table;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use block::CacheMode;
use clap::Args;

use crate::boot::Kernel;
use crate::config::{self, DriveConfig};
use crate::console::Stdin;
use crate::exit::{STATUS_USAGE, STATUS_VMM_ERROR};
use crate::vmm::VmConfig;
use output::ProbeReport;
use scratch::ScratchDir;
use table::{HostCounts, Row};

/// Scenarios of a plain `ferrite demo`.
pub const DEFAULT_PROBE: &str = "info,rw,flush,wce";

/// The probe's scenario names (resources/probe/README.md).
const SCENARIOS: [&str; 11] = [
    "info", "rw", "flush", "wce", "getid", "discard", "zeroes", "readonly", "badchain", "stream",
    "soak",
];

/// `ferrite demo --help`'s long text.
pub const DEMO_HELP: &str = "\
Boots ferrite's built-in probe guest (no kernel needed) and shows, per disk, what the
guest saw (FLUSH offered, the write cache WCE) and what the host did (open flags, writes,
flushes, host syncs), with the probe's verdict. Without --drive: five scratch images, one
per cache mode, in a temporary directory that supports O_DIRECT, removed at the end.

Examples:
  ferrite demo
  ferrite demo --drive file=disk.img,cache=directsync --probe 'stream stream.count=0 stream.depth=8' --verbose
  ferrite demo --probe 'soak soak.seconds=60' --verbose

Exit status: 0 when the probe passes; 1 otherwise, with one line saying why.";

/// Options of `ferrite demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to create the scratch images [default: the temporary directory,
    /// else the current one, else $XDG_RUNTIME_DIR: the first where O_DIRECT works].
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Probe this disk instead of the scratch images (repeatable; same
    /// syntax as ferrite --drive). The image is written to.
    #[arg(long = "drive", value_name = "OPTIONS", value_parser = parse_drive)]
    pub drives: Vec<DriveConfig>,
    /// Scenarios (comma-separated) and their parameters, e.g.
    /// 'stream stream.count=0 stream.depth=8'. Scenarios: info, rw, flush,
    /// wce, getid, discard, zeroes, readonly, badchain, stream, soak.
    #[arg(long, value_name = "'SCENARIOS [KEY=VALUE]...'",
          default_value = DEFAULT_PROBE, value_parser = parse_probe)]
    pub probe: ProbeSpec,
    /// Show the guest's serial output as it comes.
    #[arg(long, short)]
    pub verbose: bool,
    /// Number of vCPUs (the probe runs on the first).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
}

fn parse_drive(s: &str) -> Result<DriveConfig, String> {
    config::parse_drive(s).map_err(|e| e.to_string())
}

/// What the probe is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Scenario names, in order.
    pub scenarios: Vec<String>,
    /// `key=value` words, passed on the command line as they are.
    pub params: Vec<String>,
}

impl ProbeSpec {
    /// The guest kernel command line.
    pub fn cmdline(&self) -> String {
        let mut words = vec![format!("probe={}", self.scenarios.join(","))];
        words.extend(self.params.iter().cloned());
        words.join(" ")
    }
}

fn parse_probe(s: &str) -> Result<ProbeSpec, String> {
    let mut words = s.split_ascii_whitespace();
    let first = words.next().ok_or("--probe needs at least one scenario")?;
    let list = first.strip_prefix("probe=").unwrap_or(first);
    let mut scenarios = Vec::new();
    for name in list.split(',') {
        if !SCENARIOS.contains(&name) {
            return Err(format!(
                "unknown probe scenario {name:?}; expected one of {}",
                SCENARIOS.join(", ")
            ));
        }
        scenarios.push(name.to_string());
    }
    let mut params = Vec::new();
    for w in words {
        match w.split_once('=') {
            Some((k, _)) if !k.is_empty() => params.push(w.to_string()),
            _ => return Err(format!("probe parameter {w:?} is not KEY=VALUE")),
        }
    }
    Ok(ProbeSpec { scenarios, params })
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A scratch file or directory.
    #[error("cannot create {path}: {source}")]
    Scratch {
        /// The file or directory.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// The directory's file system refuses O_DIRECT.
    #[error("{path} cannot hold the cache=none/directsync images: O_DIRECT open failed ({source}); pick another with --dir")]
    NoDirectIo {
        /// The directory.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// No default location worked.
    #[error("no directory for scratch images (use --dir): {0}")]
    NoScratchDir(String),
    /// The guest's console could not be captured.
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
}

/// ferrite's status when the probe passed (debug-exit 0: `(0 << 1) | 1`).
const STATUS_PROBE_PASS: i32 = 1;
/// ferrite's status when the probe failed (debug-exit 1).
const STATUS_PROBE_FAIL: i32 = 3;
/// Guest RAM: the probe uses about 2 MiB.
const DEMO_MEMORY: u64 = 32 << 20;

/// Runs the demo; returns the exit status.
pub fn run(args: DemoArgs) -> i32 {
    if let Err(line) = crate::check_drives(&args.drives) {
        eprintln!("{line}");
        return STATUS_USAGE;
    }
    match demo(&args) {
        Ok(status) => status,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("ferrite demo: {e}");
            STATUS_VMM_ERROR
        }
    }
}

/// One disk of the run.
struct Disk {
    config: DriveConfig,
    name: String,
}

fn demo(args: &DemoArgs) -> Result<i32, DemoError> {
    // The statistics always go in a scratch directory; with the user's
    // drives, O_DIRECT there does not matter.
    let scratch = if args.drives.is_empty() {
        ScratchDir::create(args.dir.as_deref())?
    } else {
        let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
        ScratchDir::create_plain(&parent)?
    };
    let disks = if args.drives.is_empty() {
        CacheMode::ALL
            .into_iter()
            .map(|mode| {
                let name = format!("{}.img", mode.name());
                let path = scratch.image(&name)?;
                Ok(Disk {
                    config: DriveConfig {
                        serial: Some(format!("demo-{}", mode.name())),
                        ..DriveConfig::new(path, mode)
                    },
                    name,
                })
            })
            .collect::<Result<Vec<_>, DemoError>>()?
    } else {
        args.drives
            .iter()
            .map(|d| Disk {
                config: d.clone(),
                name: d.path.display().to_string(),
            })
            .collect()
    };
    let cfg = VmConfig {
        kernel: Kernel::Embedded {
            name: "the probe guest",
            bytes: probe::PROBE_ELF,
        },
        initrd: None,
        cmdline: args.probe.cmdline(),
        mem_size: DEMO_MEMORY,
        cpus: args.cpus,
        drives: disks.iter().map(|d| d.config.clone()).collect(),
        writable_files: Vec::new(),
    };
    let stats_path = scratch.path().join("stats.json");
    println!(
        "ferrite demo: probe guest, {} disk(s), {}",
        disks.len(),
        args.probe.cmdline()
    );
    if args.drives.is_empty() {
        println!("scratch images in {}", scratch.path().display());
    }
    let start = Instant::now();
    let (status, report) = capture::capture(args.verbose, || {
        crate::run_vm(&cfg, Some(&stats_path), Stdin::Closed)
    })?;
    let elapsed = start.elapsed();
    if report.verdict.is_none() && report.disks.is_empty() && status == STATUS_VMM_ERROR {
        // ferrite could not start the guest and has said why on stderr.
        return Ok(STATUS_VMM_ERROR);
    }
    let stats: serde_json::Value = std::fs::read_to_string(&stats_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let rows: Vec<Row<'_>> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| Row {
            name: d.name.clone(),
            mode: d.config.cache,
            read_only: d.config.read_only,
            view: report.disks.get(i),
            host: HostCounts::from_stats(&stats, i),
            finished: report.verdict.is_some(),
        })
        .collect();
    println!();
    print!("{}", table::render(&rows, !args.drives.is_empty()));
    println!();
    println!("FLUSH, WCE: as the guest saw them (FLUSH negotiated; WCE = the writeback byte at start, 1 = the guest has a volatile write cache);");
    println!("WCE 0/1: the guest turned the write cache off and on and read it back each time.");
    println!("writes, flushes: requests completed (flushes include the one ferrite makes at exit, except in unsafe);");
    println!("host syncs: fdatasync calls + O_DSYNC/RWF_DSYNC writes (both from ferrite's per-disk stats).");
    if report.acks > 0 {
        let flushed = report
            .last_flushed
            .map_or("none".to_string(), |s| s.to_string());
        println!(
            "stream: {} writes acknowledged, last flushed seq {flushed}",
            report.acks
        );
    }
    let _ = std::io::stdout().flush();
    let (demo_status, line) = conclude(&report, status, elapsed.as_secs_f64());
    if demo_status == 0 {
        println!("{line}");
    } else {
        eprintln!("{line}");
    }
    Ok(demo_status)
}

/// The demo's exit status and its last line, from the probe's verdict
/// and ferrite's exit status (which must agree).
fn conclude(report: &ProbeReport, status: i32, secs: f64) -> (i32, String) {
    match &report.verdict {
        Some(v) if v.pass && status == STATUS_PROBE_PASS => {
            (0, format!("ferrite demo: probe verdict pass ({secs:.2} s)"))
        }
        Some(v) if !v.pass && status == STATUS_PROBE_FAIL => {
            (1, format!("ferrite demo: probe verdict fail: {}", v.reason))
        }
        Some(v) => (
            1,
            format!(
                "ferrite demo: probe verdict {} but ferrite exited with status {status}",
                if v.pass { "pass" } else { "fail" }
            ),
        ),
        None if report.acks > 0 => (
            1,
            format!(
                "ferrite demo: stopped before the probe's verdict, after {} acknowledged writes",
                report.acks
            ),
        ),
        None => (
            1,
            format!("ferrite demo: the guest stopped (status {status}) before the probe's verdict"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_spec_parsing() {
        let p = parse_probe("stream stream.count=0 stream.depth=8").unwrap();
        assert_eq!(p.scenarios, ["stream"]);
        assert_eq!(p.cmdline(), "probe=stream stream.count=0 stream.depth=8");
        let p = parse_probe(DEFAULT_PROBE).unwrap();
        assert_eq!(p.cmdline(), "probe=info,rw,flush,wce");
        assert_eq!(
            parse_probe("probe=rw probe.disk=1").unwrap().cmdline(),
            "probe=rw probe.disk=1"
        );
        for bad in ["", "   ", "bogus", "rw,,flush", "rw count", "rw =3"] {
            assert!(parse_probe(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_probe("rw,bogus").unwrap_err().contains("bogus"));
    }

    #[test]
    fn status_follows_the_verdict_and_the_exit() {
        let mut pass = ProbeReport::default();
        pass.feed("PROBE verdict=pass reason=ok");
        let mut fail = ProbeReport::default();
        fail.feed("PROBE verdict=fail reason=timeout");
        assert_eq!(conclude(&pass, STATUS_PROBE_PASS, 0.5).0, 0);
        let (s, line) = conclude(&fail, STATUS_PROBE_FAIL, 0.5);
        assert_eq!(s, 1);
        assert!(line.contains("timeout"), "{line}");
        // Status 1 without a verdict is a VMM error, not a pass.
        let (s, line) = conclude(&ProbeReport::default(), STATUS_VMM_ERROR, 0.5);
        assert_eq!(s, 1);
        assert!(line.contains("before the probe's verdict"), "{line}");
        // A pass line with a failing status is not a pass, and vice versa.
        assert_eq!(conclude(&pass, STATUS_PROBE_FAIL, 0.5).0, 1);
        assert_eq!(conclude(&fail, STATUS_PROBE_PASS, 0.5).0, 1);
        assert_eq!(conclude(&pass, 0, 0.5).0, 1);
    }

    #[test]
    fn cli_takes_demo() {
        let cli = crate::cli::parse([
            "ferrite",
            "demo",
            "--drive",
            "file=d.img,cache=directsync",
            "--probe",
            "stream stream.count=0 stream.depth=8",
            "--verbose",
        ])
        .unwrap();
        let Some(crate::cli::Command::Demo(args)) = cli.command else {
            panic!("not demo");
        };
        assert_eq!(args.drives.len(), 1);
        assert_eq!(args.drives[0].cache, CacheMode::DirectSync);
        assert!(args.verbose);
        assert_eq!(args.probe.scenarios, ["stream"]);
        let cli = crate::cli::parse(["ferrite", "demo"]).unwrap();
        let Some(crate::cli::Command::Demo(args)) = cli.command else {
            panic!("not demo");
        };
        assert_eq!(args.probe.cmdline(), "probe=info,rw,flush,wce");
        assert!(crate::cli::parse(["ferrite", "demo", "--probe", "nope"]).is_err());
    }
}
