//! What `ferrite crashtest` prints: one row per state as it is checked, a
//! summary line, how to reproduce each failure; and the same as JSON.

use std::path::PathBuf;
use std::time::Duration;

use block::crash::{Event, WriteLog};

use super::fsck::Fsck;
use super::CrashtestArgs;

/// One checked state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StateRow {
    /// Its number (0-based, in generation order).
    pub state: usize,
    /// Events of the log before the power cut.
    pub cut: usize,
    /// Writes on the disk.
    pub kept: usize,
    /// Writes submitted before the cut that are not.
    pub dropped: usize,
    /// Kept writes that reached the disk only in part (`--tear`).
    pub torn: usize,
    /// The check's exit status (as `ferrite run` reports it).
    pub status: i32,
    /// e2fsck's verdict, with `--fsck`.
    pub fsck: Option<Fsck>,
    /// The check's output, then ferrite's lines about the run.
    pub output: String,
    /// Where `--keep` saved the state's image.
    pub kept_image: Option<PathBuf>,
    /// Time to build and check it.
    pub seconds: f64,
}

impl StateRow {
    /// The check exited 0 and e2fsck (if asked) found nothing.
    pub fn passed(&self) -> bool {
        self.status == 0 && self.fsck.as_ref().is_none_or(|f| f.passed)
    }
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// The cache mode of the recorded run.
    pub cache: String,
    /// The seed of the random states.
    pub seed: u64,
    /// Random states tear in-flight writes (`--tear`).
    pub tear: bool,
    /// Events in the log.
    pub events: usize,
    /// Writes recorded.
    pub writes: usize,
    /// FLUSHes completed.
    pub flushes: usize,
    /// States generated (at most `--states`).
    pub states: usize,
    /// Seconds the workload's run took (0 with `--recording`).
    pub workload_seconds: f64,
    /// Seconds in all.
    pub seconds: f64,
    /// One row per checked state.
    pub rows: Vec<StateRow>,
}

impl Report {
    /// An empty report for `log`.
    pub fn new(args: &CrashtestArgs, log: &WriteLog, states: usize, workload: Duration) -> Report {
        let count = |f: fn(&Event) -> bool| log.events.iter().filter(|e| f(e)).count();
        Report {
            cache: args.cache.to_string(),
            seed: args.seed,
            tear: args.tear,
            events: log.events.len(),
            writes: count(|e| matches!(e, Event::WriteSubmitted { .. })),
            flushes: count(|e| matches!(e, Event::FlushCompleted { .. })),
            states,
            workload_seconds: workload.as_secs_f64(),
            seconds: 0.0,
            rows: Vec::new(),
        }
    }

    /// States whose check or fsck failed.
    pub fn failed(&self) -> usize {
        self.rows.iter().filter(|r| !r.passed()).count()
    }

    /// "N events: W writes, F flushes".
    pub fn log_summary(&self) -> String {
        format!(
            "{} events: {} writes, {} flushes",
            self.events, self.writes, self.flushes
        )
    }

    /// The table's header.
    pub fn print_header(&self) {
        println!(
            "{:>5}  {:>11}  {:>5}  {:>7}  {:>4}  {:<6}  check",
            "state", "cut", "kept", "dropped", "torn", "fsck"
        );
    }

    /// One row, as soon as the state is checked.
    pub fn print_row(&self, r: &StateRow) {
        let fsck = match &r.fsck {
            None => "-",
            Some(f) if f.passed => "ok",
            Some(_) => "FAIL",
        };
        let check = if r.status == 0 {
            "ok".to_string()
        } else {
            // The check's last words are usually its reason.
            let last = r
                .output
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("");
            format!("FAIL (status {}): {}", r.status, last.trim())
        };
        println!(
            "{:>5}  {:>11}  {:>5}  {:>7}  {:>4}  {:<6}  {check}",
            r.state,
            format!("{}/{}", r.cut, self.events),
            r.kept,
            r.dropped,
            r.torn,
            fsck
        );
    }

