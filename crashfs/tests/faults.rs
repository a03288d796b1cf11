//! Injected write and fsync errors.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::{durable, mount_with};
use crashfs::{Fault, FaultError};

const SIZE: usize = 16 * 1024;

#[test]
fn write_fault_fails_the_write_and_changes_nothing() {
    let Some(m) = mount_with(&[("img", &[1u8; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.fs.path("img"))
        .unwrap();
    m.fs.fail_writes(Some(Fault::once(FaultError::Eio)));
    let err = file.write_at(&[2u8; 4096], 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let mut buf = [0u8; 4096];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [1u8; 4096]);
    // Once only: the next write works.
    file.write_all_at(&[3u8; 4096], 0).unwrap();
    m.fs.fail_writes(Some(Fault::always(FaultError::Enospc).after(1)));
    file.write_all_at(&[4u8; 4096], 4096).unwrap();
    let err = file.write_at(&[4u8; 4096], 8192).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    m.fs.fail_writes(None);
    file.write_all_at(&[5u8; 4096], 8192).unwrap();
    assert_eq!(m.fs.stats().failed_writes, 2);
}

#[test]
fn fsync_fault_loses_the_dirty_data_like_linux() {
    let Some(m) = mount_with(&[("img", &[1u8; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.fs.path("img"))
        .unwrap();
    file.write_all_at(&[2u8; 4096], 0).unwrap();
    m.fs.fail_fsyncs(Some(Fault::once(FaultError::Eio)));
    let err = file.sync_data().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Still readable, and a retry "succeeds" without writing it.
    let mut buf = [0u8; 4096];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [2u8; 4096]);
    file.sync_data().unwrap();
    m.fs.power_cut();
    assert_eq!(durable(&m, "img"), vec![1u8; SIZE]);
    let stats = m.fs.stats();
    assert_eq!(stats.failed_fsyncs, 1);
    assert!(stats.fsyncs >= 2);
}

#[test]
fn o_dsync_write_fails_when_its_sync_fails() {
    let Some(m) = mount_with(&[("img", &[1u8; SIZE])]) else {
        return;
    };
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(m.fs.path("img"))
        .unwrap();
    m.fs.fail_fsyncs(Some(Fault::once(FaultError::Enospc)));
    let err = file.write_at(&[2u8; 4096], 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    m.fs.power_cut();
    assert_eq!(durable(&m, "img"), vec![1u8; SIZE]);
}
