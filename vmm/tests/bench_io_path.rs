//! `ferrite bench --io-path`, tiny: every case prints one line in the
//! documented format with both sides measured and the ratio last. No timing
//! is asserted (figures depend on the host).

use std::path::Path;
use std::process::Command;

const KEYS: [&str; 16] = [
    "mode",
    "engine",
    "workload",
    "ferrite_iops",
    "ferrite_p50_us",
    "ferrite_p99_us",
    "fio_iops",
    "fio_p50_us",
    "fio_p99_us",
    "driver_cpu_us",
    "device_cpu_us",
    "added_p50_us",
    "added_p99_us",
    "p99_ratio",
    "ratio",
    "",
];

fn fio_installed() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn positive(line: &str, key: &str) -> f64 {
    let v: f64 = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing: {line}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} not a number ({e}): {line}"));
    assert!(v.is_finite() && v > 0.0, "{key}={v}: {line}");
    v
}

#[test]
fn tiny_io_path_run_prints_one_line_per_case_with_ratios() {
    if !fio_installed() {
        eprintln!("SKIP: fio is not installed");
        return;
    }
    // The target directory is on the source tree's file system, which the
    // block tests already need to do O_DIRECT.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "bench",
            "--io-path",
            "--size",
            "8M",
            "--runtime",
            "300ms",
            "--repeats",
            "1",
        ])
        .args(["--modes", "none,writeback", "--engines", "io_uring,threads"])
        .args(["--workloads", "randwrite-4k-qd1,randread-4k-qd32"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run ferrite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("accepts O_DIRECT") {
        eprintln!("SKIP: {}", stderr.trim());
        return;
    }
    assert!(
        out.status.success(),
        "status {}: {stderr}\n{stdout}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("mode=")).collect();
    assert_eq!(lines.len(), 2 * 2 * 2, "{stdout}");
    let mut seen = Vec::new();
    for line in &lines {
        let keys: Vec<&str> = line
            .split_whitespace()
            .map(|kv| kv.split('=').next().unwrap_or(""))
            .collect();
        assert_eq!(keys, KEYS[..15], "{line}");
        for key in [
            "ferrite_iops",
            "ferrite_p50_us",
            "ferrite_p99_us",
            "fio_iops",
            "fio_p50_us",
            "fio_p99_us",
        ] {
            positive(line, key);
        }
        let ratio = positive(line, "ratio");
        let want = positive(line, "ferrite_iops") / positive(line, "fio_iops");
        assert!((ratio - want).abs() <= 0.01 + want * 0.01, "{line}");
        assert!(
            line.rsplit(' ')
                .next()
                .is_some_and(|last| last.starts_with("ratio=")),
            "{line}"
        );
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        seen.push((field("mode"), field("engine"), field("workload")));
    }
    for mode in ["none", "writeback"] {
        for engine in ["io_uring", "threads"] {
            for wl in ["randwrite-4k-qd1", "randread-4k-qd32"] {
                assert!(
                    seen.contains(&(mode.into(), engine.into(), wl.into())),
                    "{mode} {engine} {wl}: {stdout}"
                );
            }
        }
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("# targets: ")
            && l.contains("/4, added_p99")
            && l.contains("/2; 1m-seq")
            && l.ends_with("in 0/0")),
        "no targets summary over the covered cases: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("# worst: 4k-qd1 added_p50_us=")),
        "no worst-case line: {stdout}"
    );
    // The scratch image is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(Path::new(dir.path()).exists());
}

#[test]
fn a_ram_device_run_measures_on_tmpfs_and_leaves_nothing_mounted() {
    if !fio_installed() {
        eprintln!("SKIP: fio is not installed");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["bench", "--io-path", "--device", "ram", "--size", "8M"])
        .args(["--runtime", "200ms", "--repeats", "1", "--modes", "none"])
        .args(["--engines", "threads", "--workloads", "randread-4k-qd1"])
        .output()
        .expect("run ferrite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("needs root") {
        eprintln!("SKIP: {}", stderr.trim());
        return;
    }
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let header = stdout
        .lines()
        .find(|l| l.starts_with("# io-path: "))
        .unwrap_or_default();
    assert!(header.contains("tmpfs"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("mode="))
        .unwrap_or("");
    positive(line, "fio_iops");
    positive(line, "ferrite_iops");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(!mounts.contains("ferrite-bench-ram-"), "{mounts}");
}

#[test]
fn bad_workload_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["bench", "--io-path", "--workloads", "nope"])
        .output()
        .expect("run ferrite");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown workload") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// The pids of `parent`'s children named `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            comm.ends_with(&format!("({name}"))
                && rest.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}

/// SIGTERM while fio runs: ferrite exits at once with 143, kills fio and
/// removes its scratch image (before, the stop signals were blocked for
/// every command and only a VM's event loop read them, so a bench ran on).
#[test]
fn sigterm_stops_a_bench_at_once_and_leaves_nothing_behind() {
    if !fio_installed() {
        eprintln!("SKIP: fio is not installed");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["bench", "--io-path", "--size", "8M", "--runtime", "4s"])
        .args([
            "--repeats",
            "1",
            "--modes",
            "writeback",
            "--engines",
            "threads",
        ])
        .args(["--workloads", "randwrite-4k-qd1"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ferrite");
    // Runs alternate, ferrite first: wait (up to 60 s) for fio's turn.
    let start = std::time::Instant::now();
    let fio = loop {
        let found = children_named(child.id(), "fio");
        if !found.is_empty() {
            break found;
        }
        assert!(start.elapsed().as_secs() < 60, "fio never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let signalled = std::time::Instant::now();
    let status = child.wait().unwrap();
    let waited = signalled.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(waited.as_secs() < 2, "took {waited:?} to stop");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    for pid in fio {
        // SIGKILL is sent before ferrite exits, but a big process takes a
        // moment to die: gone (or a zombie left to init) within 5 s.
        let gone = || {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            state.is_empty() || state.contains(") Z")
        };
        let since = std::time::Instant::now();
        while !gone() && since.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(gone(), "fio {pid} still runs 5 s after ferrite stopped");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    // No process of fio's (its job too, not only the one we spawned)
    // still names the scratch directory.
    let needle = dir.path().to_string_lossy().into_owned();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let alive: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(&needle) && !stat.contains(") Z")).then_some(cmd)
        })
        .collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
}
