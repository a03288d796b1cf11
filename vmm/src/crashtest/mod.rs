//! `ferrite crashtest`: runs a workload once in a guest with its root
//! disk's writes recorded, then boots a check command on each disk state
//! a power cut could have left (docs/crash-model.md) and reports which
//! states the check rejects.
//!
//! The recorded disk is the root disk (`/dev/vda`, ext4): the workload
//! writes into the same file system the check then reads, with nothing to
//! format or mount in the guest (each guest system call is costly on hosts
//! that emulate the guest kernel), and the root's own journal traffic
//! (mount, `sync`) is part of what is checked. Each state is a copy of the
//! root image as it was before the workload (a reflink where the file
//! system can) with the state's kept writes applied; neither the user's
//! image nor the cached root ever changes.

mod fsck;
mod report;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use block::crash::{generate, generate_torn, CrashState, RecordError, Recording};
use block::CacheMode;
use clap::Args;

use crate::run::rootfs::{self, RootfsError};
use crate::run::verdict::STATUS_RUN_ERROR;
use crate::run::{self as runner, limit, Root, RunSpec};
use crate::snapshot::{self, SnapshotError};
use report::{Report, StateRow};

/// `ferrite crashtest --help`'s text above the options.
pub const CRASHTEST_HELP: &str = "\
Runs WORKLOAD (by sh -c) once in a guest with the root disk's writes recorded, then
boots CHECK (by sh -c) on disk states a power cut during the workload could have left,
under the virtio-blk contract of --cache (docs/crash-model.md): every state keeps what
was durable at its cut, and any subset of what was not. The first states are the least
the disk may hold after each completed FLUSH; the rest are random cuts and subsets,
reproducible from --seed for the same recording.

