//! `ferrite bench --io-path`: the whole host-side I/O path without a guest.
//!
//! An in-process driver ([`driver`]) feeds the real virtio-blk device
//! (virtio-mmio transport, I/O thread, `block` backend) through guest memory
//! and a split virtqueue; [`fio`] runs the same workload with the matching
//! open flags on the same file. Runs alternate (ferrite first on even
//! repeats, fio first on odd ones) so drifting noise hits both, and each
//! case reports the medians of its repeats and, as `ratio` (ferrite IOPS /
//! fio IOPS) and `p99_ratio`, the medians of the ratios within each
//! repeat's pair of runs ([`Ratios`]).

pub mod driver;
mod ferrite;
pub mod fio;
pub mod floor;
mod summary;
pub mod target;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use block::{stage_timing, CacheMode, EngineKind};
use devices::virtio::block::CpuList;

use super::stats::median;
use driver::WaitMode;
use summary::Summary;
use target::Device;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setting up guest memory failed.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// An eventfd operation failed.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// The device or disk refused something.
    #[error("device: {0}")]
    Device(String),
    /// fio failed or said something unexpected.
    #[error("{0}")]
    Fio(String),
    /// The scratch image could not be made.
    #[error("scratch image {path}: {source}")]
    Image {
        /// The image.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// Bad options.
    #[error("{0}")]
    Usage(String),
}

/// One workload: operation, pattern, block size, queue depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Name on the output line.
    pub name: &'static str,
    /// "read" or "write" (fio's names).
    pub op: &'static str,
    /// Random offsets (else sequential).
    pub random: bool,
    /// Bytes per request.
    pub bs: u32,
    /// Requests in flight.
    pub qd: usize,
}

/// The workloads of issue 7, in output order.
pub const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "randwrite-4k-qd1",
        op: "write",
        random: true,
        bs: 4096,
        qd: 1,
    },
    Workload {
        name: "randwrite-4k-qd32",
        op: "write",
        random: true,
        bs: 4096,
        qd: 32,
    },
    Workload {
        name: "randread-4k-qd1",
        op: "read",
        random: true,
        bs: 4096,
        qd: 1,
    },
    Workload {
        name: "randread-4k-qd32",
        op: "read",
        random: true,
        bs: 4096,
        qd: 32,
    },
    Workload {
        name: "seqwrite-1m-qd1",
        op: "write",
        random: false,
        bs: 1 << 20,
        qd: 1,
    },
];

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Completions per second.
    pub iops: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Driver CPU per request, µs (ferrite only).
    pub driver_us: f64,
    /// Device I/O-thread CPU per request, µs (ferrite only).
    pub device_us: f64,
    /// Median ns of each stage of a QD1 request (ferrite only, and only in
    /// a build with the `stage-timing` feature).
    pub stages: [Option<u64>; stage_timing::POINTS],
}

/// A side or a build without stage marks.
pub const NO_STAGES: [Option<u64>; stage_timing::POINTS] = [None; stage_timing::POINTS];

