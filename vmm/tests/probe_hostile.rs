//! The probe's `hostile` scenario through the `ferrite` binary: descriptor
//! chains a hostile guest might craft (a buffer in the MMIO hole, past the
//! end of RAM, wrapping around the address space; a chain longer than the
//! queue, a loop, a next index past the table) must each be refused with
//! DEVICE_NEEDS_RESET without touching the image, and the device must work
//! again after the guest resets it. Two disks cover both I/O engines:
//! writeback on io_uring and directsync on the thread pool.

#[path = "common/probe.rs"]
mod probe_util;

use probe_util::*;

/// The cases, in the order the probe runs them.
const CASES: [&str; 6] = [
    "mmio_hole",
    "past_ram",
    "wrap",
    "long_chain",
    "loop",
    "bad_next",
];

/// Seed of the image's initial contents.
const FILL_SEED: u64 = 0x5eed_0000;
/// Where the probe's recovery write lands (sector 40, 4 KiB) and the seed
/// of the last one (`0xa000 + case`).
const RECOVERY_OFFSET: usize = 40 * 512;
const RECOVERY_SEED: u64 = 0xa000 + CASES.len() as u64 - 1;

/// The disks: cache mode and engine. io_uring is dropped where the kernel
/// lacks it (said on stderr).
fn disks() -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    if block::io_uring_supported() {
        v.push(("writeback", "io_uring"));
    } else {
        eprintln!("SKIP: io_uring is not available here: writeback/io_uring not checked");
    }
    v.push(("directsync", "threads"));
    v
}

#[test]
fn hostile_chains_are_refused_and_the_device_recovers() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = probe_kernel(dir.path());
    let stats_path = dir.path().join("stats.json");
    let fill = pattern(FILL_SEED, IMAGE_SIZE as usize);
    let disks = disks();
    let images: Vec<_> = disks
        .iter()
        .map(|(mode, engine)| {
            let p = dir.path().join(format!("{mode}-{engine}.img"));
            std::fs::write(&p, &fill).unwrap();
            p
        })
        .collect();
    let drives: Vec<String> = disks
        .iter()
        .zip(&images)
        .map(|((mode, engine), p)| drive(p, &format!("cache={mode},aio={engine}")))
        .collect();
    // 64 MiB of RAM: the probe finds its end in the PVH memory map.
    let mut args = probe_args(
        &kernel,
        "probe=hostile",
        &drives,
        &["--stats-json", stats_path.to_str().unwrap()],
    );
    let mem = args.iter().position(|a| a == "--memory").unwrap() + 1;
    args[mem] = "64M".into();
    let run = run_command(env!("CARGO_BIN_EXE_ferrite"), &args, LIMIT);
    run.assert_pass();
    let stats = stats(&stats_path);

    for (i, ((mode, engine), img)) in disks.iter().zip(&images).enumerate() {
        let disk = i as u64;
        let ctx = || format!("disk {disk} ({mode}, {engine})\n{}", run.describe());
        let lines = run.disk_lines("hostile", disk);
        let names: Vec<_> = lines.iter().filter_map(|l| l.get("case")).collect();
        assert_eq!(names, CASES, "{}", ctx());
        for line in &lines {
            let outcome = line.get("outcome").unwrap_or("");
            assert!(
                outcome == "needs_reset" || outcome == "no_completion",
                "case {:?}: outcome {outcome}: {}",
                line.get("case"),
                ctx()
            );
            assert_eq!(line.num("recovered"), Some(1), "{}", ctx());
            assert_eq!(line.get("result"), Some("ok"), "{}", ctx());
        }

        // Every case was a refused write to sector 64: the image holds its
        // fill except the 4 KiB the recovery writes wrote.
        let got = std::fs::read(img).unwrap();
        assert_eq!(got.len(), fill.len(), "{}", ctx());
        let rec = RECOVERY_OFFSET..RECOVERY_OFFSET + 4096;
        assert_eq!(
            got[rec.clone()],
            pattern(RECOVERY_SEED, 4096)[..],
            "{}",
            ctx()
        );
        assert!(
            got[..rec.start] == fill[..rec.start] && got[rec.end..] == fill[rec.end..],
            "image changed outside the recovery write: {}",
            ctx()
        );

        // The device counted one DEVICE_NEEDS_RESET per case.
        let s = &stats["disks"][i];
        assert_eq!(s["cache"], *mode, "{s}");
        assert_eq!(s["engine"], *engine, "{s}");
        assert_eq!(s["device"]["needs_reset"], CASES.len(), "{s}");
        assert_eq!(s["disk"]["errors"], 0, "{s}");
    }
}

