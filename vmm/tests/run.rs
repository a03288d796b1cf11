//! `ferrite run` end to end: the project's guest kernel (built or found in
//! the cache by `resources/guest/build-kernel.sh`) boots with ferrite's
//! initramfs and busybox root, runs one command, and ferrite exits with its
//! status. Each Linux boot costs 10-45 s on a host whose KVM emulates guest
//! kernel code, so each test boots once (the config-file test twice) and
//! checks everything that boot can show. The no-disk diagnosis boots the
//! probe guest, which stands in for a kernel that never probes its
//! virtio-mmio disk (it stops on a bad scenario before touching a
//! register), and the kernel-option check needs no boot at all.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "common/guest.rs"]
mod guest;
#[path = "common/probe.rs"]
mod probe_common;

use guest::{build, HOST_KVM_ARGS};
use probe_common::kvm_usable;

/// ferrite run's statuses (vmm/src/run/verdict.rs).
const TIMEOUT: i32 = 124;
const RUN_ERROR: i32 = 125;
const PANIC: i32 = 254;

/// The guest kernel's `vmlinux`, or `None` (with SKIP printed) when KVM or
/// the kernel's sources are not there.
fn kernel() -> Option<PathBuf> {
    if !kvm_usable() {
        return None;
    }
    let cached = std::env::var_os("FERRITE_GUEST_KERNEL_DIR").is_some();
    if !cached && !Path::new("/usr/src/linux-source-6.1.tar.xz").exists() {
        eprintln!("SKIP: no kernel: /usr/src/linux-source-6.1.tar.xz is missing (run scripts/setup) and FERRITE_GUEST_KERNEL_DIR is not set");
        return None;
    }
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    Some(
        built
            .get_or_insert_with(|| build("build-kernel.sh").join("vmlinux"))
            .clone(),
    )
}

/// A `ferrite` command with the test cache and no stdin.
fn ferrite() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
    cmd.env(
        "FERRITE_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferrite-cache"),
    )
    .stdin(Stdio::null());
    cmd
}

/// `ferrite run --kernel K --memory 256M --cmdline HOST_KVM_ARGS ARGS...`.
fn run(kernel: &Path, args: &[&str]) -> Command {
    let mut cmd = ferrite();
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .args(["--memory", "256M", "--cmdline", HOST_KVM_ARGS])
        .args(args);
    cmd
}

/// Runs `cmd` to its end; prints what it said, for the test log.
fn finish(cmd: &mut Command) -> (Output, Duration) {
    let start = Instant::now();
    let out = cmd.output().expect("run ferrite");
    let took = start.elapsed();
    eprintln!(
        "--- {:?} in {:.1} s, status {:?}\nstdout: {}\nstderr: {}",
        cmd.get_args().collect::<Vec<_>>(),
        took.as_secs_f64(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, took)
}

/// The probe guest written to `dir`, as a kernel file for `--kernel`.
fn probe_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("probe.elf");
    std::fs::write(&path, probe::PROBE_ELF).unwrap();
    path
}

/// The rest of a child's stdout and all of its stderr, and its status.
fn drain(child: &mut Child, stdout: &mut impl Read) -> (Vec<u8>, String, Option<i32>) {
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    (rest, err, child.wait().unwrap().code())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_42_args_streams_and_out_come_back_exactly() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out_dir = dir.path().join("out");
    let script = r#"printf '<%s>\n' "$@"; echo to-stderr >&2; printf '%s|' "$@" > /out/args; mkdir /out/sub; echo deep > /out/sub/file; exit 42"#;
    let args = ["a b", "q'\"$HOME`x`", "line1\nline2", "", "--not-an-option"];
    let mut cmd = run(&kernel, &["--out"]);
    cmd.arg(&out_dir)
        .args(["--", "sh", "-c", script, "sh"])
        .args(args);
    // Measure from the spawn to the first byte on stdout.
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    let got = stdout.read(&mut first).unwrap();
    let to_first_output = start.elapsed();
    let (rest, err, status) = drain(&mut child, &mut stdout);
    let total = start.elapsed();
    eprintln!(
        "ferrite run: first output after {:.1} s, total {:.1} s; stderr: {err}",
        to_first_output.as_secs_f64(),
        total.as_secs_f64()
    );
    let mut all = first[..got].to_vec();
    all.extend(rest);
    let want: String = args.iter().map(|a| format!("<{a}>\n")).collect();
    assert_eq!(String::from_utf8_lossy(&all), want);
    // No kernel message reached stdout or stderr without --verbose.
    assert_eq!(err, "to-stderr\n");
    assert_eq!(status, Some(42));
    let back = std::fs::read_to_string(out_dir.join("args")).unwrap();
    assert_eq!(back, format!("{}|", args.join("|")));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("sub/file")).unwrap(),
        "deep\n"
    );
    assert!(!out_dir.join("lost+found").exists());
}