/// Medians over the repeats of one side.
fn medians(samples: &[Sample]) -> Sample {
    let m = |f: fn(&Sample) -> f64| {
        median(&samples.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    Sample {
        iops: m(|s| s.iops),
        p50_us: m(|s| s.p50_us),
        p99_us: m(|s| s.p99_us),
        driver_us: m(|s| s.driver_us),
        device_us: m(|s| s.device_us),
        stages: std::array::from_fn(|i| {
            let ns: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.stages[i])
                .map(|n| n as f64)
                .collect();
            median(&ns).map(|m| m as u64)
        }),
    }
}

/// The `# stages:` line of a case whose ferrite side has stage marks.
fn stages_line(s: &Sample) -> Option<String> {
    if s.stages.iter().all(Option::is_none) {
        return None;
    }
    let parts: Vec<String> = stage_timing::STAGE_NAMES
        .iter()
        .zip(s.stages)
        .map(|(name, ns)| match ns {
            Some(ns) => format!("{name}={ns}ns"),
            None => format!("{name}=-"),
        })
        .collect();
    Some(format!(
        "# stages (median per request, stage-timing build; each includes up to one clock read): {}",
        parts.join(" ")
    ))
}

/// What `--io-path` runs.
#[derive(Clone, Debug)]
pub struct IoPathConfig {
    /// What to run on.
    pub device: Device,
    /// Image size.
    pub size: u64,
    /// Time per run.
    pub runtime: Duration,
    /// Runs per side and case.
    pub repeats: usize,
    /// Cache modes.
    pub modes: Vec<CacheMode>,
    /// Engines.
    pub engines: Vec<EngineKind>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// How the driver waits.
    pub wait: WaitMode,
    /// The I/O thread's longest poll window.
    pub poll_max: Duration,
    /// Whether spinning (device and driver) offers the CPU to other tasks.
    pub poll_yields: bool,
    /// The host CPUs the disk's I/O thread may run on (`iothread-cpus=`).
    pub iothread_cpus: Option<CpuList>,
}

/// Puts the image in the same state before every run, outside any timed
/// region: what the last run left dirty is made durable (so that no run
/// pays for its predecessor's writeback), and for a mode that reads
/// through the page cache the whole image is read into it, since O_DIRECT
/// writes of an earlier case evict what they overwrite and whichever side
/// ran first would otherwise warm the cache for the other.
fn settle(path: &Path, size: u64, mode: CacheMode) -> Result<(), BenchError> {
    let err = |source| BenchError::Image {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    f.sync_data().map_err(err)?;
    if !mode.switches().direct {
        std::io::copy(&mut std::io::Read::take(&mut f, size), &mut std::io::sink()).map_err(err)?;
    }
    Ok(())
}

/// ferrite against fio for one case: the medians over repeats of the
/// ratios within each repeat's pair of runs. The two runs of a pair are
/// adjacent in time and so share the machine's state (other tenants'
/// load, the host storage's mood), which a ratio of medians taken over
/// all runs would not; on the shared development VM fio's own IOPS for
/// one storage-bound case moved 2-5x within minutes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratios {
    /// ferrite IOPS / fio IOPS.
    pub iops: f64,
    /// ferrite p99 / fio p99.
    pub p99: f64,
    /// ferrite p50 - fio p50, µs: what ferrite adds to a median request.
    pub added_p50: f64,
    /// ferrite p99 - fio p99, µs.
    pub added_p99: f64,
}

impl Ratios {
    /// Pairs `ferrite[i]` with `fio[i]`.
    pub fn paired(ferrite: &[Sample], fio: &[Sample]) -> Ratios {
        let m = |f: fn(&Sample, &Sample) -> f64| {
            let v: Vec<f64> = ferrite.iter().zip(fio).map(|(a, b)| f(a, b)).collect();
            median(&v).unwrap_or(f64::NAN)
        };
        Ratios {
            iops: m(|a, b| a.iops / b.iops),
            p99: m(|a, b| a.p99_us / b.p99_us),
            added_p50: m(|a, b| a.p50_us - b.p50_us),
            added_p99: m(|a, b| a.p99_us - b.p99_us),
        }
    }
}

/// One output line.
pub fn line(
    mode: CacheMode,
    engine: EngineKind,
    wl: &Workload,
    f: &Sample,
    o: &Sample,
    r: Ratios,
) -> String {
    format!(
        "mode={mode} engine={engine} workload={} ferrite_iops={:.0} ferrite_p50_us={:.1} \
         ferrite_p99_us={:.1} fio_iops={:.0} fio_p50_us={:.1} fio_p99_us={:.1} \
         driver_cpu_us={:.2} device_cpu_us={:.2} added_p50_us={:.2} added_p99_us={:.2} \
         p99_ratio={:.2} ratio={:.2}",
        wl.name,
        f.iops,
        f.p50_us,
        f.p99_us,
        o.iops,
        o.p50_us,
        o.p99_us,
        f.driver_us,
        f.device_us,
        r.added_p50,
        r.added_p99,
        r.p99,
        r.iops,
    )
}

/// Runs every case and prints one line each; returns the lines.
pub fn run(cfg: &IoPathConfig, out: &mut dyn Write) -> Result<Vec<String>, BenchError> {
    if !fio::available() {
        return Err(BenchError::Fio(
            "fio is not installed; it is the baseline of --io-path".into(),
        ));
    }
    if cfg.repeats == 0 || cfg.size < 2 << 20 {
        return Err(BenchError::Usage(
            "need --repeats ≥ 1 and --size ≥ 2M".into(),
        ));
    }
    let target = target::prepare(&cfg.device, cfg.size)?;
    let (path, size) = (target.path.clone(), target.size);
    let wr = |out: &mut dyn Write, s: &str| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    wr(
        out,
        &format!(
            "# io-path: image={} ({}) size={} runtime={}ms repeats={} wait={:?} poll={}us poll_yields={} iothread_cpus={} (IOPS, latencies, CPU: medians of repeats; ratio = ferrite IOPS / fio IOPS, p99_ratio and added_*_us = ferrite - fio latency: medians over the repeats' pairs of adjacent runs)",
            path.display(),
            target.what,
            size,
            cfg.runtime.as_millis(),
            cfg.repeats,
            cfg.wait,
            cfg.poll_max.as_micros(),
            cfg.poll_yields,
            cfg.iothread_cpus
                .as_ref()
                .map_or_else(|| "any".to_string(), CpuList::to_string),
        ),
    );
    // What no ring implementation can go below here (see floor.rs).
    if let Some((p50, p99)) = floor::ring_round_trip(200_000, Duration::from_millis(300)) {
        use devices::virtio::block::contention;
        contention::prepare();
        let busy = if contention::cpu_contended(std::time::Instant::now()) {
            "; the host is busy (more runnable tasks than CPUs), so this and every figure below include waiting for a CPU"
        } else {
            ""
        };
        wr(
            out,
            &format!(
                "# floor: a split-ring round trip between two threads, no I/O, no device code: p50={p50:.2}us p99={p99:.2}us (the part of added_p50_us at QD1 that belongs to the ring and the host's CPUs{busy})"
            ),
        );
    }
    let mut lines = Vec::new();
    let mut summary = Summary::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for &mode in &cfg.modes {
        for &engine in &cfg.engines {
            for wl in &cfg.workloads {
                let rc = ferrite::RunConfig {
                    path: &path,
                    size,
                    runtime: cfg.runtime,
                    mode,
                    engine,
                    wait: cfg.wait,
                    poll_max: cfg.poll_max,
                    poll_yields: cfg.poll_yields,
                    iothread_cpus: cfg.iothread_cpus.as_ref(),
                };
                let (mut fs, mut os) = (Vec::new(), Vec::new());
                for r in 0..cfg.repeats {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    for side in [r % 2, 1 - r % 2] {
                        settle(&path, size, mode)?;
                        if side == 0 {
                            fs.push(ferrite::run(&rc, wl, seed)?);
                        } else {
                            os.push(fio::run(&path, size, cfg.runtime, mode, wl)?);
                        }
                    }
                }
                let (f, o) = (medians(&fs), medians(&os));
                let r = Ratios::paired(&fs, &os);
                let l = line(mode, engine, wl, &f, &o, r);
                wr(out, &l);
                if let Some(s) = stages_line(&f) {
                    wr(out, &s);
                }
                lines.push(l);
                summary.count(mode, engine, wl, &f, r);
            }
        }
    }
    for l in summary.lines() {
        wr(out, &l);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_with_the_ratio() {
        let f = Sample {
            iops: 900.0,
            p50_us: 10.0,
            p99_us: 24.0,
            driver_us: 1.0,
            device_us: 2.0,
            stages: NO_STAGES,
        };
        let o = Sample {
            iops: 1000.0,
            p50_us: 9.0,
            p99_us: 20.0,
            driver_us: f64::NAN,
            device_us: f64::NAN,
            stages: NO_STAGES,
        };
        let r = Ratios::paired(&[f], &[o]);
        let l = line(
            CacheMode::None,
            EngineKind::IoUring,
            &WORKLOADS[0],
            &f,
            &o,
            r,
        );
        assert!(
            l.starts_with("mode=none engine=io_uring workload=randwrite-4k-qd1 "),
            "{l}"
        );
        assert!(
            l.ends_with(" added_p50_us=1.00 added_p99_us=4.00 p99_ratio=1.20 ratio=0.90"),
            "{l}"
        );
    }

    #[test]
    fn ratios_pair_runs_that_ran_together() {
        let s = |iops, p99_us| Sample {
            iops,
            p50_us: 1.0,
            p99_us,
            driver_us: 0.0,
            device_us: 0.0,
            stages: NO_STAGES,
        };
        // The storage slowed 10x during the repeats: two of the three pairs
        // are at parity, while the sides' medians are 10x apart.
        let ferrite = [s(100.0, 10.0), s(10.0, 100.0), s(10.0, 100.0)];
        let fio = [s(100.0, 10.0), s(100.0, 10.0), s(10.0, 100.0)];
        let ratios: Vec<f64> = ferrite
            .iter()
            .zip(&fio)
            .map(|(a, b)| a.iops / b.iops)
            .collect();
        assert_eq!(ratios, [1.0, 0.1, 1.0]);
        let r = Ratios::paired(&ferrite, &fio);
        assert_eq!((r.iops, r.p99, r.added_p99), (1.0, 1.0, 0.0));
        assert_eq!(medians(&ferrite).iops / medians(&fio).iops, 0.1);
    }

    #[test]
    fn medians_per_field() {
        let s = |iops| Sample {
            iops,
            p50_us: iops,
            p99_us: 1.0,
            driver_us: 0.0,
            device_us: 0.0,
            stages: NO_STAGES,
        };
        let m = medians(&[s(3.0), s(1.0), s(2.0)]);
        assert_eq!((m.iops, m.p50_us, m.p99_us), (2.0, 2.0, 1.0));
    }
}
