//! `ferrite run`: boots a kernel, runs one command in it, and exits with
//! the command's status, for testing kernels in CI.
//!
//! One run: check `/dev/kvm` and the kernel's embedded config; make the
//! root disk (the cached busybox or `--rootfs` image, or the `--image`,
//! each as a throwaway copy) and the `--out` disk; write the initramfs
//! that carries ferrite's init and the command ([`initramfs`]); boot with
//! a console that splits init's frames from kernel messages
//! ([`console`]) and a watchdog for the time limits ([`watchdog`]); then
//! turn what happened into a status ([`verdict`]). `-c ferrite.toml` runs
//! the targets of a config file one after the other ([`manifest`]).

pub mod console;
pub mod frame;
pub mod ikconfig;
pub mod initramfs;
pub mod ktap;
pub mod manifest;
pub mod outdisk;
pub mod payload;
pub mod rootfs;
pub mod verdict;
pub mod watchdog;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::CacheMode;
use clap::Args;

use crate::boot::Kernel;
use crate::config::{self, DriveConfig};
use crate::console::Stdin;
use crate::panic_watch::PanicSeen;
use crate::snapshot::{self, SnapshotError};
use crate::vmm::{ConsoleFactory, VmConfig, Vmm, VmmError};
use console::{RunConsole, Shared};
use initramfs::InitConf;
use rootfs::RootfsError;
use verdict::{Verdict, STATUS_RUN_ERROR};

/// The kernel command line of every run; `--cmdline` adds to it. `panic=-1`
/// resets at once after a panic report (on hosts where the report does
/// not end in an emulation failure), and ferrite stops at its end anyway.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init";

/// `ferrite run --help`'s text above the options.
pub const RUN_HELP: &str = "\
Boots KERNEL, runs CMD (with ARGS, passed exactly, whatever they contain) as the only
program in it, streams its stdout and stderr to ferrite's, and exits with its status.

The root file system is a cached ext4 image of a static busybox (host's /bin/busybox or
$FERRITE_BUSYBOX), plus DIR with --rootfs DIR, or a throwaway copy of --image IMG (ext4;
the image itself never changes). It is /dev/vda; the --out disk, if any, is next; then
the --drive disks. Caches live in $FERRITE_CACHE_DIR, else $XDG_CACHE_HOME/ferrite.

Kernel options needed: VIRTIO_MMIO, VIRTIO_MMIO_CMDLINE_DEVICES, VIRTIO_BLK, EXT4_FS,
BLK_DEV_INITRD, DEVTMPFS, SERIAL_8250_CONSOLE, BINFMT_ELF (and BINFMT_SCRIPT for
scripts); with CONFIG_IKCONFIG a vmlinux (or a gzip or LZ4 bzImage) is checked for
them before it boots.

Exit status: the command's (0..255; 128+N if signal N killed it; 126/127 if it could
not be run or found); 124 when --timeout or --boot-timeout expired; 125 when ferrite
could not run the guest (arguments, /dev/kvm, kernel options, host errors); 254 when the
guest kernel panicked or stopped without the command's status. With --ktap, 1 when the
command exited 0 but its KTAP output failed. With -c, 0 when every target passed, else 1.

Examples:
  ferrite run --kernel vmlinux -- uname -a
  ferrite run --kernel bzImage --rootfs selftests/ --ktap --timeout 600 -- /run_kselftest.sh
  ferrite run -c ferrite.toml --filter 'net|mm'";

