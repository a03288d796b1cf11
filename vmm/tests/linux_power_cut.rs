//! Power cuts under a real Linux guest: the root disk's `ackwriter`
//! (`resources/guest/rootfs/ackwriter.c`) writes numbered 4 KiB blocks to
//! the extra disks (vdb, vdc, ...), one writer per disk, and says on the
//! console which writes completed (`ack seq=N`) and which fdatasyncs
//! returned (`flushed upto=N`). The extra disks' images live on `crashfs`,
//! served by this test, which keeps whatever was not made durable volatile.
//! The test SIGKILLs ferrite at a random moment after every writer has made
//! progress, cuts the power, and checks each backing image against what its
//! guest was promised:
//!
//! - a write the guest made with `O_DIRECT|O_DSYNC` survives in every mode
//!   but `unsafe` (with a write-back cache Linux adds a flush or FUA);
//! - buffered writes survive up to the last `fdatasync` that returned;
//! - in `writeback`, once the guest switched the disk to "write through",
//!   every plain `O_DIRECT` write acknowledged after the switch survives;
//! - `unsafe` loses writes the guest flushed (it promises nothing), which
//!   shows that the check can fail.
//!
//! Each configuration is one disk, and one boot carries them all, once per
//! I/O engine: the disks are independent (own image, own I/O thread, own
//! checks), and a boot costs 30-40 s here. Buffered writes are checked only
//! up to the last flush in every mode: a buffered write that returned may
//! still sit in the guest's own page cache, which no host can keep.
//!
//! `FERRITE_POWER_CUTS=N` runs N cuts per engine (default 1);
//! `scripts/linux-power-cuts` runs a campaign and sums the figures.

#[path = "common/guest.rs"]
mod guest;
#[path = "common/linux.rs"]
mod linux;
#[path = "common/probe.rs"]
mod probe;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use block::CacheMode;
use crashfs::CrashFs;
use linux::{guest, report, Running, HOST_KVM_ARGS};

/// Size of each written disk: more blocks than a run writes before the kill.
const DISK_SIZE: u64 = 16 << 20;
const BLOCK: usize = 4096;
/// `ackwriter`'s tag in the high half of every word of a written block.
const BLOCK_TAG: u64 = 0x4645_5252_0000_0000;
/// Acks each writer must have made before the kill may come.
const MIN_ACKS: usize = 8;
/// Longest a boot may take to get every writer going.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// The kill comes up to this long after every writer made progress.
const MAX_KILL_DELAY_MS: u64 = 1500;

/// How a writer writes (`ackwriter`'s STYLE and argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// `O_DIRECT|O_DSYNC`.
    Dsync,
    /// Buffered, `fdatasync` every 4 blocks.
    Buffered,
    /// `O_DIRECT`; the guest switches the disk to write through after 16.
    Toggle,
}

impl Style {
    fn arg(self) -> &'static str {
        match self {
            Style::Dsync => "dsync",
            Style::Buffered => "buffered:4",
            Style::Toggle => "toggle:16",
        }
    }
}

/// One disk of a power-cut boot.
#[derive(Clone, Copy, Debug)]
struct Config {
    mode: CacheMode,
    style: Style,
}

/// Every configuration, one disk each. All but the last promise durability.
const CONFIGS: [Config; 10] = [
    Config {
        mode: CacheMode::Writethrough,
        style: Style::Dsync,
    },
    Config {
        mode: CacheMode::DirectSync,
        style: Style::Dsync,
    },
    Config {
        mode: CacheMode::Writeback,
        style: Style::Dsync,
    },
    Config {
        mode: CacheMode::None,
        style: Style::Dsync,
    },
    Config {
        mode: CacheMode::Writethrough,
        style: Style::Buffered,
    },
    Config {
        mode: CacheMode::DirectSync,
        style: Style::Buffered,
    },
    Config {
        mode: CacheMode::Writeback,
        style: Style::Buffered,
    },
    Config {
        mode: CacheMode::None,
        style: Style::Buffered,
    },
    Config {
        mode: CacheMode::Writeback,
        style: Style::Toggle,
    },
    Config {
        mode: CacheMode::Unsafe,
        style: Style::Buffered,
    },
];

/// The guest device name of extra disk `i` (vda is the root).
fn dev_name(i: usize) -> String {
    format!("vd{}", (b'b' + i as u8) as char)
}

