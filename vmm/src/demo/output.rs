//! What the probe guest printed, as data: its `PROBE key=value ...` lines
//! (format in `resources/probe/README.md`) folded into one report per disk
//! plus the verdict and the `stream` progress.

/// Feature bit the probe shows as FLUSH (`VIRTIO_BLK_F_FLUSH`).
pub const F_FLUSH: u32 = 9;
/// `VIRTIO_BLK_F_CONFIG_WCE`.
pub const F_CONFIG_WCE: u32 = 11;

/// One `PROBE` line split into its kind and its `key=value` pairs.
#[derive(Debug, PartialEq, Eq)]
pub struct ProbeLine<'a> {
    /// The word after `PROBE` (`info`, `rw`, `ack`...); empty for
    /// `PROBE verdict=...`, whose first word is already a pair.
    pub kind: &'a str,
    /// The pairs, in order.
    pub fields: Vec<(&'a str, &'a str)>,
}

impl<'a> ProbeLine<'a> {
    /// Splits `line` if it is a `PROBE` line (the `cmdline` echo is not
    /// key=value and is left out).
    pub fn parse(line: &'a str) -> Option<Self> {
        let rest = line.trim_end().strip_prefix("PROBE ")?;
        let mut words = rest.split_ascii_whitespace().peekable();
        let kind = match words.peek() {
            Some(w) if !w.contains('=') => words.next().unwrap_or_default(),
            _ => "",
        };
        if kind == "cmdline" {
            return None;
        }
        let fields = words.filter_map(|w| w.split_once('=')).collect();
        Some(Self { kind, fields })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn num(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

/// The `info` line of one disk: what the device offered and the driver saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskInfo {
    /// Feature bits the device offered.
    pub features: u64,
    /// Feature bits the probe accepted.
    pub negotiated: u64,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Logical block size.
    pub blk_size: u64,
    /// The `writeback` config byte (or what Linux would show) at start.
    pub writeback: bool,
}

impl DiskInfo {
    /// Whether the driver negotiated feature `bit`.
    pub fn negotiated(&self, bit: u32) -> bool {
        self.negotiated & (1 << bit) != 0
    }
}

/// One scenario's outcome on one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioResult {
    /// The scenario name.
    pub name: String,
    /// `None` for `result=ok`, else the reason.
    pub failure: Option<String>,
    /// `skipped=WHY`, when the scenario did not apply.
    pub skipped: Option<String>,
}

/// Everything the probe said about one disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskView {
    /// The `info` line, once printed.
    pub info: Option<DiskInfo>,
    /// `error=REASON` when the disk could not be set up.
    pub setup_error: Option<String>,
    /// `(writeback_set, writeback_read)` of each `wce` line.
    pub wce: Vec<(u64, u64)>,
    /// Scenario results in the order printed.
    pub results: Vec<ScenarioResult>,
}

impl DiskView {
    /// The first failure on this disk, if any.
    pub fn failure(&self) -> Option<&str> {
        if let Some(e) = &self.setup_error {
            return Some(e);
        }
        self.results.iter().find_map(|r| r.failure.as_deref())
    }

    /// The result of scenario `name`, if it ran.
    pub fn result(&self, name: &str) -> Option<&ScenarioResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// The probe's final word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `verdict=pass`.
    pub pass: bool,
    /// `reason=` (`ok` on a pass).
    pub reason: String,
}

/// The whole run as the probe reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Indexed by disk number.
    pub disks: Vec<DiskView>,
    /// The verdict line, once printed.
    pub verdict: Option<Verdict>,
    /// `PROBE ack` lines seen.
    pub acks: u64,
    /// The highest `PROBE flushed seq=N`.
    pub last_flushed: Option<u64>,
}

impl ProbeReport {
    /// Takes one line of serial output (anything but a PROBE line is ignored).
    pub fn feed(&mut self, line: &str) {
        let Some(p) = ProbeLine::parse(line) else {
            return;
        };
        match p.kind {
            "" => {
                if let Some(v) = p.get("verdict") {
                    self.verdict = Some(Verdict {
                        pass: v == "pass",
                        reason: p.get("reason").unwrap_or("none").to_string(),
                    });
                }
            }
            "ack" => self.acks += 1,
            "flushed" => {
                if let Some(seq) = p.num("seq") {
                    self.last_flushed = Some(self.last_flushed.map_or(seq, |s| s.max(seq)));
                }
            }
            "start" => {}
            kind => self.feed_disk_line(kind, &p),
        }
    }

