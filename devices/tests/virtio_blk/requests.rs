//! Each request type against a real image, and every validation rule.

use crate::common::*;
use block::{CacheMode, EngineKind};
use devices::virtio::test_utils::Buf;
use vm_memory::{Bytes, GuestAddress};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn engines() -> Vec<EngineKind> {
    let mut e = vec![EngineKind::Sync];
    if block::io_uring_supported() {
        e.push(EngineKind::IoUring);
    } else {
        eprintln!("SKIP: io_uring engine (not supported by this kernel)");
    }
    e
}

#[test]
fn read_write_flush_on_each_engine() {
    for engine in engines() {
        let Some(mut rig) = rig(Opts {
            engine: Some(engine),
            ..Opts::default()
        }) else {
            continue;
        };
        rig.init_all();
        assert_eq!(rig.read(3, 1024), pattern(5 * 512)[3 * 512..].to_vec());
        let d = data(2048, 7);
        rig.write(10, &d);
        rig.flush();
        let mut want = pattern(SECTORS * 512);
        want[10 * 512..14 * 512].copy_from_slice(&d);
        assert_eq!(rig.file(), want, "{engine:?}");
        assert_eq!(rig.read(10, 2048), d);
        // A read scattered over three buffers.
        let r = rig
            .driver
            .blk_request(VIRTIO_BLK_T_IN, 9, &[512, 1024, 512], true);
        assert_eq!(rig.run(&[&r]), vec![(OK, 2049)]);
        let mut got = Vec::new();
        for b in &r.data {
            let mut v = vec![0u8; b.len as usize];
            rig.driver.mem().read_slice(&mut v, b.addr).unwrap();
            got.extend(v);
        }
        assert_eq!(got, want[9 * 512..13 * 512]);
        let s = rig.stats();
        assert_eq!((s.disk.writes, s.disk.flushes), (1, 1));
        assert_eq!(s.device.requests, 5);
    }
}

#[test]
fn buffers_straddling_two_memory_regions() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    rig.init_all();
    let m = rig.driver.mem().clone();
    let buf = GuestAddress(REGION_SPLIT - 1536);
    let d = data(4096, 3);
    m.write_slice(&d, buf).unwrap();
    let build = |rig: &mut Rig, t: u32, writable: bool| {
        let h = rig.driver.alloc(16);
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&t.to_le_bytes());
        raw[8..].copy_from_slice(&20u64.to_le_bytes());
        m.write_slice(&raw, h).unwrap();
        let s = rig.driver.alloc(1);
        rig.driver.add_chain(&[
            Buf::readable(h, 16),
            Buf {
                addr: buf,
                len: 4096,
                writable,
            },
            Buf::writable(s, 1),
        ]);
        s
    };
    let s = build(&mut rig, VIRTIO_BLK_T_OUT, false);
    rig.driver.notify();
    rig.driver.wait_used(1);
    assert_eq!(m.read_obj::<u8>(s).unwrap(), OK);
    assert_eq!(rig.file()[20 * 512..28 * 512], d[..]);
    m.write_slice(&[0u8; 4096], buf).unwrap();
    let s = build(&mut rig, VIRTIO_BLK_T_IN, true);
    rig.driver.notify();
    assert_eq!(rig.driver.wait_used(1)[0].1, 4097);
    assert_eq!(m.read_obj::<u8>(s).unwrap(), OK);
    let mut got = vec![0u8; 4096];
    m.read_slice(&mut got, buf).unwrap();
    assert_eq!(got, d);
}

#[test]
fn many_requests_in_flight_all_complete() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    rig.init_all();
    // 80 chains of 3 descriptors: nearly the whole ring, one notification.
    let reqs: Vec<_> = (0..80u64)
        .map(|i| rig.driver.blk_write(i * 2, &data(1024, i as u8)))
        .collect();
    let refs: Vec<_> = reqs.iter().collect();
    assert!(rig.run(&refs).iter().all(|&s| s == (OK, 1)));
    let file = rig.file();
    for i in 0..80usize {
        assert_eq!(file[i * 1024..(i + 1) * 1024], data(1024, i as u8)[..]);
    }
    assert_eq!(file[160 * 512..], pattern(SECTORS * 512)[160 * 512..]);
}

