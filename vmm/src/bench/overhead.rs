//! `ferrite bench --overhead`: what the VMM itself costs.
//!
//! - Resident memory beyond guest RAM: a child `ferrite` runs the probe
//!   guest (128 MiB, one disk, a never-ending write stream); once the guest
//!   writes, its `/proc/PID/smaps` is read, the guest RAM mapping (the
//!   anonymous mapping of exactly the guest's size) is set aside and the
//!   rest is summed (Rss and Pss), with the largest contributors named.
//! - Start to first KVM_RUN: the child is told (environment variable
//!   [`FIRST_RUN_ENV`]) to write the CLOCK_MONOTONIC time at which vCPU 0
//!   enters KVM_RUN for the first time; this process reads the same clock
//!   right before spawning it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::io_path::BenchError;
use super::stats::median;

/// When set to a path, vCPU 0 writes there the CLOCK_MONOTONIC nanoseconds
/// at which it is about to enter KVM_RUN for the first time.
pub const FIRST_RUN_ENV: &str = "FERRITE_FIRST_KVM_RUN_FILE";

/// Guest RAM of the measured guest.
const GUEST_MIB: u64 = 128;

/// CLOCK_MONOTONIC now, in nanoseconds (the same clock in every process).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Called by vCPU 0 right before its first KVM_RUN: records the time if
/// [`FIRST_RUN_ENV`] asks for it (a diagnostic; failures are ignored).
pub fn note_first_kvm_run() {
    if let Some(path) = std::env::var_os(FIRST_RUN_ENV) {
        let _ = std::fs::write(path, monotonic_ns().to_string());
    }
}

/// One mapping's share, from smaps.
#[derive(Clone, Debug, Default, PartialEq)]
struct Mapping {
    name: String,
    size_kib: u64,
    rss_kib: u64,
    pss_kib: u64,
    anonymous: bool,
}

/// Parses `/proc/PID/smaps`.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            let rest: Vec<&str> = words.collect();
            // addr perms offset dev inode [path]
            let name = rest.get(4..).map(|p| p.join(" ")).unwrap_or_default();
            out.push(Mapping {
                anonymous: name.is_empty(),
                name: if name.is_empty() {
                    "[anon]".into()
                } else {
                    name
                },
                ..Mapping::default()
            });
            continue;
        }
        let Some(m) = out.last_mut() else { continue };
        let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Size:" => m.size_kib = kib,
            "Rss:" => m.rss_kib = kib,
            "Pss:" => m.pss_kib = kib,
            _ => {}
        }
    }
    out
}

/// Memory beyond guest RAM.
#[derive(Clone, Debug, PartialEq)]
struct Beyond {
    rss_kib: u64,
    pss_kib: u64,
    guest_rss_kib: u64,
    /// Rss by mapping name, largest first.
    top: Vec<(String, u64)>,
}

fn beyond_guest(maps: &[Mapping], guest_kib: u64) -> Option<Beyond> {
    let guest = maps
        .iter()
        .position(|m| m.anonymous && m.size_kib == guest_kib)?;
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    let (mut rss, mut pss) = (0, 0);
    for (i, m) in maps.iter().enumerate() {
        if i == guest {
            continue;
        }
        rss += m.rss_kib;
        pss += m.pss_kib;
        *by_name.entry(m.name.clone()).or_default() += m.rss_kib;
    }
    let mut top: Vec<(String, u64)> = by_name.into_iter().filter(|(_, k)| *k > 0).collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    top.truncate(6);
    Some(Beyond {
        rss_kib: rss,
        pss_kib: pss,
        guest_rss_kib: maps[guest].rss_kib,
        top,
    })
}

/// What a run measured.
#[derive(Clone, Debug)]
struct Run {
    start_to_first_run: Duration,
    beyond: Option<Beyond>,
}

