//! seccomp through the `ferrite` binary: every thread runs under its
//! filter by default (the probe's scenarios pass with both engines), a
//! forbidden system call on any thread ends ferrite with status 1 and one
//! line naming the thread and the call, and `--no-seccomp` turns the
//! filters off.
//!
//! The forbidden call comes from a hidden test switch
//! (`FERRITE_SECCOMP_SELFTEST=vcpu|io|main`, not in `--help`): that thread
//! calls `getppid` (110 on x86-64) right after installing its filter.

#[path = "common/probe.rs"]
mod probe_util;
#[path = "common/pty.rs"]
mod pty;

use std::process::{Command, Stdio};

use probe_util::*;
use pty::{open_pty, termios};

const SELFTEST_ENV: &str = "FERRITE_SECCOMP_SELFTEST";
/// `getppid` on x86-64: on no thread's allowlist.
const GETPPID: u32 = 110;

/// Boots the probe (`probe=info` on one disk) with the self-test switch
/// set to `thread` and the given extra arguments.
fn boot_with_selftest(thread: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let kernel = probe_kernel(dir.path());
    let img = image(dir.path(), "a.img", IMAGE_SIZE);
    let args = probe_args(&kernel, "probe=info,rw", &[drive(&img, "")], extra);
    let start = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(&args)
        .env(SELFTEST_ENV, thread)
        .stdin(Stdio::null())
        .output()
        .expect("run ferrite");
    Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

#[test]
fn a_forbidden_call_on_any_thread_ends_ferrite_with_one_clear_line() {
    if !kvm_usable() {
        return;
    }
    for (switch, name) in [("vcpu", "vcpu0"), ("io", "ferrite-blk"), ("main", "main")] {
        let run = boot_with_selftest(switch, &[]);
        assert_eq!(run.status, Some(1), "{switch}: {}", run.describe());
        let lines: Vec<&str> = run.stderr.lines().collect();
        let expected = format!("ferrite: thread {name} made forbidden system call {GETPPID} ");
        assert_eq!(lines.len(), 1, "{switch}: {}", run.describe());
        assert!(
            lines[0].starts_with(&expected) && lines[0].contains("--no-seccomp"),
            "{switch}: {}",
            run.describe()
        );
        // The vCPU and disk threads filter themselves before the guest
        // runs, so the probe never got to its verdict.
        if switch != "main" {
            assert_eq!(run.verdict(), None, "{switch}: {}", run.describe());
        }
    }
}

#[test]
fn no_seccomp_turns_the_filters_off() {
    if !kvm_usable() {
        return;
    }
    for switch in ["vcpu", "io", "main"] {
        let run = boot_with_selftest(switch, &["--no-seccomp"]);
        run.assert_pass();
        assert!(!run.stderr.contains("forbidden"), "{}", run.describe());
    }
}

#[test]
fn every_scenario_passes_under_the_filters_with_both_engines() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = probe_kernel(dir.path());
    let mut engines = vec!["threads"];
    if block::io_uring_supported() {
        engines.push("io_uring");
    }
    let scenarios = "info,rw,flush,wce,getid,discard,zeroes,badchain,stream";
    for aio in engines {
        for mode in MODES {
            let img = image(dir.path(), &format!("{mode}-{aio}.img"), IMAGE_SIZE);
            let ro = image(dir.path(), &format!("ro-{mode}-{aio}.img"), IMAGE_SIZE);
            let stats_path = dir.path().join(format!("{mode}-{aio}.json"));
            let run = run_probe(
                &kernel,
                &format!(
                    "probe={scenarios} probe.disk=0 stream.count=16 stream.depth=4 \
                     stream.flush_every=4"
                ),
                &[
                    drive(&img, &format!("cache={mode},aio={aio}")),
                    drive(&ro, &format!("readonly=on,aio={aio}")),
                ],
                &["--stats-json", stats_path.to_str().unwrap()],
            );
            run.assert_pass();
            assert!(run.stderr.is_empty(), "{mode} {aio}: {}", run.describe());
            let stats = stats(&stats_path);
            assert_eq!(stats["exit_status"], 1, "{mode} {aio}: {stats}");
        }
    }
}

#[test]
fn the_test_switch_is_not_in_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--no-seccomp"), "{help}");
    assert!(!help.contains(SELFTEST_ENV), "{help}");
}

/// The console is in raw mode when the trap comes: the handler puts the
/// terminal back before it exits.
#[test]
fn the_terminal_is_restored_after_a_forbidden_call() {
    use std::os::fd::AsRawFd;
    if !kvm_usable() {
        return;
    }
    let Some((_master, slave)) = open_pty() else {
        return;
    };
    let before = termios(slave.as_raw_fd());
    assert_ne!(before.c_lflag & libc::ICANON, 0, "pty starts cooked");
    let dir = tempfile::tempdir().unwrap();
    let kernel = probe_kernel(dir.path());
    let img = image(dir.path(), "a.img", IMAGE_SIZE);
    for thread in ["vcpu", "main"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(probe_args(&kernel, "probe=info", &[drive(&img, "")], &[]))
            .env(SELFTEST_ENV, thread)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{thread}: {stderr}");
        assert!(stderr.contains("made forbidden system call"), "{stderr}");
        let after = termios(slave.as_raw_fd());
        assert_eq!(after.c_lflag, before.c_lflag, "{thread}");
        assert_eq!(after.c_iflag, before.c_iflag, "{thread}");
        assert_eq!(after.c_oflag, before.c_oflag, "{thread}");
    }
}

/// Landlock: the disk's I/O thread, under its sandbox, can open its image
/// but no other file (`FERRITE_LANDLOCK_SELFTEST=PATH` makes it try PATH),
/// while the probe's scenarios (write-cache switches reopen the image)
/// pass and `--stats-json`, the one other file allowed, is written.
#[test]
fn after_start_up_only_the_images_and_the_stats_file_open() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = probe_kernel(dir.path());
    let img = image(dir.path(), "a.img", IMAGE_SIZE);
    let other = dir.path().join("other.txt");
    std::fs::write(&other, b"not the VM's").unwrap();
    let stats = dir.path().join("stats.json");
    for (probe, expected) in [(&other, "denied (Permission denied"), (&img, "allowed")] {
        let mut args = probe_args(
            &kernel,
            "probe=info,rw,flush,wce",
            &[drive(&img, "cache=writethrough")],
            &[],
        );
        args.extend(["--stats-json".to_string(), stats.display().to_string()]);
        let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(&args)
            .env("FERRITE_LANDLOCK_SELFTEST", probe)
            .stdin(Stdio::null())
            .output()
            .expect("run ferrite");
        let run = Run {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: std::time::Duration::ZERO,
        };
        if run.stderr.contains("Landlock is not available") {
            eprintln!("SKIP: no Landlock on this kernel: {}", run.stderr.trim());
            return;
        }
        run.assert_pass();
        let line = format!(
            "ferrite: landlock selftest on ferrite-blk: open {}: {expected}",
            probe.display()
        );
        assert!(
            run.stderr.contains(&line),
            "want `{line}`\n{}",
            run.describe()
        );
        let written = probe_util::stats(&stats);
        assert_eq!(written["disks"][0]["cache"], "writethrough", "{written}");
        std::fs::remove_file(&stats).unwrap();
    }
}
