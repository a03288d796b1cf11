//! The synchronous engine: each operation is one blocking host call, made
//! at `kick`. Completions still go through a queue and the shared eventfd,
//! so the caller has a single completion path whatever the engine.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use vmm_sys_util::eventfd::EventFd;

use super::{Engine, EngineKind, HostOp, RawCompletion};
use crate::BlockError;

pub(crate) struct SyncEngine {
    fd: RawFd,
    eventfd: EventFd,
    queued: VecDeque<(HostOp, u64)>,
    done: VecDeque<RawCompletion>,
}

impl SyncEngine {
    pub(crate) fn new(fd: RawFd, eventfd: &EventFd) -> Result<SyncEngine, BlockError> {
        Ok(SyncEngine {
            fd,
            eventfd: eventfd.try_clone().map_err(BlockError::Io)?,
            queued: VecDeque::new(),
            done: VecDeque::new(),
        })
    }

    /// Runs one host call; returns bytes or a negated errno.
    fn run(&self, op: HostOp) -> i64 {
        let fd = self.fd;
        let rc: i64 = match op {
            // SAFETY: push's caller keeps iov[..count] and the buffers it
            // names valid until this operation's completion is reaped.
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
                    libc::pwritev2(fd, iov, count as libc::c_int, offset as libc::off_t, flags)
                        as i64
                }
            }
            // SAFETY: fdatasync on a descriptor the disk keeps open.
            HostOp::Fdatasync => unsafe { libc::fdatasync(fd) as i64 },
            // SAFETY: fallocate on a descriptor the disk keeps open; the
            // range was checked against the capacity by the disk.
            HostOp::Fallocate { offset, len, mode } => unsafe {
                libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) as i64
            },
        };
        if rc < 0 {
            -(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO) as i64)
        } else {
            rc
        }
    }
}

impl Engine for SyncEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sync
    }

    unsafe fn push(&mut self, op: HostOp, tag: u64) -> io::Result<()> {
        self.queued.push_back((op, tag));
        Ok(())
    }

    fn kick(&mut self) -> io::Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        while let Some((op, tag)) = self.queued.pop_front() {
            let mut res = self.run(op);
            while res == -(libc::EINTR as i64) {
                res = self.run(op);
            }
            self.done.push_back(RawCompletion { tag, res });
        }
        self.eventfd.write(1)
    }

    fn reap(&mut self, out: &mut Vec<RawCompletion>) {
        out.extend(self.done.drain(..));
    }

    fn wait(&mut self) -> io::Result<()> {
        self.kick()
    }

    fn set_fd(&mut self, fd: RawFd) -> io::Result<()> {
        self.fd = fd;
        Ok(())
    }
}