    /// The summary line and how to see each failure again.
    pub fn print_summary(&self, args: &CrashtestArgs) {
        let failed: Vec<&StateRow> = self.rows.iter().filter(|r| !r.passed()).collect();
        println!(
            "crashtest: {} states checked, {} passed, {} failed ({} cache, seed {}, {}) in {:.0} s",
            self.rows.len(),
            self.rows.len() - failed.len(),
            failed.len(),
            self.cache,
            self.seed,
            self.log_summary(),
            self.seconds
        );
        if failed.is_empty() {
            return;
        }
        let numbers: Vec<String> = failed.iter().map(|r| r.state.to_string()).collect();
        let recording = args
            .recording
            .clone()
            .or_else(|| args.keep.as_ref().map(|k| k.join("recording")));
        match recording {
            Some(rec) => println!(
                "reproduce: ferrite crashtest --kernel {} {} --recording {} --check {} --states {} --seed {}{} --only {}",
                args.kernel.display(),
                root_arg(args),
                rec.display(),
                sh_quote(&args.check),
                args.states,
                self.seed,
                if args.tear { " --tear" } else { "" },
                numbers.join(",")
            ),
            None => println!(
                "reproduce: add --keep DIR to save the recording and the failing images; then \
                 --recording DIR/recording --seed {} --states {}{} --only {} checks these states again \
                 (a new workload run records anew, and its states can differ)",
                self.seed,
                args.states,
                if args.tear { " --tear" } else { "" },
                numbers.join(",")
            ),
        }
        for r in &failed {
            if let Some(img) = &r.kept_image {
                println!(
                    "  state {}: ferrite run --kernel {} --image {} -- sh -c {}",
                    r.state,
                    args.kernel.display(),
                    img.display(),
                    sh_quote(&args.check)
                );
            }
        }
    }
}

/// `s` as one word for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn root_arg(args: &CrashtestArgs) -> String {
    match (&args.image, &args.rootfs) {
        (Some(i), _) => format!("--image {}", i.display()),
        (None, Some(d)) => format!("--rootfs {}", d.display()),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: i32, fsck: Option<bool>) -> StateRow {
        StateRow {
            state: 0,
            cut: 3,
            kept: 1,
            dropped: 2,
            torn: 0,
            status,
            fsck: fsck.map(|passed| Fsck {
                passed,
                output: String::new(),
            }),
            output: String::new(),
            kept_image: None,
            seconds: 0.0,
        }
    }

    #[test]
    fn commands_are_quoted_for_the_shell() {
        assert_eq!(sh_quote("/app/check"), "'/app/check'");
        assert_eq!(sh_quote("echo 'a b'"), r"'echo '\''a b'\'''");
    }

    #[test]
    fn a_state_passes_only_when_its_check_and_its_fsck_do() {
        assert!(row(0, None).passed());
        assert!(row(0, Some(true)).passed());
        assert!(!row(0, Some(false)).passed());
        assert!(!row(1, Some(true)).passed());
        assert!(!row(254, None).passed());
    }

    #[test]
    fn the_log_is_counted_and_the_json_has_every_row() {
        use block::crash::Event::*;
        let log = WriteLog {
            initial_write_cache: true,
            events: vec![
                WriteSubmitted {
                    id: 0,
                    offset: 0,
                    len: 512,
                },
                WriteCompleted { id: 0 },
                FlushSubmitted { id: 0 },
                FlushCompleted { id: 0 },
            ],
        };
        let a = super::super::tests::args(&["--workload", "w"]);
        let mut r = Report::new(&a, &log, 2, Duration::from_secs(1));
        assert_eq!(r.log_summary(), "4 events: 1 writes, 1 flushes");
        r.rows = vec![row(0, None), row(1, None)];
        assert_eq!(r.failed(), 1);
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 2);
        assert_eq!(json["rows"][1]["status"], 1);
    }
}
