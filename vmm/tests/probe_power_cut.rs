//! Power cut under a running guest: the probe's `stream` writes to an
//! image on a crashfs mount (served by this test process), `ferrite` is
//! SIGKILLed mid-stream, the power is cut, and every write the guest was
//! told is durable must be in the backing image:
//! - writethrough, directsync: every `PROBE ack seq=N` printed;
//! - writeback, none (with `stream.flush_every`): every seq up to the last
//!   `PROBE flushed seq=N`.
//!
//! And the check can fail: `unsafe`, and writeback without flushes, lose
//! acknowledged writes.

#[path = "common/probe.rs"]
mod probe_util;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use block::CacheMode;
use crashfs::{CrashFs, CrashStats};
use probe_util::*;

/// Image size: 1024 stream blocks, more than a run writes before the kill.
const SIZE: u64 = 4 << 20;
const BLOCKS: u64 = SIZE / 4096;
/// Acks to wait for before the kill.
const KILL_AFTER: u64 = 24;
/// `stream.flush_every` for the modes with a volatile cache.
const FLUSH_EVERY: u64 = 4;

/// A crashfs mount with the image `img` on it (created durable).
struct Mounted {
    // Drop order: unmount first.
    fs: CrashFs,
    _backing: tempfile::TempDir,
    _mnt: tempfile::TempDir,
}

fn mount() -> Option<Mounted> {
    if let Some(reason) = crashfs::unavailable_reason() {
        eprintln!("SKIP: FUSE is not usable: {reason}");
        return None;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    std::fs::write(backing.path().join("img"), vec![0u8; SIZE as usize]).unwrap();
    let fs = CrashFs::mount(backing.path(), mnt.path()).expect("mount crashfs");
    Some(Mounted {
        fs,
        _backing: backing,
        _mnt: mnt,
    })
}

/// What the guest reported before and after the kill.
#[derive(Debug, Default)]
struct Reported {
    acked: Vec<u64>,
    last_flushed: Option<u64>,
    lines: Vec<String>,
}

/// Runs the stream until `KILL_AFTER` acks (or the guest stops), kills
/// ferrite with SIGKILL, and collects every line it printed.
fn stream_and_kill(
    kernel: &Path,
    image: &Path,
    mode: CacheMode,
    flush_every: u64,
    aio: &str,
) -> Reported {
    let cmdline =
        format!("probe=stream stream.count=0 stream.depth=4 stream.flush_every={flush_every}");
    let args = probe_args(
        kernel,
        &cmdline,
        &[drive(image, &format!("cache={mode},aio={aio}"))],
        &[],
    );
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferrite");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut rep = Reported::default();
    let deadline = Instant::now() + LIMIT;
    let mut killed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => note(&mut rep, line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // With flushes asked for, wait for one to complete too: on a loaded
        // host a flush can still be in flight after KILL_AFTER acks, and
        // the test must see a flush to check what it promised.
        let enough = rep.acked.len() as u64 >= KILL_AFTER
            && (flush_every == 0 || rep.last_flushed.is_some());
        if !killed && (enough || Instant::now() > deadline) {
            child.kill().expect("SIGKILL ferrite");
            killed = true;
        }
    }
    // Everything printed before the kill is in the pipe: read to EOF.
    reader.join().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        None,
        "ferrite ended on its own: {status}\n{}",
        rep.lines.join("\n")
    );
    rep
}

fn note(rep: &mut Reported, line: String) {
    if let Some(l) = parse_line(&line) {
        match l.kind.as_str() {
            "ack" => rep.acked.extend(l.num("seq")),
            "flushed" => rep.last_flushed = l.num("seq").max(rep.last_flushed),
            _ => {}
        }
    }
    rep.lines.push(line);
}

/// The seqs in `must` whose block in `image` does not hold them (or a
/// later seq of the same block, after wrapping).
fn lost(image: &[u8], must: impl IntoIterator<Item = u64>) -> Vec<u64> {
    must.into_iter()
        .filter(|&seq| {
            let at = ((seq % BLOCKS) * 4096) as usize;
            let found = stream_seq(&image[at..at + 4096]);
            !found.is_some_and(|v| v >= seq && v % BLOCKS == seq % BLOCKS)
        })
        .collect()
}

