//! `--ktap`: reads KTAP (kunit, kselftest) or TAP from the command's
//! stdout as it streams, and sums it up in one line.
//!
//! Nested subtests are indented and end with their parent's result line,
//! so a result right after a deeper one is a parent: its `not ok` still fails the run, but only leaves are counted.
//! The run fails on any `not ok`, on `Bail out!`, on a top-level plan
//! (`1..N`) that the top-level results do not complete, and on output with
//! no results at all. `# SKIP` counts as skipped; `# TODO` and `# XFAIL`
//! results never fail.

use crate::panic_watch::LineSplitter;

/// Totals of a KTAP stream.
#[derive(Debug, Default)]
pub struct Ktap {
    lines: LineSplitter,
    /// Leaf tests that passed.
    pub passed: usize,
    /// Leaf tests that failed.
    pub failed: usize,
    /// Leaf tests skipped.
    pub skipped: usize,
    /// `not ok` lines of parent tests whose leaves all passed.
    pub failed_parents: usize,
    /// The top-level plan `1..N`.
    pub plan: Option<usize>,
    /// Top-level results seen.
    pub top_results: usize,
    /// `Bail out!` was seen.
    pub bailed: bool,
    /// The indent of the top level (the first KTAP line's).
    top: Option<usize>,
    /// The indent of the last result line.
    last_indent: Option<usize>,
}

impl Ktap {
    /// Reads more of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(bytes, |l| self.line(&String::from_utf8_lossy(l)));
        self.lines = lines;
    }

    /// Ends the stream (a last line without a newline counts).
    pub fn finish(&mut self) {
        let rest = String::from_utf8_lossy(self.lines.pending()).into_owned();
        self.lines = LineSplitter::default();
        if !rest.is_empty() {
            self.line(&rest);
        }
    }

    fn line(&mut self, line: &str) {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if body.starts_with("Bail out!") {
            self.bailed = true;
            return;
        }
        if let Some(n) = body.strip_prefix("1..") {
            let top = *self.top.get_or_insert(indent);
            if indent == top {
                self.plan = n.split_whitespace().next().and_then(|n| n.parse().ok());
            }
            return;
        }
        if body.starts_with("KTAP version") || body.starts_with("TAP version") {
            self.top.get_or_insert(indent);
            return;
        }
        let (ok, rest) = if let Some(r) = body.strip_prefix("not ok ") {
            (false, r)
        } else if let Some(r) = body.strip_prefix("ok ") {
            (true, r)
        } else {
            return;
        };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            return;
        }
        let top = *self.top.get_or_insert(indent);
        let parent = self.last_indent.is_some_and(|last| last > indent);
        self.last_indent = Some(indent);
        if indent == top {
            self.top_results += 1;
        }
        let directive = rest
            .split_once('#')
            .map(|(_, d)| d.trim().to_ascii_uppercase())
            .unwrap_or_default();
        let excused = directive.starts_with("TODO") || directive.starts_with("XFAIL");
        match (parent, ok || excused, directive.starts_with("SKIP")) {
            (true, false, _) => self.failed_parents += 1,
            (true, true, _) => {}
            (false, _, true) => self.skipped += 1,
            (false, true, false) => self.passed += 1,
            (false, false, false) => self.failed += 1,
        }
    }

    /// Whether the run passes: no failure, a complete plan, some results.
    pub fn passed(&self) -> bool {
        self.failed == 0
            && self.failed_parents == 0
            && !self.bailed
            && self.top_results > 0
            && self.plan.is_none_or(|n| n == self.top_results)
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "ktap: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
        if self.failed_parents > 0 {
            s.push_str(&format!(", {} failed suites", self.failed_parents));
        }
        match self.plan {
            Some(n) if n != self.top_results => s.push_str(&format!(
                "; plan 1..{n} unfinished ({} results)",
                self.top_results
            )),
            _ if self.top_results == 0 => s.push_str("; no test results"),
            _ => {}
        }
        if self.bailed {
            s.push_str("; bailed out");
        }
        s.push_str(if self.passed() { " (pass)" } else { " (FAIL)" });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ktap {
        let mut k = Ktap::default();
        // Split the stream at odd places: lines may come in pieces.
        for chunk in text.as_bytes().chunks(7) {
            k.feed(chunk);
        }
        k.finish();
        k
    }

    const KUNIT: &str = "KTAP version 1
1..2
    KTAP version 1
    # Subtest: example
    1..3
    ok 1 example_simple_test
    ok 2 example_skip_test # SKIP this test should be skipped
    not ok 3 example_mark_skipped_test
not ok 1 example
ok 2 other
";

    #[test]
    fn kunit_with_one_failure() {
        let k = parse(KUNIT);
        assert_eq!((k.passed, k.failed, k.skipped), (2, 1, 1));
        assert_eq!((k.plan, k.top_results), (Some(2), 2));
        assert_eq!(k.failed_parents, 1);
        assert!(!k.passed());
        assert_eq!(
            k.summary(),
            "ktap: 2 passed, 1 failed, 1 skipped, 1 failed suites (FAIL)"
        );
    }

    #[test]
    fn kselftest_tap_passes() {
        let k = parse(
            "TAP version 13\n1..3\n# running\nok 1 a\nok 2 b # SKIP no\nok 3 c # TODO later\n",
        );
        assert!(k.passed(), "{}", k.summary());
        assert_eq!((k.passed, k.failed, k.skipped), (2, 0, 1));
    }

    #[test]
    fn an_unfinished_plan_or_nothing_fails() {
        let k = parse("KTAP version 1\n1..3\nok 1 a\nok 2 b");
        assert!(!k.passed());
        assert!(k.summary().contains("plan 1..3 unfinished (2 results)"));
        assert!(!parse("hello\n").passed());
        assert!(!parse("1..1\nBail out! broken\n").passed());
    }

    #[test]
    fn a_parent_failing_alone_still_fails() {
        let k = parse("1..1\n    1..1\n    ok 1 leaf\nnot ok 1 suite\n");
        assert_eq!((k.passed, k.failed), (1, 0));
        assert!(!k.passed());
    }
}
