//! Whether any task on the host is waiting for a CPU, from the kernel's
//! pressure stall information (`/proc/pressure/cpu`, PSI).
//!
//! A spin pays only while nobody else wants the CPU it holds. KVM's halt
//! polling asks the scheduler (`single_task_running`); a user thread
//! cannot, and a `sched_yield` that does find another task hands it a
//! whole time slice, during which the spinner is neither spinning nor
//! asleep, so a completion cannot wake it: measured on this project's
//! 2-core host with two other busy processes, the yielding spin served a
//! QD1 reader at 3,200 IOPS where never spinning served 221,000. PSI says
//! the same thing for the whole host at the cost of one `pread` every
//! [`SAMPLE_EVERY`]: the share of wall time during which at least one
//! runnable task waited for a CPU (`some ... total=` microseconds).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the stall total is read (at most; only when someone asks).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The stall share above which the host counts as contended: a tenth of
/// the time some task waited for a CPU.
pub const CONTENDED_SHARE: f64 = 0.10;

const PSI_CPU: &str = "/proc/pressure/cpu";

/// The last verdict, readable without the sampler's lock.
static CONTENDED: AtomicBool = AtomicBool::new(false);
static SAMPLER: Mutex<Option<Sampler>> = Mutex::new(None);

/// Whether tasks on this host waited for a CPU for more than
/// [`CONTENDED_SHARE`] of the last sample period. False where the kernel
/// has no PSI (spinning then goes on as it would without this check).
pub fn cpu_contended() -> bool {
    // try_lock: a spinner never waits for another spinner's sample; it
    // takes the last verdict instead.
    if let Ok(mut sampler) = SAMPLER.try_lock() {
        let s = sampler.get_or_insert_with(|| Sampler::open(PSI_CPU));
        if let Some(verdict) = s.refresh(Instant::now()) {
            CONTENDED.store(verdict, Ordering::Relaxed);
        }
    }
    CONTENDED.load(Ordering::Relaxed)
}

/// Reads the stall total and turns two readings into a verdict.
struct Sampler {
    file: Option<File>,
    last: Option<(Instant, u64)>,
}

impl Sampler {
    fn open(path: &str) -> Sampler {
        Sampler {
            file: File::open(path).ok(),
            last: None,
        }
    }

    /// A new verdict if a sample period has passed since the last reading.
    fn refresh(&mut self, now: Instant) -> Option<bool> {
        if self
            .last
            .is_some_and(|(at, _)| now.duration_since(at) < SAMPLE_EVERY)
        {
            return None;
        }
        let file = self.file.as_ref()?;
        let mut buf = [0u8; 256];
        let n = file.read_at(&mut buf, 0).ok()?;
        let total = some_total_us(std::str::from_utf8(&buf[..n]).ok()?)?;
        let previous = self.last.replace((now, total));
        let (at, before) = previous?;
        let wall = now.duration_since(at).as_micros() as f64;
        let stalled = total.saturating_sub(before) as f64;
        Some(wall > 0.0 && stalled / wall > CONTENDED_SHARE)
    }
}

/// The `total=` of the `some` line, in microseconds.
fn some_total_us(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let total = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?;
    total.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_some_total_is_read_from_the_psi_format() {
        let text = "some avg10=94.19 avg60=84.80 avg300=59.41 total=4410778018\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_total_us(text), Some(4_410_778_018));
        assert_eq!(some_total_us("full total=3\n"), None);
        assert_eq!(some_total_us("some avg10=1.0 total=x\n"), None);
    }

    #[test]
    fn a_verdict_needs_two_readings_a_period_apart() {
        let dir = std::env::temp_dir().join(format!("ferrite-psi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cpu");
        let write = |total: u64| {
            std::fs::write(&path, format!("some avg10=0 total={total}\nfull total=0\n")).unwrap()
        };
        write(1_000);
        let mut s = Sampler::open(path.to_str().unwrap());
        let t0 = Instant::now();
        assert_eq!(s.refresh(t0), None, "one reading says nothing");
        // 20 ms later, 1 ms more stall: 5%, calm.
        write(2_000);
        assert_eq!(s.refresh(t0 + Duration::from_millis(5)), None, "too soon");
        assert_eq!(s.refresh(t0 + SAMPLE_EVERY), Some(false));
        // Another 20 ms with 10 ms of stall: 50%, contended.
        write(12_000);
        assert_eq!(s.refresh(t0 + 2 * SAMPLE_EVERY), Some(true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_psi_nothing_is_contended() {
        let mut s = Sampler::open("/nonexistent/pressure/cpu");
        assert_eq!(s.refresh(Instant::now()), None);
    }
}