    fn feed_disk_line(&mut self, kind: &str, p: &ProbeLine<'_>) {
        let Some(index) = p.num("disk").and_then(|d| usize::try_from(d).ok()) else {
            return;
        };
        // The probe drives at most a handful of disks; ignore nonsense.
        if index >= 64 {
            return;
        }
        if self.disks.len() <= index {
            self.disks.resize_with(index + 1, DiskView::default);
        }
        let disk = &mut self.disks[index];
        if kind == "info" {
            if let Some(e) = p.get("error") {
                disk.setup_error = Some(e.to_string());
            } else {
                disk.info = Some(DiskInfo {
                    features: p.num("features").unwrap_or(0),
                    negotiated: p.num("negotiated").unwrap_or(0),
                    capacity: p.num("capacity").unwrap_or(0),
                    blk_size: p.num("blk_size").unwrap_or(0),
                    writeback: p.num("writeback") == Some(1),
                });
            }
            return;
        }
        if kind == "wce" {
            if let (Some(set), Some(read)) = (p.num("writeback_set"), p.num("writeback_read")) {
                disk.wce.push((set, read));
            }
        }
        // `stream` prints a header line without a result first.
        let Some(result) = p.get("result") else {
            return;
        };
        let failure = (result != "ok").then(|| p.get("reason").unwrap_or(result).to_string());
        let skipped = p.get("skipped").map(str::to_string);
        // A scenario may print several lines (wce: one per value); keep the
        // first failure, or the last line's skip note.
        match disk.results.iter_mut().find(|r| r.name == kind) {
            Some(r) => {
                if r.failure.is_none() {
                    r.failure = failure;
                }
                r.skipped = r.skipped.take().or(skipped);
            }
            None => disk.results.push(ScenarioResult {
                name: kind.to_string(),
                failure,
                skipped,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "\
PROBE cmdline probe=info,wce virtio_mmio.device=4K@0xd0000000:5
PROBE start disks=2 scenarios=info,wce
PROBE info disk=0 features=0x130006e54 capacity=16384 blk_size=512 writeback=1 negotiated=0x120006e54 queue_size=64
PROBE info disk=1 addr=0xd0001000 error=bad_magic
PROBE wce disk=0 writeback_set=0 writeback_read=0 result=ok
PROBE wce disk=0 writeback_set=1 writeback_read=0 result=fail reason=writeback_readback
PROBE verdict=fail reason=bad_magic
";

    #[test]
    fn folds_lines_into_disks_and_verdict() {
        let mut r = ProbeReport::default();
        for line in RUN.lines() {
            r.feed(line);
        }
        assert_eq!(r.disks.len(), 2);
        let info = r.disks[0].info.unwrap();
        assert!(info.writeback);
        assert!(info.negotiated(F_FLUSH));
        assert!(info.negotiated(F_CONFIG_WCE));
        assert_eq!(info.capacity, 16384);
        assert_eq!(r.disks[0].wce, vec![(0, 0), (1, 0)]);
        assert_eq!(r.disks[0].failure(), Some("writeback_readback"));
        assert_eq!(r.disks[1].failure(), Some("bad_magic"));
        assert_eq!(
            r.verdict,
            Some(Verdict {
                pass: false,
                reason: "bad_magic".into()
            })
        );
    }

    #[test]
    fn stream_progress_and_skips() {
        let mut r = ProbeReport::default();
        for line in [
            "PROBE stream disk=0 count=0 depth=4 flush_every=2",
            "PROBE ack seq=0",
            "PROBE ack seq=1",
            "PROBE flushed seq=1",
            "PROBE flush disk=0 skipped=flush_not_negotiated result=ok\r",
            "garbage PROBE ack seq=9",
            "PROBE ack seq=",
        ] {
            r.feed(line);
        }
        assert_eq!(r.acks, 3);
        assert_eq!(r.last_flushed, Some(1));
        let flush = r.disks[0].result("flush").unwrap();
        assert_eq!(flush.skipped.as_deref(), Some("flush_not_negotiated"));
        assert_eq!(flush.failure, None);
        assert_eq!(r.disks[0].result("stream"), None);
        assert_eq!(r.verdict, None);
    }

    #[test]
    fn odd_lines_do_not_panic() {
        let mut r = ProbeReport::default();
        for line in [
            "",
            "PROBE",
            "PROBE ",
            "PROBE info disk=99999999999999999999",
            "PROBE info disk=70",
            "PROBE rw disk=0x",
            "PROBE verdict",
        ] {
            r.feed(line);
        }
        assert!(r.disks.is_empty());
        assert_eq!(
            ProbeLine::parse("PROBE verdict=pass reason=ok")
                .unwrap()
                .kind,
            ""
        );
        assert!(ProbeLine::parse("PROBE cmdline probe=x").is_none());
    }
}