#[test]
fn status_0_from_an_image_that_stays_byte_for_byte_unchanged() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = dir.path().join("root.ext4");
    std::fs::copy(build("build-rootfs.sh"), &image).unwrap();
    let before = std::fs::read(&image).unwrap();
    let mut cmd = run(&kernel, &["--image"]);
    cmd.arg(&image).args([
        "--",
        "sh",
        "-c",
        "echo changed > /etc/hostname && rm /init && sync",
    ]);
    let (out, _) = finish(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the image changed"
    );
}

#[test]
fn config_file_targets_give_status_1_and_a_failing_ktap_summary() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let toml = dir.path().join("ferrite.toml");
    // A kunit-style report whose second case fails; the command exits 0.
    let ktap = "KTAP version 1\\n1..1\\n    KTAP version 1\\n    1..3\\n    ok 1 a\\n    not ok 2 b\\n    ok 3 c # SKIP no\\nnot ok 1 suite\\n";
    std::fs::write(
        &toml,
        format!(
            r#"
[[target]]
name = "exit-one"
kernel = "{k}"
command = "echo one; exit 1"
memory = "256M"

[[target]]
name = "ktap-sample"
kernel = "{k}"
command = ["printf", "{ktap}"]
memory = "256M"
ktap = true

[[target]]
name = "filtered-out"
kernel = "{k}"
command = "true"
"#,
            k = kernel.display()
        ),
    )
    .unwrap();
    let mut cmd = ferrite();
    cmd.args(["run", "--cmdline", HOST_KVM_ARGS, "-c"])
        .arg(&toml)
        .args(["--filter", "^(exit|ktap)-"]);
    let (out, _) = finish(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("[FAIL] exit-one (status 1,"), "{err}");
    assert!(err.contains("ktap: 1 passed, 1 failed, 1 skipped"), "{err}");
    assert!(err.contains("[FAIL] ktap-sample (status 1,"), "{err}");
    assert!(err.contains("2 target(s): 0 passed, 2 failed"), "{err}");
    assert!(!err.contains("filtered-out"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("one\nKTAP version 1\n"));
}