#[test]
fn more_requests_than_the_disk_queue_depth_are_throttled_not_lost() {
    // O_DIRECT writes stay in flight on the ring; buffered writes in
    // writeback may complete inline, so the queue would fill only by chance.
    let Some(mut rig) = rig(Opts {
        cache: CacheMode::None,
        ..Opts::default()
    }) else {
        return;
    };
    rig.init_all();
    // Indirect tables (which virtio-queue follows) fit 250 requests in the
    // ring: more than the disk's depth of block::QUEUE_DEPTH.
    let n = 250u64;
    assert!(n as usize > block::QUEUE_DEPTH);
    let m = rig.driver.mem().clone();
    // Whether the device sees all 250 at once depends on when its thread
    // wakes; a few rounds make the back-pressure path all but certain.
    let mut rounds = 0;
    while rounds < 5 && rig.stats().device.throttled == 0 {
        rounds += 1;
        round_of_requests(&mut rig, &m, n);
    }
    let s = rig.stats();
    assert_eq!(s.device.requests, n * rounds);
    assert!(
        s.device.throttled >= 1,
        "the disk queue never filled up in {rounds} rounds"
    );
}

/// Submits `n` 1 KiB writes through indirect tables with one notification,
/// waits for all, and checks their statuses and data.
fn round_of_requests(rig: &mut Rig, m: &vm_memory::GuestMemoryMmap, n: u64) {
    let mut statuses = Vec::new();
    for i in 0..n {
        let h = rig.driver.alloc(16);
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        raw[8..].copy_from_slice(&(i * 2).to_le_bytes());
        m.write_slice(&raw, h).unwrap();
        let d = rig.driver.alloc(1024);
        m.write_slice(&data(1024, i as u8), d).unwrap();
        let s = rig.driver.alloc(1);
        rig.driver.add_indirect_chain(&[
            Buf::readable(h, 16),
            Buf::readable(d, 1024),
            Buf::writable(s, 1),
        ]);
        statuses.push(s);
    }
    rig.driver.notify();
    assert_eq!(rig.driver.wait_used(n as usize).len(), n as usize);
    for s in statuses {
        assert_eq!(m.read_obj::<u8>(s).unwrap(), OK);
    }
    let file = rig.file();
    for i in 0..n as usize {
        assert_eq!(
            file[i * 1024..(i + 1) * 1024],
            data(1024, i as u8)[..],
            "request {i}"
        );
    }
}

#[test]
fn get_id_with_long_and_short_serials() {
    let long = "0123456789abcdefghijKLMNOP".to_string();
    for (serial, want) in [
        (Some(long), b"0123456789abcdefghij".to_vec()),
        (Some("vda-1".to_string()), {
            let mut v = b"vda-1".to_vec();
            v.resize(20, 0);
            v
        }),
        (None, vec![0; 20]),
    ] {
        let Some(mut rig) = rig(Opts {
            serial,
            ..Opts::default()
        }) else {
            return;
        };
        rig.init_all();
        let r = rig.driver.get_id(20);
        rig.driver
            .mem()
            .write_slice(&[0xee; 20], r.data[0].addr)
            .unwrap();
        assert_eq!(rig.run(&[&r]), vec![(OK, 21)]);
        let mut got = vec![0u8; 20];
        rig.driver
            .mem()
            .read_slice(&mut got, r.data[0].addr)
            .unwrap();
        assert_eq!(got, want);
        // A short buffer gets what fits, nothing past it.
        let r = rig.driver.get_id(4);
        let after = GuestAddress(r.data[0].addr.0 + 4);
        rig.driver.mem().write_obj(0xeeu8, after).unwrap();
        assert_eq!(rig.run(&[&r]), vec![(OK, 5)]);
        assert_eq!(rig.driver.mem().read_obj::<u8>(after).unwrap(), 0xee);
    }
}

fn segment(rig: &mut Rig, t: u32, sector: u64, sectors: u32, flags: u32) -> (u8, u32) {
    let r = rig.driver.blk_request(t, 0, &[16], false);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&sector.to_le_bytes());
    raw[8..12].copy_from_slice(&sectors.to_le_bytes());
    raw[12..].copy_from_slice(&flags.to_le_bytes());
    rig.driver.mem().write_slice(&raw, r.data[0].addr).unwrap();
    rig.run(&[&r])[0]
}

