//! Whether more tasks want to run on the host than it has CPUs, from the
//! kernel's count of runnable tasks (`/proc/loadavg`, fourth field).
//!
//! A spin pays only while nobody else wants the CPU it holds. KVM's halt
//! polling asks the scheduler (`single_task_running`); a user thread
//! cannot, and a `sched_yield` that does find another task hands it a
//! whole time slice, during which the spinner is neither spinning nor
//! asleep, so a completion cannot wake it: measured on this project's
//! 2-core host with two other busy processes, the yielding spin served a
//! QD1 reader at 3,200 IOPS where never spinning served 221,000.
//!
//! The count is read at most every [`SAMPLE_EVERY`], by whichever spinner
//! asks first, from the file [`prepare`] opened. It is a snapshot that includes the reader itself, so it
//! says "contended" only when more tasks are runnable than there are
//! online CPUs: two threads of ferrite spinning for each other on an
//! otherwise idle 2-CPU host are not contention, a third task is. The
//! kernel's stall share (`/proc/pressure/cpu`) was tried first: under
//! the same load the same benchmark then gave anywhere from 20k to 227k
//! IOPS, most likely because that share counts the waiting the spin
//! itself causes (not traced).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the runnable count is read (at most; only when asked).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

const LOADAVG: &str = "/proc/loadavg";

/// The process's one verdict, shared by every spinner.
static CONTENTION: Contention = Contention::new();

/// Opens `/proc/loadavg` and counts the CPUs, once per process. Call it
/// before the thread that spins is confined: its seccomp filter and
/// Landlock rules refuse both the open and the CPU count afterwards
/// (reading the open file stays allowed).
pub fn prepare() {
    CONTENTION.prepare(|| Sampler::open(LOADAVG, online_cpus()));
}

/// Whether, at the last sample before `now`, more tasks were runnable
/// than the host has online CPUs. False before [`prepare`] or where the
/// count cannot be read (spinning then goes on as it would without this
/// check): a spinner never opens the file itself, since its thread may be
/// confined.
pub fn cpu_contended(now: Instant) -> bool {
    CONTENTION.check(now)
}

/// The last verdict and when the next sample is due. Spinners on two
/// cores (the device's thread and a polling driver) ask once per request
/// each; between samples they only load two atomics, so the lines stay
/// shared in both caches (a lock taken per call moved one of them between
/// the cores every request).
struct Contention {
    /// Set by `prepare`: the origin of `next_sample_ns`.
    epoch: OnceLock<Instant>,
    next_sample_ns: AtomicU64,
    contended: AtomicBool,
    sampler: Mutex<Option<Sampler>>,
}

impl Contention {
    const fn new() -> Contention {
        Contention {
            epoch: OnceLock::new(),
            next_sample_ns: AtomicU64::new(0),
            contended: AtomicBool::new(false),
            sampler: Mutex::new(None),
        }
    }

    fn prepare(&self, open: impl FnOnce() -> Sampler) {
        let mut sampler = self.sampler.lock().unwrap_or_else(|p| p.into_inner());
        sampler.get_or_insert_with(open);
        self.epoch.get_or_init(Instant::now);
    }

    fn check(&self, now: Instant) -> bool {
        if let Some(epoch) = self.epoch.get() {
            let at =
                u64::try_from(now.saturating_duration_since(*epoch).as_nanos()).unwrap_or(u64::MAX);
            // try_lock: a spinner never waits for another spinner's sample;
            // it takes the last verdict instead.
            if at >= self.next_sample_ns.load(Ordering::Relaxed) {
                if let Ok(sampler) = self.sampler.try_lock() {
                    self.next_sample_ns.store(
                        at.saturating_add(SAMPLE_EVERY.as_nanos() as u64),
                        Ordering::Relaxed,
                    );
                    if let Some(verdict) = sampler.as_ref().and_then(Sampler::sample) {
                        self.contended.store(verdict, Ordering::Relaxed);
                    }
                }
            }
        }
        self.contended.load(Ordering::Relaxed)
    }
}

fn online_cpus() -> u64 {
    // SAFETY: sysconf reads a system constant; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).unwrap_or(1).max(1)
}

/// Reads the runnable count and turns it into a verdict.
struct Sampler {
    file: Option<File>,
    cpus: u64,
}

impl Sampler {
    fn open(path: &str, cpus: u64) -> Sampler {
        Sampler {
            file: File::open(path).ok(),
            cpus,
        }
    }

    /// The verdict now; None if the count cannot be read.
    fn sample(&self) -> Option<bool> {
        let file = self.file.as_ref()?;
        let mut buf = [0u8; 128];
        let n = file.read_at(&mut buf, 0).ok()?;
        let running = runnable_tasks(std::str::from_utf8(&buf[..n]).ok()?)?;
        Some(running > self.cpus)
    }
}

/// The runnable count of a `/proc/loadavg` line: `R` of its `R/T` field.
fn runnable_tasks(text: &str) -> Option<u64> {
    let field = text.split_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runnable_count_is_read_from_the_loadavg_format() {
        assert_eq!(runnable_tasks("4.61 4.32 3.20 5/250 12345\n"), Some(5));
        assert_eq!(runnable_tasks("0.00 0.01 0.05 1/97 3\n"), Some(1));
        assert_eq!(runnable_tasks("0.00 0.01\n"), None);
        assert_eq!(runnable_tasks("0.00 0.01 0.05 x/97 3\n"), None);
    }

    #[test]
    fn more_runnable_tasks_than_cpus_is_contention_sampled_at_most_every_period() {
        let dir = std::env::temp_dir().join(format!("ferrite-loadavg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loadavg");
        let write = |running: u64| {
            std::fs::write(&path, format!("1.00 1.00 1.00 {running}/200 999\n")).unwrap()
        };
        write(2);
        let c = Contention::new();
        assert!(!c.check(Instant::now()), "before prepare: never contended");
        c.prepare(|| Sampler::open(path.to_str().unwrap(), 2));
        let t0 = Instant::now();
        assert!(!c.check(t0), "as many as the CPUs: calm");
        write(3);
        assert!(
            !c.check(t0 + Duration::from_millis(5)),
            "too soon: the last verdict stands"
        );
        assert!(c.check(t0 + SAMPLE_EVERY), "one more: contended");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_the_count_nothing_is_contended() {
        assert_eq!(Sampler::open("/nonexistent/loadavg", 2).sample(), None);
    }

    #[test]
    fn this_hosts_count_can_be_read() {
        let text = std::fs::read_to_string(LOADAVG).unwrap();
        assert!(runnable_tasks(&text).is_some_and(|n| n >= 1), "{text}");
    }
}
