//! What a disk does when the host fails a request: QEMU's `werror=` and
//! `rerror=` actions. `report` answers the error (the guest sees IOERR),
//! `ignore` answers success though the data never reached the disk (or
//! the caller's buffer), `stop` holds any failed request and `enospc`
//! holds one that failed for lack of space (reporting the rest); a held
//! request keeps its place and buffers and is retried until it succeeds
//! (`Disk::retry_stopped`). Nothing is lost while storage is full.

use std::fmt;
use std::str::FromStr;

/// One action, as QEMU names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorAction {
    /// Answer the error: the guest sees IOERR.
    #[default]
    Report,
    /// Answer success: the data is lost (writes) or not read (reads).
    Ignore,
    /// Hold the request on ENOSPC (until space is freed); report others.
    Enospc,
    /// Hold the request on any host error.
    Stop,
}

/// What to do with one failed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Report,
    Ignore,
    Hold,
}

impl ErrorAction {
    /// The action's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorAction::Report => "report",
            ErrorAction::Ignore => "ignore",
            ErrorAction::Enospc => "enospc",
            ErrorAction::Stop => "stop",
        }
    }

    /// What a request that failed with `errno` gets.
    pub(crate) fn verdict(self, errno: i32) -> Verdict {
        match self {
            ErrorAction::Report => Verdict::Report,
            ErrorAction::Ignore => Verdict::Ignore,
            ErrorAction::Enospc if errno == libc::ENOSPC => Verdict::Hold,
            ErrorAction::Enospc => Verdict::Report,
            ErrorAction::Stop => Verdict::Hold,
        }
    }
}

impl fmt::Display for ErrorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not one of QEMU's error actions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error action {0:?} (known: report, ignore, enospc, stop)")]
pub struct ParseErrorActionError(pub String);

impl FromStr for ErrorAction {
    type Err = ParseErrorActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "report" => Ok(ErrorAction::Report),
            "ignore" => Ok(ErrorAction::Ignore),
            "enospc" => Ok(ErrorAction::Enospc),
            "stop" => Ok(ErrorAction::Stop),
            other => Err(ParseErrorActionError(other.to_string())),
        }
    }
}

/// A disk's actions for failed writes (also discard and write-zeroes) and
/// failed reads. The library's default reports both; ferrite's `--drive`
/// defaults to QEMU's (`werror=enospc`, `rerror=report`). A failed flush
/// is always reported: after a failed fdatasync the page cache may have
/// dropped the data, so retrying it cannot bring the data back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// `werror=`.
    pub write: ErrorAction,
    /// `rerror=`.
    pub read: ErrorAction,
}

impl ErrorPolicy {
    /// QEMU's defaults for a drive: `werror=enospc`, `rerror=report`.
    pub const QEMU: ErrorPolicy = ErrorPolicy {
        write: ErrorAction::Enospc,
        read: ErrorAction::Report,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for a in [
            ErrorAction::Report,
            ErrorAction::Ignore,
            ErrorAction::Enospc,
            ErrorAction::Stop,
        ] {
            assert_eq!(a.as_str().parse::<ErrorAction>(), Ok(a));
        }
        let e = "pause".parse::<ErrorAction>().unwrap_err();
        assert!(
            e.to_string().contains("report, ignore, enospc, stop"),
            "{e}"
        );
    }

    #[test]
    fn enospc_holds_only_a_full_disk() {
        assert_eq!(ErrorAction::Enospc.verdict(libc::ENOSPC), Verdict::Hold);
        assert_eq!(ErrorAction::Enospc.verdict(libc::EIO), Verdict::Report);
        assert_eq!(ErrorAction::Stop.verdict(libc::EIO), Verdict::Hold);
        assert_eq!(ErrorAction::Ignore.verdict(libc::EIO), Verdict::Ignore);
        assert_eq!(ErrorAction::Report.verdict(libc::ENOSPC), Verdict::Report);
    }
}