#[test]
fn discard_and_write_zeroes() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    let f = rig.init_all();
    let mut want = pattern(SECTORS * 512);
    if f & bit(VIRTIO_BLK_F_WRITE_ZEROES) != 0 {
        assert_eq!(
            segment(&mut rig, VIRTIO_BLK_T_WRITE_ZEROES, 8, 8, 0),
            (OK, 1)
        );
        assert_eq!(
            segment(&mut rig, VIRTIO_BLK_T_WRITE_ZEROES, 32, 8, 1),
            (OK, 1)
        );
        want[8 * 512..16 * 512].fill(0);
        want[32 * 512..40 * 512].fill(0);
        assert_eq!(rig.file(), want);
        // Unknown flag: UNSUPP, nothing written.
        assert_eq!(
            segment(&mut rig, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 2),
            (UNSUPP, 1)
        );
        assert_eq!(rig.file(), want);
    } else {
        eprintln!("SKIP: write-zeroes (not supported on this file system)");
    }
    if f & bit(VIRTIO_BLK_F_DISCARD) != 0 {
        assert_eq!(segment(&mut rig, VIRTIO_BLK_T_DISCARD, 64, 16, 0), (OK, 1));
        want[64 * 512..80 * 512].fill(0);
        assert_eq!(rig.file(), want);
        assert_eq!(rig.file().len() as u64, SECTORS * 512, "size kept");
        // §5.2.6.2: unmap on a discard is UNSUPP.
        assert_eq!(
            segment(&mut rig, VIRTIO_BLK_T_DISCARD, 96, 8, 1),
            (UNSUPP, 1)
        );
        assert_eq!(
            segment(&mut rig, VIRTIO_BLK_T_DISCARD, SECTORS - 4, 8, 0),
            (IOERR, 1)
        );
        assert_eq!(rig.file(), want);
    } else {
        assert_eq!(
            segment(&mut rig, VIRTIO_BLK_T_DISCARD, 64, 16, 0),
            (UNSUPP, 1)
        );
        eprintln!("SKIP: discard (not supported on this file system)");
    }
}

#[test]
fn invalid_requests_get_ioerr_or_unsupp_and_touch_nothing() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    rig.init_all();
    let image = rig.file();
    let m = rig.driver.mem().clone();
    let hdr = |rig: &mut Rig, t: u32, sector: u64| {
        let a = rig.driver.alloc(16);
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&t.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&raw, a).unwrap();
        a
    };
    let cases: Vec<(&str, Vec<Buf>, u8)> = {
        let mut v = Vec::new();
        let h = hdr(&mut rig, VIRTIO_BLK_T_OUT, 0);
        let d = rig.driver.alloc(512);
        let s = rig.driver.alloc(1);
        v.push((
            "data not a multiple of 512",
            vec![
                Buf::readable(h, 16),
                Buf::readable(d, 511),
                Buf::writable(s, 1),
            ],
            IOERR,
        ));
        v.push((
            "write data device-writable",
            vec![
                Buf::readable(h, 16),
                Buf::writable(d, 512),
                Buf::writable(s, 1),
            ],
            IOERR,
        ));
        let past = hdr(&mut rig, VIRTIO_BLK_T_OUT, SECTORS);
        v.push((
            "range past capacity",
            vec![
                Buf::readable(past, 16),
                Buf::readable(d, 512),
                Buf::writable(s, 1),
            ],
            IOERR,
        ));
        let over = hdr(&mut rig, VIRTIO_BLK_T_OUT, u64::MAX);
        v.push((
            "sector overflow",
            vec![
                Buf::readable(over, 16),
                Buf::readable(d, 512),
                Buf::writable(s, 1),
            ],
            IOERR,
        ));
        let rpast = hdr(&mut rig, VIRTIO_BLK_T_IN, SECTORS - 1);
        let rd = rig.driver.alloc(1024);
        v.push((
            "read past capacity",
            vec![
                Buf::readable(rpast, 16),
                Buf::writable(rd, 1024),
                Buf::writable(s, 1),
            ],
            IOERR,
        ));
        let unknown = hdr(&mut rig, 0x99, 0);
        v.push((
            "unknown type",
            vec![
                Buf::readable(unknown, 16),
                Buf::readable(d, 512),
                Buf::writable(s, 1),
            ],
            UNSUPP,
        ));
        let scsi = hdr(&mut rig, 2, 0);
        v.push((
            "SCSI command",
            vec![Buf::readable(scsi, 16), Buf::writable(s, 1)],
            UNSUPP,
        ));
        // §2.7.4.2: device-readable descriptors come first.
        let h2 = hdr(&mut rig, VIRTIO_BLK_T_IN, 0);
        v.push((
            "readable after writable",
            vec![
                Buf::readable(h2, 16),
                Buf::writable(d, 512),
                Buf::readable(h2, 16),
                Buf::writable(s, 1),
            ],
            IOERR,
        ));
        v
    };
    for (what, bufs, want) in cases {
        m.write_slice(
            &[0xab; 512],
            bufs.iter()
                .find(|b| b.len == 512 || b.len == 511)
                .map_or(GuestAddress(0x30_0000), |b| b.addr),
        )
        .unwrap();
        let status_addr =
            GuestAddress(bufs.last().unwrap().addr.0 + u64::from(bufs.last().unwrap().len) - 1);
        m.write_obj(0xffu8, status_addr).unwrap();
        rig.driver.add_chain(&bufs);
        rig.driver.notify();
        let used = rig.driver.wait_used(1);
        assert_eq!(used[0].1, 1, "{what}: used length");
        assert_eq!(m.read_obj::<u8>(status_addr).unwrap(), want, "{what}");
        assert_eq!(rig.file(), image, "{what} changed the image");
    }
    assert_eq!(rig.driver.status() & NEEDS_RESET, 0);
    assert!(wait_for(
        || rig.stats().device.bad_requests == 6 && rig.stats().device.unsupported == 2
    ));
    // The device still works.
    assert_eq!(rig.read(0, 512), pattern(512));
}