/// One crash: stream, kill, power cut; returns what the guest was told,
/// the backing image after the cut, and crashfs's counters.
fn crash(mode: CacheMode, flush_every: u64, aio: &str) -> Option<(Reported, Vec<u8>, CrashStats)> {
    let m = mount()?;
    let kdir = tempfile::tempdir().unwrap();
    let kernel = probe_kernel(kdir.path());
    let rep = stream_and_kill(&kernel, &m.fs.path("img"), mode, flush_every, aio);
    let stats = m.fs.stats();
    m.fs.power_cut();
    let durable = std::fs::read(m.fs.backing_path("img")).unwrap();
    assert_eq!(durable.len() as u64, SIZE);
    eprintln!(
        "{mode} (aio={aio}, flush_every={flush_every}): killed after {} acks, last flushed {:?}; \
         crashfs saw {} O_DIRECT opens, {} O_DIRECT writes, {} durable writes, {} fsyncs",
        rep.acked.len(),
        rep.last_flushed,
        stats.direct_opens,
        stats.direct_writes,
        stats.dsync_writes,
        stats.fsyncs
    );
    Some((rep, durable, stats))
}

fn check_durable(mode: CacheMode, flush_every: u64, aio: &str) {
    if !kvm_usable() {
        return;
    }
    let Some((rep, durable, stats)) = crash(mode, flush_every, aio) else {
        return;
    };
    assert!(
        rep.acked.len() as u64 >= KILL_AFTER,
        "{mode}: the stream stopped early\n{}",
        rep.lines.join("\n")
    );
    // What the guest was promised: every ack where writes are durable at
    // completion, every seq up to the last flush where the cache is volatile.
    let must: Vec<u64> = if mode.default_write_cache() {
        let flushed = rep.last_flushed.expect("a flush completed before the kill");
        (0..=flushed).collect()
    } else {
        rep.acked.clone()
    };
    let missing = lost(&durable, must.iter().copied());
    eprintln!(
        "{mode}: {} promised writes checked, {} missing",
        must.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{mode}: promised-durable writes lost: {missing:?}"
    );
    // The direct path was really taken through FUSE (crashfs models
    // O_DIRECT writes as going to a volatile disk cache).
    if mode.direct() {
        assert!(
            stats.direct_opens > 0 && stats.direct_writes > 0,
            "{mode}: crashfs saw no O_DIRECT open or write: {stats:?}"
        );
    } else {
        assert_eq!(stats.direct_writes, 0, "{mode}: {stats:?}");
    }
}

/// The engines to run: the thread pool, and io_uring where the kernel has it.
fn engines() -> Vec<&'static str> {
    if block::io_uring_supported() {
        vec!["io_uring", "threads"]
    } else {
        eprintln!("io_uring is not available here: only aio=threads is checked");
        vec!["threads"]
    }
}

#[test]
fn writethrough_keeps_every_acknowledged_write() {
    for aio in engines() {
        check_durable(CacheMode::Writethrough, 0, aio);
    }
}

#[test]
fn directsync_keeps_every_acknowledged_write() {
    for aio in engines() {
        check_durable(CacheMode::DirectSync, 0, aio);
    }
}

#[test]
fn writeback_keeps_every_flushed_write() {
    for aio in engines() {
        check_durable(CacheMode::Writeback, FLUSH_EVERY, aio);
    }
}

#[test]
fn none_keeps_every_flushed_write() {
    for aio in engines() {
        check_durable(CacheMode::None, FLUSH_EVERY, aio);
    }
}

/// The check above is not vacuous: where nothing is promised, writes the
/// guest saw acknowledged (and, in unsafe, even flushed) are gone.
#[test]
fn unsafe_and_unflushed_writeback_lose_acknowledged_writes() {
    if !kvm_usable() {
        return;
    }
    let Some((rep, durable, _)) = crash(CacheMode::Unsafe, FLUSH_EVERY, "threads") else {
        return;
    };
    let flushed = rep.last_flushed.expect("unsafe: a flush completed");
    let missing = lost(&durable, 0..=flushed);
    assert!(
        !missing.is_empty(),
        "unsafe: every flushed write survived the power cut, so the check could not fail"
    );
    let Some((rep, durable, _)) = crash(CacheMode::Writeback, 0, "threads") else {
        return;
    };
    let missing = lost(&durable, rep.acked.iter().copied());
    assert!(
        !missing.is_empty(),
        "writeback without flushes: every acknowledged write survived the power cut"
    );
}

#[test]
fn loss_check_sees_missing_and_wrapped_blocks() {
    let mut img = vec![0u8; SIZE as usize];
    img[..4096].copy_from_slice(&stream_block(0));
    img[4096..8192].copy_from_slice(&stream_block(1 + BLOCKS));
    assert_eq!(lost(&img, [0, 1, 2]), [2]);
    // A later seq of another block does not count.
    img[8192..12288].copy_from_slice(&stream_block(3));
    assert_eq!(lost(&img, [2]), [2]);
}
