//! `ferrite bench`: what the cache modes and the VMM cost.
//!
//! - default ([`guest`]): the probe guest streams writes on a scratch image
//!   once per cache mode; guest-side rates, host syncs per write, durability.
//! - `--io-path` ([`io_path`]): the host-side I/O path (device, transport,
//!   I/O thread, `block`) driven in-process, against `fio` on the same file.
//! - `--overhead` ([`overhead`]): ferrite's resident memory beyond guest RAM
//!   and its time from start to the first KVM_RUN.
//!
//! Shared pieces: [`stats`] (percentiles, medians, thread CPU time) and
//! [`host`] (emulated-KVM detection, a scratch directory that does O_DIRECT).

pub mod guest;
pub mod host;
pub mod io_path;
pub mod overhead;
pub mod stats;
pub mod stop;

use std::path::PathBuf;
use std::time::Duration;

use block::{CacheMode, EngineKind};
use clap::Args;
use devices::virtio::block::CpuList;

use io_path::driver::WaitMode;
use io_path::target::Device;
use io_path::{BenchError, IoPathConfig, WORKLOADS};

/// `ferrite bench --help`'s long text.
pub const BENCH_HELP: &str = "\
Without --io-path or --overhead: boots the built-in probe guest once per cache mode on a
scratch image (--image, default a temporary file) with `probe=stream`, and prints per mode
the guest-side IOPS and MB/s, host syncs per write, and whether a completed write is durable.
On an emulating KVM (no vmx/svm, kvm_pvm) the guest-side rates measure the emulator.

--io-path: drives ferrite's virtio-blk device (MMIO transport, I/O thread, block backend)
from an in-process driver through guest memory and a split virtqueue, and runs fio with the
matching flags on the same file in the same run; one line per case, ratio = ferrite/fio IOPS,
added_p50_us/added_p99_us = ferrite's latency minus fio's (what ferrite adds per request).
The default run is short (256M, 500ms runs, 3 pairs: about 4.5 minutes here); --thorough is
the long one. --device ram runs both on memory (a tmpfs), where the storage adds no noise.

--overhead: resident memory beyond guest RAM with a 128 MiB probe guest, and the time from
spawning ferrite to its first KVM_RUN.

Examples:
  ferrite bench --json modes.json
  ferrite bench --io-path --device ram
  ferrite bench --io-path --dir /var/tmp --runtime 2s --modes none,directsync --engines io_uring
  ferrite bench --overhead";

/// Options of `ferrite bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Benchmark the host-side I/O path (device + block backend, no guest)
    /// against fio on the same file, per cache mode, engine and workload.
    #[arg(long)]
    pub io_path: bool,
    /// Measure ferrite's own cost: resident memory beyond a 128 MiB probe
    /// guest's RAM, and the time from start to the first KVM_RUN.
    #[arg(long, conflicts_with = "io_path")]
    pub overhead: bool,
    /// Directory for the scratch image (must accept O_DIRECT; default: the
    /// first of $TMPDIR, /tmp, /var/tmp, . on a disk-backed file system).
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// --io-path on `ram` (a scratch image in a tmpfs: a device whose
    /// latency does not wander, so the difference is ferrite's own cost),
    /// or on PATH, a block device or file that is overwritten.
    #[arg(
        long,
        value_name = "ram|PATH",
        conflicts_with = "dir",
        requires = "io_path"
    )]
    pub device: Option<String>,
    /// --io-path's long run: 1G image, 5 s per run, 5 pairs per case
    /// (about 45 minutes for every case; the default about 4.5).
    #[arg(long, requires = "io_path")]
    pub thorough: bool,
    /// Scratch image size (K, M, G, T suffixes; no suffix means MiB)
    /// [default: 256M for --io-path, 1G with --thorough and for the probe
    /// guest, whose image is at most 1G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Time of one run (suffix ms or s; no suffix means seconds)
    /// [default: 500ms, 5s with --thorough].
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub runtime: Option<Duration>,
    /// Runs per case and side; the medians are reported [default: 3, 5
    /// with --thorough].
    #[arg(long, value_name = "N")]
    pub repeats: Option<usize>,
    /// Cache modes, comma-separated [default: all five].
    #[arg(long, value_name = "MODES", value_delimiter = ',')]
    pub modes: Vec<CacheMode>,
    /// I/O engines, comma-separated: io_uring, threads [default: both].
    #[arg(long, value_name = "ENGINES", value_delimiter = ',')]
    pub engines: Vec<EngineKind>,
    /// Workloads, comma-separated [default: all]: randwrite-4k-qd1,
    /// randwrite-4k-qd32, randread-4k-qd1, randread-4k-qd32, seqwrite-1m-qd1.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// How the in-process driver waits for completions (--io-path):
    /// `hybrid` is a guest whose vCPU halts under KVM's halt polling.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub wait: WaitMode,
    /// Longest time the disk's I/O thread spins for work before it sleeps,
    /// in µs, as `--drive iothread-poll-us=` sets it (--io-path; 0: never
    /// spins, as before polling existed).
    #[arg(long, value_name = "US", default_value_t = devices::virtio::block::DEFAULT_POLL_MAX.as_micros() as u64)]
    pub poll_us: u64,
    /// Spin without offering the CPU to other tasks (device window and
    /// the driver's halt polling): no yields, and spinning even while
    /// other tasks wait for a CPU (--io-path; to measure what giving way
    /// does on a contended host).
    #[arg(long)]
    pub poll_keep: bool,
    /// Host CPUs the disk's I/O thread may run on, as `--drive
    /// iothread-cpus=` takes them (--io-path; for example the CPU that
    /// takes the disk's interrupts, from /proc/interrupts) [default: any].
    #[arg(long, value_name = "LIST")]
    pub iothread_cpus: Option<CpuList>,
    /// Scratch image for the probe guest [default: a temporary file in the
    /// scratch directory]; must not exist: created at --size (at most 1G),
    /// written over, then removed.
    #[arg(long, value_name = "PATH", conflicts_with = "io_path")]
    pub image: Option<PathBuf>,
    /// Writes the probe guest makes per cache mode.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub count: u32,
    /// Probe guest writes in flight (1 to 8).
    #[arg(long, value_name = "D", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=8))]
    pub depth: u32,
    /// Also write the probe guest's table as JSON to PATH.
    #[arg(long, value_name = "PATH", conflicts_with = "io_path")]
    pub json: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::parse_size(s).map_err(|e| e.to_string())
}

