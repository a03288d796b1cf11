//! The command line (see DESIGN.md, "Command line").
//!
//! A plain invocation boots a kernel; subcommands (`demo`, `bench`) are
//! added to [`Command`] and take over when given. Every usage error is
//! reported on one line with exit status 2 by [`parse`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, DriveConfig};

/// The kernel command line used when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

const DRIVE_HELP: &str = "\
Adds a virtio-blk disk (repeatable; the first is /dev/vda), with QEMU's -drive syntax:
  file=PATH               raw image (required; ',,' escapes a comma)
  cache=MODE              host caching, QEMU's modes (default writeback):
    writeback     host page cache; guest sees a write cache; guest flush = fdatasync
    none          O_DIRECT; guest sees a write cache; guest flush = fdatasync
    writethrough  O_DSYNC: each write is durable when it completes
    directsync    O_DIRECT + O_DSYNC: durable at completion, bypasses the page cache
    unsafe        host page cache, guest flushes ignored: CAN LOSE DATA on a host crash
  cache.writeback=on|off, cache.direct=on|off, cache.no-flush=on|off
                          QEMU's underlying switches; they override cache=
  readonly=on|off         read-only disk (shared image lock instead of exclusive)
  snapshot=on|off         boot a throwaway copy (reflink where possible); the image never changes
  serial=ID               serial number the guest reads (at most 20 bytes)
  aio=io_uring|threads    I/O engine (default: io_uring when the host has it)
  werror=ACTION, rerror=ACTION
                          on a host write/read error (defaults werror=enospc, rerror=report):
    report        the guest gets an I/O error
    ignore        the guest is told it succeeded: the data is LOST (write) or not read (read)
    enospc        on ENOSPC (host storage full) hold the request until space is freed;
                  report other errors (werror only)
    stop          hold the request on any error
                  A held request is retried every second, and at once on SIGUSR1 to ferrite;
                  later flushes and writes to the same blocks wait behind it. One line on
                  stderr says when a disk stops and when it resumes.
  iothread-cpus=LIST      host CPUs the disk's I/O thread may run on: a CPU or a range
                          (1, 0-3); repeat the option or join with ':' for more (0-1:3).
                          Put it on the CPU that takes the disk's interrupts (see
                          /proc/interrupts): woken elsewhere, it waits for an idle CPU
  iothread-poll-us=N      how long the disk's I/O thread spins for work before it sleeps
                          (default 32, QEMU's poll-max-ns rounded; 0 never spins). Longer pays on
                          storage slower than that at high queue depth, for more host CPU;
                          it is cut to 32 while only durable writes or flushes are in flight
  format=raw              the only format supported";

const AFTER_HELP: &str = "\
Console: the guest's serial port is on stdin/stdout (raw mode on a terminal; Ctrl-A X quits).
Exit status: 0 when the guest resets or powers off (i8042 reset, triple fault), on SIGINT/SIGTERM
and on Ctrl-A X; (v << 1) | 1 when the guest writes v to the debug-exit port 0xf4;
1 for a VMM error; 2 for bad arguments; 254 when the guest kernel panicked: ferrite watches the
console for \"Kernel panic - not syncing\" and stops the guest at the end of the panic report,
so a panic never exits 0, whatever panic= says (the default panic=1 would reset).

To test a kernel in CI, see `ferrite run --help`: it runs one command in the guest and
exits with its status.";

/// ferrite: a minimal KVM virtual machine monitor with virtio-blk disks.
#[derive(Debug, Parser)]
#[command(
    name = "ferrite",
    version,
    about = "ferrite: a minimal KVM virtual machine monitor with virtio-blk disks",
    after_long_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// A subcommand; without one, ferrite boots the given kernel.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// What to boot.
    #[command(flatten)]
    pub vm: VmArgs,
}

/// Subcommands besides booting a kernel.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a workload with its disk's writes recorded, then boots a check on
    /// every disk state a power cut could have left.
    #[command(long_about = crate::crashtest::CRASHTEST_HELP)]
    Crashtest(crate::crashtest::CrashtestArgs),
    /// Compares the cache modes through the probe guest, or benchmarks the
    /// host I/O path against fio (--io-path), or ferrite's own overhead (--overhead).
    // A variant's doc comment would replace the Args' own long text: name
    // it here (as for `run`).
    #[command(long_about = crate::bench::BENCH_HELP)]
    Bench(crate::bench::BenchArgs),
    /// Boots the built-in probe guest on one scratch disk per cache mode and
    /// shows what the guest saw and what the host did.
    #[command(long_about = crate::demo::DEMO_HELP)]
    Demo(crate::demo::DemoArgs),
    /// Boots a kernel, runs one command in it and exits with the command's
    /// status (for testing kernels in CI).
    #[command(long_about = crate::run::RUN_HELP)]
    Run(crate::run::RunArgs),
}

/// Options of a plain boot.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Kernel to boot: an ELF vmlinux (PVH entry if it has the note) or a bzImage.
    #[arg(long, value_name = "PATH", required = true)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"]; ferrite
    /// appends virtio_mmio.device=4K@ADDR:IRQ for each drive.
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Guest RAM, with a K, M, G or T suffix (no suffix means MiB).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_memory)]
    pub memory: u64,
    /// Number of vCPUs (1 to 254).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// A virtio-blk disk: file=PATH[,cache=MODE][,readonly=on][,serial=ID][,aio=io_uring|threads].
    #[arg(long = "drive", value_name = "OPTIONS", long_help = DRIVE_HELP,
          value_parser = parse_drive)]
    pub drives: Vec<DriveConfig>,
    /// Write per-disk statistics as JSON to PATH when ferrite exits.
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,
    /// Turn off the seccomp filters (each thread's system-call allowlist);
    /// for debugging only.
    #[arg(long)]
    pub no_seccomp: bool,
}

