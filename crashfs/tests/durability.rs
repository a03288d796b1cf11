//! What survives a power cut on crashfs: unsynced data is lost, fsynced data
//! and O_DSYNC writes are kept, O_DIRECT alone is volatile.

mod common;

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::{durable, mount_with, visible, AlignedBuf};

const OLD: u8 = 0xaa;
const NEW: u8 = 0x55;
const SIZE: usize = 64 * 1024;

#[test]
fn unsynced_write_is_visible_then_lost() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let path = m.fs.path("img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&[NEW; 8192], 4096).unwrap();
    // Readers see the volatile data, the medium does not have it.
    assert_eq!(visible(&path, 4096, 8192), vec![NEW; 8192]);
    assert_eq!(durable(&m, "img"), vec![OLD; SIZE]);
    assert!(m.fs.stats().dirty_pages >= 2);
    m.fs.power_cut();
    assert_eq!(durable(&m, "img"), vec![OLD; SIZE]);
    // The kernel cache was dropped too: the mount shows the durable state,
    // through a fresh open and through the still open file.
    assert_eq!(visible(&path, 0, SIZE), vec![OLD; SIZE]);
    let mut buf = vec![0u8; 8192];
    file.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(buf, vec![OLD; 8192]);
    assert_eq!(m.fs.stats().dirty_pages, 0);
}

#[test]
fn fsynced_write_survives_later_one_does_not() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.fs.path("img"))
        .unwrap();
    file.write_all_at(&[NEW; 4096], 0).unwrap();
    file.sync_data().unwrap();
    file.write_all_at(&[NEW; 4096], 8192).unwrap();
    m.fs.power_cut();
    let after = durable(&m, "img");
    assert_eq!(&after[..4096], &[NEW; 4096][..]);
    assert_eq!(&after[4096..], &[OLD; SIZE - 4096][..]);
    assert!(m.fs.stats().fsyncs >= 1);
}

#[test]
fn unaligned_write_keeps_the_rest_of_its_page() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .write(true)
        .open(m.fs.path("img"))
        .unwrap();
    file.write_all_at(&[NEW; 100], 4000).unwrap();
    file.sync_all().unwrap();
    m.fs.power_cut();
    let after = durable(&m, "img");
    let mut expect = vec![OLD; SIZE];
    expect[4000..4100].fill(NEW);
    assert_eq!(after, expect);
}

#[test]
fn o_dsync_writes_are_durable_at_once() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(m.fs.path("img"))
        .unwrap();
    file.write_all_at(&[NEW; 4096], 12288).unwrap();
    // Durable before any power cut or fsync call of ours.
    assert_eq!(&durable(&m, "img")[12288..16384], &[NEW; 4096][..]);
    m.fs.power_cut();
    assert_eq!(&durable(&m, "img")[12288..16384], &[NEW; 4096][..]);
    let stats = m.fs.stats();
    assert_eq!(stats.dsync_opens, 1);
    assert!(stats.dsync_writes >= 1);
}

#[test]
fn rwf_dsync_write_is_durable() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .write(true)
        .open(m.fs.path("img"))
        .unwrap();
    let data = [NEW; 4096];
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: iov points to `data`, alive and unchanged during the call.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_DSYNC) };
    assert_eq!(n, 4096, "{}", std::io::Error::last_os_error());
    m.fs.power_cut();
    assert_eq!(&durable(&m, "img")[..4096], &data[..]);
}

#[test]
fn o_direct_writes_are_volatile_until_fsync() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.fs.path("img"))
        .expect("O_DIRECT open on crashfs");
    let buf = AlignedBuf::new(8192, NEW);
    file.write_all_at(buf.as_ref(), 0).unwrap();
    let stats = m.fs.stats();
    assert_eq!(stats.direct_opens, 1);
    assert!(stats.direct_writes >= 1);
    // Readable (direct reads come to crashfs), not durable.
    let mut back = AlignedBuf::new(8192, 0);
    file.read_exact_at(back.as_mut(), 0).unwrap();
    assert_eq!(back.as_ref(), buf.as_ref());
    assert_eq!(durable(&m, "img"), vec![OLD; SIZE]);
    m.fs.power_cut();
    assert_eq!(durable(&m, "img"), vec![OLD; SIZE]);
    // Now make one durable with fdatasync.
    file.write_all_at(buf.as_ref(), 16384).unwrap();
    file.sync_data().unwrap();
    m.fs.power_cut();
    assert_eq!(&durable(&m, "img")[16384..24576], buf.as_ref());
}

#[test]
fn o_direct_o_dsync_writes_are_durable_at_once() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(m.fs.path("img"))
        .expect("O_DIRECT|O_DSYNC open on crashfs");
    let buf = AlignedBuf::new(4096, NEW);
    file.write_all_at(buf.as_ref(), 4096).unwrap();
    assert_eq!(&durable(&m, "img")[4096..8192], buf.as_ref());
    m.fs.power_cut();
    assert_eq!(&durable(&m, "img")[4096..8192], buf.as_ref());
    let stats = m.fs.stats();
    assert_eq!((stats.direct_opens, stats.dsync_opens), (1, 1));
}

#[test]
fn size_changes_are_volatile() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let path = m.fs.path("img");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(100).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 100);
    assert_eq!(durable(&m, "img").len(), SIZE);
    file.set_len(SIZE as u64 * 2).unwrap();
    // Bytes past the truncation read as zero, not as the old data.
    assert_eq!(visible(&path, 100, 100), vec![0u8; 100]);
    m.fs.power_cut();
    assert_eq!(fs::metadata(&path).unwrap().len(), SIZE as u64);
    file.set_len(100).unwrap();
    file.sync_all().unwrap();
    m.fs.power_cut();
    assert_eq!(durable(&m, "img"), vec![OLD; 100]);
}

#[test]
fn punch_hole_is_volatile_until_fsync() {
    let Some(m) = mount_with(&[("img", &[OLD; SIZE])]) else {
        return;
    };
    let path = m.fs.path("img");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate takes plain integers on an fd we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, 4096, 8192) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(visible(&path, 4096, 8192), vec![0u8; 8192]);
    m.fs.power_cut();
    assert_eq!(durable(&m, "img"), vec![OLD; SIZE]);
    // SAFETY: as above.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, 4096, 8192) };
    assert_eq!(rc, 0);
    file.sync_data().unwrap();
    m.fs.power_cut();
    let after = durable(&m, "img");
    assert_eq!(after.len(), SIZE);
    assert_eq!(&after[4096..12288], &[0u8; 8192][..]);
    assert_eq!(&after[12288..], &[OLD; SIZE - 12288][..]);
}

#[test]
fn directory_operations_and_new_files() {
    let Some(m) = mount_with(&[("a", b"x")]) else {
        return;
    };
    fs::write(m.fs.path("b"), b"hello").unwrap();
    fs::create_dir(m.fs.path("d")).unwrap();
    let mut names: Vec<_> = fs::read_dir(m.fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "d"]);
    // The new file exists durably but its content did not survive.
    m.fs.power_cut();
    assert_eq!(durable(&m, "b"), b"");
    fs::remove_file(m.fs.path("a")).unwrap();
    fs::remove_dir(m.fs.path("d")).unwrap();
    assert!(!m.fs.backing_path("a").exists());
    assert!(!m.fs.backing_path("d").exists());
    // sync_all makes everything durable.
    fs::write(m.fs.path("b"), b"again").unwrap();
    m.fs.sync_all().unwrap();
    m.fs.power_cut();
    assert_eq!(durable(&m, "b"), b"again");
}
