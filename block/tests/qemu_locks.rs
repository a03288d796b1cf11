//! ferrite's image locks against QEMU's own, with QEMU's tools (Debian's
//! `qemu-utils`: `qemu-io`), following QEMU's rules: a writer excludes other
//! writers and readers that refuse to share writes, readers share, and a
//! reader that refuses nothing (`qemu-io -r`) may read an image in use.
//! Where a QEMU system emulator is installed, a QEMU VM with a virtio-blk
//! drive is checked too (it refuses to share writes, as ferrite does).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use block::{BlockError, CacheMode, Disk, EngineKind};
use common::{config, image, scratch};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn qemu_io_available() -> bool {
    let ok = have("qemu-io");
    if !ok {
        eprintln!("SKIP: qemu-io is missing (apt-get install qemu-utils; scripts/setup does)");
    }
    ok
}

/// Runs `qemu-io [-r] -c 'read 0 4k' IMG` and returns its success and
/// message.
fn qemu_io_read(img: &Path, read_only: bool) -> (bool, String) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    if read_only {
        cmd.arg("-r");
    }
    let out = cmd
        .args(["-c", "read 0 4k"])
        .arg(img)
        .output()
        .expect("run qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // qemu-io exits 0 even when it cannot open the image: judge by its words.
    let opened = out.status.success() && !text.contains("can't open");
    (opened, text.trim().to_string())
}

/// The number of OFD locks on `img` in /proc/locks.
fn ofd_locks(img: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(img).unwrap().ino();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.contains("OFDLCK") && l.contains(&format!(":{ino} ")))
        .count()
}

/// A QEMU process holding `img` until dropped, started once its locks are
/// in place.
struct Holder(Child);

impl Holder {
    /// Starts `cmd` and waits until `img` carries `entries` more lock
    /// entries in /proc/locks (QEMU takes its bytes one step at a time).
    fn start(mut cmd: Command, img: &Path, entries: usize) -> Holder {
        let before = ofd_locks(img);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the QEMU holder");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ofd_locks(img) < before + entries {
            assert!(
                Instant::now() < deadline,
                "the QEMU holder took no lock on {}",
                img.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Holder(child)
    }

    /// `qemu-io [-r] -c 'sleep 30000'`: one entry, bytes 100 (and 101 for
    /// a writer).
    fn qemu_io(img: &Path, read_only: bool) -> Holder {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        if read_only {
            cmd.arg("-r");
        }
        cmd.args(["-c", "sleep 30000"]).arg(img);
        Holder::start(cmd, img, 1)
    }

    /// A stopped QEMU VM (no firmware run) with a virtio-blk drive on `img`:
    /// two entries, bytes 100 (and 101 for a writer) and 201.
    fn qemu_vm(img: &Path, read_only: bool) -> Holder {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(qemu_vm_args(img, read_only));
        Holder::start(cmd, img, 2)
    }
}

/// The arguments of a stopped QEMU VM (`-S`: no firmware runs) with a
/// virtio-blk drive on `img`.
fn qemu_vm_args(img: &Path, read_only: bool) -> Vec<String> {
    let ro = if read_only { ",readonly=on" } else { "" };
    let drive = format!("file={},format=raw,if=none,id=d0{ro}", img.display());
    [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-S",
        "-display",
        "none",
        "-nodefaults",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
    ]
    .map(String::from)
    .to_vec()
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ferrite_open(img: &Path, read_only: bool) -> Result<Disk, BlockError> {
    Disk::open(&config(
        img,
        CacheMode::Writeback,
        EngineKind::Sync,
        read_only,
    ))
}

fn refused(r: Result<Disk, BlockError>) -> bool {
    matches!(r, Err(BlockError::Locked { .. }))
}

#[test]
fn qemu_io_refuses_writing_an_image_ferrite_writes_and_may_read_it() {
    if !qemu_io_available() {
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), 1 << 20);
    let disk = ferrite_open(&img, false).unwrap();
    let (opened, text) = qemu_io_read(&img, false);
    assert!(
        !opened,
        "qemu-io opened for writing an image ferrite writes: {text}"
    );
    assert!(
        text.contains("lock"),
        "qemu-io's refusal does not name the lock: {text}"
    );
    // `qemu-io -r` refuses to share nothing, so QEMU lets it read.
    let (opened, text) = qemu_io_read(&img, true);
    assert!(
        opened,
        "qemu-io -r could not read an image ferrite writes: {text}"
    );
    drop(disk);
    let (opened, text) = qemu_io_read(&img, false);
    assert!(
        opened,
        "qemu-io could not open the image after ferrite let go: {text}"
    );
}

#[test]
fn ferrite_refuses_an_image_qemu_io_writes() {
    if !qemu_io_available() {
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), 1 << 20);
    let holder = Holder::qemu_io(&img, false);
    // Both of ferrite's claims refuse to share writes, and qemu-io writes.
    assert!(
        refused(ferrite_open(&img, false)),
        "ferrite opened for writing an image qemu-io writes"
    );
    assert!(
        refused(ferrite_open(&img, true)),
        "ferrite opened read-only an image qemu-io writes"
    );
    drop(holder);
    ferrite_open(&img, false).expect("ferrite opens the image once qemu-io let go");
}

#[test]
fn read_only_sharing_works_both_ways() {
    if !qemu_io_available() {
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), 1 << 20);
    // ferrite reads, then qemu-io reads.
    let disk = ferrite_open(&img, true).unwrap();
    let (opened, text) = qemu_io_read(&img, true);
    assert!(
        opened,
        "qemu-io -r could not share an image ferrite reads: {text}"
    );
    // ...but may not write: ferrite refuses to share writes.
    let (opened, _) = qemu_io_read(&img, false);
    assert!(!opened, "qemu-io opened for writing an image ferrite reads");
    drop(disk);
    // qemu-io reads, then ferrite reads; a ferrite writer is also let in,
    // since `qemu-io -r` shares everything.
    let holder = Holder::qemu_io(&img, true);
    ferrite_open(&img, true).expect("ferrite could not share an image qemu-io -r reads");
    ferrite_open(&img, false).expect("ferrite could not write an image qemu-io -r shares");
    drop(holder);
}

#[test]
fn a_qemu_vm_and_ferrite_exclude_each_other_as_two_vms_do() {
    if !have("qemu-system-x86_64") {
        eprintln!("SKIP: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)");
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), 1 << 20);
    {
        let _vm = Holder::qemu_vm(&img, false);
        assert!(refused(ferrite_open(&img, false)));
        assert!(refused(ferrite_open(&img, true)));
    }
    {
        let _vm = Holder::qemu_vm(&img, true);
        assert!(refused(ferrite_open(&img, false)));
        let _reader = ferrite_open(&img, true).expect("two readers share");
    }
    let _disk = ferrite_open(&img, false).unwrap();
    // `timeout`: were the lock not refused, the stopped VM would wait forever.
    let out = Command::new("timeout")
        .args(["20", "qemu-system-x86_64"])
        .args(qemu_vm_args(&img, false))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("lock"),
        "QEMU started on an image ferrite writes: {err}"
    );
}
