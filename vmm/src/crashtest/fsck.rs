//! `--fsck`: the host's e2fsck on a crash state, as the guest's kernel
//! would see it at mount. A state image still carries the journal the
//! kernel would replay, and `e2fsck -n` alone does not replay it (it
//! cannot write), so it would report as damage what the journal repairs:
//! the journal is replayed on a copy first (`e2fsck -E journal_only`),
//! then `e2fsck -fn` checks everything without changing anything.

use std::path::Path;
use std::process::Command;

use super::CrashtestError;
use crate::snapshot;

/// What e2fsck said of one state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fsck {
    /// `e2fsck -fn` found nothing to fix.
    pub passed: bool,
    /// Its output when it did not pass.
    pub output: String,
}

/// Checks a copy of `image` (made in `work`); `image` is unchanged.
pub fn check(image: &Path, work: &Path) -> Result<Fsck, CrashtestError> {
    let copy = work.join("fsck.img");
    snapshot::throwaway_copy(image, &copy)?;
    let e2fsck = |args: &[&str]| {
        Command::new("e2fsck")
            .args(args)
            .arg(&copy)
            .output()
            .map_err(|source| CrashtestError::Fsck { source })
    };
    // Status 0 (nothing to do) or 1 (journal replayed); anything else is
    // for the full check to describe.
    e2fsck(&["-y", "-E", "journal_only"])?;
    let out = e2fsck(&["-fn"])?;
    let _ = std::fs::remove_file(&copy);
    let passed = out.status.success();
    let output = if passed {
        String::new()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    Ok(Fsck { passed, output })
}
