//! Bad arguments and impossible requests: `ferrite` must exit with 2 (usage)
//! or 1 (VMM error) and say why on exactly one stderr line, never panic.

mod common;

use std::time::Duration;

use common::*;

/// What a case expects.
struct Case {
    name: &'static str,
    args: Vec<String>,
    status: i32,
    /// A piece of the one stderr line.
    mentions: &'static str,
}

fn check(case: &Case) {
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let out = ferrite(&args, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("case {}: {}", case.name, describe(&out));
    assert_eq!(out.status.code(), Some(case.status), "{ctx}");
    assert_eq!(stderr.lines().count(), 1, "one line expected; {ctx}");
    assert!(stderr.starts_with("ferrite: "), "{ctx}");
    assert!(stderr.contains(case.mentions), "{ctx}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{ctx}");
    }
}

/// A valid kernel (it would halt), so that drive errors are what fails.
fn halting_kernel() -> Vec<u8> {
    let mut code = Asm::new();
    code.halt();
    elf64(code.bytes)
}

fn case(name: &'static str, args: &[&str], status: i32, mentions: &'static str) -> Case {
    Case {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        mentions,
    }
}

#[test]
fn malformed_arguments_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "k", b"not a kernel");
    let k = kernel.to_str().unwrap();
    let good = write_file(dir.path(), "vmlinux", &halting_kernel());
    let good = good.to_str().unwrap();
    let img = write_file(dir.path(), "disk.img", &vec![0u8; 1 << 20]);
    let img = img.to_str().unwrap();
    let same = format!("file={img}");
    let via_dot = format!("file={}/./disk.img", dir.path().display());
    // The last CPU an affinity mask can name: not one this machine has.
    let pinned_nowhere = format!("file={img},iothread-cpus=1023");
    let cases = vec![
        case("no arguments", &[], 2, "--kernel"),
        case(
            "unknown option",
            &["--kernel", k, "--frobnicate"],
            2,
            "--frobnicate",
        ),
        case("cpus 0", &["--kernel", k, "--cpus", "0"], 2, "0"),
        case("cpus 255", &["--kernel", k, "--cpus", "255"], 2, "255"),
        case(
            "bad size suffix",
            &["--kernel", k, "--memory", "512Q"],
            2,
            "512Q",
        ),
        case(
            "memory too small",
            &["--kernel", k, "--memory", "1M"],
            2,
            "16M",
        ),
        case(
            "unknown cache mode",
            &["--kernel", k, "--drive", "file=x,cache=fast"],
            2,
            "fast",
        ),
        case(
            "qcow2",
            &["--kernel", k, "--drive", "file=x,format=qcow2"],
            2,
            "qcow2",
        ),
        case(
            "drive without file",
            &["--kernel", k, "--drive", "cache=none"],
            2,
            "file=",
        ),
        case(
            "unknown drive key",
            &["--kernel", k, "--drive", "file=x,speed=9"],
            2,
            "speed",
        ),
        case(
            "bad aio",
            &["--kernel", k, "--drive", "file=x,aio=native"],
            2,
            "native",
        ),
        case(
            "same image twice",
            &["--kernel", k, "--drive", &same, "--drive", &via_dot],
            2,
            "more than once",
        ),
        case(
            "missing kernel file",
            &["--kernel", "/nonexistent/vmlinux"],
            1,
            "/nonexistent/vmlinux",
        ),
        case(
            "kernel is not a kernel",
            &["--kernel", k],
            1,
            "neither an ELF",
        ),
        case(
            "missing drive file",
            &["--kernel", good, "--drive", "file=/nonexistent/disk.img"],
            1,
            "/nonexistent/disk.img",
        ),
        case(
            "missing initrd",
            &["--kernel", good, "--initrd", "/nonexistent/initrd"],
            1,
            "/nonexistent/initrd",
        ),
        case(
            "backwards iothread-cpus",
            &["--kernel", k, "--drive", "file=x,iothread-cpus=3-1"],
            2,
            "runs backwards",
        ),
        case(
            "iothread-poll-us with a unit",
            &["--kernel", k, "--drive", "file=x,iothread-poll-us=300us"],
            2,
            "iothread-poll-us=300us is not a whole number of microseconds",
        ),
        case(
            "iothread on a CPU the process may not use",
            &["--kernel", good, "--drive", &pinned_nowhere],
            1,
            "cannot run the virtio-blk I/O thread on CPUs 1023",
        ),
    ];
    for c in &cases {
        check(c);
    }
}

#[test]
fn readonly_drive_whose_image_is_write_locked_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "vmlinux", &halting_kernel());
    let img = write_file(dir.path(), "disk.img", &vec![0u8; 1 << 20]);
    // This process holds the exclusive lock a writable drive takes.
    let _writer = block::Disk::open(&block::DiskConfig {
        path: img.clone(),
        cache: block::CacheMode::Writeback,
        read_only: false,
        engine: Some(block::EngineKind::Sync),
    })
    .unwrap();
    let drive = format!("file={},readonly=on", img.display());
    check(&case(
        "read-only drive, write lock held",
        &["--kernel", kernel.to_str().unwrap(), "--drive", &drive],
        1,
        "disk.img",
    ));
}
