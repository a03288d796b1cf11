//! `ferrite bench` (no `--io-path`): the cache modes as a guest sees them.
//!
//! For each mode, a child `ferrite` boots the built-in probe guest on a
//! scratch image with `probe=stream`; this process timestamps each `PROBE
//! ack` line as it arrives on the child's console and reads the child's
//! `--stats-json`. Guest-side rates are acks over the wall time between the
//! first and the last ack; on an emulating KVM they measure the emulator.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use block::CacheMode;
use serde::Serialize;

use super::io_path::BenchError;

/// Bytes per probe stream write.
const WRITE_BYTES: f64 = 4096.0;

/// What the guest comparison runs.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// The scratch image: created (it must not exist), then removed.
    pub image: PathBuf,
    /// Its size when created.
    pub size: u64,
    /// Writes per mode.
    pub count: u32,
    /// Writes in flight.
    pub depth: u32,
    /// Cache modes.
    pub modes: Vec<CacheMode>,
}

/// One mode's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// Cache mode.
    pub mode: CacheMode,
    /// The guest-visible write cache (the `writeback` byte the probe read).
    pub wce: bool,
    /// Acks the guest printed.
    pub acks: u64,
    /// Writes per second as the guest saw them.
    pub iops: f64,
    /// MB/s (10^6 bytes) as the guest saw them.
    pub mb_per_s: f64,
    /// Host syncs (fdatasync + O_DSYNC/RWF_DSYNC writes) per guest write,
    /// ferrite's exit flush included.
    pub host_syncs_per_write: f64,
    /// Whether a write the guest saw complete is durable on the host.
    pub durable_at_completion: bool,
    /// The probe's verdict.
    pub verdict: String,
}

/// The whole result, as `--json` writes it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Why KVM is emulated here, if it is.
    pub kvm_emulated: Option<String>,
    /// The probe's command line.
    pub probe: String,
    /// The image.
    pub image: PathBuf,
    /// One row per mode.
    pub rows: Vec<Row>,
}

/// DESIGN.md "Cache modes": completion means durable when the guest has no
/// write cache, except in `unsafe`, which promises nothing.
pub fn durable(mode: CacheMode, wce: bool) -> bool {
    !wce && mode != CacheMode::Unsafe
}

/// What a run's console said.
#[derive(Debug, Default, PartialEq)]
struct Console {
    first_ack: Option<Instant>,
    last_ack: Option<Instant>,
    acks: u64,
    wce: Option<bool>,
    verdict: Option<String>,
}

impl Console {
    fn feed(&mut self, line: &str, at: Instant) {
        let line = line.trim_end();
        if line.starts_with("PROBE ack ") {
            self.acks += 1;
            self.first_ack.get_or_insert(at);
            self.last_ack = Some(at);
        } else if let Some(rest) = line.strip_prefix("PROBE info disk=0 ") {
            let wb = rest
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("writeback="));
            self.wce = wb.map(|v| v == "1");
        } else if let Some(rest) = line.strip_prefix("PROBE verdict=") {
            self.verdict = Some(rest.split_whitespace().next().unwrap_or("").to_string());
        }
    }

    fn iops(&self) -> f64 {
        match (self.first_ack, self.last_ack) {
            (Some(a), Some(b)) if self.acks > 1 && b > a => {
                (self.acks - 1) as f64 / b.duration_since(a).as_secs_f64()
            }
            _ => f64::NAN,
        }
    }
}

/// The probe's command line for `cfg`.
pub fn probe_cmdline(cfg: &GuestConfig) -> String {
    format!(
        "probe=stream stream.count={} stream.depth={}",
        cfg.count, cfg.depth
    )
}

/// Boots the probe once per mode and collects the rows.
pub fn run(cfg: &GuestConfig, scratch: &Path) -> Result<Report, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Device(format!("cannot find ferrite's own binary: {e}")))?;
    let kernel = scratch.join("probe.elf");
    let img_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Image { path, source }
    };
    // The guest overwrites the image from sector 0: never take a file
    // that might hold someone's data.
    if cfg.image.exists() {
        return Err(BenchError::Usage(format!(
            "{} exists; give a path to create (the scratch image is written over, then removed)",
            cfg.image.display()
        )));
    }
    std::fs::write(&kernel, probe::PROBE_ELF).map_err(img_err(&kernel))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&cfg.image)
        .and_then(|f| f.set_len(cfg.size))
        .map_err(img_err(&cfg.image))?;
    let _image = super::stop::PathGuard::new(&cfg.image);
    let result = cfg
        .modes
        .iter()
        .map(|&mode| run_mode(&exe, &kernel, scratch, cfg, mode))
        .collect::<Result<Vec<_>, _>>();
    let _ = std::fs::remove_file(&cfg.image);
    Ok(Report {
        kvm_emulated: super::host::kvm_emulated(),
        probe: probe_cmdline(cfg),
        image: cfg.image.clone(),
        rows: result?,
    })
}