#[test]
fn read_only_disk_refuses_writes_but_flushes_and_reads() {
    let Some(mut rig) = rig(Opts {
        read_only: true,
        ..Opts::default()
    }) else {
        return;
    };
    rig.init_all();
    let r = rig.driver.blk_request(VIRTIO_BLK_T_OUT, 0, &[512], false);
    rig.driver
        .mem()
        .write_slice(&[0u8; 512], r.data[0].addr)
        .unwrap();
    assert_eq!(rig.run(&[&r]), vec![(IOERR, 1)]);
    assert_eq!(segment(&mut rig, VIRTIO_BLK_T_DISCARD, 0, 8, 0), (IOERR, 1));
    assert_eq!(
        segment(&mut rig, VIRTIO_BLK_T_WRITE_ZEROES, 0, 8, 0),
        (IOERR, 1)
    );
    rig.flush();
    assert_eq!(rig.read(0, 512), pattern(512));
    assert_eq!(rig.file(), pattern(SECTORS * 512));
}

#[test]
fn malformed_chains_need_reset_and_a_reset_recovers() {
    let Some(mut rig) = rig(Opts::default()) else {
        return;
    };
    type Craft = fn(&mut Rig);
    let crafts: [(&str, Craft); 6] = [
        ("fewer than 16 readable bytes", |rig| {
            let h = rig.driver.alloc(16);
            let d = rig.driver.alloc(512);
            let s = rig.driver.alloc(1);
            rig.driver.add_chain(&[
                Buf::readable(h, 8),
                Buf::writable(d, 512),
                Buf::writable(s, 1),
            ]);
        }),
        ("header writable", |rig| {
            let h = rig.driver.alloc(16);
            let s = rig.driver.alloc(1);
            rig.driver
                .add_chain(&[Buf::writable(h, 16), Buf::writable(s, 1)]);
        }),
        ("status not writable", |rig| {
            let r = rig.driver.alloc(16);
            let s = rig.driver.alloc(1);
            rig.driver
                .add_chain(&[Buf::readable(r, 16), Buf::readable(s, 1)]);
        }),
        ("descriptor outside guest memory", |rig| {
            let r = rig.driver.alloc(16);
            let s = rig.driver.alloc(1);
            rig.driver.add_chain(&[
                Buf::readable(r, 16),
                Buf::writable(GuestAddress(MEM_SIZE - 256), 512),
                Buf::writable(s, 1),
            ]);
        }),
        ("loop", |rig| {
            let h = rig.driver.alloc(16);
            rig.driver.write_desc(0, h.0, 16, 1, 1);
            rig.driver.write_desc(1, h.0, 16, 1, 0);
            rig.driver.push_avail(0);
        }),
        ("head index past the queue", |rig| {
            rig.driver.push_avail(QUEUE + 5)
        }),
    ];
    for (i, (what, craft)) in crafts.iter().enumerate() {
        rig.init_all();
        let irq_status_before = rig.driver.read32(0x60);
        assert_eq!(irq_status_before & 2, 0);
        craft(&mut rig);
        rig.driver.notify();
        assert!(rig.wait_needs_reset(), "{what}: no NEEDS_RESET");
        assert_eq!(
            rig.driver.read32(0x60) & 2,
            2,
            "{what}: no config interrupt"
        );
        // The queue is stopped: a valid request is not served.
        let idx = rig.driver.used_idx();
        rig.driver.blk_request(VIRTIO_BLK_T_IN, 0, &[512], true);
        rig.driver.notify();
        rig.assert_used_stays(idx);
        assert!(wait_for(|| rig.stats().device.needs_reset == i as u64 + 1));
        // A reset clears it, and the device serves again.
        rig.driver.reset();
        assert_eq!(rig.driver.status(), 0);
        rig.init_all();
        assert_eq!(rig.read(0, 512), pattern(512), "{what}: after reset");
    }
    assert_eq!(rig.file(), pattern(SECTORS * 512));
}

