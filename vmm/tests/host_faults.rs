//! Host faults under a running guest, through `ferrite` and the probe's
//! `stream` with `stream.keep_going=1` (a failed request is reported as
//! `PROBE ioerr` / `PROBE flush_failed` and the stream goes on):
//! - the image's file system is full (a small ext4 on a loop device, the
//!   image sparse and larger than the free space): under werror=report
//!   writes that do not fit get IOERR, the VMM keeps running, writes to
//!   blocks already allocated still succeed; under werror=enospc such a
//!   write waits until space is freed and SIGUSR1 arrives, then completes;
//! - the image returns EIO (crashfs): those writes get IOERR, later ones
//!   succeed;
//! - one failed fdatasync (crashfs): that FLUSH and every later one fail
//!   as the guest sees them, though the file system fails only once.
//!
//! `--stats-json` must count the errors.

#[path = "common/probe.rs"]
mod probe_util;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crashfs::{CrashFs, Fault, FaultError};
use probe_util::*;

/// virtio-blk's `VIRTIO_BLK_S_IOERR`.
const IOERR: u64 = 1;
const BLOCK: u64 = 4096;

/// The engines to run: the thread pool, and io_uring where the kernel has it.
fn engines() -> Vec<&'static str> {
    if block::io_uring_supported() {
        vec!["threads", "io_uring"]
    } else {
        eprintln!("io_uring is not available here: only aio=threads is checked");
        vec!["threads"]
    }
}

/// What one probe run reported and counted.
struct Outcome {
    run: Run,
    stats: serde_json::Value,
}

impl Outcome {
    /// The seqs of `kind` lines (`ack`, `ioerr`, `flushed`, `flush_failed`),
    /// per `stream` run in the boot (each run starts again at seq 0).
    fn seqs(&self, kind: &str) -> Vec<Vec<u64>> {
        let mut runs: Vec<Vec<u64>> = Vec::new();
        for line in self.run.lines() {
            if line.kind == "stream" && line.get("count").is_some() {
                runs.push(Vec::new());
            } else if line.kind == kind {
                if kind == "ioerr" || kind == "flush_failed" {
                    assert_eq!(line.num("status"), Some(IOERR), "{}", self.run.describe());
                }
                if let (Some(run), Some(seq)) = (runs.last_mut(), line.num("seq")) {
                    run.push(seq);
                }
            }
        }
        runs
    }

