//! The io_uring engine: operations go to the submission ring at `push`,
//! are submitted in one system call at `kick`, and completions are reaped
//! in batches; the ring signals the disk's eventfd itself.
//!
//! The ring is locked down: the data descriptor is registered and every
//! submission must use it (no other file can be touched), and only the four
//! opcodes the disk needs are allowed.

use std::io;

use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring, Probe};
use vmm_sys_util::eventfd::EventFd;

use super::{run_now, DataFd, Engine, EngineKind, HostOp, Pushed, RawCompletion};

/// `IORING_REGISTER_FILES_UPDATE` from the kernel uapi (not exported by the
/// io-uring crate): allowed after setup, for reopens.
const IORING_REGISTER_FILES_UPDATE: u8 = 6;
/// `IORING_UNREGISTER_FILES`: allowed after setup, for a prompt release at drop.
const IORING_UNREGISTER_FILES: u8 = 3;

/// The registered slot of the data descriptor.
const DATA: types::Fixed = types::Fixed(0);

pub(crate) struct UringEngine {
    ring: IoUring,
    /// The data descriptor, for the writes run inline.
    data: DataFd,
}

impl UringEngine {
    /// Sets up a ring of `depth` entries for `fd`, signalling `eventfd`.
    /// Fails when the kernel lacks io_uring or one of the needed opcodes.
    pub(crate) fn new(data: DataFd, eventfd: &EventFd, depth: usize) -> io::Result<UringEngine> {
        let entries = u32::try_from(depth.max(1)).unwrap_or(4096);
        let ring: IoUring = IoUring::builder().setup_r_disabled().build(entries)?;
        let sub = ring.submitter();
        let mut probe = Probe::new();
        sub.register_probe(&mut probe)?;
        let ops = [
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
            opcode::Fallocate::CODE,
        ];
        if let Some(op) = ops.iter().find(|&&op| !probe.is_supported(op)) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks opcode {op}"),
            ));
        }
        sub.register_files(&[data.fd])?;
        use std::os::fd::AsRawFd;
        sub.register_eventfd(eventfd.as_raw_fd())?;
        let mut rules: Vec<Restriction> = ops.iter().map(|&op| Restriction::sqe_op(op)).collect();
        rules.push(Restriction::sqe_flags_required(
            squeue::Flags::FIXED_FILE.bits(),
        ));
        rules.push(Restriction::register_op(IORING_REGISTER_FILES_UPDATE));
        rules.push(Restriction::register_op(IORING_UNREGISTER_FILES));
        sub.register_restrictions(&mut rules)?;
        sub.register_enable_rings()?;
        Ok(UringEngine { ring, data })
    }

    /// Whether `op` is a plain buffered write (page cache, no sync per
    /// write) that the ring should not carry. Such a write only copies into
    /// the page cache, but io_uring hands it to an io-wq worker thread on
    /// file systems without async buffered writes (ext4 among them): two
    /// thread switches per write, more than the copy itself. Measured with
    /// `ferrite bench --io-path`, 4 KiB random writes in `writeback`: 3-4x
    /// the IOPS at queue depth 1 done on the disk's thread instead.
    fn runs_inline(&self, op: &HostOp) -> bool {
        self.data.page_cache && matches!(op, HostOp::Writev { dsync: false, .. })
    }

    fn entry(op: HostOp) -> squeue::Entry {
        match op {
            HostOp::Readv { iov, count, offset } => {
                opcode::Readv::new(DATA, iov, count).offset(offset).build()
            }
            HostOp::Writev {
                iov,
                count,
                offset,
                dsync,
            } => {
                let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                opcode::Writev::new(DATA, iov, count)
                    .offset(offset)
                    .rw_flags(flags)
                    .build()
            }
            HostOp::Fdatasync => opcode::Fsync::new(DATA)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            HostOp::Fallocate { offset, len, mode } => opcode::Fallocate::new(DATA, len)
                .offset(offset)
                .mode(mode)
                .build(),
        }
    }

    fn submit(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the completion ring is full; reaping makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Engine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::IoUring
    }

    unsafe fn push(&mut self, op: HostOp, tag: u64) -> io::Result<Pushed> {
        if self.runs_inline(&op) {
            // SAFETY: this function's contract: the memory `op` names is
            // valid and untouched by anyone else during the call.
            return Ok(Pushed::Done(unsafe { run_now(self.data.fd, op) }));
        }
        let entry = Self::entry(op).user_data(tag);
        for _ in 0..2 {
            // SAFETY: the entry's pointers stay valid until its completion
            // is reaped (this function's contract), and it names only the
            // registered data descriptor.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(Pushed::Queued);
            }
            // The submission ring is full: hand it to the kernel, retry once.
            self.submit(0)?;
        }
        Err(io::Error::other("io_uring submission ring full"))
    }

    fn kick(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.submit(0)
    }

    fn reap(&mut self, out: &mut Vec<RawCompletion>) {
        out.extend(self.ring.completion().map(|c| RawCompletion {
            tag: c.user_data(),
            res: i64::from(c.result()),
        }));
    }

    fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    fn signals_completions(&self) -> bool {
        true
    }

    fn wait(&mut self) -> io::Result<()> {
        if !self.ring.completion().is_empty() {
            return Ok(());
        }
        self.submit(1)
    }

    fn set_fd(&mut self, data: DataFd) -> io::Result<()> {
        self.ring.submitter().register_files_update(0, &[data.fd])?;
        self.data = data;
        Ok(())
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The ring is torn down asynchronously and would keep the image open
        // (and its file system busy) for a while; release the file now.
        // Nothing is in flight: `Disk` waits for that before dropping us.
        let _ = self.ring.submitter().unregister_files();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_engine_runs_plain_page_cache_writes_itself() {
        let Ok(efd) = EventFd::new(libc::EFD_NONBLOCK) else {
            return;
        };
        let f = tempfile::tempfile().expect("temp");
        let write = |dsync| HostOp::Writev {
            iov: std::ptr::null(),
            count: 0,
            offset: 0,
            dsync,
        };
        for page_cache in [true, false] {
            let data = DataFd {
                fd: f.as_raw_fd(),
                page_cache,
            };
            let Ok(e) = UringEngine::new(data, &efd, 4) else {
                eprintln!("SKIP: no io_uring here");
                return;
            };
            assert_eq!(e.runs_inline(&write(false)), page_cache);
            assert!(!e.runs_inline(&write(true)), "RWF_DSYNC stays on the ring");
            assert!(!e.runs_inline(&HostOp::Fdatasync));
        }
    }
}
