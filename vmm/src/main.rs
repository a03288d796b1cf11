//! ferrite: a minimal KVM virtual machine monitor.
//!
//! `main` only turns outcomes into exit statuses: 0 for a guest reset or
//! power-off, `(v << 1) | 1` for a debug-exit write, 1 with one line on
//! stderr for a VMM error, 2 with one line for bad arguments. Every path
//! restores the terminal and writes `--stats-json`.

mod bench;
mod boot;
mod cli;
mod config;
mod console;
mod crashtest;
mod demo;
mod disks;
mod exit;
mod kvm;
mod memory;
mod panic_watch;
mod run;
mod seccomp;
mod signals;
mod snapshot;
mod stats;
mod vmm;

use std::io::Write;

use cli::{Cli, ParseOutcome};
use exit::{STATUS_USAGE, STATUS_VMM_ERROR};

fn main() {
    // Before any thread exists, so that every thread inherits the mask and
    // the stop signals arrive only through the event loop's signalfd.
    if let Err(e) = signals::block_stop_signals() {
        fail(
            STATUS_VMM_ERROR,
            &format!("ferrite: cannot block signals: {e}"),
        );
    }
    // Before any file is opened (see `probe_stdin`).
    let stdin = console::probe_stdin();
    console::restore_terminal_on_panic();
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseOutcome::Info(text)) => {
            print!("{text}");
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        // For `ferrite run`, 2 could be the command's own status.
        Err(ParseOutcome::Usage(line)) if is_run() => fail(run::verdict::STATUS_RUN_ERROR, &line),
        Err(ParseOutcome::Usage(line)) => fail(STATUS_USAGE, &line),
    };
    let status = run(cli, stdin);
    console::restore_terminal();
    let _ = std::io::stdout().flush();
    std::process::exit(status);
}

/// Whether the arguments ask for `ferrite run`.
fn is_run() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == "run")
}

/// Prints one line on stderr and exits.
fn fail(status: i32, line: &str) -> ! {
    console::restore_terminal();
    let _ = std::io::stdout().flush();
    eprintln!("{line}");
    std::process::exit(status);
}

/// Boots the guest; returns the exit status.
fn run(cli: Cli, stdin: console::Stdin) -> i32 {
    if let Some(command) = cli.command {
        return match command {
            cli::Command::Bench(args) => bench_status(&args),
            cli::Command::Crashtest(args) => crashtest::run(args),
            cli::Command::Demo(args) => demo::run(args),
            cli::Command::Run(args) => run::run(args),
        };
    }
    let mut args = cli.vm;
    let Some(kernel) = args.kernel else {
        fail(STATUS_USAGE, "ferrite: --kernel is required");
    };
    if let Err(line) = check_drives(&args.drives) {
        fail(STATUS_USAGE, &line);
    }
    // Kept until the guest is gone: the copies live in it.
    let snapshots = if args.drives.iter().any(|d| d.snapshot) {
        let dir = tempfile::Builder::new()
            .prefix("ferrite-snapshot-")
            .tempdir()
            .unwrap_or_else(|e| fail(STATUS_VMM_ERROR, &format!("ferrite: snapshot=on: {e}")));
        if let Err(e) = snapshot_drives(&mut args.drives, dir.path()) {
            fail(STATUS_VMM_ERROR, &format!("ferrite: {e}"));
        }
        Some(dir)
    } else {
        None
    };
    let cfg = vmm::VmConfig {
        kernel: boot::Kernel::File(kernel),
        initrd: args.initrd,
        cmdline: args
            .cmdline
            .unwrap_or_else(|| cli::DEFAULT_CMDLINE.to_string()),
        mem_size: args.memory,
        cpus: args.cpus,
        drives: args.drives,
        writable_files: args.stats_json.iter().cloned().collect(),
    };
    // The statistics file exists before the sandbox is built, so that its
    // rule can name it (and an unwritable path fails now, not at exit).
    if let Some(path) = &args.stats_json {
        if let Err(e) = stats::create(path) {
            fail(STATUS_VMM_ERROR, &format!("ferrite: {e}"));
        }
    }
    let policy = if args.no_seccomp {
        seccomp::Policy::Off
    } else if snapshots.is_some() {
        // The main thread deletes the copies after the guest, which its
        // filter would not allow.
        seccomp::Policy::Threads
    } else {
        seccomp::Policy::All
    };
    let status = run_vm_with(&cfg, args.stats_json.as_deref(), stdin, policy);
    drop(snapshots);
    status
}

