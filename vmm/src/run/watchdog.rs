//! `ferrite run`'s two time limits, on a thread of their own: the boot
//! (from the VM's start until init starts the command) and the command
//! (from its start). When one expires the watchdog records which and stops
//! the guest; the verdict then turns that into status 124.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::console::Shared;
use crate::exit::{ExitCause, ExitController};

/// Which limit expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `--boot-timeout`: the command never started.
    Boot(Duration),
    /// `--timeout`: the command did not finish.
    Command(Duration),
}

/// The limits; `None` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From the start of the VM to the command's start.
    pub boot: Option<Duration>,
    /// From the command's start to its end.
    pub command: Option<Duration>,
}

/// Starts the watchdog; it ends once the state says `done`.
pub fn spawn(
    shared: Arc<Shared>,
    exit: Arc<ExitController>,
    limits: Limits,
) -> std::io::Result<JoinHandle<()>> {
    let boot_start = Instant::now();
    std::thread::Builder::new()
        .name("ferrite-watchdog".into())
        .spawn(move || {
            let mut state = shared.lock();
            loop {
                if state.done {
                    return;
                }
                let (deadline, limit) = match state.started {
                    None => (
                        limits.boot.map(|d| boot_start + d),
                        limits.boot.map(Limit::Boot),
                    ),
                    Some(at) => (
                        limits.command.map(|d| at + d),
                        limits.command.map(Limit::Command),
                    ),
                };
                if let (Some(deadline), Some(limit)) = (deadline, limit) {
                    if Instant::now() >= deadline {
                        state.timed_out = Some(limit);
                        drop(state);
                        exit.report(ExitCause::HostStop);
                        return;
                    }
                }
                state = shared.wait_until(state, deadline);
            }
        })
}

/// Tells the watchdog the guest has stopped and waits for it.
pub fn finish(shared: &Shared, handle: JoinHandle<()>) {
    shared.lock().done = true;
    shared.notify();
    let _ = handle.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_limit_stops_a_guest_that_never_starts() {
        let shared = Arc::new(Shared::default());
        let exit = ExitController::new().unwrap();
        let limits = Limits {
            boot: Some(Duration::from_millis(20)),
            command: None,
        };
        let h = spawn(shared.clone(), exit.clone(), limits).unwrap();
        let _ = h.join();
        assert_eq!(exit.cause(), Some(ExitCause::HostStop));
        assert!(matches!(shared.lock().timed_out, Some(Limit::Boot(_))));
    }

    #[test]
    fn the_command_limit_counts_from_the_start() {
        let shared = Arc::new(Shared::default());
        let exit = ExitController::new().unwrap();
        let limits = Limits {
            boot: Some(Duration::from_secs(60)),
            command: Some(Duration::from_millis(30)),
        };
        let h = spawn(shared.clone(), exit.clone(), limits).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(exit.cause(), None);
        shared.lock().started = Some(Instant::now());
        shared.notify();
        let _ = h.join();
        assert!(matches!(shared.lock().timed_out, Some(Limit::Command(_))));
    }

    #[test]
    fn finish_ends_a_watchdog_without_limits() {
        let shared = Arc::new(Shared::default());
        let exit = ExitController::new().unwrap();
        let none = Limits {
            boot: None,
            command: None,
        };
        let h = spawn(shared.clone(), exit.clone(), none).unwrap();
        finish(&shared, h);
        assert_eq!(exit.cause(), None);
    }
}
