//! The synchronous engine: each operation is one blocking host call, made
//! at `kick`. Completions still go through a queue (and the disk signals
//! its eventfd after the kick), so the caller has a single completion path
//! whatever the engine.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use crate::stage_timing::{self, Point};

use super::{DataFd, Engine, EngineKind, HostOp, Pushed, RawCompletion};

pub(crate) struct SyncEngine {
    fd: RawFd,
    queued: VecDeque<(HostOp, u64)>,
    done: VecDeque<RawCompletion>,
}

impl SyncEngine {
    pub(crate) fn new(fd: RawFd) -> SyncEngine {
        SyncEngine {
            fd,
            queued: VecDeque::new(),
            done: VecDeque::new(),
        }
    }
}

/// Runs one host call on `fd` now, on this thread; returns bytes or a
/// negated errno (EINTR is retried).
///
/// # Safety
/// The memory `op` points to must be valid for the call (writable for
/// Readv) and not otherwise accessed during it.
pub(crate) unsafe fn run_now(fd: RawFd, op: HostOp) -> i64 {
    loop {
        // SAFETY: the caller's contract.
        let res = unsafe { run_once(fd, op) };
        if res != -(libc::EINTR as i64) {
            return res;
        }
    }
}

/// One attempt of `run_now`.
///
/// # Safety
/// As for `run_now`.
unsafe fn run_once(fd: RawFd, op: HostOp) -> i64 {
    stage_timing::mark(Point::HostCallStart);
    let rc: i64 = match op {
        // SAFETY: the caller keeps iov[..count] and the buffers it names
        // valid for the call.
        HostOp::Readv { iov, count, offset } => unsafe {
            libc::preadv(fd, iov, count as libc::c_int, offset as libc::off_t) as i64
        },
        HostOp::Writev {
            iov,
            count,
            offset,
            dsync,
        } => {
            let flags = if dsync { libc::RWF_DSYNC } else { 0 };
            // SAFETY: as for Readv.
            unsafe {
                libc::pwritev2(fd, iov, count as libc::c_int, offset as libc::off_t, flags) as i64
            }
        }
        // SAFETY: fdatasync on a descriptor the caller keeps open.
        HostOp::Fdatasync => unsafe { libc::fdatasync(fd) as i64 },
        // SAFETY: fallocate on a descriptor the caller keeps open; the
        // range was checked against the capacity by the disk.
        HostOp::Fallocate { offset, len, mode } => unsafe {
            libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) as i64
        },
    };
    stage_timing::mark(Point::HostCallEnd);
    if rc < 0 {
        -(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as i64)
    } else {
        rc
    }
}

impl Engine for SyncEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sync
    }

    unsafe fn push(&mut self, op: HostOp, tag: u64) -> io::Result<Pushed> {
        // Queued even though it runs on this thread: `kick` runs a batch,
        // and its completions reach the caller the same way as the ring's.
        self.queued.push_back((op, tag));
        Ok(Pushed::Queued)
    }

    fn kick(&mut self) -> io::Result<()> {
        while let Some((op, tag)) = self.queued.pop_front() {
            // SAFETY: push's caller keeps the memory `op` names valid until
            // this completion is reaped.
            let res = unsafe { run_now(self.fd, op) };
            self.done.push_back(RawCompletion { tag, res });
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<RawCompletion>) {
        out.extend(self.done.drain(..));
    }

    fn has_completions(&mut self) -> bool {
        !self.done.is_empty()
    }

    fn signals_completions(&self) -> bool {
        false
    }

    fn wait(&mut self) -> io::Result<()> {
        self.kick()
    }

    fn set_fd(&mut self, data: DataFd) -> io::Result<()> {
        self.fd = data.fd;
        Ok(())
    }
}
