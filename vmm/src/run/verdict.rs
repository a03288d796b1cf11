//! How a `ferrite run` ended, as one exit status and at most a few lines.
//!
//! | status | when |
//! |---|---|
//! | 0..=255 | the command's own status (128 + N when signal N killed it; 126/127 when it could not be run or found) |
//! | 124 | `--timeout` or `--boot-timeout` expired |
//! | 125 | ferrite could not run the guest (bad arguments, no usable /dev/kvm, a kernel without a needed option, a VMM error) |
//! | 254 | the guest kernel panicked, or the guest stopped without reporting the command's status |
//!
//! The command's status comes through the debug-exit port (init writes it
//! there, exactly, 0..255), or, where that port is unusable, from init's
//! `X` frame before a reset. With `--ktap`, a command that exited 0 but
//! whose KTAP output failed gives 1.

use devices::legacy::GuestExit;
use devices::virtio::mmio::DriverSeen;

use super::console::RunState;
use super::watchdog::Limit;
use crate::exit::{ExitCause, STATUS_GUEST_PANIC};

/// A time limit expired.
pub const STATUS_TIMEOUT: i32 = 124;
/// ferrite itself could not run the guest.
pub const STATUS_RUN_ERROR: i32 = 125;
/// The guest kernel panicked or never reported a status.
pub const STATUS_NO_VERDICT: i32 = STATUS_GUEST_PANIC;

/// The end of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// ferrite's exit status.
    pub status: i32,
    /// Lines for stderr (empty when the command's status says it all).
    pub lines: Vec<String>,
}

/// Decides the verdict from why the VM stopped, what the console showed
/// and how far the guest's driver got with the root disk.
pub fn decide(cause: &ExitCause, state: &RunState, root: Option<DriverSeen>) -> Verdict {
    let tail = || {
        let mut lines = vec!["ferrite run: last console lines:".to_string()];
        lines.extend(state.tail.iter().map(|l| format!("  {l}")));
        lines
    };
    let with_tail = |status, first: String| {
        let mut lines = vec![first];
        lines.extend(tail());
        Verdict { status, lines }
    };
    if let Some(limit) = state.timed_out {
        let first = match limit {
            Limit::Boot(d) => format!(
                "ferrite run: the guest did not start the command within {} s (--boot-timeout)",
                d.as_secs()
            ),
            Limit::Command(d) => format!(
                "ferrite run: the command did not finish within {} s (--timeout)",
                d.as_secs()
            ),
        };
        return with_tail(STATUS_TIMEOUT, first);
    }
    if let ExitCause::GuestPanic(line) = cause {
        return with_tail(
            STATUS_NO_VERDICT,
            format!("ferrite run: the guest kernel panicked: {line}"),
        );
    }
    if let Some(why) = &state.init_error {
        let mut v = with_tail(
            STATUS_NO_VERDICT,
            format!("ferrite run: the guest's init failed: {why}"),
        );
        if let Some(hint) = diagnose(root, Some(why)) {
            v.lines.insert(1, hint);
        }
        return v;
    }
    if state.started.is_some() {
        let status = match cause {
            ExitCause::Guest(GuestExit::DebugExit { value }) => Some((value & 0xff) as i32),
            _ => state.exit_status,
        };
        if let Some(status) = status {
            return Verdict {
                status,
                lines: Vec::new(),
            };
        }
    }
    if let ExitCause::Signal(sig) = cause {
        return Verdict {
            status: 128 + sig,
            lines: vec![format!("ferrite run: stopped by signal {sig}")],
        };
    }
    let how = match cause {
        ExitCause::VcpuFailed(why) => why.clone(),
        ExitCause::Guest(GuestExit::DebugExit { value }) => {
            format!("it wrote {value:#x} to the debug-exit port before ferrite's init ran")
        }
        _ => "it reset or powered off".to_string(),
    };
    let what = if state.started.is_some() {
        "the guest stopped before the command's status came back"
    } else {
        "the guest stopped before the command started"
    };
    let mut v = with_tail(STATUS_NO_VERDICT, format!("ferrite run: {what}: {how}"));
    if let Some(hint) = diagnose(root, None) {
        v.lines.insert(1, hint);
    }
    v
}