/// What one writer reported on the console.
#[derive(Debug, Default, Clone)]
struct Progress {
    acked: Vec<u64>,
    last_flushed: Option<u64>,
    write_through_from: Option<u64>,
    finished: bool,
    error: Option<String>,
}

impl Progress {
    /// Whether the writer got far enough for its promise to be tested.
    fn ready(&self, style: Style) -> bool {
        match style {
            Style::Dsync => self.acked.len() >= MIN_ACKS,
            Style::Buffered => self.last_flushed.is_some(),
            Style::Toggle => self
                .write_through_from
                .is_some_and(|from| self.acked.iter().filter(|&&s| s >= from).count() >= MIN_ACKS),
        }
    }

    /// The blocks the guest was promised are durable.
    fn promised(&self, style: Style) -> Vec<u64> {
        match style {
            Style::Dsync => self.acked.clone(),
            Style::Buffered => self.last_flushed.map_or(Vec::new(), |n| (0..=n).collect()),
            Style::Toggle => {
                let from = self.write_through_from.unwrap_or(u64::MAX);
                self.acked.iter().copied().filter(|&s| s >= from).collect()
            }
        }
    }
}

/// Parses `PC <dev> <what> key=N` console lines into per-disk progress.
fn note(progress: &mut BTreeMap<String, Progress>, line: &str) {
    let mut words = line.split_whitespace();
    if words.next() != Some("PC") {
        return;
    }
    let (Some(dev), Some(what)) = (words.next(), words.next()) else {
        return;
    };
    let p = progress.entry(dev.to_string()).or_default();
    let num = |w: Option<&str>| {
        w.and_then(|kv| kv.split_once('='))
            .and_then(|(_, v)| v.parse().ok())
    };
    match what {
        "ack" => p.acked.extend(num(words.next())),
        "flushed" => p.last_flushed = num(words.next()).max(p.last_flushed),
        "wt" => p.write_through_from = num(words.next()),
        "done" => p.finished = true,
        "error" => p.error = Some(line.to_string()),
        _ => {}
    }
}

/// What a block of the image holds.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// Its own number in every word.
    Written,
    /// Zeros only.
    Absent,
    /// Its own number in some 512-byte sectors, zeros in the others.
    Torn,
    /// Anything else: data of another block, or garbage.
    Foreign,
}

fn examine(image: &[u8], seq: u64) -> Found {
    let block = &image[seq as usize * BLOCK..][..BLOCK];
    let want = (BLOCK_TAG | seq).to_le_bytes();
    let mut own = 0;
    let mut zero = 0;
    for sector in block.chunks(512) {
        if sector.chunks(8).all(|w| w == want) {
            own += 1;
        } else if sector.iter().all(|&b| b == 0) {
            zero += 1;
        } else {
            return Found::Foreign;
        }
    }
    match (own, zero) {
        (8, _) => Found::Written,
        (_, 8) => Found::Absent,
        _ => Found::Torn,
    }
}

/// The verdict on one disk after the cut.
#[derive(Debug, Default)]
struct Checked {
    promised: usize,
    lost: Vec<u64>,
    foreign: Vec<u64>,
}

/// Checks `image` against what the writer of `style` was told: every
/// promised block written in full, and no block anywhere holding data that
/// is not its own.
fn check_image(image: &[u8], p: &Progress, style: Style) -> Checked {
    let promised = p.promised(style);
    let lost = promised
        .iter()
        .copied()
        .filter(|&s| examine(image, s) != Found::Written)
        .collect();
    let foreign = (0..(image.len() / BLOCK) as u64)
        .filter(|&s| examine(image, s) == Found::Foreign)
        .collect();
    Checked {
        promised: promised.len(),
        lost,
        foreign,
    }
}

/// A seed for the kill delay, printed so that a run can be told apart.
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// A small PRNG step (splitmix64): enough to spread kill moments.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Totals of one or more cuts.
#[derive(Debug, Default)]
struct Totals {
    cuts: usize,
    promised: usize,
    lost: usize,
    unsafe_lost: usize,
}

