//! seccomp filters: each of ferrite's threads (vCPU, disk I/O, main)
//! installs its own allowlist on itself before it handles anything the
//! guest controls, so a bug in a device model cannot be turned into
//! arbitrary system calls (no exec, no sockets, no new threads, no ioctls
//! beyond the listed requests).
//!
//! A forbidden call is trapped (`SECCOMP_RET_TRAP`), not killed outright:
//! the SIGSYS handler prints `ferrite: thread NAME made forbidden system
//! call N ...` and exits with status 1 (a VMM error), which tells a user
//! what happened and what to report. `--no-seccomp` turns the filters off
//! for debugging.
//!
//! Filters are compiled once on the main thread ([`Filters::compile`]) and
//! handed to the threads. A thread inherits its creator's filter, so the
//! main thread installs its own last, after every other thread exists.

mod filters;
pub mod landlock;
mod sigsys;

use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use filters::ThreadKind;
pub use landlock::{AllowedFile, FsSandbox, LandlockError};

/// Which threads get a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No filters (`--no-seccomp`).
    Off,
    /// vCPU and disk I/O threads only: for callers whose main thread goes
    /// on doing other work after the guest stops (`demo`, `bench`).
    Threads,
    /// Every thread, the main thread included (a plain `ferrite --kernel`).
    All,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler rejected the rules.
    #[error("cannot build the seccomp filter for {kind:?} threads: {source}")]
    Build {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's reason.
        source: seccompiler::Error,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter on thread {thread}: {source} (--no-seccomp runs without)")]
    Install {
        /// The thread's name.
        thread: String,
        /// seccompiler's reason.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    /// The Landlock ruleset could not be built or applied.
    #[error(transparent)]
    Landlock(#[from] LandlockError),
}

/// One compiled program per thread kind, shared by the threads, and the
/// Landlock ruleset each thread applies with it.
#[derive(Clone, Debug)]
pub struct Filters {
    policy: Policy,
    vcpu: Arc<BpfProgram>,
    io: Arc<BpfProgram>,
    main: Arc<BpfProgram>,
    fs: FsSandbox,
}

/// Compiles the allowlist of `kind`: anything else traps.
fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source: seccompiler::Error| SeccompError::Build { kind, source };
    let rules = filters::rules(kind).map_err(build)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| build(e.into()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.into()))
}

impl Filters {
    /// Compiles the filters `policy` asks for and installs the SIGSYS
    /// handler (process-wide; call on the main thread before any filter).
    pub fn compile(policy: Policy) -> Result<Filters, SeccompError> {
        let (vcpu, io, main) = if policy == Policy::Off {
            Default::default()
        } else {
            sigsys::install_handler().map_err(SeccompError::Handler)?;
            (
                compile(ThreadKind::Vcpu)?,
                compile(ThreadKind::Io)?,
                compile(ThreadKind::Main)?,
            )
        };
        Ok(Filters {
            policy,
            vcpu: Arc::new(vcpu),
            io: Arc::new(io),
            main: Arc::new(main),
            fs: FsSandbox::off(),
        })
    }

    /// Adds the Landlock ruleset every filtered thread applies to itself
    /// before its seccomp filter.
    pub fn with_sandbox(mut self, fs: FsSandbox) -> Filters {
        self.fs = fs;
        self
    }

    /// Installs the filter of `kind` on the calling thread (named `name` in
    /// the SIGSYS line), if the policy covers that kind.
    pub fn install(&self, kind: ThreadKind, name: &str) -> Result<(), SeccompError> {
        let program = match (self.policy, kind) {
            (Policy::Off, _) | (Policy::Threads, ThreadKind::Main) => return Ok(()),
            (_, ThreadKind::Vcpu) => &self.vcpu,
            (_, ThreadKind::Io) => &self.io,
            (_, ThreadKind::Main) => &self.main,
        };
        sigsys::set_thread_name(name);
        // Landlock first: once the seccomp filter is on, its calls are not.
        self.fs.restrict_current_thread()?;
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            thread: name.to_string(),
            source,
        })?;
        selftest(kind);
        if kind == ThreadKind::Io && self.fs.is_on() {
            landlock::selftest(name);
        }
        Ok(())
    }
}

/// Hidden switch for the tests (not in `--help`): with
/// `FERRITE_SECCOMP_SELFTEST=vcpu|io|main`, that thread makes a forbidden
/// system call right after installing its filter, to show how ferrite ends.
pub const SELFTEST_ENV: &str = "FERRITE_SECCOMP_SELFTEST";

fn selftest(kind: ThreadKind) {
    let wanted = match kind {
        ThreadKind::Vcpu => "vcpu",
        ThreadKind::Io => "io",
        ThreadKind::Main => "main",
    };
    if std::env::var(SELFTEST_ENV).is_ok_and(|v| v == wanted) {
        // SAFETY: getppid has no arguments and no side effects; it is on
        // no thread's list, so the filter traps it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_off_is_empty() {
        let f = Filters::compile(Policy::All).unwrap();
        assert!(!f.vcpu.is_empty() && !f.io.is_empty() && !f.main.is_empty());
        let off = Filters::compile(Policy::Off).unwrap();
        assert!(off.vcpu.is_empty() && off.io.is_empty() && off.main.is_empty());
        // Off never installs, whatever the kind.
        for kind in ThreadKind::ALL {
            off.install(kind, "test").unwrap();
        }
    }
}
