//! Requests held after a host error (`werror=`/`rerror=` `stop` or
//! `enospc`, see `crate::policy`): the request stays in its slot with its
//! iovecs, bounce buffer and progress, is not answered, and is pushed
//! again from where it stopped by `retry_stopped`. While one is held, a
//! later flush and later requests overlapping a held write wait behind it
//! (`InFlight::waits_for`), so nothing passes a write the guest has not
//! seen complete.

use std::io;

use super::Disk;
use crate::inflight::{host_op, Kind, Stage};
use crate::policy::{ErrorPolicy, Verdict};
use crate::BlockError;

impl Disk {
    /// Sets what failed writes and reads get from now on.
    pub fn set_error_policy(&mut self, policy: ErrorPolicy) {
        self.policy = policy;
    }

    /// The actions in force.
    pub fn error_policy(&self) -> ErrorPolicy {
        self.policy
    }

    /// Why the disk is stopped: some request failed with this error and is
    /// held until a retry succeeds. None while nothing is held.
    pub fn stopped(&self) -> Option<io::Error> {
        (self.fences > 0).then(|| io::Error::from_raw_os_error(self.stop_errno))
    }

    /// Pushes every held request again from where it stopped (call when
    /// space may have been freed: on a timer, on the user's signal);
    /// returns how many. One that fails again is held again; one that
    /// succeeds completes as usual, releasing what waited behind it.
    pub fn retry_stopped(&mut self) -> usize {
        let parked = std::mem::take(&mut self.parked);
        for &slot in &parked {
            let Some(r) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            r.retries = 0;
            let op = host_op(r);
            self.stats.stop_retries += 1;
            self.push(slot, op);
        }
        if !parked.is_empty() {
            // A failed kick leaves the operations queued for the next one.
            let _ = self.kick();
        }
        parked.len()
    }

    /// Applies the error policy to a failed host operation of the request
    /// in `slot`: true if it was taken care of here (held, or answered as
    /// ignored), false to let `step` report it as before.
    pub(super) fn intercept(&mut self, slot: usize, res: i64) -> bool {
        if res >= 0 {
            return false;
        }
        let errno = (-res) as i32;
        // Interruptions are retried and unsupported fallocate modes fall
        // back, both in `step`.
        if [libc::EINTR, libc::EAGAIN, libc::EOPNOTSUPP, libc::ENOSYS].contains(&errno) {
            return false;
        }
        let policy = self.policy;
        let Some(r) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if matches!(r.stage, Stage::Flush { .. } | Stage::SyncAfter { .. }) {
            return false;
        }
        let action = if r.kind == Kind::Read {
            policy.read
        } else {
            policy.write
        };
        match action.verdict(errno) {
            Verdict::Report => false,
            Verdict::Ignore => {
                let n = match r.kind {
                    Kind::Read | Kind::Write => r.caller_len(),
                    _ => 0,
                };
                self.stats.errors_ignored += 1;
                self.end(slot, Ok(n));
                true
            }
            Verdict::Hold => {
                if r.stop_errno == 0 {
                    if self.fences == 0 {
                        self.stats.stops += 1;
                    }
                    self.fences += 1;
                }
                r.stop_errno = errno;
                self.stop_errno = errno;
                self.parked.push(slot);
                true
            }
        }
    }

    /// Answers every held request with the error that stopped it: a drain
    /// (device reset, write-cache switch, exit) cannot wait for space.
    pub(super) fn give_up_held(&mut self) {
        for slot in std::mem::take(&mut self.parked) {
            if let Some(r) = self.take(slot) {
                if r.modifies() {
                    // The failed write may have changed part of its range.
                    self.write_gen += 1;
                }
                let e = io::Error::from_raw_os_error(r.stop_errno);
                self.finish(r, Err(BlockError::Io(e)));
            }
        }
        self.release_held();
    }

    /// Nothing of this disk is in the engine: every request in a slot is
    /// held after an error or waits behind another.
    pub(super) fn only_held(&self) -> bool {
        self.active == self.parked.len() + self.held.len()
    }
}
