//! How long the storage takes to answer an operation sent alone, against
//! how long the disk's thread spins for an answer before it sleeps.
//!
//! An operation alone in flight is made one of two ways. The thread can
//! make the system call itself and sleep in it until the device's
//! interrupt wakes it; or it can hand it to the ring and spin until the
//! completion shows there. Sleeping costs a wake-up, and on a virtual
//! host a wake-up on a CPU other than the interrupt's waits for that CPU
//! to be run again (22 µs against 2 µs measured on this project's host;
//! which CPU the thread slept on is the scheduler's draw). Spinning costs
//! nothing extra while the answer comes within the spin, and the ring's
//! path (an entry into the kernel to submit, another to post the
//! completion) when it does not, on top of the wake-up. So the ring pays
//! when the answer usually comes within the spin: like the kernel's
//! hybrid polling of NVMe devices, the choice follows the answer times
//! measured so far.

use std::time::Duration;

/// The running mean of the answer times of lone operations that the
/// device completes by itself, and the caller's spin window.
#[derive(Debug, Default)]
pub(crate) struct AnswerTime {
    /// Exponentially weighted mean in nanoseconds (each new sample
    /// weighs 1/8); `None` before the first.
    mean_ns: Option<u64>,
    /// How long the caller spins for such a completion; zero never.
    spin: Duration,
}

impl AnswerTime {
    /// The caller spins up to `spin` for an operation the device
    /// completes by itself before it sleeps.
    pub(crate) fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// One lone operation took `took`, from its submission to the thread
    /// having its result.
    pub(crate) fn note(&mut self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.mean_ns = Some(match self.mean_ns {
            None => sample,
            Some(mean) => mean - mean / 8 + sample / 8,
        });
    }

    /// Whether the caller's spin usually outlasts the answer; true
    /// before any answer was measured, so that one is.
    pub(crate) fn spin_outlasts(&self) -> bool {
        let spin = u64::try_from(self.spin.as_nanos()).unwrap_or(u64::MAX);
        spin > 0 && self.mean_ns.is_none_or(|mean| mean < spin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn no_spin_never_outlasts_an_answer() {
        let mut a = AnswerTime::default();
        assert!(!a.spin_outlasts());
        a.note(US);
        assert!(!a.spin_outlasts());
    }

    #[test]
    fn the_spin_is_tried_first_and_then_follows_the_mean() {
        let mut a = AnswerTime::default();
        a.set_spin(300 * US);
        assert!(a.spin_outlasts(), "untried: the first answer is measured");
        a.note(60 * US);
        assert!(a.spin_outlasts());
        // A device that slows down to 1 ms: within a few answers the
        // mean passes the window...
        let mut slow = 0;
        while a.spin_outlasts() {
            a.note(1000 * US);
            slow += 1;
        }
        assert!((1..=4).contains(&slow), "{slow} slow answers");
        // ...and comes back under it as the device speeds up again.
        let mut fast = 0;
        while !a.spin_outlasts() {
            a.note(60 * US);
            fast += 1;
        }
        assert!((1..=16).contains(&fast), "{fast} fast answers");
    }

    #[test]
    fn a_spin_shorter_than_the_answers_is_not_used() {
        let mut a = AnswerTime::default();
        a.set_spin(32 * US);
        a.note(60 * US);
        assert!(!a.spin_outlasts());
        a.note(Duration::MAX);
        assert!(!a.spin_outlasts(), "a huge sample saturates");
    }
}
