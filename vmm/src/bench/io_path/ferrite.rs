//! One timed run of ferrite's I/O path: a fresh disk and device, the
//! in-process driver keeping `qd` requests in flight for the runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use block::{stage_timing, CacheMode, Disk, DiskConfig, EngineKind};
use devices::virtio::block::{BlockDevice, BlockOptions, CpuList};

use super::driver::{Done, Driver, ReqKind, WaitMode};
use super::{BenchError, Sample, Workload};
use crate::bench::stats;

/// What varies between runs besides the workload.
#[derive(Clone, Debug)]
pub struct RunConfig<'a> {
    /// The image.
    pub path: &'a Path,
    /// Bytes of it to use.
    pub size: u64,
    /// How long to keep submitting.
    pub runtime: Duration,
    /// Cache mode.
    pub mode: CacheMode,
    /// I/O engine.
    pub engine: EngineKind,
    /// How the driver waits.
    pub wait: WaitMode,
    /// The I/O thread's longest poll window.
    pub poll_max: Duration,
    /// Whether spinning (device and driver) offers the CPU to other tasks.
    pub poll_yields: bool,
    /// The host CPUs the disk's I/O thread may run on.
    pub iothread_cpus: Option<&'a CpuList>,
}

/// xorshift64: cheap and good enough to spread offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Where the next request goes.
struct Offsets {
    rng: Rng,
    random: bool,
    cursor: u64,
    blocks: u64,
    bs: u64,
}

impl Offsets {
    fn next_sector(&mut self) -> u64 {
        let block = if self.random {
            self.rng.next() % self.blocks
        } else {
            let b = self.cursor;
            self.cursor = (self.cursor + 1) % self.blocks;
            b
        };
        block * self.bs / 512
    }
}

/// Runs `wl` once and measures it.
pub fn run(cfg: &RunConfig<'_>, wl: &Workload, seed: u64) -> Result<Sample, BenchError> {
    let disk = Disk::open(&DiskConfig {
        path: cfg.path.to_path_buf(),
        cache: cfg.mode,
        read_only: false,
        engine: Some(cfg.engine),
    })
    .map_err(|e| BenchError::Device(e.to_string()))?;
    let opts = BlockOptions {
        poll_max: cfg.poll_max,
        poll_yields: cfg.poll_yields,
        iothread_cpus: cfg.iothread_cpus.cloned(),
        ..BlockOptions::default()
    };
    let device =
        BlockDevice::with_options(disk, opts).map_err(|e| BenchError::Device(e.to_string()))?;
    let mem = Driver::guest_memory(wl.qd, u64::from(wl.bs))?;
    let mut drv = Driver::new(device, mem, wl.qd, u64::from(wl.bs), cfg.wait)?;
    drv.halt_poll_yields = cfg.poll_yields;
    let kind = if wl.op == "read" {
        ReqKind::Read
    } else {
        ReqKind::Write
    };
    if kind == ReqKind::Write {
        for s in 0..wl.qd {
            drv.fill(s, 0x5a ^ s as u8)?;
        }
    }
    let mut offsets = Offsets {
        rng: Rng(seed | 1),
        random: wl.random,
        cursor: 0,
        blocks: (cfg.size / u64::from(wl.bs)).max(1),
        bs: u64::from(wl.bs),
    };
    // Rows a previous run left (none unless its counts differed).
    let _ = stage_timing::take();
    let io_thread = stats::thread_named("ferrite-blk");
    let dev_cpu0 = io_thread.as_deref().and_then(stats::cpu_time);
    let drv_cpu0 = stats::this_thread_cpu();

    let mut latencies: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut started = vec![Instant::now(); wl.qd];
    let mut done: Vec<Done> = Vec::with_capacity(wl.qd);
    let mut errors = 0u64;
    let start = Instant::now();
    let end = start + cfg.runtime;
    for (s, t) in started.iter_mut().enumerate() {
        drv.submit(s, kind, offsets.next_sector(), wl.bs)?;
        *t = Instant::now();
    }
    drv.kick()?;
    let mut in_flight = wl.qd;
    let mut last = start;
    while in_flight > 0 {
        done.clear();
        drv.wait(&mut done)?;
        let now = Instant::now();
        last = now;
        for d in &done {
            in_flight -= 1;
            latencies.push(now.duration_since(started[d.slot]).as_nanos() as u64);
            errors += u64::from(!d.ok);
            if now < end {
                drv.submit(d.slot, kind, offsets.next_sector(), wl.bs)?;
                started[d.slot] = now;
                in_flight += 1;
            }
        }
        drv.kick()?;
    }
    let elapsed = last.duration_since(start);
    let drv_cpu = stats::this_thread_cpu()
        .zip(drv_cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    let dev_cpu = io_thread
        .as_deref()
        .and_then(stats::cpu_time)
        .zip(dev_cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    let transport = drv.into_transport();
    let report = transport.block_handle().shutdown();
    drop(transport);
    if errors > 0 || report.disk.errors > 0 {
        return Err(BenchError::Device(format!(
            "{errors} requests failed ({} host errors)",
            report.disk.errors
        )));
    }
    let ops = latencies.len() as f64;
    let per_op = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6 / ops);
    Ok(Sample {
        iops: ops / elapsed.as_secs_f64().max(1e-9),
        p50_us: stats::percentile(&mut latencies, 50.0).map_or(f64::NAN, |n| n as f64 / 1000.0),
        p99_us: stats::percentile(&mut latencies, 99.0).map_or(f64::NAN, |n| n as f64 / 1000.0),
        driver_us: per_op(drv_cpu),
        device_us: per_op(dev_cpu),
        // Rows pair up only when requests complete one at a time.
        stages: match (stage_timing::take(), wl.qd) {
            (rows, 1) => stage_timing::stage_spans(&rows).map(|spans| {
                let ns: Vec<f64> = spans.iter().map(|&n| n as f64).collect();
                stats::median(&ns).map(|m| m as u64)
            }),
            _ => super::NO_STAGES,
        },
    })
}
