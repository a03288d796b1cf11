//! The I/O engines: one trait (push tagged host operations, kick, reap
//! completions, one eventfd) and two implementations, picked at open.
//!
//! Engines know nothing of requests, bounce buffers or cache modes; they run
//! the four host calls the disk needs on the one data descriptor. `Disk`
//! owns every buffer an operation points to until its completion is reaped,
//! which is what makes handing raw pointers to the kernel sound.

mod answer;
mod sync;
mod uring;

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::BlockError;

pub(crate) use sync::{run_now, SyncEngine};
pub(crate) use uring::UringEngine;

/// Which engine runs a disk's I/O: QEMU's `aio=` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum EngineKind {
    /// io_uring: many operations in flight, completions reaped in batches.
    #[serde(rename = "io_uring")]
    IoUring,
    /// Synchronous preadv/pwritev2/fdatasync/fallocate on the disk's thread
    /// (QEMU's `threads`, without the thread pool).
    #[serde(rename = "threads")]
    Sync,
}

impl EngineKind {
    /// QEMU's `aio=` name.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::IoUring => "io_uring",
            EngineKind::Sync => "threads",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An engine name that is not io_uring, threads or sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O engine {0:?}; expected io_uring or threads")]
pub struct ParseEngineKindError(pub String);

impl FromStr for EngineKind {
    type Err = ParseEngineKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "io_uring" => Ok(EngineKind::IoUring),
            "threads" | "sync" => Ok(EngineKind::Sync),
            _ => Err(ParseEngineKindError(s.to_string())),
        }
    }
}

/// One host call on the data descriptor. Pointers stay valid until the
/// completion carrying the same tag has been reaped (the pusher's promise).
#[derive(Clone, Copy, Debug)]
pub(crate) enum HostOp {
    /// preadv.
    Readv {
        iov: *const libc::iovec,
        count: u32,
        offset: u64,
    },
    /// pwritev2, with RWF_DSYNC when `dsync`.
    Writev {
        iov: *const libc::iovec,
        count: u32,
        offset: u64,
        dsync: bool,
    },
    /// fdatasync.
    Fdatasync,
    /// fallocate.
    Fallocate { offset: u64, len: u64, mode: i32 },
}

// SAFETY: a HostOp is a description of a call; the memory its pointers name
// is owned by the in-flight request in `Disk`, which moves with it.
unsafe impl Send for HostOp {}

/// A finished host call: the tag it was pushed with and the kernel's result
/// (bytes transferred, or a negated errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawCompletion {
    pub tag: u64,
    pub res: i64,
}

/// What `Engine::push` did with an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued: it runs at `kick` (or later) and its completion is reaped.
    Queued,
    /// Run at once, on this thread, with this result (bytes or a negated
    /// errno); no completion will be reaped for it.
    Done(i64),
}

/// The data descriptor an engine runs on, and what it is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataFd {
    /// The descriptor.
    pub fd: RawFd,
    /// Opened with O_DIRECT: reads and writes go to the device, bypassing
    /// the page cache.
    pub direct: bool,
    /// Opened with O_DSYNC: every write is durable at completion.
    pub dsync: bool,
    /// On tmpfs or ramfs, whose files cannot be read or written without
    /// blocking, so that io_uring would hand every operation to a worker
    /// thread. perf on `ferrite bench --io-path --device ram` found every
    /// read of a QD32 run copied by one `iou-wrk` thread, woken and put to
    /// sleep per request.
    pub worker_only: bool,
}

impl DataFd {
    /// Buffered without O_DSYNC: a write without RWF_DSYNC only copies
    /// into the page cache.
    pub fn page_cache(&self) -> bool {
        !self.direct && !self.dsync
    }
}

/// What every engine does.
pub(crate) trait Engine: Send {
    fn kind(&self) -> EngineKind;

