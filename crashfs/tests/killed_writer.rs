//! The flow of the VMM power-cut test: another process writes to a file on
//! the mount, is SIGKILLed mid-write, then the test cuts the power. The
//! mount must keep serving and unmount cleanly.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{durable, mount_with};

const SIZE: usize = 4 << 20;

/// Aborts the whole test binary if `done` is not set in time: a hang here
/// means the mount deadlocked.
fn watchdog(done: Arc<AtomicBool>, limit: Duration) {
    thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("crashfs hung for {limit:?} after the writer was killed");
        std::process::abort();
    });
}

/// Kills `child` with SIGKILL once it has run a little, and reaps it.
fn kill_after(mut child: Child, run: Duration) {
    thread::sleep(run);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "writer finished before it was killed");
}

/// After the kill: a power cut leaves the file as it was (the writer never
/// synced), the mount then serves a write + fsync, and unmounting succeeds.
fn check_after_kill(m: common::Mounted, name: &str) {
    m.fs.power_cut();
    assert_eq!(durable(&m, name), vec![0u8; SIZE]);
    let path = m.fs.path(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&[7u8; 4096], 0).unwrap();
    file.sync_data().unwrap();
    m.fs.power_cut();
    let after = durable(&m, name);
    assert_eq!(&after[..4096], &[7u8; 4096][..]);
    assert!(after[4096..].iter().all(|&b| b == 0));
    drop(file);
    m.fs.unmount().expect("unmount after the writer was killed");
}

/// A buffered writer that runs until killed (4 GiB of writes, growing the
/// file past its size: the growth is volatile too).
fn dd(path: &Path) -> Child {
    Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", path.display()))
        .args(["bs=4096", "count=1000000", "conv=notrunc", "status=none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn buffered_writer_killed_mid_write() {
    let Some(m) = mount_with(&[("img", &vec![0u8; SIZE])]) else {
        return;
    };
    let done = Arc::new(AtomicBool::new(false));
    watchdog(done.clone(), Duration::from_secs(60));
    let child = dd(&m.fs.path("img"));
    kill_after(child, Duration::from_millis(300));
    assert!(m.fs.stats().writes > 0, "the writer never wrote");
    check_after_kill(m, "img");
    done.store(true, Ordering::SeqCst);
}

#[test]
fn io_uring_direct_writer_killed_mid_write() {
    if Command::new("fio").arg("--version").output().is_err() {
        eprintln!("SKIP: fio is not installed");
        return;
    }
    let Some(m) = mount_with(&[("img", &vec![0u8; SIZE])]) else {
        return;
    };
    let done = Arc::new(AtomicBool::new(false));
    watchdog(done.clone(), Duration::from_secs(60));
    let child = Command::new("fio")
        .args([
            // Jobs as threads, so that killing fio kills the writer.
            "--thread",
            "--name=w",
            "--ioengine=io_uring",
            "--direct=1",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--time_based",
            "--runtime=30",
        ])
        .arg(format!("--filename={}", m.fs.path("img").display()))
        .arg(format!("--size={SIZE}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until fio really writes, then kill it.
    let start = Instant::now();
    while m.fs.stats().direct_writes < 64 && start.elapsed() < Duration::from_secs(20) {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        m.fs.stats().direct_writes >= 64,
        "fio never wrote through O_DIRECT"
    );
    kill_after(child, Duration::from_millis(100));
    check_after_kill(m, "img");
    done.store(true, Ordering::SeqCst);
}
