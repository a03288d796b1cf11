//! Disk unit tests: the eventfd protocol, the open flags per mode and WCE,
//! writes the engine runs inline.

use super::*;

#[test]
fn disk_moves_to_an_io_thread() {
    fn send<T: Send>() {}
    send::<Disk>();
    send::<Op>();
    send::<Completion>();
}

#[test]
fn o_dsync_only_where_the_mode_and_wce_ask() {
    for mode in CacheMode::ALL {
        let default = dsync_fd(mode, mode.default_write_cache());
        assert_eq!(default, !mode.switches().writeback, "{mode} at reset");
        assert!(
            !dsync_fd(mode, true),
            "{mode} with a write cache never needs O_DSYNC"
        );
    }
    // WCE=0 in writeback/none is served by RWF_DSYNC, not a reopen.
    assert!(!dsync_fd(CacheMode::None, false));
    assert!(!dsync_fd(CacheMode::Unsafe, false));
}

#[test]
fn synchronous_completions_signal_once_until_the_eventfd_is_read() {
    let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
    f.as_file().set_len(1 << 20).expect("size");
    let mut cfg = DiskConfig::new(f.path());
    cfg.engine = Some(EngineKind::Sync);
    let mut d = Disk::open(&cfg).expect("open");
    let mut buf = vec![0x5au8; 3 * 4096];
    let write = |d: &mut Disk, i: usize, buf: &mut [u8]| {
        let seg = crate::Segment {
            addr: buf[i * 4096..].as_mut_ptr(),
            len: 4096,
        };
        let op = Op::Write {
            offset: i as u64 * 4096,
            segments: vec![seg],
        };
        // SAFETY: `buf` outlives the request, which the sync engine
        // finishes inside `kick`, before the next line.
        unsafe { d.submit(op, i as u64) }.expect("submit");
        d.kick().expect("kick");
    };
    write(&mut d, 0, &mut buf);
    write(&mut d, 1, &mut buf);
    assert!(d.has_completions());
    // Two completions, one signal.
    assert_eq!(d.eventfd.read().ok(), Some(1));
    let mut done = Vec::new();
    d.poll_completions(&mut done);
    assert_eq!(done.len(), 2);
    assert!(!d.has_completions());
    // The eventfd was read by hand, not through drain_completions: the
    // disk still believes it signalled, so it does not signal again...
    write(&mut d, 2, &mut buf);
    assert!(d.eventfd.read().is_err(), "signalled twice");
    // ...until drain_completions has read it.
    d.drain_completions(&mut done);
    assert_eq!(done.len(), 3);
    write(&mut d, 0, &mut buf);
    assert_eq!(d.eventfd.read().ok(), Some(1));
}

#[test]
fn buffered_writes_without_sync_bypass_the_ring() {
    if !crate::io_uring_supported() {
        eprintln!("SKIP: no io_uring here");
        return;
    }
    let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
    f.as_file().set_len(1 << 20).expect("size");
    let open = |cache| {
        let mut cfg = DiskConfig::new(f.path());
        cfg.cache = cache;
        cfg.engine = Some(EngineKind::IoUring);
        Disk::open(&cfg)
    };
    for (mode, inline) in [
        (CacheMode::Writeback, true),
        (CacheMode::Unsafe, true),
        (CacheMode::Writethrough, false),
        (CacheMode::None, false),
    ] {
        let Ok(mut d) = open(mode) else {
            continue; // no O_DIRECT here
        };
        // The engine is told whether a write only fills the page cache
        // (it then runs plain writes itself, see engine/uring.rs).
        assert_eq!(
            data_fd(0, mode, d.fd_dsync, false).page_cache(),
            inline,
            "{mode}"
        );
        if mode == CacheMode::Writeback {
            // WCE off: durable writes go to the ring (RWF_DSYNC).
            d.set_write_cache(false).expect("wce off");
            let mut buf = vec![0xabu8; 8192];
            let seg = crate::Segment {
                addr: buf.as_mut_ptr(),
                len: 4096,
            };
            // SAFETY: `buf` outlives the request, which wait_idle ends.
            unsafe {
                d.submit(
                    Op::Write {
                        offset: 0,
                        segments: vec![seg],
                    },
                    1,
                )
            }
            .expect("submit");
            let mut done = Vec::new();
            d.wait_idle(&mut done);
            assert_eq!(done.len(), 1);
            assert_eq!(d.stats().dsync_writes, 1);
        }
    }
    // An inline write completes at submit, signals the eventfd, and
    // its data is in the file.
    let mut d = open(CacheMode::Writeback).expect("open");
    let mut buf = vec![0x5au8; 4096];
    let seg = crate::Segment {
        addr: buf.as_mut_ptr(),
        len: buf.len(),
    };
    // SAFETY: `buf` outlives the request, which completes before
    // drain_completions returns it below.
    unsafe {
        d.submit(
            Op::Write {
                offset: 8192,
                segments: vec![seg],
            },
            7,
        )
    }
    .expect("submit");
    assert_eq!(d.eventfd.read().ok(), Some(1), "completion signalled");
    d.eventfd.write(1).expect("re-signal");
    let mut done = Vec::new();
    d.drain_completions(&mut done);
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].user_data, done[0].result.as_ref().ok()),
        (7, Some(&4096))
    );
    assert_eq!(d.in_flight(), 0);
    let data = std::fs::read(f.path()).expect("read");
    assert!(data[8192..12288].iter().all(|&b| b == 0x5a));
    assert_eq!(d.stats().writes, 1);
}

#[test]
fn config_defaults() {
    let c = DiskConfig::new("/x.img");
    assert_eq!(
        (c.cache, c.read_only, c.engine),
        (CacheMode::Writeback, false, None)
    );
}

#[test]
fn default_engine_is_io_uring_where_supported() {
    let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
    f.as_file().set_len(4096).expect("size");
    let d = Disk::open(&DiskConfig::new(f.path())).expect("open");
    let want = if crate::io_uring_supported() {
        EngineKind::IoUring
    } else {
        EngineKind::Sync
    };
    assert_eq!(d.engine_kind(), want);
    assert_eq!(d.path(), f.path());
}