/// Points every `snapshot=on` drive at a throwaway copy made in `dir`.
fn snapshot_drives(
    drives: &mut [config::DriveConfig],
    dir: &std::path::Path,
) -> Result<(), snapshot::SnapshotError> {
    for (i, d) in drives.iter_mut().enumerate().filter(|(_, d)| d.snapshot) {
        let copy = dir.join(format!("snapshot-{i}.img"));
        snapshot::throwaway_copy(&d.path, &copy)?;
        d.path = copy;
        d.snapshot = false;
    }
    Ok(())
}

/// Boots `cfg` with the console on stdin/stdout, writes `stats_json` if
/// asked, prints the exit's line on stderr if it has one, and returns the
/// exit status. Subcommands that boot a guest of their own (`demo`,
/// `bench`) build a [`vmm::VmConfig`] and call this.
///
/// The vCPU and disk threads run under seccomp; the calling thread does
/// not, so it can go on after the guest (see [`run_vm_with`]).
fn run_vm(cfg: &vmm::VmConfig, stats_json: Option<&std::path::Path>, stdin: console::Stdin) -> i32 {
    run_vm_with(cfg, stats_json, stdin, seccomp::Policy::Threads)
}

/// [`run_vm`] with the seccomp `policy` given; with
/// [`seccomp::Policy::All`] the calling thread is filtered too and should
/// only exit afterwards.
fn run_vm_with(
    cfg: &vmm::VmConfig,
    stats_json: Option<&std::path::Path>,
    stdin: console::Stdin,
    policy: seccomp::Policy,
) -> i32 {
    let seen = panic_watch::PanicSeen::default();
    let watch = seen.clone();
    let console: vmm::ConsoleFactory = Box::new(move |exit| {
        Box::new(panic_watch::PanicWatch::new(
            std::io::stdout(),
            exit.clone(),
            watch,
        ))
    });
    let result = vmm::Vmm::with_console(cfg, policy, console).and_then(|vmm| {
        vmm::prepare_console(stdin)?;
        vmm.run(stdin)
    });
    console::restore_terminal();
    let (status, line, disks) = match result {
        Ok(outcome) => {
            let cause = seen.settle(outcome.cause);
            (cause.status(), cause.message(), outcome.disks)
        }
        Err(e) => (STATUS_VMM_ERROR, Some(format!("ferrite: {e}")), Vec::new()),
    };
    let _ = std::io::stdout().flush();
    if let Some(path) = stats_json {
        let report = stats::StatsReport {
            exit_status: status,
            disks: disks
                .into_iter()
                .enumerate()
                .map(|(index, report)| stats::DiskEntry { index, report })
                .collect(),
        };
        if let Err(e) = stats::write(path, &report) {
            if let Some(line) = line {
                eprintln!("{line}");
            }
            eprintln!("ferrite: {e}");
            return if status == 0 {
                STATUS_VMM_ERROR
            } else {
                status
            };
        }
    }
    if let Some(line) = line {
        eprintln!("{line}");
    }
    status
}

/// Runs `ferrite bench`; its errors are one line, usage errors status 2.
fn bench_status(args: &bench::BenchArgs) -> i32 {
    match bench::run(args) {
        Ok(()) => 0,
        Err(e @ bench::io_path::BenchError::Usage(_)) => {
            eprintln!("ferrite: {e}");
            STATUS_USAGE
        }
        Err(e) => {
            eprintln!("ferrite: {e}");
            STATUS_VMM_ERROR
        }
    }
}

/// Argument checks clap cannot do: the number of drives, and the same image
/// given twice (which would also trip over its own lock).
fn check_drives(drives: &[config::DriveConfig]) -> Result<(), String> {
    if drives.len() > vmm::MAX_DISKS {
        return Err(format!(
            "ferrite: {} drives given; at most {} are supported",
            drives.len(),
            vmm::MAX_DISKS
        ));
    }
    let mut seen = Vec::new();
    for d in drives {
        // A missing file is reported when it is opened; compare what exists.
        let canonical = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
        if seen.contains(&canonical) {
            return Err(format!(
                "ferrite: drive file {} is given more than once",
                d.path.display()
            ));
        }
        seen.push(canonical);
    }
    Ok(())
}