/// Options of `ferrite run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel to boot (ELF vmlinux or bzImage).
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    pub kernel: Option<PathBuf>,
    /// Build the root disk from DIR plus a static busybox (cached by content).
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub rootfs: Option<PathBuf>,
    /// Boot a throwaway copy of this ext4 image as the root (it never changes).
    #[arg(long, value_name = "IMG")]
    pub image: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// Guest RAM, with a K, M, G or T suffix.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = crate::cli::parse_memory)]
    pub memory: u64,
    /// Extra kernel command line, after ferrite's own
    /// ("console=ttyS0 reboot=k panic=-1 rdinit=/init").
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Seconds the command may run, from its start (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Seconds from ferrite's start to the command's start (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub boot_timeout: u64,
    /// Read KTAP/TAP from the command's stdout; print a summary; fail on any failure.
    #[arg(long)]
    pub ktap: bool,
    /// Copy what the command leaves in /out to DIR on the host.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// More disks, with ferrite's --drive syntax (snapshot=on boots a copy).
    #[arg(long = "drive", value_name = "OPTIONS", value_parser = parse_drive)]
    pub drives: Vec<DriveConfig>,
    /// Show the kernel's console messages on stderr, and timings.
    #[arg(long, short)]
    pub verbose: bool,
    /// Run the targets of a ferrite.toml instead of one command.
    #[arg(long = "config", short = 'c', value_name = "FILE",
          conflicts_with_all = ["kernel", "rootfs", "image", "command"])]
    pub config: Option<PathBuf>,
    /// With -c: only the targets whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,
    /// The command and its arguments (after --).
    #[arg(value_name = "CMD", trailing_var_arg = true,
          required_unless_present = "config", value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

fn parse_drive(s: &str) -> Result<DriveConfig, String> {
    config::parse_drive(s).map_err(|e| e.to_string())
}

/// Where the root file system comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// busybox alone.
    Busybox,
    /// `--rootfs DIR`.
    Dir(PathBuf),
    /// `--image IMG`.
    Image(PathBuf),
    /// An image made for this run alone (`ferrite crashtest`'s copies):
    /// booted in place, no throwaway copy.
    Owned(PathBuf),
}

/// One run, from the command line or a config file's target.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The kernel.
    pub kernel: PathBuf,
    /// The root file system.
    pub root: Root,
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Extra kernel command line.
    pub cmdline: Option<String>,
    /// Command time limit.
    pub timeout: Option<Duration>,
    /// Boot time limit.
    pub boot_timeout: Option<Duration>,
    /// Parse KTAP.
    pub ktap: bool,
    /// `--out DIR`.
    pub out: Option<PathBuf>,
    /// More disks.
    pub drives: Vec<DriveConfig>,
    /// The command.
    pub command: Vec<OsString>,
    /// The root disk's cache mode (`unsafe` for a throwaway disk; what
    /// `ferrite crashtest` tests otherwise).
    pub root_cache: CacheMode,
    /// Record the root disk's writes into this directory.
    pub record: Option<PathBuf>,
    /// Keep the command's stdout and stderr instead of passing them on.
    pub capture: bool,
}