/// Guest RAM of the bounce run.
const BOUNCE_GUEST_MIB: u64 = 64;
/// What ferrite may hold beyond guest RAM (SPECIFICATION.md 6.7): the
/// process itself (code, stacks, rings, tables) plus, per disk, the bounce
/// budget (128 requests x 64 KiB = 8 MiB) and request state.
const BEYOND_GUEST_MIB: u64 = 24;

/// The probe's `bounce` scenario on two directsync disks (both engines):
/// 4 writes then 32 reads in flight, each 254 descriptors of 64 KiB at the
/// same odd address (16 MiB of bounce each without the bound). ferrite's
/// peak resident memory beyond guest RAM stays under the bound, every
/// request succeeds, and the image holds what was written.
#[test]
fn maximum_size_misaligned_requests_stay_within_the_memory_bound() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let kernel = probe_kernel(dir.path());
    let mut engines = vec!["threads"];
    if block::io_uring_supported() {
        engines.insert(0, "io_uring");
    } else {
        eprintln!("SKIP: io_uring is not available here: only the threads engine checked");
    }
    let images: Vec<_> = engines
        .iter()
        .map(|e| image(dir.path(), &format!("{e}.img"), 64 << 20))
        .collect();
    let drives: Vec<String> = engines
        .iter()
        .zip(&images)
        .map(|(e, p)| drive(p, &format!("cache=directsync,aio={e}")))
        .collect();
    let stats_path = dir.path().join("stats.json");
    let mut args = probe_args(
        &kernel,
        "probe=bounce",
        &drives,
        &["--stats-json", stats_path.to_str().unwrap()],
    );
    let mem = args.iter().position(|a| a == "--memory").unwrap() + 1;
    args[mem] = format!("{BOUNCE_GUEST_MIB}M");
    let (run, peak_kib) = run_command_peak_rss(env!("CARGO_BIN_EXE_ferrite"), &args, LIMIT);
    run.assert_pass();
    // Counting all of guest RAM as resident over-credits ferrite (the
    // probe touches a few MiB of it): the check is conservative.
    let beyond_mib = (peak_kib as f64 - (BOUNCE_GUEST_MIB << 10) as f64) / 1024.0;
    eprintln!("bounce: peak RSS {peak_kib} KiB, {beyond_mib:.1} MiB beyond guest RAM");
    assert!(
        peak_kib > 0 && beyond_mib < BEYOND_GUEST_MIB as f64,
        "peak RSS {peak_kib} KiB: {beyond_mib:.1} MiB beyond {BOUNCE_GUEST_MIB} MiB of guest RAM, bound {BEYOND_GUEST_MIB} MiB\n{}",
        run.describe()
    );
    let stats = stats(&stats_path);
    let block = pattern(0xb0b0, 64 << 10);
    for (i, (engine, img)) in engines.iter().zip(&images).enumerate() {
        let lines = run.disk_lines("bounce", i as u64);
        assert_eq!(lines.len(), 1, "{engine}\n{}", run.describe());
        assert_eq!(lines[0].get("result"), Some("ok"), "{engine}");
        let s = &stats["disks"][i]["disk"];
        assert_eq!(
            (s["writes"].as_u64(), s["reads"].as_u64()),
            (Some(4), Some(32)),
            "{s}"
        );
        assert_eq!(s["errors"], 0, "{s}");
        let peak = s["bounce_bytes_peak"].as_u64().unwrap_or(u64::MAX);
        assert!(peak > 0 && peak <= 8 << 20, "{engine}: bounce peak {peak}");
        // Each write put 254 copies of the 64 KiB pattern 16 MiB apart.
        let got = std::fs::read(img).unwrap();
        for w in 0..4usize {
            for k in 0..254usize {
                let at = w * (16 << 20) + k * (64 << 10);
                assert!(
                    got[at..at + (64 << 10)] == block[..],
                    "{engine}: write {w} copy {k}"
                );
            }
        }
    }
}