#[test]
fn sub_block_requests_on_a_4096_byte_host_block_in_every_mode() {
    for cache in CacheMode::ALL {
        let Some(mut rig) = rig(Opts {
            cache,
            block_size: 4096,
            ..Opts::default()
        }) else {
            continue;
        };
        rig.init_all();
        // The guest is told the host block; §5.2.5: units stay 512 bytes.
        let blk_size = u32::from_le_bytes(rig.driver.read_config(20, 4).try_into().unwrap());
        assert_eq!(blk_size, 4096, "{cache}");
        let d = data(1024, 9);
        rig.write(7, &d); // sectors 7 and 8: across the first block boundary
        assert_eq!(rig.read(7, 1024), d, "{cache}");
        assert_eq!(rig.read(1, 512), pattern(1024)[512..].to_vec(), "{cache}");
        rig.flush();
        let mut want = pattern(SECTORS * 512);
        want[7 * 512..9 * 512].copy_from_slice(&d);
        assert_eq!(rig.file(), want, "{cache}");
        let json = serde_json::to_value(rig.handle.shutdown()).unwrap();
        assert_eq!(json["disk"]["read_modify_writes"], 1, "{cache}");
        assert_eq!(json["disk"]["widened_reads"], 2, "{cache}");
        assert_eq!(json["disk"]["errors"], 0, "{cache}");
    }
}

/// `BlockOptions::inline` (the fuzzers' mode): with no I/O thread, the
/// message after a notify (here a `writeback` write) runs the batch to the
/// end before it returns: the used entries are there at once, no waiting.
#[test]
fn an_inline_device_serves_the_queue_before_the_next_message_returns() {
    for engine in engines() {
        let Some(mut rig) = rig(Opts {
            engine: Some(engine),
            inline: true,
            ..Opts::default()
        }) else {
            continue;
        };
        rig.init_all();
        let data = vec![0xa5u8; 4096];
        let w = rig.driver.blk_write(8, &data);
        let r = rig.driver.blk_request(VIRTIO_BLK_T_IN, 8, &[4096], true);
        rig.driver.notify();
        let wce = rig.wce();
        rig.set_wce(wce);
        assert_eq!(rig.driver.used_idx(), 2, "{engine:?}: not served inline");
        assert_eq!(rig.driver.status_of(&w), OK);
        assert_eq!(rig.driver.status_of(&r), OK);
        let mut read = vec![0u8; 4096];
        rig.driver
            .mem()
            .read_slice(&mut read, r.data[0].addr)
            .unwrap();
        assert_eq!(read, data, "{engine:?}");
        assert_eq!(&rig.file()[8 * 512..8 * 512 + 4096], &data[..]);
    }
}