/// The likely missing kernel option when the guest did not get as far as
/// its root disk; `None` when the disk was in use.
pub fn diagnose(root: Option<DriverSeen>, init_error: Option<&str>) -> Option<String> {
    let seen = root?;
    if !seen.read_registers {
        return Some(
            "ferrite run: the guest never read its virtio-mmio disk's registers: the kernel likely lacks CONFIG_VIRTIO_MMIO or CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES".into(),
        );
    }
    if !seen.driver_ok {
        return Some(
            "ferrite run: the guest probed its virtio-mmio disk but never started a driver on it: the kernel likely lacks CONFIG_VIRTIO_BLK".into(),
        );
    }
    if init_error.is_some_and(|e| e.starts_with("root:")) {
        return Some(
            "ferrite run: the guest's virtio-blk driver runs but the root file system did not mount: the kernel likely lacks CONFIG_EXT4_FS".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn started() -> RunState {
        RunState {
            started: Some(Instant::now()),
            ..RunState::default()
        }
    }

    const IN_USE: DriverSeen = DriverSeen {
        read_registers: true,
        driver_ok: true,
    };

    #[test]
    fn the_commands_status_comes_back_exactly() {
        for value in [0u32, 1, 42, 255] {
            let cause = ExitCause::Guest(GuestExit::DebugExit { value });
            let v = decide(&cause, &started(), Some(IN_USE));
            assert_eq!(v.status, value as i32);
            assert!(v.lines.is_empty());
        }
        let mut state = started();
        state.exit_status = Some(3);
        let reset = ExitCause::Guest(GuestExit::Reset);
        assert_eq!(decide(&reset, &state, Some(IN_USE)).status, 3);
    }

    #[test]
    fn timeouts_give_124_with_the_tail() {
        let mut state = started();
        state.timed_out = Some(Limit::Command(Duration::from_secs(5)));
        state.tail.push_back("[ 9.0] something".into());
        let v = decide(&ExitCause::HostStop, &state, Some(IN_USE));
        assert_eq!(v.status, 124);
        assert!(v.lines[0].contains("within 5 s (--timeout)"));
        assert!(v.lines.iter().any(|l| l.contains("[ 9.0] something")));
    }

    #[test]
    fn a_panic_or_no_status_gives_254() {
        let panic = ExitCause::GuestPanic("Kernel panic - not syncing: x".into());
        let v = decide(&panic, &started(), Some(IN_USE));
        assert_eq!(v.status, 254);
        assert!(v.lines[0].contains("panicked: Kernel panic - not syncing: x"));
        let v = decide(&ExitCause::TripleFault, &RunState::default(), Some(IN_USE));
        assert_eq!(v.status, 254);
        assert!(v.lines[0].contains("before the command started"));
    }

    #[test]
    fn a_disk_never_touched_names_the_options() {
        let cause = ExitCause::Guest(GuestExit::DebugExit { value: 1 });
        let v = decide(&cause, &RunState::default(), Some(DriverSeen::default()));
        assert_eq!(v.status, 254);
        assert!(
            v.lines[1].contains("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"),
            "{v:?}"
        );
        let probed = DriverSeen {
            read_registers: true,
            driver_ok: false,
        };
        assert!(diagnose(Some(probed), None)
            .unwrap()
            .contains("CONFIG_VIRTIO_BLK"));
        let ext4 = diagnose(Some(IN_USE), Some("root: cannot mount /dev/vda"));
        assert!(ext4.unwrap().contains("CONFIG_EXT4_FS"));
        assert_eq!(diagnose(Some(IN_USE), None), None);
    }
}
