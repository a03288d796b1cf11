//! The probe guest through the `ferrite` binary: every scenario in every
//! cache mode, the guest's view of FLUSH and the write cache against
//! DESIGN.md, the image contents on the host afterwards, exit statuses,
//! read-only drives and a 2-vCPU boot.

#[path = "common/probe.rs"]
mod probe_util;

use std::os::unix::fs::FileExt;

use probe_util::*;

const F_FLUSH: u64 = 1 << 9;
const F_CONFIG_WCE: u64 = 1 << 11;
const F_RO: u64 = 1 << 5;

/// `stream` first, then the scenarios that write at fixed places, so the
/// final image holds both and can be checked block by block.
const ALL_WRITABLE: &str = "probe=info,stream,rw,flush,wce,getid,discard,zeroes \
                            stream.count=16 stream.depth=4 stream.flush_every=4";

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn every_scenario_in_every_cache_mode() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = probe_kernel(dir.path());
    let stats_path = dir.path().join("stats.json");
    let (images, drives) = drive_per_mode(dir.path(), IMAGE_SIZE, |m| format!("serial=sn-{m}"));
    let run = run_probe(
        &kernel,
        ALL_WRITABLE,
        &drives,
        &["--stats-json", stats_path.to_str().unwrap()],
    );
    run.assert_pass();
    let stats = stats(&stats_path);
    for (i, mode) in MODES.into_iter().enumerate() {
        let disk = i as u64;
        let ctx = || format!("disk {disk} ({mode})\n{}", run.describe());
        run.assert_disk_ok(
            disk,
            &["stream", "rw", "flush", "wce", "getid", "discard", "zeroes"],
        );
        // The guest's view, as DESIGN.md's table says.
        let info = run.info(disk);
        let offered = info.num("features").unwrap();
        let negotiated = info.num("negotiated").unwrap();
        assert_ne!(offered & F_FLUSH, 0, "FLUSH offered: {}", ctx());
        assert_ne!(offered & F_CONFIG_WCE, 0, "CONFIG_WCE offered: {}", ctx());
        assert_ne!(negotiated & F_FLUSH, 0, "{}", ctx());
        assert_eq!(offered & F_RO, 0, "{}", ctx());
        let want_wb = u64::from(mode.default_write_cache());
        assert_eq!(info.num("writeback"), Some(want_wb), "{}", ctx());
        // The write cache toggled both ways and read back each time.
        let toggles: Vec<(u64, u64)> = run
            .disk_lines("wce", disk)
            .iter()
            .map(|l| {
                (
                    l.num("writeback_set").unwrap(),
                    l.num("writeback_read").unwrap(),
                )
            })
            .collect();
        assert!(toggles.contains(&(0, 0)), "{toggles:?} {}", ctx());
        assert!(toggles.contains(&(1, 1)), "{toggles:?} {}", ctx());
        // The probe restored the reset value; the device reports it.
        let s = &stats["disks"][i];
        assert_eq!(s["cache"], mode.name(), "{s}");
        assert_eq!(s["write_cache"], mode.default_write_cache(), "{s}");
        assert_eq!(s["disk"]["errors"], 0, "{s}");
        // GET_ID returns the serial.
        let getid = &run.disk_lines("getid", disk)[0];
        assert_eq!(
            getid.get("id"),
            Some(format!("sn-{mode}").as_str()),
            "{}",
            ctx()
        );
        // The read one block past the end got IOERR.
        assert_eq!(
            run.disk_lines("rw", disk)[0].num("beyond_end_status"),
            Some(1)
        );

        // The image on the host: stream blocks 0..15 hold their seq except
        // where later scenarios wrote: rw (sector 1, 512 bytes; sectors
        // 8..15), flush/wce (16..23), zeroes (24..31).
        let img = &images[i];
        let blocks = read_at(img, 0, 16 * 4096);
        let block = |b: usize| &blocks[b * 4096..(b + 1) * 4096];
        assert_eq!(&block(0)[..512], &stream_block(0)[..512], "{}", ctx());
        assert_eq!(&block(0)[512..1024], &pattern(0x1000, 512)[..], "{}", ctx());
        assert_eq!(&block(0)[1024..], &stream_block(0)[1024..], "{}", ctx());
        assert_eq!(block(1), &pattern(0x2000, 4096)[..], "{}", ctx());
        assert_eq!(block(3), &[0u8; 4096][..], "write-zeroes: {}", ctx());
        for seq in 4..16u64 {
            assert_eq!(stream_seq(block(seq as usize)), Some(seq), "{}", ctx());
        }
        let last = read_at(img, IMAGE_SIZE - 4096, 4096);
        assert_eq!(last, pattern(0x3000, 4096), "last 4 KiB: {}", ctx());
        assert_eq!(std::fs::metadata(img).unwrap().len(), IMAGE_SIZE);
    }
}