    /// Queues `op`, or runs it at once if this engine decides that is
    /// cheaper (see [`Pushed`]). `tag` is below 2^63 (the disk's slot
    /// numbers): the io_uring engine marks operations in the top bit.
    ///
    /// # Safety
    /// The memory `op` points to must stay valid, and not be accessed by
    /// anyone else, until the completion tagged `tag` has been reaped (or
    /// `push` returned `Done`).
    unsafe fn push(&mut self, op: HostOp, tag: u64) -> io::Result<Pushed>;

    /// Starts every queued operation.
    fn kick(&mut self) -> io::Result<()>;

    /// Moves finished operations into `out` without blocking.
    fn reap(&mut self, out: &mut Vec<RawCompletion>);

    /// Whether `reap` would find something. No system call, unless the
    /// kernel holds finished work that only this thread's entry into the
    /// kernel posts (io_uring's `COOP_TASKRUN`).
    fn has_completions(&mut self) -> bool;

    /// The engine signals the disk's eventfd itself for every completion
    /// `reap` would return now (else the disk does, after `kick`): true
    /// for a ring, false for work the engine ran on the caller's thread.
    fn signals_completions(&self) -> bool;

    /// Whether an operation is in flight that the storage device itself
    /// completes, from its interrupt, with no thread working on it
    /// meanwhile: then a thread that spins for its completion takes no CPU
    /// from the work (see [`crate::Disk::awaits_device`]).
    fn awaits_device(&self) -> bool {
        false
    }

    /// The caller spins up to `window` for the completion of an operation
    /// the device completes by itself ([`Engine::awaits_device`]) before
    /// it sleeps; an engine may send such an operation alone to be waited
    /// for that way rather than make the call on the caller's thread.
    fn set_spin_window(&mut self, _window: Duration) {}

    /// Blocks until at least one completion can be reaped (kicks first).
    /// Only call with operations in flight.
    fn wait(&mut self) -> io::Result<()>;

    /// Points future operations at a new data descriptor. Only call with
    /// nothing in flight.
    fn set_fd(&mut self, data: DataFd) -> io::Result<()>;
}

/// True when this kernel can run the disk on io_uring.
pub fn io_uring_supported() -> bool {
    match EventFd::new(libc::EFD_NONBLOCK) {
        Ok(efd) => {
            // The null device is enough to check ring setup and opcodes.
            std::fs::File::open("/dev/null")
                .ok()
                .and_then(|f| {
                    use std::os::fd::AsRawFd;
                    let data = DataFd {
                        fd: f.as_raw_fd(),
                        direct: false,
                        dsync: false,
                        worker_only: false,
                    };
                    UringEngine::new(data, &efd, 4).ok()
                })
                .is_some()
        }
        Err(_) => false,
    }
}

/// Creates the engine of `kind`, or io_uring falling back to Sync when
/// `kind` is None.
pub(crate) fn create(
    kind: Option<EngineKind>,
    data: DataFd,
    eventfd: &EventFd,
    depth: usize,
) -> Result<Box<dyn Engine>, BlockError> {
    match kind {
        Some(EngineKind::Sync) => Ok(Box::new(SyncEngine::new(data.fd))),
        Some(EngineKind::IoUring) => Ok(Box::new(
            UringEngine::new(data, eventfd, depth).map_err(BlockError::Engine)?,
        )),
        None => match UringEngine::new(data, eventfd, depth) {
            Ok(e) => Ok(Box::new(e)),
            Err(_) => Ok(Box::new(SyncEngine::new(data.fd))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names() {
        assert_eq!("io_uring".parse(), Ok(EngineKind::IoUring));
        assert_eq!("threads".parse(), Ok(EngineKind::Sync));
        assert_eq!("sync".parse(), Ok(EngineKind::Sync));
        assert!("native".parse::<EngineKind>().is_err());
        assert_eq!(EngineKind::Sync.to_string(), "threads");
        assert_eq!(
            serde_json::to_string(&EngineKind::IoUring).ok().as_deref(),
            Some("\"io_uring\"")
        );
    }
}