/// Parses a `--memory` value: a size of at least 16M, a multiple of 4K.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let size = config::parse_size(s).map_err(|e| e.to_string())?;
    if size < crate::memory::MIN_MEMORY || size % 4096 != 0 {
        return Err(format!(
            "guest memory must be at least 16M and a multiple of 4K, not {s}"
        ));
    }
    Ok(size)
}

fn parse_drive(s: &str) -> Result<DriveConfig, String> {
    config::parse_drive(s).map_err(|e| e.to_string())
}

/// What parsing produced when it did not produce options to run with.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// Help or version text, to print on stdout with status 0.
    Info(String),
    /// A usage error: one line for stderr, status 2.
    Usage(String),
}

/// Parses the arguments; usage errors come back as one line.
pub fn parse<I, T>(args: I) -> Result<Cli, ParseOutcome>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::error::ErrorKind;
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                Err(ParseOutcome::Info(e.render().to_string()))
            }
            _ => Err(ParseOutcome::Usage(one_line(&e.render().to_string()))),
        },
    }
}

/// clap's message as one line `ferrite: <reason>`: its first line without
/// the "error: " prefix, and, when that line ends in a colon, the indented
/// lines that complete it (e.g. the missing arguments).
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let mut reason = first.strip_prefix("error: ").unwrap_or(first).to_string();
    if reason.ends_with(':') {
        let details: Vec<&str> = lines
            .take_while(|l| l.starts_with(' '))
            .map(str::trim)
            .collect();
        reason.push(' ');
        reason.push_str(&details.join(", "));
    }
    format!("ferrite: {}", reason.trim_end())
}

/// The subcommand `args` (after `ferrite`) parse to; panics otherwise.
/// For the subcommands' own tests.
#[cfg(test)]
pub fn parse_subcommand(args: &[&str]) -> Command {
    let all = std::iter::once("ferrite").chain(args.iter().copied());
    match parse(all) {
        Ok(Cli {
            command: Some(c), ..
        }) => c,
        Ok(_) => panic!("{args:?}: no subcommand"),
        Err(e) => panic!("{args:?}: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::CacheMode;

    fn usage(args: &[&str]) -> String {
        let mut all = vec!["ferrite"];
        all.extend(args);
        match parse(all) {
            Err(ParseOutcome::Usage(line)) => line,
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let cli = parse(["ferrite", "--kernel", "k"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.vm.memory, 512 << 20);
        assert_eq!(cli.vm.cpus, 1);
        assert!(cli.vm.drives.is_empty());
        assert_eq!(cli.vm.cmdline, None);
    }

    #[test]
    fn everything_given() {
        let cli = parse([
            "ferrite",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "quiet",
            "--memory",
            "1G",
            "--cpus",
            "4",
            "--drive",
            "file=a,cache=none",
            "--drive",
            "file=b,readonly=on",
            "--stats-json",
            "s.json",
        ])
        .unwrap();
        assert_eq!(cli.vm.memory, 1 << 30);
        assert_eq!(cli.vm.cpus, 4);
        assert_eq!(cli.vm.drives.len(), 2);
        assert_eq!(cli.vm.drives[0].cache, CacheMode::None);
        assert!(cli.vm.drives[1].read_only);
        assert_eq!(cli.vm.stats_json, Some(PathBuf::from("s.json")));
    }

    #[test]
    fn usage_errors_are_one_line() {
        for args in [
            &["--kernel", "k", "--cpus", "0"][..],
            &["--kernel", "k", "--cpus", "255"],
            &["--kernel", "k", "--memory", "12Q"],
            &["--kernel", "k", "--memory", "1M"],
            &["--kernel", "k", "--memory", "16387K"],
            &["--kernel", "k", "--drive", "file=a,cache=fast"],
            &["--kernel", "k", "--bogus"],
            &[],
        ] {
            let line = usage(args);
            assert!(line.starts_with("ferrite: "), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        assert!(usage(&["--kernel", "k", "--drive", "file=a,cache=fast"]).contains("fast"));
        assert!(usage(&[]).contains("--kernel"));
    }

    #[test]
    fn help_explains_cache_modes_and_warns_about_unsafe() {
        let Err(ParseOutcome::Info(help)) = parse(["ferrite", "--help"]) else {
            panic!("no help");
        };
        for mode in ["writeback", "none", "writethrough", "directsync", "unsafe"] {
            assert!(help.contains(mode), "{mode}");
        }
        assert!(help.contains("CAN LOSE DATA"));
    }

    #[test]
    fn each_subcommand_shows_its_long_help() {
        for (cmd, text) in [
            ("demo", crate::demo::DEMO_HELP),
            ("bench", crate::bench::BENCH_HELP),
            ("run", crate::run::RUN_HELP),
        ] {
            let Err(ParseOutcome::Info(help)) = parse(["ferrite", cmd, "--help"]) else {
                panic!("{cmd}: no help");
            };
            let first = text.lines().next().unwrap();
            assert!(
                help.contains(first),
                "{cmd} --help lacks {first:?}:\n{help}"
            );
        }
    }
}