/// One boot: writers on every configuration's disk, a kill at a random
/// moment, a power cut, and the checks. Returns the totals of the
/// durability-promising disks, or `None` where the host cannot run it.
fn cut_once(kernel: &Path, rootfs: &Path, aio: &str, rng: &mut u64) -> Option<Totals> {
    if let Some(reason) = crashfs::unavailable_reason() {
        eprintln!("SKIP: FUSE is not usable: {reason}");
        return None;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..CONFIGS.len()).map(dev_name).collect();
    for name in &names {
        let f = std::fs::File::create(backing.path().join(name)).unwrap();
        f.set_len(DISK_SIZE).unwrap();
    }
    let fs = CrashFs::mount(backing.path(), mnt.path()).expect("mount crashfs");
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path().join("rootfs.ext4");
    std::fs::copy(rootfs, &root).unwrap();

    let writers: Vec<String> = names
        .iter()
        .zip(CONFIGS)
        .map(|(n, c)| format!("{n}:{}", c.style.arg()))
        .collect();
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda rw reboot=k panic=-1 {HOST_KVM_ARGS} ferrite.powercut={}",
        writers.join(",")
    );
    // The root disk promises nothing and is thrown away: `unsafe` is fastest.
    let mut args = linux::boot_args(kernel, cmdline);
    args.extend([
        "--drive".into(),
        format!("file={},cache=unsafe", root.display()),
    ]);
    for (name, c) in names.iter().zip(CONFIGS) {
        args.push("--drive".into());
        args.push(format!(
            "file={},cache={},aio={aio}",
            fs.path(name).display(),
            c.mode
        ));
    }

    let mut vm = Running::spawn(&args);
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    let mut kill_at: Option<Instant> = None;
    let delay = Duration::from_millis(next_random(rng) % MAX_KILL_DELAY_MS);
    let mut all_ready_after = None;
    loop {
        if let Some(line) = vm.next_line(Duration::from_millis(20)) {
            note(&mut progress, &line);
        }
        let ready = names
            .iter()
            .zip(CONFIGS)
            .all(|(n, c)| progress.get(n).is_some_and(|p| p.ready(c.style)));
        if ready && kill_at.is_none() {
            all_ready_after = Some(vm.elapsed());
            kill_at = Some(Instant::now() + delay);
        }
        let gave_up =
            vm.elapsed() > BOOT_LIMIT || progress.values().any(|p| p.error.is_some() || p.finished);
        if gave_up || kill_at.is_some_and(|t| Instant::now() >= t) {
            vm.kill();
            break;
        }
    }
    // Every line printed before the kill is in the pipe: read to the end,
    // and judge by all of them.
    let ended = vm.wait(Duration::from_secs(30));
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    for line in &ended.console {
        note(&mut progress, line);
    }
    let stats = fs.stats();
    fs.power_cut();
    let ready_after = all_ready_after.unwrap_or_else(|| {
        panic!(
            "aio={aio}: the writers did not all get going (errors: {:?})\n{}",
            progress
                .values()
                .filter_map(|p| p.error.clone())
                .collect::<Vec<_>>(),
            ended.describe(60)
        )
    });
    assert_eq!(
        ended.status,
        None,
        "aio={aio}: ferrite ended on its own\n{}",
        ended.describe(60)
    );

    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for (name, c) in names.iter().zip(CONFIGS) {
        let image = std::fs::read(backing.path().join(name)).unwrap();
        let p = progress.get(name).cloned().unwrap_or_default();
        let checked = check_image(&image, &p, c.style);
        let label = format!("{} {:?} aio={aio}", c.mode, c.style);
        eprintln!(
            "{label} ({name}): {} acked, flushed upto {:?}, write through from {:?}: {} promised, {} lost, {} foreign",
            p.acked.len(),
            p.last_flushed,
            p.write_through_from,
            checked.promised,
            checked.lost.len(),
            checked.foreign.len()
        );
        if !checked.foreign.is_empty() {
            failures.push(format!(
                "{label}: blocks hold data not their own: {:?}",
                checked.foreign
            ));
        }
        if c.mode == CacheMode::Unsafe {
            if checked.lost.is_empty() {
                failures.push(format!(
                    "{label}: all {} flushed blocks survived, so the check could not fail",
                    checked.promised
                ));
            }
            totals.unsafe_lost += checked.lost.len();
            continue;
        }
        totals.cuts += 1;
        totals.promised += checked.promised;
        totals.lost += checked.lost.len();
        if !checked.lost.is_empty() {
            failures.push(format!(
                "{label}: promised-durable blocks lost: {:?}",
                checked.lost
            ));
        }
    }
    eprintln!(
        "aio={aio}: killed {:.1} s after boot ({} ms after every writer was going); crashfs: \
         {} O_DIRECT writes, {} durable writes, {} fsyncs",
        ready_after.as_secs_f64() + delay.as_secs_f64(),
        delay.as_millis(),
        stats.direct_writes,
        stats.dsync_writes,
        stats.fsyncs
    );
    assert!(
        stats.direct_writes > 0,
        "aio={aio}: no O_DIRECT write reached crashfs: {stats:?}"
    );
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        ended.describe(20)
    );
    Some(totals)
}

