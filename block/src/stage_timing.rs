//! Where a request's time goes, stage by stage.
//!
//! With the `stage-timing` feature, each thread on a request's path marks
//! the moment it reaches each [`Point`], and the device's thread files the
//! request's marks when it puts the used entry in the ring; the bench
//! driver files its own two (submitted, reaped). Without the feature every
//! function here is empty and inlined away, so the request path pays
//! nothing. `ferrite bench --io-path` built with
//! `--features vmm/stage-timing` prints the median of each stage for its
//! QD1 lines, where requests complete one at a time in order, so the
//! device's n-th filed request is the driver's n-th.
//!
//! A mark is a clock read (about 20 ns here), so each stage includes up to
//! one such read of its own.

/// A moment on a request's path, in the order a request meets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The driver is about to publish the available index.
    Submitted = 0,
    /// The device's thread took the chain off the available ring.
    Seen,
    /// The chain is parsed into a request.
    Parsed,
    /// The host call starts on the device's thread (absent when the
    /// kernel runs it, from an io_uring ring).
    HostCallStart,
    /// The host call returned.
    HostCallEnd,
    /// The status byte is written.
    Answered,
    /// The used entry is about to be published.
    Used,
    /// The driver saw the used entry.
    Reaped,
}

/// How many points a request has.
pub const POINTS: usize = 8;

/// The stages between consecutive points, then the whole trip.
pub const STAGE_NAMES: [&str; POINTS] = [
    "avail->seen",
    "seen->parsed",
    "parsed->hostcall",
    "hostcall",
    "hostcall->answered",
    "answered->used",
    "used->reaped",
    "total",
];

/// One request's marks, in ns from a process-wide epoch (0: not marked).
pub type Marks = [u64; POINTS];

#[cfg(feature = "stage-timing")]
mod imp {
    use std::cell::Cell;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    use super::{Marks, Point, POINTS};

    thread_local! {
        static CURRENT: [Cell<u64>; POINTS] = const { [const { Cell::new(0) }; POINTS] };
    }
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// Filed by the device's thread; only it touches this while requests run.
    static DEVICE: Mutex<Vec<Marks>> = Mutex::new(Vec::new());
    /// Filed by the driver's thread.
    static DRIVER: Mutex<Vec<Marks>> = Mutex::new(Vec::new());

    fn current() -> Marks {
        CURRENT.with(|c| std::array::from_fn(|i| c[i].get()))
    }

    /// Marks `point` now on this thread.
    #[inline]
    pub fn mark(point: Point) {
        let epoch = *EPOCH.get_or_init(Instant::now);
        let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        CURRENT.with(|c| c[point as usize].set(ns));
    }

    /// The device's thread: this request's marks are complete.
    pub fn device_filed() {
        DEVICE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(current());
        CURRENT.with(|c| c.iter().for_each(|m| m.set(0)));
    }

    /// The driver's thread: this request's marks are complete.
    pub fn driver_filed() {
        DRIVER
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(current());
    }

    /// Takes every filed request: the device's marks with the driver's
    /// two filled in, paired in order.
    pub fn take() -> Vec<Marks> {
        let device = std::mem::take(&mut *DEVICE.lock().unwrap_or_else(|p| p.into_inner()));
        let driver = std::mem::take(&mut *DRIVER.lock().unwrap_or_else(|p| p.into_inner()));
        super::paired(device, &driver)
    }
}

#[cfg(not(feature = "stage-timing"))]
mod imp {
    use super::{Marks, Point};

    /// Marks `point` (nothing without `stage-timing`).
    #[inline(always)]
    pub fn mark(_point: Point) {}

    /// Files the device's marks (nothing without `stage-timing`).
    #[inline(always)]
    pub fn device_filed() {}

    /// Files the driver's marks (nothing without `stage-timing`).
    #[inline(always)]
    pub fn driver_filed() {}

    /// Always empty without `stage-timing`.
    pub fn take() -> Vec<Marks> {
        Vec::new()
    }
}

pub use imp::{device_filed, driver_filed, mark, take};

/// The device's rows with the driver's submitted and reaped marks, row by
/// row, as many as both filed (the device files a request just after its
/// used entry is out, so the driver may have reaped one more).
#[cfg_attr(not(feature = "stage-timing"), allow(dead_code))]
fn paired(mut device: Vec<Marks>, driver: &[Marks]) -> Vec<Marks> {
    device.truncate(driver.len());
    for (row, d) in device.iter_mut().zip(driver) {
        row[Point::Submitted as usize] = d[Point::Submitted as usize];
        row[Point::Reaped as usize] = d[Point::Reaped as usize];
    }
    device
}

/// Each stage's length in ns, one per row with both driver marks
/// ([`STAGE_NAMES`] order); empty for a stage no row has both ends of (the
/// host-call stages when the kernel ran the call, from an io_uring ring).
pub fn stage_spans(rows: &[Marks]) -> [Vec<u64>; POINTS] {
    std::array::from_fn(|stage| {
        let (from, to) = if stage == POINTS - 1 {
            (0, POINTS - 1)
        } else {
            (stage, stage + 1)
        };
        rows.iter()
            .filter(|r| r[0] != 0 && r[POINTS - 1] >= r[0])
            .filter_map(|r| span(r, from, to))
            .collect()
    })
}

/// `r[to] - r[from]`; None if either end is unmarked or out of order.
fn span(r: &Marks, from: usize, to: usize) -> Option<u64> {
    let (a, b) = (r[from], r[to]);
    (a != 0 && b != 0 && b >= a).then(|| b - a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_spans_between_consecutive_marks() {
        let rows = [
            [100, 150, 300, 350, 1350, 1400, 1450, 1600],
            [200, 260, 400, 450, 1550, 1600, 1650, 1800],
            [300, 340, 500, 550, 1450, 1500, 1550, 1700],
        ];
        let s = stage_spans(&rows);
        assert_eq!(s[0], [50, 60, 40], "avail->seen");
        assert_eq!(s[3], [1000, 1100, 900], "hostcall");
        assert_eq!(s[7], [1500, 1600, 1400], "total");
    }

    #[test]
    fn a_host_call_the_kernel_ran_leaves_its_stages_out() {
        let rows = [[100, 150, 300, 0, 0, 1400, 1450, 1600]];
        let s = stage_spans(&rows);
        assert!(s[2].is_empty());
        assert!(s[3].is_empty());
        assert!(s[4].is_empty());
        assert_eq!(s[5], [50]);
        assert_eq!(s[7], [1500]);
    }

    #[test]
    fn rows_pair_in_order_as_many_as_both_filed() {
        let device = vec![[0, 2, 3, 4, 5, 6, 7, 0]];
        let driver = [[1, 0, 0, 0, 0, 0, 0, 8], [9, 0, 0, 0, 0, 0, 0, 10]];
        assert_eq!(paired(device.clone(), &driver), [[1, 2, 3, 4, 5, 6, 7, 8]]);
        assert!(paired(device, &[]).is_empty());
    }
}
