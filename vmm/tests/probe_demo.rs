//! `ferrite demo` end to end: the default run (five scratch disks, one per
//! cache mode), a user drive with a chosen scenario, and a failing probe.

#[path = "common/probe.rs"]
mod probe_util;

use std::time::Duration;

use block::CacheMode;
use probe_util::*;

/// The table row of `mode` in the demo's output.
fn row(out: &str, mode: CacheMode) -> &str {
    out.lines()
        .find(|l| l.split_whitespace().take(2).any(|w| w == mode.name()))
        .unwrap_or_else(|| panic!("no row for {mode} in\n{out}"))
}

#[test]
fn default_demo_shows_every_cache_mode_and_passes() {
    if !kvm_usable() {
        return;
    }
    let run = run_demo(&[]);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert!(
        run.elapsed < Duration::from_secs(30),
        "demo took {:?}",
        run.elapsed
    );
    assert!(
        run.stdout.contains("probe verdict pass"),
        "{}",
        run.describe()
    );
    for mode in MODES {
        let r = row(&run.stdout, mode);
        let cols: Vec<&str> = r.split_whitespace().collect();
        // mode, open flags, FLUSH, WCE, ...
        assert_eq!(cols[1], mode.open_flags_description(false), "{r}");
        assert_eq!(cols[2], "yes", "FLUSH offered in every mode: {r}");
        let wce = if mode.default_write_cache() { "1" } else { "0" };
        assert_eq!(cols[3], wce, "{r}");
        assert_eq!(cols[4], "ok", "WCE toggled both ways: {r}");
        assert!(r.ends_with("pass"), "{r}");
    }
    // Host syncs: unsafe never syncs.
    assert!(row(&run.stdout, CacheMode::Unsafe).contains(" 0 (0 fdatasync, 0 dsync)"));
    // The scratch directory is gone.
    let dir_line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("scratch images in "))
        .expect("scratch dir named");
    assert!(
        !std::path::Path::new(dir_line).exists(),
        "{dir_line} left behind"
    );
}

#[test]
fn demo_runs_the_given_scenario_on_the_given_drive() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = image(dir.path(), "disk.img", IMAGE_SIZE);
    let d = drive(&img, "cache=directsync");
    let run = run_demo(&[
        "--drive",
        &d,
        "--probe",
        "stream stream.count=12 stream.depth=4",
        "--verbose",
    ]);
    assert_eq!(run.status, Some(0), "{}", run.describe());
    // --verbose shows the guest's serial output.
    assert!(
        run.stdout.contains("PROBE ack seq=11"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("12 writes acknowledged"),
        "{}",
        run.describe()
    );
    let r = row(&run.stdout, CacheMode::DirectSync);
    assert!(r.contains("durable at completion"), "{r}");
    let data = std::fs::read(&img).unwrap();
    for seq in 0..12u64 {
        let b = &data[seq as usize * 4096..][..4096];
        assert_eq!(stream_seq(b), Some(seq));
    }
    assert!(data[12 * 4096..].iter().all(|&b| b == 0));
}

#[test]
fn demo_exit_status_follows_a_failing_probe() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = image(dir.path(), "disk.img", IMAGE_SIZE);
    let d = drive(&img, "cache=none");
    // `readonly` expects a read-only drive; this one is writable.
    let run = run_demo(&["--drive", &d, "--probe", "readonly"]);
    assert_eq!(run.status, Some(1), "{}", run.describe());
    let err: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(err.len(), 1, "{}", run.describe());
    assert!(
        err[0].starts_with("ferrite demo: probe verdict fail"),
        "{}",
        run.describe()
    );
    // A missing image: ferrite's own error, still one line.
    let run = run_demo(&["--drive", "file=/nonexistent/x.img"]);
    assert_eq!(run.status, Some(1), "{}", run.describe());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.describe());
    assert!(
        run.stderr.contains("/nonexistent/x.img"),
        "{}",
        run.describe()
    );
    // Bad --probe: a usage error.
    let run = run_demo(&["--probe", "nosuch"]);
    assert_eq!(run.status, Some(2), "{}", run.describe());
}

#[test]
fn endless_stream_stops_cleanly_on_ctrl_c() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = image(dir.path(), "disk.img", IMAGE_SIZE);
    let d = drive(&img, "cache=writethrough");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "demo",
            "--drive",
            &d,
            "--probe",
            "stream stream.count=0 stream.depth=4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // The demo says the stream is endless, and then it runs until stopped.
    while !seen.contains("writing until interrupted") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "EOF: {seen}");
        seen.push_str(&line);
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    out.read_to_string(&mut seen).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{seen}\n{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("ferrite demo: stopped before the probe's verdict, after "),
        "{err}"
    );
    assert!(
        row(&seen, CacheMode::Writethrough).ends_with("stopped"),
        "{seen}"
    );
    // Every write acknowledged so far is in the image.
    let acks: u64 = last
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("ack count");
    assert!(acks > 0, "{err}");
    let data = std::fs::read(&img).unwrap();
    for seq in 0..acks.min(IMAGE_SIZE / 4096) {
        assert!(stream_seq(&data[seq as usize * 4096..][..4096]).is_some());
    }
}