Prints one row per state (its cut, writes kept and dropped, the check's status) and how
to reproduce a failure. Exit status: 0 when every check passed, 1 when one failed, 125
when the states could not be made or booted (arguments, /dev/kvm, a failed workload).

Examples:
  ferrite crashtest --kernel vmlinux --rootfs app/ --workload /app/run --check /app/verify
  ferrite crashtest --kernel vmlinux --image db.ext4 --workload 'db-bench' \\
      --check 'db-check' --states 50 --seed 7 --keep failed/ --json report.json";

/// Options of `ferrite crashtest`.
#[derive(Debug, Args)]
pub struct CrashtestArgs {
    /// Kernel to boot (ELF vmlinux or bzImage).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Build the root disk from DIR plus a static busybox (cached by content).
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub rootfs: Option<PathBuf>,
    /// Start from this ext4 image (it never changes).
    #[arg(long, value_name = "IMG")]
    pub image: Option<PathBuf>,
    /// The workload, run once by `sh -c` with its writes recorded.
    #[arg(long, value_name = "CMD", required_unless_present = "recording")]
    pub workload: Option<String>,
    /// Use this recording (`--keep DIR` saves one in DIR/recording)
    /// instead of running the workload: with the same --seed and
    /// --states, the same states.
    #[arg(long, value_name = "DIR", conflicts_with = "workload")]
    pub recording: Option<PathBuf>,
    /// Check only these states (numbers from the table, comma-separated).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub only: Vec<usize>,
    /// The check, run by `sh -c` on each state; status 0 passes.
    #[arg(long, value_name = "CMD")]
    pub check: String,
    /// The root disk's cache mode during the workload (unsafe is refused).
    #[arg(long, value_name = "MODE", default_value = "writeback")]
    pub cache: CacheMode,
    /// States to check at most.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub states: usize,
    /// Seed of the random states.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Random states also tear writes in flight at their cut into random
    /// sets of 512-byte sectors.
    #[arg(long)]
    pub tear: bool,
    /// Save the recording and the image of each failing state in DIR.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Write the report as JSON to FILE too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also check each state's ext4 with the host's e2fsck (journal
    /// replayed on a copy, then `e2fsck -fn`); a failure fails the state.
    #[arg(long)]
    pub fsck: bool,
    /// Guest RAM, with a K, M, G or T suffix.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = crate::cli::parse_memory)]
    pub memory: u64,
    /// Extra kernel command line, after ferrite's own.
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Seconds each command may run (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Show the kernel's console messages on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Why crashtest could not check the states; one line, status 125.
#[derive(Debug, thiserror::Error)]
pub enum CrashtestError {
    /// `--cache unsafe`.
    #[error("--cache unsafe promises nothing after a power cut (a FLUSH does nothing), so there is no state to check; use writeback, none, writethrough or directsync")]
    Unsafe,
    /// `--states 0`.
    #[error("--states must be at least 1")]
    NoStates,
    /// The root image.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// A copy of the base image.
    #[error(transparent)]
    Copy(#[from] SnapshotError),
    /// The recording.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The log is impossible.
    #[error("the recorded log is impossible: {0}")]
    Log(#[from] block::crash::LogError),
    /// The workload's run failed.
    #[error("the workload exited with status {status}; its crash states would not test what it is meant to do{detail}")]
    Workload {
        /// Its status.
        status: i32,
        /// ferrite's own lines about the run.
        detail: String,
    },
    /// e2fsck could not be run.
    #[error("--fsck needs e2fsck (e2fsprogs) on the host: {source}")]
    Fsck {
        /// The host error.
        source: std::io::Error,
    },
    /// A file crashtest writes.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
}

/// Runs `ferrite crashtest`; returns the exit status.
pub fn run(args: CrashtestArgs) -> i32 {
    match crashtest(&args) {
        Ok(report) => i32::from(report.failed() > 0),
        Err(e) => {
            eprintln!("ferrite crashtest: {e}");
            STATUS_RUN_ERROR
        }
    }
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> CrashtestError + '_ {
    move |source| CrashtestError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn crashtest(args: &CrashtestArgs) -> Result<Report, CrashtestError> {
    let t0 = Instant::now();
    if args.cache == CacheMode::Unsafe {
        return Err(CrashtestError::Unsafe);
    }
    if args.states == 0 {
        return Err(CrashtestError::NoStates);
    }
    let base = match (&args.image, &args.rootfs) {
        (Some(img), _) => img.clone(),
        (None, dir) => rootfs::cached(dir.as_deref())?,
    };
    let work = tempfile::Builder::new()
        .prefix("ferrite-crashtest-")
        .tempdir()
        .map_err(write_err(&std::env::temp_dir()))?;
    let rec_dir = args
        .keep
        .as_ref()
        .map(|k| k.join("recording"))
        .unwrap_or_else(|| work.path().join("recording"));
    if let Some(keep) = &args.keep {
        std::fs::create_dir_all(keep).map_err(write_err(keep))?;
    }

    // 1. The workload, recorded (or a recording made earlier).
    let rec_dir = match (&args.recording, &args.workload) {
        (Some(dir), _) => dir.clone(),
        (None, workload) => {
            record(
                args,
                &base,
                workload.as_deref().unwrap_or(""),
                &work.path().join("workload.img"),
                &rec_dir,
            )?;
            rec_dir
        }
    };
    let workload_time = t0.elapsed();
    let recording = Recording::load(&rec_dir)?;
    let states = if args.tear {
        generate_torn(&recording.log, args.states, args.seed)?
    } else {
        generate(&recording.log, args.states, args.seed)?
    };
    let mut report = Report::new(args, &recording.log, states.len(), workload_time);
    let source = match &args.recording {
        Some(dir) => format!("read {}", dir.display()),
        None => format!("recorded in {:.0} s", workload_time.as_secs_f64()),
    };
    eprintln!(
        "ferrite crashtest: {} ({source}); checking {} states",
        report.log_summary(),
        states.len()
    );

    // 2. Each state, checked.
    report.print_header();
    for (n, state) in states.iter().enumerate() {
        if !args.only.is_empty() && !args.only.contains(&n) {
            continue;
        }
        let row = check_state(args, &base, &recording, work.path(), n, state)?;
        report.print_row(&row);
        report.rows.push(row);
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report.print_summary(args);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(write_err(path))?;
    }
    Ok(report)
}

/// Runs the workload on a copy of `base` at `image`, recording into `rec_dir`.
fn record(
    args: &CrashtestArgs,
    base: &Path,
    workload: &str,
    image: &Path,
    rec_dir: &Path,
) -> Result<(), CrashtestError> {
    snapshot::throwaway_copy(base, image)?;
    let spec = RunSpec {
        root: Root::Owned(image.to_path_buf()),
        root_cache: args.cache,
        record: Some(rec_dir.to_path_buf()),
        ..spec(args, workload)
    };
    eprintln!(
        "ferrite crashtest: running the workload ({} cache)",
        args.cache
    );
    let (verdict, output) = runner::run_captured(&spec, args.verbose);
    let _ = std::fs::remove_file(image);
    if verdict.status == 0 {
        return Ok(());
    }
    let mut detail = String::new();
    for line in String::from_utf8_lossy(&output)
        .lines()
        .chain(verdict.lines.iter().map(String::as_str))
    {
        detail.push_str("\n  ");
        detail.push_str(line);
    }
    Err(CrashtestError::Workload {
        status: verdict.status,
        detail,
    })
}

/// The run of a command by `sh -c`, with the user's options.
fn spec(args: &CrashtestArgs, command: &str) -> RunSpec {
    RunSpec {
        kernel: args.kernel.clone(),
        root: Root::Busybox,
        cpus: 1,
        memory: args.memory,
        cmdline: args.cmdline.clone(),
        timeout: limit(args.timeout),
        boot_timeout: limit(args.timeout),
        ktap: false,
        out: None,
        drives: Vec::new(),
        command: ["sh", "-c", command].map(OsString::from).to_vec(),
        root_cache: CacheMode::Unsafe,
        record: None,
        capture: true,
    }
}

/// Builds state `n`'s image at `path`: the base with its kept writes.
fn build(
    base: &Path,
    recording: &Recording,
    state: &CrashState,
    path: &Path,
) -> Result<(), CrashtestError> {
    snapshot::throwaway_copy(base, path)?;
    recording.apply_state(path, state)?;
    Ok(())
}

fn check_state(
    args: &CrashtestArgs,
    base: &Path,
    recording: &Recording,
    work: &Path,
    n: usize,
    state: &CrashState,
) -> Result<StateRow, CrashtestError> {
    let t = Instant::now();
    let image = work.join(format!("state-{n}.img"));
    build(base, recording, state, &image)?;
    let fsck = if args.fsck {
        Some(fsck::check(&image, work)?)
    } else {
        None
    };
    let spec = RunSpec {
        root: Root::Owned(image.clone()),
        ..spec(args, &args.check)
    };
    let (verdict, output) = runner::run_captured(&spec, args.verbose);
    let _ = std::fs::remove_file(&image);
    let mut output = String::from_utf8_lossy(&output).into_owned();
    for line in &verdict.lines {
        output.push_str(line);
        output.push('\n');
    }
    let mut row = StateRow {
        state: n,
        cut: state.cut,
        kept: state.kept.len(),
        dropped: state.dropped.len(),
        torn: state.torn.len(),
        status: verdict.status,
        fsck,
        output,
        kept_image: None,
        seconds: t.elapsed().as_secs_f64(),
    };
    if let (Some(keep), false) = (&args.keep, row.passed()) {
        // Rebuilt: the check's boot changed its copy (journal replay).
        let path = keep.join(format!("state-{n}.img"));
        build(base, recording, state, &path)?;
        row.kept_image = Some(path);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    /// `ferrite crashtest --kernel k --check true EXTRA...`, parsed.
    pub(super) fn args(extra: &[&str]) -> CrashtestArgs {
        let mut all = vec!["crashtest", "--kernel", "k", "--check", "true"];
        all.extend(extra);
        match crate::cli::parse_subcommand(&all) {
            Command::Crashtest(a) => a,
            other => panic!("not crashtest: {other:?}"),
        }
    }

    #[test]
    fn unsafe_and_no_states_are_refused_before_anything_runs() {
        let a = args(&["--workload", "w", "--cache", "unsafe"]);
        assert!(matches!(crashtest(&a), Err(CrashtestError::Unsafe)));
        assert_eq!(run(a), STATUS_RUN_ERROR);
        let line = CrashtestError::Unsafe.to_string();
        assert!(!line.contains('\n') && line.contains("promises nothing"));
        let a = args(&["--workload", "w", "--states", "0"]);
        assert!(matches!(crashtest(&a), Err(CrashtestError::NoStates)));
    }

    #[test]
    fn defaults_and_the_choice_of_workload_or_recording() {
        let a = args(&["--workload", "w", "--only", "3,5"]);
        assert_eq!((a.cache, a.states, a.seed), (CacheMode::Writeback, 20, 0));
        assert_eq!(a.only, [3, 5]);
        let a = args(&["--recording", "rec"]);
        assert_eq!(a.workload, None);
        let s = spec(&a, "echo 'a b'");
        assert_eq!(s.command, ["sh", "-c", "echo 'a b'"]);
        assert!(s.capture && s.record.is_none());
        for bad in [
            &["ferrite", "crashtest", "--kernel", "k", "--check", "c"][..],
            &[
                "ferrite",
                "crashtest",
                "--kernel",
                "k",
                "--check",
                "c",
                "--workload",
                "w",
                "--recording",
                "r",
            ],
        ] {
            assert!(parse(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }
}
