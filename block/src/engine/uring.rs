//! The io_uring engine: operations go to the submission ring at `push`,
//! are submitted in one system call at `kick`, and completions are reaped
//! in batches; the ring signals the disk's eventfd itself.
//!
//! Some operations are made on the caller's thread instead, as the same
//! system call: a plain page-cache write, any operation alone in its batch,
//! and every operation on tmpfs or ramfs (see [`UringEngine::runs_inline`]
//! and [`Engine::push`]).
//!
//! The ring is locked down: the data descriptor is registered and every
//! submission must use it (no other file can be touched), and only the four
//! opcodes the disk needs are allowed.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring, Probe};
use vmm_sys_util::eventfd::EventFd;

use super::answer::AnswerTime;
use super::{run_now, DataFd, Engine, EngineKind, HostOp, Pushed, RawCompletion};

/// `IORING_REGISTER_FILES_UPDATE` from the kernel uapi (not exported by the
/// io-uring crate): allowed after setup, for reopens.
const IORING_REGISTER_FILES_UPDATE: u8 = 6;
/// `IORING_UNREGISTER_FILES`: allowed after setup, for a prompt release at drop.
const IORING_UNREGISTER_FILES: u8 = 3;

/// The registered slot of the data descriptor.
const DATA: types::Fixed = types::Fixed(0);

/// Marks, in an entry's user data, an operation the device completes by
/// itself ([`UringEngine::device_completes`]). The mark travels through
/// the ring with the operation, so counting them needs no table of tags.
const DEVICE_BOUND: u64 = 1 << 63;

pub(crate) struct UringEngine {
    ring: IoUring,
    /// The data descriptor, for the writes run inline.
    data: DataFd,
    /// Operations pushed to the ring whose completion is not reaped yet.
    in_ring: usize,
    /// An operation that would block on the ring, pushed while nothing
    /// else was: `kick` runs it here if it is still alone then, and any
    /// other push first moves it to the ring.
    held: Option<(HostOp, u64)>,
    /// Completions of operations run here, for `reap`.
    done: VecDeque<RawCompletion>,
    /// Operations in the ring that the device completes by itself (those
    /// marked [`DEVICE_BOUND`]).
    device_bound: usize,
    /// How long lone device-bound operations take to answer, against the
    /// caller's spin ([`Engine::set_spin_window`]).
    answers: AnswerTime,
    /// A lone device-bound operation sent to the ring: its tag, and when.
    lone: Option<(u64, Instant)>,
}

impl UringEngine {
    /// Sets up a ring of `depth` entries for `fd`, signalling `eventfd`.
    /// Fails when the kernel lacks io_uring or one of the needed opcodes.
    pub(crate) fn new(data: DataFd, eventfd: &EventFd, depth: usize) -> io::Result<UringEngine> {
        let entries = u32::try_from(depth.max(1)).unwrap_or(4096);
        let ring = Self::build_ring(entries)?;
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
        Ok(UringEngine {
            ring,
            data,
            in_ring: 0,
            held: None,
            done: VecDeque::new(),
            device_bound: 0,
            answers: AnswerTime::default(),
            lone: None,
        })
    }

