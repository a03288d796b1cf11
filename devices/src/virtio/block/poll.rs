//! How long the I/O thread spins for new work before it sleeps.
//!
//! Waking a sleeping thread through an eventfd costs tens of microseconds
//! on a loaded or virtualised host, more than a cached 4 KiB read takes.
//! So after a batch the thread looks at the avail ring, the disk's
//! completions and its mailbox for a while before it re-enables driver
//! notifications and sleeps (QEMU's iothread `poll-max-ns`).
//!
//! The window is fixed, not adaptive as QEMU's and KVM's halt polling
//! are. Those grow the window only when the thread, having slept, was
//! woken sooner than the longest window; where a wake-up itself takes
//! longer than that (measured on this project's 2-core virtualised hosts:
//! 15-100 µs), the window never grows again once it has dropped, and a
//! driver that submits within microseconds of each completion is served
//! at the speed of wake-ups. A fixed window costs at most one window of
//! CPU per idle period, and gives way to any other task that wants the
//! CPU meanwhile ([`Spin`]): it does not open at all while more tasks are
//! runnable than the host has CPUs ([`super::contention`]), since a thread
//! that sleeps is woken by a completion and a thread that yielded is not.

use std::time::{Duration, Instant};

use super::contention::cpu_contended;

/// The default window (QEMU's default `poll-max-ns`, rounded).
pub const DEFAULT_POLL_MAX: Duration = Duration::from_micros(32);

/// How the I/O thread polls: its longest window, and whether it offers
/// its CPU to other tasks as it spins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollWindow {
    /// The longest window; zero never spins.
    pub max: Duration,
    /// Give way to other tasks: offer the CPU every [`YIELD_EVERY`] while
    /// spinning, and do not spin while the host is contended ([`Spin`]).
    pub yields: bool,
}

impl PollWindow {
    /// The window for one wait: `max`, but at most [`DEFAULT_POLL_MAX`]
    /// while `only_workers_busy`: operations are in flight and none of
    /// them awaits the storage device itself ([`block::Disk::awaits_device`]).
    ///
    /// A long window (`iothread-poll-us=`) is for storage whose
    /// completions come later than the default window lasts: spinning
    /// through the wait saves the wake-up when they come. While the only
    /// work in flight is carried by kernel threads (durable writes and
    /// flushes: io_uring's io-wq workers, or the dio workers that finish
    /// an `O_DIRECT` durable write), spinning only burns a CPU those
    /// threads may need. Measured on this project's
    /// 2-core host (`ferrite bench --io-path --dir /var/tmp --poll-us 300`,
    /// `writethrough` 4 KiB random writes at QD32, 2 rounds of 5 pairs):
    /// 34-38 µs of the I/O thread's CPU per write with this limit, 55-67
    /// µs without, at the same IOPS.
    pub fn for_wait(&self, only_workers_busy: bool) -> Duration {
        if only_workers_busy {
            self.max.min(DEFAULT_POLL_MAX)
        } else {
            self.max
        }
    }
}

/// How often a yielding spin offers its CPU to another task. A
/// `sched_yield` that finds nobody waiting costs well under a microsecond;
/// one that finds the producer waiting hands it the CPU at once.
pub const YIELD_EVERY: Duration = Duration::from_micros(2);

/// A spin window that offers its CPU to any other runnable task as it
/// goes.
///
/// Spinning pays only while the thread that produces the awaited work
/// runs on another CPU. When the process gets less than that (other
/// tenants on a 2-core host), the spinner holds the CPU the producer is
/// waiting for, and every request costs a whole window plus a wake-up:
/// measured before this existed, `writeback` randwrite QD1 fell to 0.05
/// of fio while other work competed for the cores. KVM's halt polling
/// stops when another task is runnable on its CPU
/// (`single_task_running`); a user thread cannot ask that, but
/// `sched_yield` every few microseconds runs such a task at once and
/// returns at once if there is none.
#[derive(Debug)]
pub struct Spin {
    deadline: Instant,
    last_yield: Instant,
    /// Offer the CPU as it goes (else spin until the deadline).
    yields: bool,
    /// Calls so far.
    calls: u32,
}

/// How many `keep_going` calls share one reading of the clock.
const CHECK_EVERY: u32 = 16;

impl Spin {
    /// A window of `window` from now; `yields`: offer the CPU every
    /// [`YIELD_EVERY`], and open no window while the host's CPUs are
    /// contended ([`cpu_contended`]).
    pub fn new(window: Duration, yields: bool) -> Spin {
        let now = Instant::now();
        let window = if yields && cpu_contended(now) {
            Duration::ZERO
        } else {
            window
        };
        Spin {
            deadline: now + window,
            last_yield: now,
            yields,
            calls: 0,
        }
    }

    /// Whether to keep spinning: the window is open. Yields first if it
    /// is time to.
    pub fn keep_going(&mut self) -> bool {
        // The clock only every CHECK_EVERY calls: read each time it was
        // the costliest part of a poll iteration (perf, bench --io-path),
        // and the iteration's length is how late new work is seen.
        self.calls = self.calls.wrapping_add(1);
        if !self.calls.is_multiple_of(CHECK_EVERY) {
            return true;
        }
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        if self.yields && now.duration_since(self.last_yield) >= YIELD_EVERY {
            std::thread::yield_now();
            self.last_yield = Instant::now();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_window_is_cut_short_while_only_workers_are_busy() {
        let long = PollWindow {
            max: Duration::from_micros(300),
            yields: true,
        };
        assert_eq!(long.for_wait(false), Duration::from_micros(300));
        assert_eq!(long.for_wait(true), DEFAULT_POLL_MAX);
        let short = PollWindow {
            max: Duration::from_micros(5),
            yields: true,
        };
        assert_eq!(short.for_wait(false), Duration::from_micros(5));
        assert_eq!(short.for_wait(true), Duration::from_micros(5));
    }

    #[test]
    fn a_spin_ends_at_its_deadline() {
        let mut s = Spin::new(Duration::from_millis(2), true);
        let start = Instant::now();
        while s.keep_going() {
            std::hint::spin_loop();
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