#[test]
fn timeout_counts_from_the_command_start_and_gives_124() {
    let Some(kernel) = kernel() else { return };
    let (out, _) = finish(&mut run(
        &kernel,
        &["--verbose", "--timeout", "5", "--", "sleep", "1000"],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(TIMEOUT), "{err}");
    assert!(err.contains("the command did not finish within 5 s (--timeout)"));
    assert!(err.contains("last console lines:"));
    // "command started after S s, first output after never, total T s"
    let line = err
        .lines()
        .find(|l| l.contains("command started after"))
        .expect("the --verbose timing line");
    let secs: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (started, total) = (secs[0], secs[secs.len() - 1]);
    // Both figures are printed rounded to 0.1 s, so their difference can
    // read 0.1 s short of the 5 s that passed (a full run here printed
    // 11.9 and 16.9).
    assert!(
        (5.0 - 0.1..5.0 + 4.0).contains(&(total - started)),
        "stopped {:.1} s after the command started",
        total - started
    );
}

#[test]
fn a_sysrq_crash_gives_the_panic_status_and_line() {
    let Some(kernel) = kernel() else { return };
    let (out, took) = finish(&mut run(
        &kernel,
        &["--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 100"],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(PANIC), "{err}");
    assert!(
        err.contains(
            "the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash"
        ),
        "{err}"
    );
    assert!(took < Duration::from_secs(100), "waited for the command");
}

#[test]
fn a_plain_boot_whose_kernel_panics_does_not_exit_0() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = dir.path().join("root.ext4");
    std::fs::copy(build("build-rootfs.sh"), &image).unwrap();
    // ferrite's default panic=1 would reset, which exits 0 without the watch.
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/no/such/init {HOST_KVM_ARGS}"
    );
    let mut cmd = ferrite();
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--memory", "256M", "--cmdline", &cmdline, "--drive"])
        .arg(format!("file={}", image.display()));
    let (out, _) = finish(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(PANIC), "{err}");
    assert!(
        err.contains("ferrite: the guest kernel panicked: Kernel panic - not syncing:"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Kernel panic"));
}

#[test]
fn a_guest_that_never_touches_its_disk_gets_the_virtio_mmio_diagnosis() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let probe = probe_kernel(dir.path());
    // The probe stops on an unknown scenario before it reads any register:
    // from the device's side, a kernel without a virtio-mmio driver.
    let mut cmd = ferrite();
    cmd.args(["run", "--kernel"]).arg(&probe).args([
        "--cmdline",
        "probe=no-such-scenario",
        "--",
        "true",
    ]);
    let (out, _) = finish(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(PANIC), "{err}");
    let hint = err
        .lines()
        .find(|l| l.contains("never read its virtio-mmio disk's registers"))
        .unwrap_or_else(|| panic!("no diagnosis: {err}"));
    assert!(hint.contains("CONFIG_VIRTIO_MMIO or CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"));
}

#[test]
fn a_kernel_config_without_a_needed_option_fails_before_booting() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let vmlinux = dir.path().join("vmlinux");
    let config = "CONFIG_VIRTIO_MMIO=y\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\nCONFIG_VIRTIO_BLK=y\nCONFIG_EXT4_FS=y\n";
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        enc.write_all(config.as_bytes()).unwrap();
        enc.finish().unwrap();
    }
    let mut image = b"\x7fELF\x02".to_vec();
    image.extend(b"IKCFG_ST");
    image.extend(gz);
    image.extend(b"IKCFG_ED");
    std::fs::write(&vmlinux, image).unwrap();
    let (out, took) = finish(&mut run(&vmlinux, &["--", "true"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(RUN_ERROR), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5));
}

#[test]
fn snapshot_on_boots_a_copy_and_leaves_the_image_alone() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let probe = probe_kernel(dir.path());
    let image = dir.path().join("disk.img");
    let before: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &before).unwrap();
    // The probe's rw scenario writes to the disk and reads it back.
    let mut cmd = ferrite();
    cmd.arg("--kernel")
        .arg(&probe)
        .args(["--cmdline", "probe=rw", "--drive"])
        .arg(format!("file={},snapshot=on", image.display()));
    let (out, _) = finish(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the probe passes (debug-exit 0)"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("result=ok"));
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the image changed"
    );
}

#[test]
fn run_usage_errors_are_one_line_and_status_125() {
    for args in [
        &["run"][..],
        &["run", "--kernel", "k"],
        &["run", "--bogus", "--", "true"],
    ] {
        let (out, _) = finish(ferrite().args(args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(RUN_ERROR), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn without_dev_kvm_run_stops_at_once_with_one_line() {
    // A private mount namespace whose /dev is an empty tmpfs (needs
    // CAP_SYS_ADMIN, e.g. root or a user namespace).
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs none /dev"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP: cannot hide /dev/kvm in a mount namespace (unshare -m)");
        return;
    }
    let script = format!(
        "mount -t tmpfs none /dev && exec '{}' run --kernel /nonexistent -- true",
        env!("CARGO_BIN_EXE_ferrite")
    );
    let (out, took) = finish(Command::new("unshare").args(["-m", "sh", "-c", &script]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(RUN_ERROR), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/dev/kvm is not usable"), "{err}");
    assert!(took < Duration::from_secs(5));
}
