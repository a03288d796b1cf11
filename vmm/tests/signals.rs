//! SIGTERM and SIGINT stop a running guest cleanly: exit 0 (as QEMU), one
//! line on stderr, disks shut down and `--stats-json` written.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn stop_with(signal: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "disk.img", &vec![0u8; 1 << 20]);
    let stats = dir.path().join("stats.json");
    let mut code = Asm::new();
    // Prints, then halts with interrupts off: it never stops by itself.
    code.com1().puts("ready\n").halt();
    let image = elf64(code.bytes);
    let kernel = write_file(dir.path(), "vmlinux", &image);
    let drive = format!("file={}", img.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "32M",
            "--drive",
            &drive,
            "--stats-json",
            stats.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_ready(&mut child);
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("ferrite: terminating on signal {signal}")
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(v["disks"].as_array().map(Vec::len), Some(1), "{v}");
}

#[test]
fn sigterm_stops_the_guest_cleanly() {
    if kvm_available() {
        stop_with(libc::SIGTERM);
    }
}

#[test]
fn sigint_stops_the_guest_cleanly() {
    if kvm_available() {
        stop_with(libc::SIGINT);
    }
}
