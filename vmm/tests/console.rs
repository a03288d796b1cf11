//! The console on a terminal: raw mode while the guest runs, Ctrl-A X
//! quits, and the terminal is restored afterwards. A pseudo-terminal
//! stands in for the user's.

mod common;
#[path = "common/pty.rs"]
mod pty;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use pty::{open_pty, termios};

#[test]
fn ctrl_a_x_quits_and_the_terminal_is_restored() {
    if !kvm_available() {
        return;
    }
    let Some((master, slave)) = open_pty() else {
        return;
    };
    let slave_fd = std::os::fd::AsRawFd::as_raw_fd(&slave);
    let before = termios(slave_fd);
    assert_ne!(before.c_lflag & libc::ICANON, 0, "pty starts cooked");

    let dir = tempfile::tempdir().unwrap();
    let mut code = Asm::new();
    code.com1().puts("ready\n").halt();
    let image = elf64(code.bytes);
    let kernel = write_file(dir.path(), "vmlinux", &image);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["--kernel", kernel.to_str().unwrap(), "--memory", "32M"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_ready(&mut child);
    let during = termios(slave_fd);
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw mode"
    );

    let mut master = master;
    master.write_all(b"\x01x").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = termios(slave_fd);
    assert_eq!(after.c_lflag, before.c_lflag);
    assert_eq!(after.c_iflag, before.c_iflag);
    assert_eq!(after.c_oflag, before.c_oflag);
}

#[test]
fn closed_stdin_and_stdout_do_not_matter() {
    use std::os::unix::process::CommandExt;
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = write_file(dir.path(), "disk.img", &vec![0u8; 1 << 20]);
    let mut code = Asm::new();
    code.com1()
        .puts("nobody reads this\n")
        .debug_exit(0x09)
        .halt();
    let image = elf64(code.bytes);
    let kernel = write_file(dir.path(), "vmlinux", &image);
    let drive = format!("file={}", img.display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.args([
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "32M",
        "--drive",
        &drive,
    ])
    .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe close() between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(0);
            libc::close(1);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0x13),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The console output must not have gone into the image.
    assert!(std::fs::read(&img).unwrap().iter().all(|b| *b == 0));
}