fn run_once(exe: &Path, scratch: &Path, measure_memory: bool, i: usize) -> Result<Run, BenchError> {
    let kernel = scratch.join("probe.elf");
    let image = scratch.join("disk.img");
    let stamp = scratch.join(format!("first-run-{i}"));
    let err = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| BenchError::Device(format!("{what}: {e}"))
    };
    // Forever (count=0) when memory is measured; else a few writes.
    let count = if measure_memory { 0 } else { 4 };
    let t0 = monotonic_ns();
    let mut child = Command::new(exe)
        .env(FIRST_RUN_ENV, &stamp)
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", &format!("{GUEST_MIB}M")])
        .args([
            "--cmdline",
            &format!("probe=stream stream.count={count} stream.depth=4"),
        ])
        .arg("--drive")
        .arg(format!(
            "file={},cache=writeback",
            image.display().to_string().replace(',', ",,")
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(err("start ferrite"))?;
    let _guard = super::stop::ChildGuard::new(child.id());
    let mut beyond = None;
    if let Some(out) = child.stdout.take() {
        let mut acks = 0;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("PROBE ack ") {
                acks += 1;
            }
            // Steady state: the guest runs and the disk has done I/O.
            if measure_memory && acks == 20 {
                let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id()))
                    .map_err(err("read smaps"))?;
                beyond = beyond_guest(&parse_smaps(&smaps), GUEST_MIB << 10);
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    let at: u64 = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| BenchError::Device("ferrite never reached KVM_RUN".into()))?;
    if measure_memory && beyond.is_none() {
        return Err(BenchError::Device(
            "no guest RAM mapping found in smaps".into(),
        ));
    }
    Ok(Run {
        start_to_first_run: Duration::from_nanos(at.saturating_sub(t0)),
        beyond,
    })
}

/// Measures and prints; `repeats` start-time runs.
pub fn run(scratch: &Path, repeats: usize, out: &mut dyn Write) -> Result<(), BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Device(format!("cannot find ferrite's own binary: {e}")))?;
    let kernel = scratch.join("probe.elf");
    let image = scratch.join("disk.img");
    let img = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Image { path, source }
    };
    std::fs::write(&kernel, probe::PROBE_ELF).map_err(img(&kernel))?;
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .map_err(img(&image))?;
    let mem = run_once(&exe, scratch, true, 0)?;
    let mut starts = Vec::new();
    for i in 1..=repeats.max(1) {
        starts.push(
            run_once(&exe, scratch, false, i)?
                .start_to_first_run
                .as_secs_f64()
                * 1e3,
        );
    }
    let io = |e: std::io::Error| BenchError::Image {
        path: "stdout".into(),
        source: e,
    };
    if let Some(b) = &mem.beyond {
        writeln!(
            out,
            "memory: guest={GUEST_MIB}MiB (resident {:.1} MiB) rss_beyond_guest={:.2}MiB pss_beyond_guest={:.2}MiB target=4MiB",
            b.guest_rss_kib as f64 / 1024.0,
            b.rss_kib as f64 / 1024.0,
            b.pss_kib as f64 / 1024.0
        )
        .map_err(io)?;
        let top: Vec<String> = b.top.iter().map(|(n, k)| format!("{n}={k}KiB")).collect();
        writeln!(
            out,
            "memory: largest beyond guest RAM (Rss): {}",
            top.join(" ")
        )
        .map_err(io)?;
    }
    let mut sorted = starts.clone();
    sorted.sort_by(f64::total_cmp);
    writeln!(
        out,
        "start: spawn_to_first_kvm_run_ms median={:.2} min={:.2} max={:.2} runs={} target=10ms",
        median(&starts).unwrap_or(f64::NAN),
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
        starts.len()
    )
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fe:01 123 /usr/bin/ferrite
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                2048 kB
Pss:                2048 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                 100 kB
Pss:                 100 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
Pss:                  12 kB
";

    #[test]
    fn guest_ram_is_set_aside() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 4);
        let b = beyond_guest(&maps, 128 << 10).unwrap();
        assert_eq!((b.rss_kib, b.pss_kib, b.guest_rss_kib), (912, 512, 2048));
        assert_eq!(b.top[0], ("/usr/bin/ferrite".to_string(), 800));
        assert_eq!(b.top[1], ("[anon]".to_string(), 100));
        assert!(beyond_guest(&maps, 64 << 10).is_none());
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() >= a + 1_000_000);
    }
}
