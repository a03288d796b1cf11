//! `fio` with the flags that match a cache mode and workload, on the same
//! file, and what its JSON says.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use block::CacheMode;

use super::{BenchError, Sample, Workload, NO_STAGES};

/// fio's command line for one case.
pub fn args(
    path: &Path,
    size: u64,
    runtime: Duration,
    mode: CacheMode,
    wl: &Workload,
) -> Vec<String> {
    let s = mode.switches();
    // Writes must be durable at completion where the guest sees no write
    // cache: O_DSYNC, as ferrite's data descriptor has in these modes.
    let dsync = !s.writeback && mode != CacheMode::Unsafe;
    let mut a = vec![
        "--name=ferrite-bench".to_string(),
        format!("--filename={}", path.display()),
        format!("--size={size}"),
        format!("--runtime={}ms", runtime.as_millis().max(1)),
        "--time_based".into(),
        format!(
            "--rw={}",
            if wl.random {
                format!("rand{}", wl.op)
            } else {
                wl.op.to_string()
            }
        ),
        format!("--bs={}", wl.bs),
        format!("--direct={}", u8::from(s.direct)),
        format!("--sync={}", if dsync { "dsync" } else { "none" }),
        // The same page cache state as ferrite's run: no invalidation.
        "--invalidate=0".into(),
        "--randrepeat=0".into(),
        "--norandommap".into(),
        "--lat_percentiles=1".into(),
        "--output-format=json".into(),
        // The job runs as a thread of the fio process we spawn, not as a
        // forked process in a session of its own, which a stop's kill of
        // that process can leave running (seen once: an io_uring QD32 job
        // on the ram device, orphaned and still there half an hour later).
        "--thread".into(),
    ];
    if wl.qd > 1 {
        a.push("--ioengine=io_uring".into());
        a.push(format!("--iodepth={}", wl.qd));
    } else {
        a.push("--ioengine=psync".into());
    }
    a
}

/// Whether fio is installed.
pub fn available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs fio and reads its IOPS and latency percentiles.
pub fn run(
    path: &Path,
    size: u64,
    runtime: Duration,
    mode: CacheMode,
    wl: &Workload,
) -> Result<Sample, BenchError> {
    let child = Command::new("fio")
        .args(args(path, size, runtime, mode, wl))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Fio(format!("cannot run fio: {e}")))?;
    // Ctrl-C kills fio too (see `bench::stop`).
    let _guard = crate::bench::stop::ChildGuard::new(child.id());
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::Fio(format!("cannot run fio: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(BenchError::Fio(format!(
            "fio failed ({}): {}",
            out.status,
            err.lines().next().unwrap_or("")
        )));
    }
    parse(&String::from_utf8_lossy(&out.stdout), wl.op)
}

/// IOPS and latency percentiles of job 0's `op` ("read" or "write") side.
pub fn parse(json: &str, op: &str) -> Result<Sample, BenchError> {
    // fio may print notes before the JSON object.
    let start = json
        .find('{')
        .ok_or_else(|| BenchError::Fio("no JSON in fio's output".into()))?;
    let v: serde_json::Value = serde_json::from_str(&json[start..])
        .map_err(|e| BenchError::Fio(format!("fio's JSON: {e}")))?;
    let side = &v["jobs"][0][op];
    let iops = side["iops"]
        .as_f64()
        .ok_or_else(|| BenchError::Fio(format!("fio's JSON has no jobs[0].{op}.iops")))?;
    if side["total_ios"].as_u64() == Some(0) {
        return Err(BenchError::Fio("fio completed no I/O".into()));
    }
    let pct = |p: &str| -> Option<f64> {
        ["lat_ns", "clat_ns"]
            .iter()
            .find_map(|k| side[k]["percentile"][p].as_f64())
            .map(|ns| ns / 1000.0)
    };
    Ok(Sample {
        iops,
        p50_us: pct("50.000000").unwrap_or(f64::NAN),
        p99_us: pct("99.000000").unwrap_or(f64::NAN),
        driver_us: f64::NAN,
        device_us: f64::NAN,
        stages: NO_STAGES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(op: &'static str, qd: usize) -> Workload {
        Workload {
            name: "t",
            op,
            random: true,
            bs: 4096,
            qd,
        }
    }

    #[test]
    fn flags_follow_the_cache_mode() {
        let p = Path::new("/x");
        let d = Duration::from_secs(1);
        let get = |m, w: &Workload| args(p, 1 << 20, d, m, w).join(" ");
        let a = get(CacheMode::DirectSync, &wl("write", 1));
        assert!(
            a.contains("--direct=1")
                && a.contains("--sync=dsync")
                && a.contains("--ioengine=psync")
                && a.contains("--thread"),
            "{a}"
        );
        let a = get(CacheMode::None, &wl("write", 32));
        assert!(a.contains("--direct=1") && a.contains("--sync=none"), "{a}");
        assert!(
            a.contains("--ioengine=io_uring") && a.contains("--iodepth=32"),
            "{a}"
        );
        let a = get(CacheMode::Writethrough, &wl("read", 1));
        assert!(
            a.contains("--direct=0") && a.contains("--sync=dsync") && a.contains("--rw=randread"),
            "{a}"
        );
        for m in [CacheMode::Writeback, CacheMode::Unsafe] {
            let a = get(m, &wl("write", 1));
            assert!(a.contains("--direct=0") && a.contains("--sync=none"), "{a}");
        }
    }

    #[test]
    fn parses_fio_json() {
        let json = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{"jobs":[{"write":{"iops":1234.5,"total_ios":99,
  "lat_ns":{"percentile":{"50.000000":70000,"99.000000":250000}}},
  "read":{"iops":0,"total_ios":0}}]}"#;
        let s = parse(json, "write").unwrap();
        assert_eq!(s.iops, 1234.5);
        assert_eq!(s.p50_us, 70.0);
        assert_eq!(s.p99_us, 250.0);
        assert!(parse(json, "read").is_err());
        assert!(parse("garbage", "write").is_err());
    }
}