/// Runs `FERRITE_POWER_CUTS` (default 1) cut boots with `aio` and reports
/// the totals.
fn power_cuts(aio: &str) {
    let Some((kdir, rootfs)) = guest() else {
        return;
    };
    if aio == "io_uring" && !block::io_uring_supported() {
        eprintln!("SKIP: io_uring is not available on this host");
        return;
    }
    let rounds: usize = std::env::var("FERRITE_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let seed = seed();
    eprintln!("aio={aio}: seed {seed:#x}, {rounds} boot(s)");
    let mut rng = seed;
    let mut sum = Totals::default();
    let started = Instant::now();
    for _ in 0..rounds {
        let Some(t) = cut_once(&kdir.join("vmlinux"), &rootfs, aio, &mut rng) else {
            return;
        };
        sum.cuts += t.cuts;
        sum.promised += t.promised;
        sum.lost += t.lost;
        sum.unsafe_lost += t.unsafe_lost;
    }
    report(&format!(
        "POWERCUT aio={aio}: boots={rounds} cuts={} acks_checked={} lost={} unsafe_lost={} \
         ({:.0} s)",
        sum.cuts,
        sum.promised,
        sum.lost,
        sum.unsafe_lost,
        started.elapsed().as_secs_f64()
    ));
}

#[test]
fn linux_power_cut_io_uring() {
    power_cuts("io_uring");
}

#[test]
fn linux_power_cut_threads() {
    power_cuts("threads");
}

#[test]
fn the_image_check_tells_written_absent_torn_and_foreign_apart() {
    let mut image = vec![0u8; 4 * BLOCK];
    let fill = |image: &mut [u8], at: usize, seq: u64, sectors: std::ops::Range<usize>| {
        for s in sectors {
            for w in image[at * BLOCK + s * 512..][..512].chunks_mut(8) {
                w.copy_from_slice(&(BLOCK_TAG | seq).to_le_bytes());
            }
        }
    };
    fill(&mut image, 0, 0, 0..8);
    fill(&mut image, 1, 1, 0..3);
    fill(&mut image, 3, 2, 0..8);
    assert_eq!(examine(&image, 0), Found::Written);
    assert_eq!(examine(&image, 1), Found::Torn);
    assert_eq!(examine(&image, 2), Found::Absent);
    assert_eq!(examine(&image, 3), Found::Foreign);

    let p = Progress {
        acked: vec![0, 1, 2],
        last_flushed: Some(1),
        write_through_from: Some(1),
        ..Progress::default()
    };
    let c = check_image(&image, &p, Style::Dsync);
    assert_eq!((c.promised, c.lost, c.foreign), (3, vec![1, 2], vec![3]));
    assert_eq!(check_image(&image, &p, Style::Buffered).lost, vec![1]);
    assert_eq!(check_image(&image, &p, Style::Toggle).lost, vec![1, 2]);
}

#[test]
fn console_lines_become_progress() {
    let mut progress = BTreeMap::new();
    for line in [
        "PC vdb start every=4",
        "PC vdb ack seq=0",
        "[   12.3] some kernel line",
        "PC vdb ack seq=1",
        "PC vdb flushed upto=1",
        "PC vdc wt from=16",
        "PC vdc error pwrite: Input/output error",
    ] {
        note(&mut progress, line);
    }
    let b = &progress["vdb"];
    assert_eq!((b.acked.clone(), b.last_flushed), (vec![0, 1], Some(1)));
    assert!(b.ready(Style::Buffered) && !b.ready(Style::Dsync));
    let c = &progress["vdc"];
    assert_eq!(c.write_through_from, Some(16));
    assert!(c.error.is_some());
}
