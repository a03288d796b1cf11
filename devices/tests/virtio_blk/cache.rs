//! The `writeback` byte and what the host does about it (DESIGN.md "Cache
//! modes"), judged by the disk's own counters.

use crate::common::*;
use block::CacheMode;

fn rig_in(cache: CacheMode) -> Option<Rig> {
    rig(Opts {
        cache,
        ..Opts::default()
    })
}

#[test]
fn writeback_byte_at_reset_follows_the_mode() {
    for cache in CacheMode::ALL {
        let Some(mut rig) = rig_in(cache) else {
            continue;
        };
        rig.init_all();
        let want = u8::from(cache.default_write_cache());
        assert_eq!(rig.wce(), want, "{cache}");
        assert_eq!(rig.stats().write_cache, want == 1, "{cache}");
        assert_eq!(rig.stats().cache, cache);
        // Writes and reads work in every mode.
        rig.write(4, &[0x11; 4096]);
        assert_eq!(rig.read(4, 4096), vec![0x11; 4096], "{cache}");
    }
}

#[test]
fn writeback_off_then_on_in_writeback_mode() {
    let Some(mut rig) = rig_in(CacheMode::Writeback) else {
        return;
    };
    rig.init_all();
    rig.write(0, &[1; 512]);
    let s0 = rig.stats().disk;
    assert_eq!(
        s0.dsync_writes, 0,
        "a volatile cache: writes are not synced"
    );

    // Guest: echo "write through" > cache_type.
    rig.set_wce(0);
    assert_eq!(rig.wce(), 0);
    let s1 = rig.stats().disk;
    assert_eq!(s1.fdatasyncs, s0.fdatasyncs + 1, "one flush at the change");
    rig.write(1, &[2; 512]);
    let s2 = rig.stats().disk;
    assert_eq!(s2.dsync_writes, 1, "writes are durable now");

    rig.set_wce(1);
    assert_eq!(rig.wce(), 1);
    rig.write(2, &[3; 512]);
    assert_eq!(rig.stats().disk.dsync_writes, 1, "back to a volatile cache");
    assert_eq!(rig.stats().device.write_cache_changes, 2);
}

#[test]
fn writeback_on_then_off_in_writethrough_mode() {
    let Some(mut rig) = rig_in(CacheMode::Writethrough) else {
        return;
    };
    rig.init_all();
    assert_eq!(rig.wce(), 0);
    rig.write(0, &[1; 512]);
    assert_eq!(rig.stats().disk.dsync_writes, 1);

    rig.set_wce(1);
    assert_eq!(rig.wce(), 1);
    assert!(rig.stats().write_cache);
    rig.write(1, &[2; 512]);
    let s = rig.stats().disk;
    assert_eq!(s.dsync_writes, 1, "no longer synced per write");
    rig.flush();
    assert_eq!(rig.stats().disk.fdatasyncs, s.fdatasyncs + 1, "FLUSH syncs");

    rig.set_wce(0);
    rig.write(2, &[3; 512]);
    assert_eq!(rig.stats().disk.dsync_writes, 2);
    let mut want = pattern(SECTORS * 512);
    want[..512].fill(1);
    want[512..1024].fill(2);
    want[1024..1536].fill(3);
    assert_eq!(rig.file(), want);
}

#[test]
fn a_driver_without_flush_or_config_wce_gets_durable_writes() {
    for cache in [CacheMode::Writeback, CacheMode::None, CacheMode::Unsafe] {
        let Some(mut rig) = rig_in(cache) else {
            continue;
        };
        rig.driver.init(bit(VIRTIO_F_VERSION_1));
        assert_write_durable(&mut rig, cache);
    }
}

/// A write of a driver without FLUSH is durable when it completes, in
/// every mode but `unsafe` (which promises nothing).
fn assert_write_durable(rig: &mut Rig, cache: CacheMode) {
    rig.write(0, &[9; 512]);
    let s = rig.stats();
    assert!(!s.write_cache, "{cache}");
    if cache == CacheMode::Unsafe {
        assert_eq!(s.disk.host_syncs, 0, "unsafe promises nothing");
    } else {
        assert_eq!(s.disk.dsync_writes, 1, "{cache}: write not durable");
    }
}

#[test]
fn writeback_byte_is_read_only_without_config_wce() {
    let Some(mut rig) = rig_in(CacheMode::Writeback) else {
        return;
    };
    rig.driver
        .init(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_FLUSH));
    assert_eq!(rig.wce(), 1);
    rig.set_wce(0);
    assert_eq!(rig.wce(), 1);
    rig.write(0, &[1; 512]);
    assert_eq!(rig.stats().disk.dsync_writes, 0);
}

#[test]
fn reset_restores_the_mode_default() {
    for (cache, flip) in [(CacheMode::Writeback, 0u8), (CacheMode::Writethrough, 1)] {
        let Some(mut rig) = rig_in(cache) else {
            continue;
        };
        rig.init_all();
        rig.set_wce(flip);
        assert_eq!(rig.wce(), flip);
        rig.driver.reset();
        assert_eq!(rig.wce(), 1 - flip, "{cache}: reset");
        rig.init_all();
        assert_eq!(rig.wce(), 1 - flip, "{cache}: after re-init");
        let before = rig.stats().disk.dsync_writes;
        rig.write(0, &[5; 512]);
        let synced = rig.stats().disk.dsync_writes - before;
        assert_eq!(synced, u64::from(flip), "{cache}: write after reset");
        assert_eq!(rig.stats().device.resets, 3, "two inits and one reset");
    }
}

#[test]
fn shutdown_flushes_unless_unsafe_and_is_idempotent() {
    for cache in [CacheMode::Writeback, CacheMode::Unsafe] {
        let Some(mut rig) = rig_in(cache) else {
            continue;
        };
        let f = rig.init_all();
        rig.write(0, &[1; 512]);
        let first = rig.handle.shutdown();
        let want = u64::from(cache != CacheMode::Unsafe);
        assert_eq!(first.disk.fdatasyncs, want, "{cache}");
        assert_eq!(first.features, format!("{f:#x}"));
        assert_eq!(rig.handle.clone().shutdown(), first);
        assert_eq!(rig.handle.stats(), first);
        // Nothing is served any more, and nothing hangs.
        let idx = rig.driver.used_idx();
        rig.driver.blk_request(VIRTIO_BLK_T_IN, 0, &[512], true);
        rig.driver.notify();
        rig.assert_used_stays(idx);
        rig.driver.reset();
        let json = serde_json::to_value(&first).unwrap();
        assert_eq!(json["cache"], cache.to_string());
        assert_eq!(json["disk"]["writes"], 1);
        assert_eq!(json["device"]["requests"], 1);
    }
}

#[test]
fn config_wce_without_flush_starts_with_writeback_0() {
    for cache in [CacheMode::Writeback, CacheMode::None, CacheMode::Unsafe] {
        let Some(mut rig) = rig_in(cache) else {
            continue;
        };
        // §5.2.5.2: CONFIG_WCE negotiated, FLUSH not: writeback MUST be 0.
        rig.driver
            .init(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_CONFIG_WCE));
        assert_eq!(rig.wce(), 0, "{cache}");
        assert_write_durable(&mut rig, cache);
        // The driver may still turn the cache on (its choice: it cannot
        // flush then).
        rig.set_wce(1);
        assert_eq!(rig.wce(), 1, "{cache}");
    }
}