#[test]
fn malformed_chains_need_a_reset_in_every_cache_mode() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = probe_kernel(dir.path());
    let (images, drives) = drive_per_mode(dir.path(), IMAGE_SIZE, |_| String::new());
    let run = run_probe(&kernel, "probe=badchain", &drives, &[]);
    run.assert_pass();
    for (i, img) in images.iter().enumerate() {
        run.assert_disk_ok(i as u64, &["badchain"]);
        for kind in ["short_header", "readonly_status"] {
            let line = run
                .disk_lines("badchain", i as u64)
                .into_iter()
                .find(|l| l.get("kind") == Some(kind))
                .unwrap_or_else(|| panic!("no {kind} line\n{}", run.describe()));
            assert_eq!(
                line.get("outcome"),
                Some("needs_reset"),
                "{}",
                run.describe()
            );
            assert_eq!(line.num("recovered"), Some(1), "{}", run.describe());
        }
        // The write after each recovery reached the image.
        assert_eq!(read_at(img, 32 * 512, 4096), pattern(0x9000, 4096));
    }
}

#[test]
fn read_only_drives_refuse_writes_in_every_cache_mode() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = probe_kernel(dir.path());
    let drives: Vec<String> = MODES
        .iter()
        .map(|m| {
            let p = image(dir.path(), &format!("{m}.img"), IMAGE_SIZE);
            drive(&p, &format!("cache={m},readonly=on"))
        })
        .collect();
    let run = run_probe(&kernel, "probe=info,readonly,getid", &drives, &[]);
    run.assert_pass();
    for (i, mode) in MODES.into_iter().enumerate() {
        let disk = i as u64;
        run.assert_disk_ok(disk, &["readonly", "getid"]);
        let info = run.info(disk);
        assert_ne!(info.num("features").unwrap() & F_RO, 0, "{mode}");
        assert_ne!(info.num("features").unwrap() & F_FLUSH, 0, "{mode}");
        assert_eq!(
            run.disk_lines("readonly", disk)[0].num("write_status"),
            Some(1)
        );
        let img = std::fs::read(dir.path().join(format!("{mode}.img"))).unwrap();
        assert!(
            img.iter().all(|&b| b == 0),
            "{mode}: a read-only image changed"
        );
    }
}

#[test]
fn two_vcpus_boot_the_probe() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = probe_kernel(dir.path());
    let img = image(dir.path(), "a.img", IMAGE_SIZE);
    let run = run_probe(
        &kernel,
        "probe=info,rw,flush,wce",
        &[drive(&img, "cache=none")],
        &["--cpus", "2"],
    );
    run.assert_pass();
    run.assert_disk_ok(0, &["rw", "flush", "wce"]);
}

#[test]
fn failing_probe_exits_with_the_fail_status() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = probe_kernel(dir.path());
    let img = image(dir.path(), "a.img", IMAGE_SIZE);
    // `readonly` on a writable drive: the write succeeds, which the
    // scenario counts as a failure.
    let run = run_probe(
        &kernel,
        "probe=readonly",
        &[drive(&img, "cache=writethrough")],
        &[],
    );
    assert_eq!(run.status, Some(FAIL), "{}", run.describe());
    assert!(
        matches!(run.verdict(), Some((false, _))),
        "{}",
        run.describe()
    );
    // No disk at all: the probe fails before any I/O.
    let run = run_probe(&kernel, "probe=info", &[], &[]);
    assert_eq!(run.status, Some(FAIL), "{}", run.describe());
    assert_eq!(run.verdict(), Some((false, "no_disks".into())));
}