/// Seconds to a limit; 0 is none.
pub fn limit(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl RunSpec {
    fn from_args(args: RunArgs) -> Self {
        let root = match (args.rootfs, args.image) {
            (Some(dir), _) => Root::Dir(dir),
            (None, Some(img)) => Root::Image(img),
            (None, None) => Root::Busybox,
        };
        RunSpec {
            kernel: args.kernel.unwrap_or_default(),
            root,
            cpus: args.cpus,
            memory: args.memory,
            cmdline: args.cmdline,
            timeout: limit(args.timeout),
            boot_timeout: limit(args.boot_timeout),
            ktap: args.ktap,
            out: args.out,
            drives: args.drives,
            command: args.command,
            root_cache: CacheMode::Unsafe,
            record: None,
            capture: false,
        }
    }
}

/// Why a run could not start; each becomes status 125 and one line.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `/dev/kvm` cannot be opened.
    #[error("/dev/kvm is not usable ({0}): ferrite needs KVM and has no emulator to fall back to (on CI, see the README for giving the runner access to /dev/kvm)")]
    NoKvm(std::io::Error),
    /// The kernel lacks an option `ferrite run` needs.
    #[error(transparent)]
    Kernel(#[from] ikconfig::KernelConfigError),
    /// The root or out disk.
    #[error(transparent)]
    Disk(#[from] RootfsError),
    /// A throwaway copy.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A scratch file.
    #[error("cannot write {what}: {source}")]
    Scratch {
        /// Which file.
        what: &'static str,
        /// The host error.
        source: std::io::Error,
    },
    /// Too many drives, or one given twice.
    #[error("{0}")]
    Drives(String),
    /// The VMM.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

fn scratch(what: &'static str) -> impl Fn(std::io::Error) -> RunError {
    move |source| RunError::Scratch { what, source }
}

/// Runs `ferrite run`; returns the exit status.
pub fn run(args: RunArgs) -> i32 {
    let verbose = args.verbose;
    if args.filter.is_some() && args.config.is_none() {
        eprintln!("ferrite: --filter selects targets of a config file: it needs -c FILE");
        return STATUS_RUN_ERROR;
    }
    if let Some(path) = args.config.clone() {
        return manifest::run_file(&path, args.filter.as_deref(), &args, verbose);
    }
    let spec = RunSpec::from_args(args);
    let verdict = run_one(&spec, verbose);
    report(&verdict);
    verdict.status
}

/// Prints a verdict's lines on stderr.
pub fn report(verdict: &Verdict) {
    let _ = std::io::stdout().flush();
    for line in &verdict.lines {
        eprintln!("{line}");
    }
}

/// Runs one spec; never panics on bad input.
pub fn run_one(spec: &RunSpec, verbose: bool) -> Verdict {
    run_captured(spec, verbose).0
}

/// Runs one spec; also returns the command's output when `spec.capture`
/// (stdout and stderr, interleaved as they came).
pub fn run_captured(spec: &RunSpec, verbose: bool) -> (Verdict, Vec<u8>) {
    match boot(spec, verbose) {
        Ok(v) => v,
        Err(e) => (
            Verdict {
                status: STATUS_RUN_ERROR,
                lines: vec![format!("ferrite run: {e}")],
            },
            Vec::new(),
        ),
    }
}

/// Fails at once when `/dev/kvm` cannot be opened for reading and writing.
pub fn check_kvm() -> Result<(), RunError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(RunError::NoKvm)
}

fn boot(spec: &RunSpec, verbose: bool) -> Result<(Verdict, Vec<u8>), RunError> {
    let t0 = Instant::now();
    check_kvm()?;
    ikconfig::check_file(&spec.kernel)?;
    let work = tempfile::Builder::new()
        .prefix("ferrite-run-")
        .tempdir()
        .map_err(scratch("a scratch directory"))?;
    let root_image = work.path().join("root.img");
    let root_image = match &spec.root {
        Root::Owned(img) => img.clone(),
        Root::Image(img) => copied(img, root_image)?,
        Root::Busybox => copied(&rootfs::cached(None)?, root_image)?,
        Root::Dir(dir) => copied(&rootfs::cached(Some(dir))?, root_image)?,
    };
    let mut drives = vec![DriveConfig {
        cache: spec.root_cache,
        record: spec.record.clone(),
        ..throwaway_drive(root_image)
    }];
    let out_image = work.path().join("out.img");
    if spec.out.is_some() {
        outdisk::create(&out_image)?;
        drives.push(DriveConfig {
            cache: CacheMode::Writeback,
            ..throwaway_drive(out_image.clone())
        });
    }
    let mut user = spec.drives.clone();
    crate::snapshot_drives(&mut user, work.path()).map_err(RunError::Snapshot)?;
    drives.extend(user);
    crate::check_drives(&drives).map_err(RunError::Drives)?;
    let conf = InitConf {
        root: "/dev/vda".into(),
        rootfstype: "ext4".into(),
        out: spec.out.as_ref().map(|_| "/dev/vdb".into()),
        quiet: !verbose,
    };
    let initrd = work.path().join("initramfs.cpio");
    let mut file = std::fs::File::create(&initrd).map_err(scratch("the initramfs"))?;
    initramfs::write(&mut file, &spec.command, &conf).map_err(scratch("the initramfs"))?;
    drop(file);
    let mut cmdline = BASE_CMDLINE.to_string();
    if let Some(extra) = spec.cmdline.as_deref().filter(|s| !s.trim().is_empty()) {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    let cfg = VmConfig {
        kernel: Kernel::File(spec.kernel.clone()),
        initrd: Some(initrd),
        cmdline,
        mem_size: spec.memory,
        cpus: spec.cpus,
        drives,
        writable_files: Vec::new(),
    };

    let shared = Arc::new(Shared::default());
    if spec.ktap {
        shared.lock().ktap = Some(ktap::Ktap::default());
    }
    if spec.capture {
        shared.lock().captured = Some(Vec::new());
    }
    let panic = PanicSeen::default();
    let (sink_shared, sink_panic) = (shared.clone(), panic.clone());
    let console: ConsoleFactory = Box::new(move |exit| {
        Box::new(RunConsole::new(
            sink_shared,
            exit.clone(),
            sink_panic,
            verbose,
        ))
    });
    let vmm = Vmm::with_console(&cfg, crate::seccomp::Policy::Threads, console)?;
    let limits = watchdog::Limits {
        boot: spec.boot_timeout,
        command: spec.timeout,
    };
    let dog = watchdog::spawn(shared.clone(), vmm.exit_controller(), limits)
        .map_err(scratch("(start) the watchdog thread"))?;
    let outcome = vmm.run(Stdin::Closed);
    watchdog::finish(&shared, dog);
    let outcome = outcome?;

    let cause = panic.settle(outcome.cause);
    let mut state = shared.lock();
    let mut verdict = verdict::decide(&cause, &state, outcome.drivers.first().copied());
    if verbose {
        verdict.lines.push(timings(t0, &state));
    }
    if let Some(ktap) = state.ktap.as_mut() {
        ktap.finish();
        verdict
            .lines
            .push(format!("ferrite run: {}", ktap.summary()));
        if verdict.status == 0 && !ktap.passed() {
            verdict.status = 1;
        }
    }
    let output = state.captured.take().unwrap_or_default();
    drop(state);
    if let Some(dir) = &spec.out {
        if let Err(e) = outdisk::extract(&out_image, dir) {
            verdict.lines.push(format!("ferrite run: --out: {e}"));
            if verdict.status == 0 {
                verdict.status = STATUS_RUN_ERROR;
            }
        }
    }
    Ok((verdict, output))
}

/// `dst` after copying `src` there.
fn copied(src: &std::path::Path, dst: PathBuf) -> Result<PathBuf, SnapshotError> {
    snapshot::throwaway_copy(src, &dst)?;
    Ok(dst)
}

/// A disk nobody keeps: the cache mode that spares the host's syncs.
fn throwaway_drive(path: PathBuf) -> DriveConfig {
    DriveConfig::new(path, CacheMode::Unsafe)
}

/// `--verbose`'s timing line.
fn timings(t0: Instant, state: &console::RunState) -> String {
    let secs = |t: Option<Instant>| {
        t.map(|t| format!("{:.1} s", t.duration_since(t0).as_secs_f64()))
            .unwrap_or_else(|| "never".into())
    };
    format!(
        "ferrite run: command started after {}, first output after {}, total {:.1} s",
        secs(state.started),
        secs(state.first_output),
        t0.elapsed().as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse, Command};

    fn run_args(args: &[&str]) -> RunArgs {
        let all: Vec<&str> = std::iter::once("run").chain(args.iter().copied()).collect();
        match crate::cli::parse_subcommand(&all) {
            Command::Run(a) => a,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn help_gives_the_statuses_and_the_kernel_options() {
        let Err(crate::cli::ParseOutcome::Info(help)) = parse(["ferrite", "run", "--help"]) else {
            panic!("no help");
        };
        for needle in ["124", "125", "254", "VIRTIO_MMIO_CMDLINE_DEVICES", "--ktap"] {
            assert!(help.contains(needle), "{needle}");
        }
    }

    #[test]
    fn the_command_keeps_its_own_options() {
        let a = run_args(&["--kernel", "k", "--timeout", "5", "ls", "-la", "--", "x"]);
        assert_eq!(a.command, ["ls", "-la", "--", "x"]);
        assert_eq!(a.timeout, 5);
        let a = run_args(&["--kernel", "k", "--", "sh", "-c", "a b"]);
        assert_eq!(a.command, ["sh", "-c", "a b"]);
        let spec = RunSpec::from_args(run_args(&["--kernel", "k", "--timeout", "0", "true"]));
        assert_eq!((spec.timeout, spec.boot_timeout), (None, limit(300)));
        assert_eq!(spec.root, Root::Busybox);
    }

    #[test]
    fn rootfs_and_image_exclude_each_other_and_config_excludes_a_command() {
        let lone_filter = run_args(&["--kernel", "k", "--filter", "x", "true"]);
        assert_eq!(run(lone_filter), STATUS_RUN_ERROR);
        for args in [
            &[
                "ferrite", "run", "--kernel", "k", "--rootfs", "d", "--image", "i", "true",
            ][..],
            &["ferrite", "run", "-c", "f.toml", "true"],
        ] {
            assert!(parse(args.iter().copied()).is_err(), "{args:?}");
        }
    }
}