fn run_mode(
    exe: &Path,
    kernel: &Path,
    scratch: &Path,
    cfg: &GuestConfig,
    mode: CacheMode,
) -> Result<Row, BenchError> {
    let stats = scratch.join(format!("stats-{mode}.json"));
    let mut child = Command::new(exe)
        .arg("--kernel")
        .arg(kernel)
        .args(["--memory", "32M", "--cmdline", &probe_cmdline(cfg)])
        .arg("--drive")
        .arg(format!(
            "file={},cache={mode}",
            cfg.image.display().to_string().replace(',', ",,")
        ))
        .arg("--stats-json")
        .arg(&stats)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Device(format!("cannot start ferrite: {e}")))?;
    let _guard = super::stop::ChildGuard::new(child.id());
    let mut console = Console::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            console.feed(&String::from_utf8_lossy(&line), Instant::now());
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| BenchError::Device(format!("ferrite: {e}")))?;
    let doc: serde_json::Value = std::fs::read_to_string(&stats)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| {
            let err = String::from_utf8_lossy(&output.stderr);
            BenchError::Device(format!(
                "the probe run in {mode} left no statistics ({}): {}",
                output.status,
                err.lines().next().unwrap_or("")
            ))
        })?;
    let disk = &doc["disks"][0]["disk"];
    let writes = disk["writes"].as_u64().unwrap_or(0);
    let syncs = disk["host_syncs"].as_u64().unwrap_or(0);
    let wce = console
        .wce
        .or_else(|| doc["disks"][0]["write_cache"].as_bool())
        .unwrap_or(mode.default_write_cache());
    let iops = console.iops();
    Ok(Row {
        mode,
        wce,
        acks: console.acks,
        iops,
        mb_per_s: iops * WRITE_BYTES / 1e6,
        host_syncs_per_write: if writes > 0 {
            syncs as f64 / writes as f64
        } else {
            f64::NAN
        },
        durable_at_completion: durable(mode, wce),
        verdict: console.verdict.unwrap_or_else(|| "none".into()),
    })
}

/// The table, as printed.
pub fn render(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(why) = &report.kvm_emulated {
        writeln!(out, "# KVM here is emulated ({why}): guest-side figures measure the emulator, not ferrite or the storage")?;
    }
    writeln!(
        out,
        "# probe guest: {} on {}",
        report.probe,
        report.image.display()
    )?;
    writeln!(
        out,
        "{:<12} {:>3} {:>6} {:>9} {:>8} {:>16} {:>9} {:>7}",
        "mode", "WCE", "acks", "IOPS", "MB/s", "syncs/write", "durable", "verdict"
    )?;
    for r in &report.rows {
        writeln!(
            out,
            "{:<12} {:>3} {:>6} {:>9.0} {:>8.2} {:>16.3} {:>9} {:>7}",
            r.mode.name(),
            u8::from(r.wce),
            r.acks,
            r.iops,
            r.mb_per_s,
            r.host_syncs_per_write,
            if r.durable_at_completion { "yes" } else { "no" },
            r.verdict
        )?;
    }
    writeln!(out, "IOPS, MB/s: acks over the wall time between the guest's first and last ack; syncs/write: host fdatasync calls + O_DSYNC/RWF_DSYNC writes per guest write (ferrite's exit flush included); durable: a write the guest saw complete survives a host crash (WCE 0 and not unsafe).")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durability_per_mode_and_wce() {
        for m in CacheMode::ALL {
            let want = matches!(m, CacheMode::Writethrough | CacheMode::DirectSync);
            assert_eq!(durable(m, m.default_write_cache()), want, "{m}");
        }
        assert!(durable(CacheMode::Writeback, false));
        assert!(!durable(CacheMode::Unsafe, false));
        assert!(!durable(CacheMode::DirectSync, true));
    }

    #[test]
    fn console_counts_acks_between_first_and_last() {
        let t0 = Instant::now();
        let mut c = Console::default();
        c.feed("PROBE info disk=0 features=0x1 capacity=8 blk_size=512 writeback=0 negotiated=0x1 queue_size=8", t0);
        for i in 0..11u64 {
            c.feed(
                &format!("PROBE ack seq={i}\r"),
                t0 + Duration::from_millis(100 * i),
            );
        }
        c.feed("PROBE verdict=pass reason=ok", t0);
        assert_eq!(c.acks, 11);
        assert_eq!(c.wce, Some(false));
        assert_eq!(c.verdict.as_deref(), Some("pass"));
        assert!((c.iops() - 10.0).abs() < 1e-9);
        assert!(Console::default().iops().is_nan());
    }
}
