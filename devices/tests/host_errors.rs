//! A host I/O error reaches the guest as IOERR, is counted, and the device
//! keeps serving. Its own test binary: it sets a process-wide file-size
//! limit (RLIMIT_FSIZE), which makes writes past it fail with EFBIG.

#[path = "virtio_blk/common.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use block::EngineKind;
use common::*;
use vm_memory::Bytes;

#[test]
fn host_write_errors_become_ioerr_and_the_device_keeps_going() {
    let Some(mut rig) = rig(Opts {
        // The synchronous engine writes from this process's own thread,
        // which is what the limit applies to.
        engine: Some(EngineKind::Sync),
        ..Opts::default()
    }) else {
        return;
    };
    rig.init_all();
    let limit = libc::rlimit {
        rlim_cur: 64 * 512,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain libc calls with valid arguments; ignoring SIGXFSZ turns
    // the limit into an EFBIG error instead of killing the test process.
    let ok = unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN) != libc::SIG_ERR
            && libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0
    };
    if !ok {
        eprintln!("SKIP: cannot set RLIMIT_FSIZE");
        return;
    }
    // Below the limit: fine. Past it: the host refuses, the guest sees IOERR.
    rig.write(8, &[1; 512]);
    let r = rig.driver.blk_request(VIRTIO_BLK_T_OUT, 100, &[512], false);
    rig.driver
        .mem()
        .write_slice(&[2; 512], r.data[0].addr)
        .unwrap();
    assert_eq!(rig.run(&[&r]), vec![(IOERR, 1)]);
    let s = rig.stats();
    assert_eq!(s.device.io_errors, 1);
    assert!(s.disk.errors >= 1);
    assert_eq!(rig.driver.status() & NEEDS_RESET, 0);
    // Reads past the limit still work, and so do writes below it.
    assert_eq!(rig.read(100, 512), pattern(101 * 512)[100 * 512..].to_vec());
    rig.write(9, &[3; 512]);
    let file = rig.file();
    assert_eq!(file[8 * 512..9 * 512], [1; 512]);
    assert_eq!(file[9 * 512..10 * 512], [3; 512]);
    assert_eq!(file[100 * 512..101 * 512], pattern(101 * 512)[100 * 512..]);
}