/// "5s", "500ms", "2" (seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v * scale < 86_400.0)
        .map(|v| Duration::from_secs_f64(v * scale))
        .ok_or_else(|| format!("invalid duration {s:?}: expected e.g. 5s or 500ms"))
}

fn io_path_config(args: &BenchArgs) -> Result<IoPathConfig, BenchError> {
    let device = match args.device.as_deref() {
        Some(d) => Device::parse(d),
        None => Device::Dir(host::scratch_dir(args.dir.as_deref()).map_err(BenchError::Usage)?),
    };
    let mut workloads = Vec::new();
    for name in &args.workloads {
        let wl = WORKLOADS
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| BenchError::Usage(format!("unknown workload {name:?}")))?;
        workloads.push(wl.clone());
    }
    if workloads.is_empty() {
        workloads = WORKLOADS.to_vec();
    }
    let modes = if args.modes.is_empty() {
        CacheMode::ALL.to_vec()
    } else {
        args.modes.clone()
    };
    let engines = if args.engines.is_empty() {
        vec![EngineKind::IoUring, EngineKind::Sync]
    } else {
        args.engines.clone()
    };
    if engines.contains(&EngineKind::IoUring) && !block::io_uring_supported() {
        return Err(BenchError::Usage(
            "this kernel cannot run the io_uring engine; pass --engines threads".into(),
        ));
    }
    let t = args.thorough;
    Ok(IoPathConfig {
        device,
        size: args.size.unwrap_or(if t { 1 << 30 } else { 256 << 20 }),
        runtime: args
            .runtime
            .unwrap_or(Duration::from_millis(if t { 5000 } else { 500 })),
        repeats: args.repeats.unwrap_or(if t { 5 } else { 3 }),
        modes,
        engines,
        workloads,
        wait: args.wait,
        poll_max: Duration::from_micros(args.poll_us),
        poll_yields: !args.poll_keep,
        iothread_cpus: args.iothread_cpus.clone(),
    })
}

/// Runs the benchmark the arguments ask for; returns the exit status.
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    stop::watch();
    if args.overhead {
        let dir = host::scratch_dir(args.dir.as_deref()).map_err(BenchError::Usage)?;
        let scratch = ScratchDir::create(&dir)?;
        let stdout = std::io::stdout();
        return overhead::run(
            scratch.path(),
            args.repeats.unwrap_or(5).max(5),
            &mut stdout.lock(),
        );
    }
    if !args.io_path {
        return guest_bench(args);
    }
    let cfg = io_path_config(args)?;
    if let Some(why) = host::kvm_emulated() {
        println!("# note: KVM here is emulated ({why}); --io-path runs no guest and is unaffected");
    }
    let stdout = std::io::stdout();
    io_path::run(&cfg, &mut stdout.lock()).map(|_| ())
}

/// A directory of this run's own, removed with everything in it at the end
/// (or at Ctrl-C).
struct ScratchDir {
    path: PathBuf,
    _stop: stop::PathGuard,
}

impl ScratchDir {
    fn create(parent: &std::path::Path) -> Result<ScratchDir, BenchError> {
        let path = parent.join(format!("ferrite-bench-{}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| BenchError::Image {
            path: path.clone(),
            source,
        })?;
        let _stop = stop::PathGuard::new(&path);
        Ok(ScratchDir { path, _stop })
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The probe guest once per cache mode.
fn guest_bench(args: &BenchArgs) -> Result<(), BenchError> {
    let dir = host::scratch_dir(args.dir.as_deref()).map_err(BenchError::Usage)?;
    let scratch = ScratchDir::create(&dir)?;
    let cfg = guest::GuestConfig {
        image: args
            .image
            .clone()
            .unwrap_or_else(|| scratch.path().join("scratch.img")),
        size: args.size.unwrap_or(1 << 30).min(1 << 30),
        count: args.count,
        depth: args.depth,
        modes: if args.modes.is_empty() {
            CacheMode::ALL.to_vec()
        } else {
            args.modes.clone()
        },
    };
    let report = guest::run(&cfg, scratch.path())?;
    let stdout = std::io::stdout();
    let io = |e: std::io::Error| BenchError::Image {
        path: "stdout".into(),
        source: e,
    };
    guest::render(&report, &mut stdout.lock()).map_err(io)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| io(e.into()))?;
        std::fs::write(path, text + "\n").map_err(|source| BenchError::Image {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(bad) = report.rows.iter().find(|r| r.verdict != "pass") {
        return Err(BenchError::Device(format!(
            "the probe guest in {} ended with verdict {}",
            bad.mode, bad.verdict
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        for bad in ["", "0s", "-1s", "fast", "1e9s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