    /// A counter of disk 0 in `--stats-json` (`disk` or `device` group).
    fn counter(&self, group: &str, name: &str) -> u64 {
        self.stats["disks"][0][group][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {group}.{name} in {}", self.stats))
    }
}

/// Boots the probe with `scenarios` on `image` and the stream options.
fn boot(image: &Path, drive_opts: &str, scenarios: &str, stream: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let kernel = probe_kernel(dir.path());
    let stats_path = dir.path().join("stats.json");
    let run = run_probe(
        &kernel,
        &format!("probe={scenarios} stream.keep_going=1 {stream}"),
        &[drive(image, drive_opts)],
        &["--stats-json", stats_path.to_str().unwrap()],
    );
    // The guest went through every request and ended on its own: the VMM
    // kept running through the host errors.
    run.assert_pass();
    let stats = stats(&stats_path);
    Outcome { run, stats }
}

/// A small ext4 on a loop device, mounted; unmounted on drop.
struct SmallExt4 {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmallExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

/// Makes and mounts an 8 MiB ext4 (no reserved blocks), or says why not.
fn small_ext4() -> Result<SmallExt4, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let fs_file = dir.path().join("fs.ext4");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
    std::fs::File::create(&fs_file)
        .and_then(|f| f.set_len(8 << 20))
        .map_err(|e| e.to_string())?;
    let fs = fs_file.to_str().unwrap();
    run_tool("mkfs.ext4", &["-q", "-F", "-m", "0", "-b", "4096", fs])?;
    run_tool("mount", &["-o", "loop", fs, mnt.to_str().unwrap()])?;
    Ok(SmallExt4 { mnt, _dir: dir })
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: statvfs is plain data, filled by the call below.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid statvfs to fill.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// Blocks written (allocated) at the start of the image before the guest runs.
const ALLOCATED: u64 = 8;
/// Roughly how many more blocks fit in the file system.
const ROOM: u64 = 16;
/// Writes per stream: more than fit.
const FULL_COUNT: u64 = 48;

#[test]
fn a_full_file_system_fails_the_writes_that_do_not_fit_and_no_others() {
    if !kvm_usable() {
        return;
    }
    for aio in engines() {
        let Some((fs, image, free)) = nearly_full() else {
            return;
        };
        // Two streams in one boot: the second rewrites what the first
        // managed to allocate, and must succeed there again. werror=report
        // answers a write that does not fit with IOERR.
        let out = boot(
            &image,
            &format!("werror=report,aio={aio}"),
            "stream,stream",
            &format!("stream.count={FULL_COUNT} stream.depth=1"),
        );
        let (acks, errs) = (out.seqs("ack"), out.seqs("ioerr"));
        eprintln!(
            "aio={aio}: {free} bytes free; acks {:?}; ioerrs {:?}",
            acks.iter().map(Vec::len).collect::<Vec<_>>(),
            errs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(acks.len(), 2, "{}", out.run.describe());
        for run in 0..2 {
            // Every write was answered, the allocated blocks always work,
            // and some writes did not fit.
            assert_eq!(
                acks[run].len() + errs[run].len(),
                FULL_COUNT as usize,
                "{}",
                out.run.describe()
            );
            assert!(
                (0..ALLOCATED).all(|s| acks[run].contains(&s)),
                "stream {run}: a write to an allocated block failed\n{}",
                out.run.describe()
            );
            assert!(!errs[run].is_empty(), "{}", out.run.describe());
        }
        // What fitted once fits again (already allocated).
        let refailed: Vec<_> = acks[0].iter().filter(|s| errs[1].contains(s)).collect();
        assert!(refailed.is_empty(), "{refailed:?}\n{}", out.run.describe());
        // The counters saw every failed write.
        let failed = (errs[0].len() + errs[1].len()) as u64;
        assert_eq!(out.counter("device", "io_errors"), failed, "{}", out.stats);
        assert_eq!(out.counter("disk", "errors"), failed, "{}", out.stats);
        drop(fs);
    }
}

/// A small ext4 holding the image (8 MiB, sparse but for its first
/// ALLOCATED blocks) and a "filler" file that leaves room for about ROOM
/// more blocks; the free bytes. None (after SKIP) where it cannot be made.
fn nearly_full() -> Option<(SmallExt4, PathBuf, u64)> {
    let fs = match small_ext4() {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIP: cannot make and mount a small ext4: {why}");
            return None;
        }
    };
    let image = fs.mnt.join("disk.img");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(IMAGE_SIZE).unwrap();
    f.write_all_at(&vec![0xa5; (ALLOCATED * BLOCK) as usize], 0)
        .unwrap();
    f.sync_all().unwrap();
    let filler = std::fs::File::create(fs.mnt.join("filler")).unwrap();
    let fill = free_bytes(&fs.mnt).saturating_sub(ROOM * BLOCK);
    // SAFETY: a valid fd; allocates `fill` bytes to the filler file.
    let rc = unsafe { libc::fallocate(filler.as_raw_fd(), 0, 0, fill as libc::off_t) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    filler.sync_all().unwrap();
    let free = free_bytes(&fs.mnt);
    assert!(
        free < FULL_COUNT * BLOCK / 2,
        "{free} bytes still free: the image would fit"
    );
    Some((fs, image, free))
}

/// Where a reader thread appends what it reads.
type Sink = Arc<Mutex<String>>;

/// ferrite running in the background, its output collected as it comes.
struct Live {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    start: Instant,
}

impl Live {
    fn spawn(args: &[String]) -> Live {
        let mut child = probe_util::spawn_ferrite(args);
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let mut readers = Vec::new();
        let pipes: [(Box<dyn Read + Send>, &Sink); 2] = [
            (Box::new(child.stdout.take().unwrap()), &stdout),
            (Box::new(child.stderr.take().unwrap()), &stderr),
        ];
        for (pipe, sink) in pipes {
            let sink: Sink = Arc::clone(sink);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            }));
        }
        Live {
            child,
            stdout,
            stderr,
            readers,
            start: Instant::now(),
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `what`; false after `limit`.
    fn wait_stderr(&self, what: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.stderr().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn signal(&self, sig: libc::c_int) {
        assert_eq!(
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Waits for the exit (killing it after LIMIT) and gives the run.
    fn finish(mut self) -> Run {
        let end = Instant::now() + LIMIT;
        while self.child.try_wait().unwrap().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Run {
            status: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed: self.start.elapsed(),
        }
    }
}

/// How many lines of `text` contain `what`.
fn count(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

/// Under werror=enospc (the default, given explicitly here) a write that
/// does not fit waits, unanswered, with one line on stderr; once the test
/// frees space and sends SIGUSR1 it completes: every write acked, none
/// failed, the data in the image, one line for the resume.
#[test]
fn a_full_file_system_holds_the_write_until_space_is_freed_and_sigusr1() {
    if !kvm_usable() {
        return;
    }
    for aio in engines() {
        let Some((fs, image, free)) = nearly_full() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let kernel = probe_kernel(dir.path());
        let stats_path = dir.path().join("stats.json");
        let live = Live::spawn(&probe_args(
            &kernel,
            &format!("probe=stream stream.keep_going=1 stream.count={FULL_COUNT} stream.depth=1"),
            &[drive(&image, &format!("werror=enospc,aio={aio}"))],
            &["--stats-json", stats_path.to_str().unwrap()],
        ));
        let stopped = "stopped: no space left on device; free space, then send SIGUSR1";
        assert!(
            live.wait_stderr(stopped, Duration::from_secs(30)),
            "aio={aio}: no stop line\nstdout:\n{}\nstderr:\n{}",
            live.stdout(),
            live.stderr()
        );
        // Held: no answer while the disk is full, through a timer retry.
        let acked = count(&live.stdout(), "PROBE ack");
        std::thread::sleep(Duration::from_millis(1500));
        let out = live.stdout();
        assert_eq!(
            count(&out, "PROBE ack"),
            acked,
            "aio={aio}: answered while full"
        );
        assert!(acked < FULL_COUNT as usize, "aio={aio}: {acked} acks");
        assert_eq!(count(&out, "PROBE ioerr"), 0, "{out}");
        eprintln!("aio={aio}: {free} bytes free; stopped after {acked} acks");

        std::fs::remove_file(fs.mnt.join("filler")).unwrap();
        // SAFETY: no arguments; commits the freed blocks.
        unsafe { libc::sync() };
        live.signal(libc::SIGUSR1);
        let run = live.finish();
        run.assert_pass();
        let text = run.describe();
        assert_eq!(
            count(&run.stdout, "PROBE ack"),
            FULL_COUNT as usize,
            "{text}"
        );
        assert_eq!(count(&run.stdout, "PROBE ioerr"), 0, "{text}");
        assert_eq!(count(&run.stderr, stopped), 1, "{text}");
        assert_eq!(count(&run.stderr, ") resumed"), 1, "{text}");
        let stats = stats(&stats_path);
        let disk = &stats["disks"][0]["disk"];
        assert_eq!(disk["stops"].as_u64(), Some(1), "{stats}");
        assert!(disk["stop_retries"].as_u64() >= Some(2), "{stats}");
        assert_eq!(disk["errors"].as_u64(), Some(0), "{stats}");
        let bytes = std::fs::read(&image).unwrap();
        for seq in 0..FULL_COUNT {
            let at = (seq * BLOCK) as usize;
            assert_eq!(
                stream_seq(&bytes[at..at + BLOCK as usize]),
                Some(seq),
                "aio={aio}: block {seq}"
            );
        }
        drop(fs);
    }
}

/// A crashfs mount with a 4 MiB zeroed image "img" (durable).
struct Mounted {
    fs: CrashFs,
    _backing: tempfile::TempDir,
    _mnt: tempfile::TempDir,
}

fn crashfs_mount() -> Option<Mounted> {
    if let Some(reason) = crashfs::unavailable_reason() {
        eprintln!("SKIP: FUSE is not usable: {reason}");
        return None;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    std::fs::write(backing.path().join("img"), vec![0u8; 4 << 20]).unwrap();
    let fs = CrashFs::mount(backing.path(), mnt.path()).expect("mount crashfs");
    Some(Mounted {
        fs,
        _backing: backing,
        _mnt: mnt,
    })
}

/// Writes that succeed before the fault fires, and how many then fail.
const EIO_SKIP: u64 = 8;
const EIO_TIMES: u64 = 6;
const EIO_COUNT: u64 = 32;

#[test]
fn writes_that_get_eio_fail_and_later_writes_succeed() {
    if !kvm_usable() {
        return;
    }
    let mut cases: Vec<(&str, &str)> = engines().into_iter().map(|a| ("writeback", a)).collect();
    cases.push(("none", "threads"));
    for (mode, aio) in cases {
        let Some(m) = crashfs_mount() else { return };
        m.fs.fail_writes(Some(
            Fault::always(FaultError::Eio)
                .after(EIO_SKIP)
                .times(EIO_TIMES),
        ));
        let out = boot(
            &m.fs.path("img"),
            &format!("cache={mode},aio={aio}"),
            "stream",
            &format!("stream.count={EIO_COUNT} stream.depth=1"),
        );
        let stats = m.fs.stats();
        let (acks, errs) = (&out.seqs("ack")[0], &out.seqs("ioerr")[0]);
        eprintln!(
            "{mode} aio={aio}: acks {}, ioerrs {errs:?}; crashfs: {} writes, {} failed",
            acks.len(),
            stats.writes,
            stats.failed_writes
        );
        assert_eq!(stats.failed_writes, EIO_TIMES, "{stats:?}");
        // Exactly the writes the file system failed, in order; the ones
        // after them succeeded.
        let expect: Vec<u64> = (EIO_SKIP..EIO_SKIP + EIO_TIMES).collect();
        assert_eq!(errs, &expect, "{mode} {aio}\n{}", out.run.describe());
        let later: Vec<u64> = (EIO_SKIP + EIO_TIMES..EIO_COUNT).collect();
        assert!(
            later.iter().all(|s| acks.contains(s)),
            "{mode} {aio}\n{}",
            out.run.describe()
        );
        assert_eq!(
            out.counter("device", "io_errors"),
            EIO_TIMES,
            "{}",
            out.stats
        );
        assert_eq!(out.counter("disk", "errors"), EIO_TIMES, "{}", out.stats);
    }
}

#[test]
fn after_a_failed_fdatasync_every_later_flush_fails() {
    if !kvm_usable() {
        return;
    }
    for aio in engines() {
        let Some(m) = crashfs_mount() else { return };
        m.fs.fail_fsyncs(Some(Fault::once(FaultError::Eio)));
        let out = boot(
            &m.fs.path("img"),
            &format!("cache=writeback,aio={aio}"),
            "stream",
            "stream.count=24 stream.depth=1 stream.flush_every=4",
        );
        let stats = m.fs.stats();
        let (acks, flushed, failed) = (
            &out.seqs("ack")[0],
            &out.seqs("flushed")[0],
            &out.seqs("flush_failed")[0],
        );
        eprintln!(
            "aio={aio}: {} acks, flushed {flushed:?}, flush_failed {failed:?}; crashfs: {} fsyncs, {} failed",
            acks.len(),
            stats.fsyncs,
            stats.failed_fsyncs
        );
        // The file system failed one sync; the guest saw every FLUSH fail.
        assert_eq!(stats.failed_fsyncs, 1, "{stats:?}");
        assert!(flushed.is_empty(), "{}", out.run.describe());
        assert_eq!(failed.len(), 6, "{}", out.run.describe());
        // Writes themselves go on.
        assert_eq!(acks.len(), 24, "{}", out.run.describe());
        assert!(out.counter("disk", "errors") >= 6, "{}", out.stats);
    }
}
