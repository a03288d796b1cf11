//! Ctrl-C and SIGTERM stop `ferrite bench` at once, leaving nothing behind.
//!
//! `main` blocks the stop signals in every thread (a VM reads them from a
//! signalfd in its event loop), so a bench, which spends its time in fio
//! runs, in-process device runs and child VMs, would never see them. A
//! watcher thread reads the same signalfd instead: on a stop signal it
//! kills the child processes the bench registered (fio, child ferrites),
//! removes the scratch files and directories it registered, unmounts the
//! memory-backed device's tmpfs if it mounted one, says which
//! signal stopped it, and exits with 128 + the signal number, as a shell
//! reports a process killed by it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::signals::StopSignals;

/// What a stop does with a registered path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cleanup {
    /// Remove the file or directory.
    Remove,
    /// Unmount the file system mounted there and remove the mount point
    /// (after every removal).
    Unmount,
}

/// What a stop must clean up.
#[derive(Default)]
struct Registry {
    children: Vec<u32>,
    paths: Vec<(PathBuf, Cleanup)>,
}

/// Set once a stop began: the thread that waited for a killed child must
/// not report its death as a failure and exit first.
static STOPPING: AtomicBool = AtomicBool::new(false);

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: Vec::new(),
    paths: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process that a stop kills, for as long as this guard lives.
pub struct ChildGuard(u32);

impl ChildGuard {
    /// Registers the child `pid`.
    pub fn new(pid: u32) -> ChildGuard {
        registry().children.push(pid);
        ChildGuard(pid)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        registry().children.retain(|&p| p != self.0);
        // The child was killed by a stop: the watcher is about to exit.
        while STOPPING.load(Ordering::Acquire) {
            std::thread::park();
        }
    }
}

/// A scratch file or directory that a stop removes, or a file system the
/// bench mounted (the memory-backed device's tmpfs) that a stop unmounts,
/// for as long as this guard lives (its owner cleans up otherwise).
pub struct PathGuard(PathBuf, Cleanup);

impl PathGuard {
    /// Registers the scratch file or directory `path`.
    pub fn new(path: &Path) -> PathGuard {
        PathGuard::register(path, Cleanup::Remove)
    }

    /// Registers the mount point `path`.
    pub fn mount(path: &Path) -> PathGuard {
        PathGuard::register(path, Cleanup::Unmount)
    }

    fn register(path: &Path, cleanup: Cleanup) -> PathGuard {
        registry().paths.push((path.to_path_buf(), cleanup));
        PathGuard(path.to_path_buf(), cleanup)
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        registry()
            .paths
            .retain(|(p, c)| (p, *c) != (&self.0, self.1));
    }
}

/// Unmounts `mount_point` (lazily: a killed fio may still hold a file
/// open for a moment) and removes the directory. Errors are the caller's
/// to report.
pub fn unmount(mount_point: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mount_point.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: umount2 with a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::remove_dir(mount_point)
}

/// Starts the watcher thread. Without a signalfd the bench still runs, but
/// a stop signal then waits for the end (said in one line).
pub fn watch() {
    let signals = match StopSignals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "ferrite bench: cannot watch for Ctrl-C ({e}); it will wait for the run to end"
            );
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("bench-stop".into())
        .spawn(move || loop {
            if let Some(sig) = signals.wait() {
                stop(sig);
            }
        });
    if let Err(e) = spawned {
        eprintln!("ferrite bench: cannot watch for Ctrl-C ({e}); it will wait for the run to end");
    }
}

/// Kills the children, removes the scratch paths and exits.
fn stop(sig: libc::c_int) -> ! {
    STOPPING.store(true, Ordering::Release);
    let (children, paths) = {
        let r = registry();
        (r.children.clone(), r.paths.clone())
    };
    for pid in children {
        // SAFETY: kill(2) with a pid this process spawned and has not
        // reaped (the guard lives until after the wait) and a valid signal.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    // Scratch files first: the image lies inside the tmpfs it unmounts.
    for (p, _) in paths.iter().filter(|(_, c)| *c == Cleanup::Remove) {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
    for (m, _) in paths.iter().filter(|(_, c)| *c == Cleanup::Unmount) {
        let _ = unmount(m);
    }
    let name = match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    };
    eprintln!("ferrite bench: stopped by {name}; scratch files removed");
    std::process::exit(128 + sig);
}
