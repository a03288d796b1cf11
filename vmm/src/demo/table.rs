//! The demo's table: one row per disk, what the guest saw beside what the
//! host did, readable at a glance.

use block::CacheMode;
use serde_json::Value;

use super::output::{DiskView, F_CONFIG_WCE, F_FLUSH};

/// The host-side counters of one disk, from ferrite's `--stats-json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// Guest writes completed.
    pub writes: u64,
    /// Guest flushes completed.
    pub flushes: u64,
    /// fdatasync calls plus O_DSYNC/RWF_DSYNC writes.
    pub host_syncs: u64,
    /// fdatasync calls.
    pub fdatasyncs: u64,
    /// Writes made durable by O_DSYNC or RWF_DSYNC.
    pub dsync_writes: u64,
}

impl HostCounts {
    /// Reads disk `index` of a `--stats-json` document.
    pub fn from_stats(doc: &Value, index: usize) -> Option<Self> {
        let disk = doc.get("disks")?.get(index)?.get("disk")?;
        let n = |k: &str| disk.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some(Self {
            writes: n("writes"),
            flushes: n("flushes"),
            host_syncs: n("host_syncs"),
            fdatasyncs: n("fdatasyncs"),
            dsync_writes: n("dsync_writes"),
        })
    }
}

/// One disk of the table.
#[derive(Clone, Debug)]
pub struct Row<'a> {
    /// Image file name (shown when the user gave the drives).
    pub name: String,
    /// The drive's cache mode.
    pub mode: CacheMode,
    /// Whether it is read-only.
    pub read_only: bool,
    /// What the probe said about it.
    pub view: Option<&'a DiskView>,
    /// What the host counted.
    pub host: Option<HostCounts>,
    /// Whether the probe reached its verdict (a disk without a failure
    /// in a run that was stopped is not a pass).
    pub finished: bool,
}

/// What a completed guest write means in this row (the guest's write cache
/// as it saw it, and what the mode does with flushes).
fn durability(mode: CacheMode, wce: Option<bool>) -> &'static str {
    match (mode, wce) {
        (_, None) => "?",
        (CacheMode::Unsafe, Some(true)) => "volatile; FLUSH ignored",
        (CacheMode::Unsafe, Some(false)) => "volatile (unsafe)",
        (_, Some(true)) => "volatile until FLUSH",
        (_, Some(false)) => "durable at completion",
    }
}

/// The `wce` scenario: the guest set the write cache to 0 and to 1 and
/// read each back ("-" when it did not run).
fn toggle_cell(view: &DiskView) -> String {
    let Some(info) = view.info else {
        return "-".to_string();
    };
    match view.result("wce") {
        None => "-",
        Some(r) if r.skipped.is_some() || !info.negotiated(F_CONFIG_WCE) => "n/a",
        Some(r) if r.failure.is_none() => "ok",
        Some(_) => "FAILED",
    }
    .to_string()
}

fn verdict_cell(view: Option<&DiskView>, finished: bool) -> String {
    match view {
        None => "no report".to_string(),
        Some(v) => match v.failure() {
            Some(reason) => format!("FAIL: {reason}"),
            None if v.info.is_none() => "no report".to_string(),
            None if !finished => "stopped".to_string(),
            None => "pass".to_string(),
        },
    }
}

/// Renders the table (header, rows), each line ending in '\n'.
pub fn render(rows: &[Row<'_>], show_names: bool) -> String {
    let mut header = vec![
        "mode",
        "host open flags",
        "FLUSH",
        "WCE",
        "WCE 0/1",
        "a completed write is",
        "writes",
        "flushes",
        "host syncs",
        "verdict",
    ];
    if show_names {
        header.insert(0, "disk");
    }
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let info = r.view.and_then(|v| v.info);
        let num =
            |f: fn(&HostCounts) -> u64| r.host.as_ref().map_or("-".into(), |h| f(h).to_string());
        let syncs = r.host.as_ref().map_or("-".into(), |h| {
            format!(
                "{} ({} fdatasync, {} dsync)",
                h.host_syncs, h.fdatasyncs, h.dsync_writes
            )
        });
        let mut row = vec![
            r.mode.name().to_string(),
            r.mode.open_flags_description(r.read_only),
            info.map_or("-".into(), |i| {
                if i.negotiated(F_FLUSH) { "yes" } else { "no" }.to_string()
            }),
            info.map_or("-".into(), |i| u8::from(i.writeback).to_string()),
            r.view.map_or("-".into(), toggle_cell),
            durability(r.mode, info.map(|i| i.writeback)).to_string(),
            num(|h| h.writes),
            num(|h| h.flushes),
            syncs,
            verdict_cell(r.view, r.finished),
        ];
        if show_names {
            row.insert(0, r.name.clone());
        }
        cells.push(row);
    }
    let columns = cells[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::output::ProbeReport;
    use super::*;

    #[test]
    fn reads_counts_from_stats_json() {
        let doc = serde_json::json!({"exit_status": 1, "disks": [
            {"index": 0, "cache": "none", "disk": {"writes": 9, "flushes": 2,
             "host_syncs": 3, "fdatasyncs": 2, "dsync_writes": 1}}]});
        let h = HostCounts::from_stats(&doc, 0).unwrap();
        assert_eq!((h.writes, h.flushes, h.host_syncs), (9, 2, 3));
        assert_eq!((h.fdatasyncs, h.dsync_writes), (2, 1));
        assert_eq!(HostCounts::from_stats(&doc, 1), None);
        assert_eq!(HostCounts::from_stats(&Value::Null, 0), None);
    }

    #[test]
    fn rows_line_up_and_say_what_was_seen() {
        let mut report = ProbeReport::default();
        for line in [
            "PROBE info disk=0 features=0x130006e54 capacity=16384 blk_size=512 writeback=0 negotiated=0x120000a00 queue_size=64",
            "PROBE wce disk=0 writeback_set=0 writeback_read=0 result=ok",
            "PROBE wce disk=0 writeback_set=1 writeback_read=1 result=ok",
            "PROBE rw disk=1 result=fail reason=readback_mismatch",
        ] {
            report.feed(line);
        }
        let rows = [
            Row {
                name: "a.img".into(),
                mode: CacheMode::DirectSync,
                read_only: false,
                view: report.disks.first(),
                host: Some(HostCounts {
                    writes: 4,
                    flushes: 0,
                    host_syncs: 4,
                    fdatasyncs: 1,
                    dsync_writes: 3,
                }),
                finished: true,
            },
            Row {
                name: "b.img".into(),
                mode: CacheMode::Unsafe,
                read_only: false,
                view: report.disks.get(1),
                host: None,
                finished: true,
            },
        ];
        let text = render(&rows, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("mode "), "{text}");
        assert!(
            lines[1].starts_with("directsync  O_RDWR|O_DIRECT|O_DSYNC  yes"),
            "{text}"
        );
        assert!(lines[1].contains("yes    0    ok "), "{text}");
        assert!(lines[1].contains("durable at completion"), "{text}");
        assert!(lines[1].contains("4 (1 fdatasync, 3 dsync)"), "{text}");
        assert!(lines[1].ends_with("pass"), "{text}");
        assert!(lines[2].ends_with("FAIL: readback_mismatch"), "{text}");
        // Columns line up: "host open flags" starts at the same place.
        let col = lines[0].find("host open flags").unwrap();
        assert_eq!(&lines[1][col..col + 6], "O_RDWR");
        assert!(render(&rows, true).starts_with("disk "));
        let mut stopped = rows[0].clone();
        stopped.finished = false;
        assert!(render(&[stopped], false)
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("stopped"));
    }
}
