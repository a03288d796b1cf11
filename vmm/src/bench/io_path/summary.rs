//! The lines after the table: the worst case of each group, and issue 16's
//! targets, counted.
//!
//! Groups: 4 KiB at QD1 (every engine), where the figure that matters is
//! the time ferrite adds to each request; 4 KiB at QD32 on io_uring and
//! 1 MiB sequential writes, where it is the IOPS ratio.

use block::{CacheMode, EngineKind};

use super::{Ratios, Sample, Workload};

/// Issue 16's bounds for 4 KiB at QD1: ferrite adds at most this much to
/// fio's median latency, µs...
pub const ADDED_P50_MAX: f64 = 1.0;
/// ...and at most this much to its p99, µs.
pub const ADDED_P99_MAX: f64 = 3.0;
/// 4 KiB at QD32 on io_uring: at least this share of fio's IOPS.
pub const QD32_RATIO_MIN: f64 = 0.95;
/// 1 MiB sequential writes: at least this share of fio's IOPS.
pub const SEQ_RATIO_MIN: f64 = 0.97;

/// The worst value of one figure in a group, and the case it came from.
#[derive(Debug, Default)]
struct Worst {
    value: Option<f64>,
    case: String,
}

impl Worst {
    /// Keeps `v` if it is worse (`higher_is_worse`) than what is kept.
    /// NaN (a figure that could not be measured) is always kept.
    fn see(&mut self, v: f64, case: &str, higher_is_worse: bool) {
        let worse = match self.value {
            None => true,
            Some(w) if w.is_nan() => false,
            Some(w) => v.is_nan() || if higher_is_worse { v > w } else { v < w },
        };
        if worse {
            self.value = Some(v);
            self.case = case.to_string();
        }
    }

    fn show(&self, key: &str, precision: usize) -> String {
        match self.value {
            Some(v) => format!("{key}={v:.precision$} ({})", self.case),
            None => format!("{key}=-"),
        }
    }
}

/// Counts met targets and keeps the worst cases.
#[derive(Debug, Default)]
pub struct Summary {
    qd1: usize,
    p50_met: usize,
    p99_met: usize,
    qd32: usize,
    qd32_met: usize,
    seq: usize,
    seq_met: usize,
    qd1_p50: Worst,
    qd1_p99: Worst,
    qd1_cpu: Worst,
    qd32_ratio: Worst,
    seq_ratio: Worst,
}

impl Summary {
    /// Takes one case's figures into account.
    pub fn count(
        &mut self,
        mode: CacheMode,
        engine: EngineKind,
        wl: &Workload,
        f: &Sample,
        r: Ratios,
    ) {
        let case = format!("{mode}/{engine}/{}", wl.name);
        if wl.bs == 4096 && wl.qd == 1 {
            self.qd1 += 1;
            self.p50_met += usize::from(r.added_p50 <= ADDED_P50_MAX);
            self.p99_met += usize::from(r.added_p99 <= ADDED_P99_MAX);
            self.qd1_p50.see(r.added_p50, &case, true);
            self.qd1_p99.see(r.added_p99, &case, true);
            self.qd1_cpu.see(f.device_us, &case, true);
        } else if wl.bs == 4096 && engine == EngineKind::IoUring {
            self.qd32 += 1;
            self.qd32_met += usize::from(r.iops >= QD32_RATIO_MIN);
            self.qd32_ratio.see(r.iops, &case, false);
        } else if wl.bs > 4096 {
            self.seq += 1;
            self.seq_met += usize::from(r.iops >= SEQ_RATIO_MIN);
            self.seq_ratio.see(r.iops, &case, false);
        }
    }

    /// The summary lines, each starting with `#`.
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "# worst: 4k-qd1 {} {} {}; 4k-qd32 io_uring {}; 1m-seq {}",
                self.qd1_p50.show("added_p50_us", 2),
                self.qd1_p99.show("added_p99_us", 2),
                self.qd1_cpu.show("device_cpu_us", 2),
                self.qd32_ratio.show("ratio", 2),
                self.seq_ratio.show("ratio", 2),
            ),
            format!(
                "# targets: 4k-qd1 added_p50<={ADDED_P50_MAX}us in {}/{q1}, added_p99<={ADDED_P99_MAX}us in {}/{q1}; \
                 4k-qd32 io_uring ratio>={QD32_RATIO_MIN} in {}/{}; 1m-seq ratio>={SEQ_RATIO_MIN} in {}/{}",
                self.p50_met,
                self.p99_met,
                self.qd32_met,
                self.qd32,
                self.seq_met,
                self.seq,
                q1 = self.qd1,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NO_STAGES, WORKLOADS};
    use super::*;

    fn r(iops: f64, added_p50: f64, added_p99: f64) -> Ratios {
        Ratios {
            iops,
            p99: 1.0,
            added_p50,
            added_p99,
        }
    }

    #[test]
    fn worst_cases_and_targets_per_group() {
        let f = Sample {
            iops: 1.0,
            p50_us: 1.0,
            p99_us: 1.0,
            driver_us: 0.5,
            device_us: 0.7,
            stages: NO_STAGES,
        };
        let mut s = Summary::default();
        let (u, t) = (EngineKind::IoUring, EngineKind::Sync);
        s.count(CacheMode::None, u, &WORKLOADS[0], &f, r(0.9, 0.8, 2.0));
        s.count(CacheMode::Unsafe, t, &WORKLOADS[2], &f, r(0.5, 2.5, 9.0));
        s.count(CacheMode::None, u, &WORKLOADS[1], &f, r(0.96, 9.0, 9.0));
        s.count(CacheMode::None, t, &WORKLOADS[1], &f, r(0.01, 9.0, 9.0));
        s.count(CacheMode::None, u, &WORKLOADS[4], &f, r(0.90, 9.0, 9.0));
        let l = s.lines();
        assert_eq!(
            l[0],
            "# worst: 4k-qd1 added_p50_us=2.50 (unsafe/threads/randread-4k-qd1) \
             added_p99_us=9.00 (unsafe/threads/randread-4k-qd1) \
             device_cpu_us=0.70 (none/io_uring/randwrite-4k-qd1); \
             4k-qd32 io_uring ratio=0.96 (none/io_uring/randwrite-4k-qd32); \
             1m-seq ratio=0.90 (none/io_uring/seqwrite-1m-qd1)"
        );
        assert!(
            l[1].contains("added_p50<=1us in 1/2")
                && l[1].contains("added_p99<=3us in 1/2")
                && l[1].contains("ratio>=0.95 in 1/1")
                && l[1].contains("ratio>=0.97 in 0/1"),
            "{}",
            l[1]
        );
    }

    #[test]
    fn an_unmeasured_figure_is_the_worst() {
        let mut w = Worst::default();
        w.see(1.0, "a", true);
        w.see(f64::NAN, "b", true);
        w.see(5.0, "c", true);
        assert_eq!(w.case, "b");
    }
}