    /// A ring whose completions do not interrupt the disk's thread while
    /// it runs. By default the kernel posts a completion from work queued
    /// on the submitting thread and sends an inter-processor interrupt to
    /// make a running thread do that work at once: on a virtual host one
    /// interrupt per completion to a thread that is spinning anyway. With
    /// `COOP_TASKRUN` the work waits for the thread's next entry into the
    /// kernel (a sleeping thread is still woken), and `TASKRUN_FLAG` says
    /// in the ring when such work waits, so the thread that polls makes
    /// that entry itself ([`Self::run_task_work`]). fio sets up its rings
    /// the same way. Measured with `ferrite bench --io-path --dir
    /// /var/tmp` on this project's 2-core host, `directsync` 4 KiB random
    /// writes at QD32, whose completions come one by one from the kernel's
    /// dio workers on the interrupt's CPU (2 rounds of 5 pairs each, old
    /// and new alternating): 1.10 and 1.05 of fio's IOPS against 0.88 and
    /// 0.87 with the default poll window, 1.10 and 1.12 against 0.90 and
    /// 1.05 with `--poll-us 300`; the driver's CPU per write 2.1-2.9 µs
    /// against 3.1-6.4. Kernels before 5.19 refuse the flags and get a
    /// plain ring.
    fn build_ring(entries: u32) -> io::Result<IoUring> {
        let coop = IoUring::builder()
            .setup_r_disabled()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries);
        match coop {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::builder().setup_r_disabled().build(entries)
            }
            ring => ring,
        }
    }

    /// Posts the completions whose work the kernel holds for this thread
    /// ([`Self::build_ring`]), when the ring says it holds some: one
    /// system call that submits nothing; the work runs as it returns.
    fn run_task_work(&mut self) {
        if self.ring.submission().taskrun() {
            // SAFETY: no submission-queue entries are handed over
            // (`to_submit` 0) and no argument is passed.
            // A failure leaves the work for the next entry; nothing is lost.
            let _ = unsafe { self.ring.submitter().enter::<libc::sigset_t>(0, 0, 0, None) };
        }
    }

    /// Whether the device completes `op` from its interrupt while no
    /// thread works on it: an `O_DIRECT` read or write without a sync per
    /// write. A kernel thread carries the rest, and needs a CPU for as long
    /// as it runs: a durable `O_DIRECT` write ends in a flush that the
    /// kernel's dio worker waits for on the interrupt's CPU, and io_uring
    /// hands a buffered durable write, an fdatasync, a fallocate and a
    /// buffered read that misses the cache to an io-wq worker thread.
    fn device_completes(&self, op: &HostOp) -> bool {
        self.data.direct
            && match op {
                HostOp::Readv { .. } => true,
                HostOp::Writev { dsync, .. } => !dsync && !self.data.dsync,
                HostOp::Fdatasync | HostOp::Fallocate { .. } => false,
            }
    }

    /// Puts `op` on the submission ring, tagged `tag`.
    fn push_op(&mut self, op: HostOp, tag: u64) -> io::Result<()> {
        debug_assert_eq!(tag & DEVICE_BOUND, 0, "tags are below 2^63");
        let device = self.device_completes(&op);
        let mark = if device { DEVICE_BOUND } else { 0 };
        self.push_entry(&Self::entry(op).user_data(tag | mark))?;
        self.device_bound += usize::from(device);
        Ok(())
    }

    /// Puts `entry` on the submission ring (handing a full ring to the
    /// kernel once).
    fn push_entry(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: the entry's pointers stay valid until its completion
            // is reaped (`push`'s contract), and it names only the
            // registered data descriptor.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.in_ring += 1;
                return Ok(());
            }
            // The submission ring is full: hand it to the kernel, retry once.
            self.submit(0)?;
        }
        Err(io::Error::other("io_uring submission ring full"))
    }

    /// Whether `op` is a plain buffered write (page cache, no sync per
    /// write) that the ring should not carry. Such a write only copies into
    /// the page cache, but io_uring hands it to an io-wq worker thread on
    /// file systems without async buffered writes (ext4 among them): two
    /// thread switches per write, more than the copy itself. Measured with
    /// `ferrite bench --io-path`, 4 KiB random writes in `writeback`: 3-4x
    /// the IOPS at queue depth 1 done on the disk's thread instead.
    fn runs_inline(&self, op: &HostOp) -> bool {
        // On tmpfs every operation would be handed to a worker: the copy
        // costs less than the two thread switches (see DataFd::worker_only).
        self.data.worker_only
            || (self.data.page_cache() && matches!(op, HostOp::Writev { dsync: false, .. }))
    }

    /// Whether each operation goes to the kernel as it is pushed, rather
    /// than the batch at `kick`: on an `O_DIRECT` descriptor. There every
    /// read and write goes to the device, which starts on it as soon as
    /// the kernel passes it on; a batch handed over at its end keeps the
    /// device idle while the thread parses the rest, and a virtual disk
    /// that takes requests in bursts answers in bursts, so the queue runs
    /// in lock-step. Traced with `perf` on this project's host (QD32
    /// `O_DIRECT` writes, `ferrite bench --io-path --dir /var/tmp`): 32
    /// completions per interrupt, every time, 353 µs between interrupts
    /// against fio's 180 µs. One `io_uring_enter` per request costs more
    /// CPU than one per batch, so a buffered descriptor (`writeback`,
    /// `unsafe`, `writethrough`), whose reads mostly complete inside the
    /// call, keeps the batch.
    fn hands_over_each(&self) -> bool {
        self.data.direct
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
        // Alone, it waits to see whether it stays alone; then `kick` makes
        // the call on this thread. Alone, the ring can at best make the
        // same system call inline in `io_uring_enter` (a cached buffered
        // read, an O_DIRECT read or write on a block device), and often
        // leaves it to a kernel worker thread instead, two thread switches
        // on top of the call: a durable write (io-wq, or the dio worker
        // that syncs an O_DIRECT one), an fdatasync, a fallocate, a
        // buffered read of uncached data. The thread would only wait for
        // it anyway. The call is the same system call with the same
        // flags, so what is durable at completion does not change.
        // Measured with `ferrite bench --io-path`: see docs/io-engines.md.
        //
        // Except an operation the device completes by itself, when the
        // caller's spin usually outlasts its answer (see `answer`): in the
        // ring it is answered while the caller spins, where the call
        // would put the thread to sleep and need a wake-up.
        if self.in_ring == 0 && self.held.is_none() {
            if !(self.device_completes(&op) && self.answers.spin_outlasts()) {
                self.held = Some((op, tag));
                return Ok(Pushed::Queued);
            }
            self.lone = Some((tag, Instant::now()));
        }
        // Not alone any more: the held operation goes to the ring first,
        // in the order the disk pushed them.
        if let Some((h, htag)) = self.held.take() {
            self.push_op(h, htag)?;
        }
        self.push_op(op, tag)?;
        if self.hands_over_each() {
            // A failed submission leaves the entries on the ring; `kick`
            // tries again and reports the error.
            let _ = self.submit(0);
        }
        Ok(Pushed::Queued)
    }

    fn kick(&mut self) -> io::Result<()> {
        if let Some((op, tag)) = self.held.take() {
            // Held only while nothing else was pushed: it is alone.
            let device = self.device_completes(&op);
            let start = Instant::now();
            // SAFETY: push's caller keeps the memory `op` names valid
            // until this completion is reaped.
            let res = unsafe { run_now(self.data.fd, op) };
            if device {
                self.answers.note(start.elapsed());
            }
            self.done.push_back(RawCompletion { tag, res });
        }
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.submit(0)
    }

    fn reap(&mut self, out: &mut Vec<RawCompletion>) {
        self.run_task_work();
        out.extend(self.done.drain(..));
        let before = out.len();
        let device_bound = &mut self.device_bound;
        out.extend(self.ring.completion().map(|c| {
            let data = c.user_data();
            *device_bound -= usize::from(data & DEVICE_BOUND != 0);
            RawCompletion {
                tag: data & !DEVICE_BOUND,
                res: i64::from(c.result()),
            }
        }));
        self.in_ring -= out.len() - before;
        if let Some((tag, since)) = self.lone {
            if out[before..].iter().any(|c| c.tag == tag) {
                self.answers.note(since.elapsed());
                self.lone = None;
            }
        }
    }

    fn set_spin_window(&mut self, window: Duration) {
        self.answers.set_spin(window);
    }

    fn awaits_device(&self) -> bool {
        self.device_bound > 0
    }

    fn has_completions(&mut self) -> bool {
        if !self.done.is_empty() || !self.ring.completion().is_empty() {
            return true;
        }
        self.run_task_work();
        !self.ring.completion().is_empty()
    }

    fn signals_completions(&self) -> bool {
        self.done.is_empty()
    }

    fn wait(&mut self) -> io::Result<()> {
        self.kick()?;
        if self.has_completions() {
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
mod tests;
