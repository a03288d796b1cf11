//! `Disk`: one open image and the state machine around it: which flags the
//! data descriptor has, the guest-visible write cache (WCE), when a flush
//! really syncs, in-flight requests and their completions, counters.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;

use vmm_sys_util::eventfd::EventFd;

use crate::engine::{DataFd, Engine, EngineKind, HostOp, Pushed, RawCompletion};
use crate::inflight::{self, host_op, AlignedBuf, InFlight, IoVecs, Kind, Stage, Window};
use crate::lifecycle::{step, Step};
use crate::lock::ImageLock;
use crate::open::Geometry;
use crate::policy::ErrorPolicy;
use crate::{BlockError, CacheMode, Completion, DiskStats, Op};

/// Operations in flight at most, per disk.
pub const QUEUE_DEPTH: usize = 128;

/// Largest bounce buffer one request holds (or its host block, if larger):
/// a misaligned request longer than this moves through it a chunk at a
/// time, so a disk never holds more than `QUEUE_DEPTH` of them (8 MiB),
/// whatever the guest submits.
pub const BOUNCE_CHUNK: usize = 64 << 10;

/// virtio's unit: reads and writes are multiples of it on every host.
const SECTOR: u64 = 512;

/// How to open a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image: a regular file or a block device.
    pub path: PathBuf,
    /// The cache mode.
    pub cache: CacheMode,
    /// Open read-only (shared lock; writes refused).
    pub read_only: bool,
    /// None: io_uring where the kernel supports it, else Sync.
    pub engine: Option<EngineKind>,
}

impl DiskConfig {
    /// A writable writeback disk on the default engine.
    pub fn new(path: impl Into<PathBuf>) -> DiskConfig {
        DiskConfig {
            path: path.into(),
            cache: CacheMode::default(),
            read_only: false,
            engine: None,
        }
    }
}

/// One open, locked disk image.
pub struct Disk {
    path: PathBuf,
    cache: CacheMode,
    read_only: bool,
    geometry: Geometry,
    supports_discard: bool,
    /// Guest-visible write cache.
    wce: bool,
    /// The data descriptor has O_DSYNC.
    fd_dsync: bool,
    /// The image is on tmpfs or ramfs (`DataFd::worker_only`), found at
    /// open and kept for reopens.
    worker_only: bool,
    /// A failed fdatasync on a buffered image: flushes fail from now on.
    sync_failed: bool,
    /// Completed modifying operations (writes, discards, write-zeroes).
    write_gen: u64,
    /// `write_gen` covered by the last successful fdatasync.
    synced_gen: u64,
    stats: DiskStats,
    // Field order matters on drop: the engine (and its ring) goes before
    // the descriptor it uses, the lock last.
    engine: Box<dyn Engine>,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    active: usize,
    ready: VecDeque<Completion>,
    raw: Vec<RawCompletion>,
    /// Read-modify-writes in slots (held or running).
    rmw_in_flight: usize,
    /// Bytes of bounce buffers held by requests in slots.
    bounce_bytes: usize,
    /// Slots whose request waits for an overlapping one, oldest first.
    held: VecDeque<usize>,
    /// `release_held` is running (it can be re-entered through an inline
    /// write's completion).
    releasing: bool,
    /// What failed writes and reads get (`werror=`, `rerror=`).
    policy: ErrorPolicy,
    /// Slots whose request failed and is held until `retry_stopped`.
    parked: Vec<usize>,
    /// Requests in slots that were held after an error at least once
    /// (parked, or retrying): while any, the disk is stopped.
    fences: usize,
    /// The error of the latest request held.
    stop_errno: i32,
    eventfd: EventFd,
    /// `ferrite crashtest`'s recorder, when this disk records.
    recorder: Option<Box<crate::crash::Recorder>>,
    /// This side wrote `eventfd` since the last `drain_completions` read
    /// it: one signal is enough until then, and a polling caller that
    /// never reads it pays for one write, not one per completion.
    signalled: bool,
    file: File,
    _lock: ImageLock,
}

impl Disk {
    /// Queues one operation. Errors of the operation itself come back as a
    /// Completion; Err here means nothing was queued: QueueFull (retry after
    /// a completion) or a request the disk refuses (ReadOnly, OutOfRange,
    /// Misaligned, TooLarge; counted in stats.errors).
    ///
    /// # Safety
    /// Every segment must point to memory valid for `len` bytes (writable for
    /// Read) that stays valid and is not otherwise accessed until the
    /// Completion with this `user_data` has been returned (by
    /// `drain_completions` or `wait_idle`), or the Disk is dropped.
    pub unsafe fn submit(&mut self, op: Op, user_data: u64) -> Result<(), BlockError> {
        if self.in_flight() >= QUEUE_DEPTH {
            return Err(BlockError::QueueFull { depth: QUEUE_DEPTH });
        }
        let noted = self.recorder.is_some().then(|| record::Noted::of(&op));
        let req = self
            .prepare(op, user_data)
            .inspect_err(|_| self.stats.errors += 1)?;
        if let Some(noted) = noted {
            // SAFETY: the caller's contract covers the segments.
            unsafe { self.record_submit(noted, user_data, &req) };
        }
        match req {
            Prepared::Done(kind, c) => self.finish_now(kind, c),
            // SAFETY: the caller's contract covers the segments; the bounce
            // buffer and iovecs are owned by the request kept in a slot
            // until its completion is reaped.
            Prepared::Queue(r) => unsafe { self.start(r) },
        }
        Ok(())
    }

    /// Submits queued operations to the kernel (io_uring batches until this;
    /// the sync engine runs them now).
    pub fn kick(&mut self) -> Result<(), BlockError> {
        self.engine.kick().map_err(BlockError::Io)?;
        // The sync engine finished its work inside `kick`; the ring signals
        // the eventfd itself.
        if !self.engine.signals_completions() && self.engine.has_completions() {
            self.signal();
        }
        Ok(())
    }

    /// Moves every finished operation into `out`, non-blocking; clears the eventfd.
    pub fn drain_completions(&mut self, out: &mut Vec<Completion>) {
        // Clear first: a completion landing after the reap signals again.
        let _ = self.eventfd.read();
        self.signalled = false;
        self.poll_completions(out);
    }

    /// Moves every finished operation into `out` without the system call
    /// that clears the eventfd: for a caller that polls. The eventfd may
    /// stay signalled, so the caller's next wait on it can wake once with
    /// nothing to collect; `drain_completions` then clears it.
    pub fn poll_completions(&mut self, out: &mut Vec<Completion>) {
        self.process();
        out.extend(self.ready.drain(..));
    }

    /// Whether a completion is waiting to be collected (no system call
    /// unless the kernel holds finished work for this thread to post):
    /// what a polling caller checks between its other work.
    pub fn has_completions(&mut self) -> bool {
        !self.ready.is_empty() || self.engine.has_completions()
    }

    /// Whether a host operation is in flight that the storage device
    /// completes by itself (an `O_DIRECT` read or write on the io_uring
    /// engine, without a sync per write): a caller that spins for its
    /// completion takes no CPU from the work. Kernel threads carry
    /// durable writes, flushes and page-cache misses (io_uring's io-wq
    /// workers, or the dio worker that syncs an `O_DIRECT` durable write),
    /// and a spinning caller would compete with them; the threads engine
    /// makes every call on the caller's thread, so nothing of it awaits
    /// the device here.
    pub fn awaits_device(&self) -> bool {
        self.engine.awaits_device()
    }

    /// The caller spins up to `window` for a completion while
    /// [`Disk::awaits_device`] before it sleeps: the engine may then send
    /// an operation alone to the device to be answered while the caller
    /// spins, rather than make the call on the caller's thread, when its
    /// answers usually come within the window.
    pub fn set_spin_window(&mut self, window: std::time::Duration) {
        self.engine.set_spin_window(window);
    }

    /// Signals the eventfd unless this side already did since it was last
    /// cleared.
    fn signal(&mut self) {
        if !self.signalled {
            self.signalled = true;
            let _ = self.eventfd.write(1);
        }
    }

    /// Blocks until nothing is in flight, moving completions into `out`.
    pub fn wait_idle(&mut self, out: &mut Vec<Completion>) {
        self.quiesce();
        self.drain_completions(out);
    }

    /// Validates `op` and turns it into an in-flight request.
    fn prepare(&mut self, op: Op, user_data: u64) -> Result<Prepared, BlockError> {
        let (kind, offset, len) = match &op {
            Op::Read { offset, segments } => (Kind::Read, *offset, seg_total(segments)),
            Op::Write { offset, segments } => (Kind::Write, *offset, seg_total(segments)),
            Op::Flush => (Kind::Flush, 0, 0),
            Op::Discard { offset, len } => (Kind::Discard, *offset, *len),
            Op::WriteZeroes { offset, len, .. } => (Kind::WriteZeroes, *offset, *len),
        };
        self.check(kind, offset, len)?;
        let done = |result| Ok(Prepared::Done(kind, Completion { user_data, result }));
        match op {
            Op::Read { segments, .. } | Op::Write { segments, .. } => {
                if len == 0 {
                    return done(Ok(0));
                }
                let mut r = InFlight::new(user_data, kind, Stage::Transfer, offset, len);
                r.segments = segments;
                self.plan_transfer(r).map(Prepared::Queue)
            }
            Op::Flush => {
                if self.cache == CacheMode::Unsafe || self.read_only {
                    return done(Ok(0));
                }
                if self.sync_failed {
                    return done(Err(BlockError::SyncFailedEarlier));
                }
                // A held write has not completed: the flush must wait for
                // it (in `start`), so it cannot be answered at once.
                if !self.wce && self.write_gen == self.synced_gen && self.fences == 0 {
                    return done(Ok(0)); // writes are durable and nothing changed since
                }
                let gen = self.write_gen;
                let r = InFlight::new(user_data, kind, Stage::Flush { gen }, 0, 0);
                Ok(Prepared::Queue(r))
            }
            Op::Discard { .. } => {
                if len == 0 || !self.supports_discard {
                    return done(Ok(0)); // discard is a hint; nothing to deallocate
                }
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                let r = InFlight::new(user_data, kind, Stage::Fallocate { mode }, offset, len);
                Ok(Prepared::Queue(r))
            }
            Op::WriteZeroes { may_unmap, .. } => {
                if len == 0 {
                    return done(Ok(0));
                }
                let mode = if may_unmap && self.supports_discard {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                let mut r = InFlight::new(user_data, kind, Stage::Fallocate { mode }, offset, len);
                r.fd_dsync = self.fd_dsync;
                r.rwf_dsync = self.durable_writes() && !self.fd_dsync;
                r.sync_after = self.durable_writes();
                Ok(Prepared::Queue(r))
            }
        }
    }

    /// The checks every operation passes before it is queued. Reads and
    /// writes need 512-byte units only (virtio's, on every host, §5.2.5);
    /// discard and write-zeroes whole host blocks.
    fn check(&self, kind: Kind, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only && matches!(kind, Kind::Write | Kind::Discard | Kind::WriteZeroes) {
            return Err(BlockError::ReadOnly);
        }
        let align = match kind {
            Kind::Read | Kind::Write => SECTOR,
            _ => u64::from(self.geometry.logical_block_size),
        };
        if !offset.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(BlockError::Misaligned { offset, len, align });
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.capacity())
        {
            return Err(BlockError::OutOfRange {
                offset,
                len,
                capacity: self.capacity(),
            });
        }
        if matches!(kind, Kind::Read | Kind::Write) && len > u64::from(u32::MAX) {
            return Err(BlockError::TooLarge {
                len,
                max: u64::from(u32::MAX),
            });
        }
        Ok(())
    }

    /// Decides how a read or write reaches the file: straight from the
    /// caller's memory, through an aligned bounce buffer, or widened to
    /// whole host blocks (read-modify-write for a write).
    fn plan_transfer(&mut self, mut r: InFlight) -> Result<InFlight, BlockError> {
        let lbs = u64::from(self.geometry.logical_block_size);
        if r.kind == Kind::Write {
            r.fd_dsync = self.fd_dsync;
            r.rwf_dsync = self.durable_writes() && !self.fd_dsync;
        }
        if !r.offset.is_multiple_of(lbs) || !r.len.is_multiple_of(lbs) {
            self.widen(&mut r, lbs)?;
        } else if self.needs_bounce(&r.segments) {
            self.stats.bounced += 1;
        } else {
            r.direct_iovecs();
            return Ok(r);
        }
        let align = self.geometry.mem_alignment.max(512);
        let size = (r.len as usize).min(self.bounce_chunk());
        let buf = AlignedBuf::zeroed(size, align)
            .ok_or_else(|| BlockError::Io(io::Error::from(io::ErrorKind::OutOfMemory)))?;
        self.bounce_bytes += size;
        let peak = &mut self.stats.bounce_bytes_peak;
        *peak = (*peak).max(self.bounce_bytes as u64);
        r.bounce = Some(buf);
        Ok(r)
    }

    /// Whether the caller's segments cannot go to the kernel as they are.
    fn needs_bounce(&self, segments: &[crate::Segment]) -> bool {
        let mem = self.geometry.mem_alignment;
        let len_align = if self.cache.direct() {
            mem.max(self.geometry.logical_block_size as usize)
        } else {
            mem
        };
        inflight::needs_bounce(segments, mem)
            || segments.iter().any(|s| !s.len.is_multiple_of(len_align))
    }

    /// Widens `r` to the host blocks it touches (§5.2.5: the protocol's
    /// unit is 512 bytes whatever the host's block). A write first reads
    /// those blocks (`Stage::RmwRead`). The image's last, partial host
    /// block cannot be widened into without growing the file: refused.
    fn widen(&mut self, r: &mut InFlight, lbs: u64) -> Result<(), BlockError> {
        let start = r.offset - r.offset % lbs;
        let end = (r.offset + r.len).next_multiple_of(lbs);
        if end > self.capacity() {
            return Err(BlockError::Misaligned {
                offset: r.offset,
                len: r.len,
                align: lbs,
            });
        }
        r.window = Some(Window {
            skip: (r.offset - start) as usize,
            len: r.len as usize,
        });
        (r.offset, r.len) = (start, end - start);
        if r.kind == Kind::Write {
            self.stats.read_modify_writes += 1;
        } else {
            self.stats.widened_reads += 1;
        }
        Ok(())
    }

    /// Guest writes must be durable at completion (write cache off), which
    /// `unsafe` never promises.
    fn durable_writes(&self) -> bool {
        !self.wce && self.cache != CacheMode::Unsafe
    }

    /// Puts `r` in a slot and pushes its first host operation.
    ///
    /// # Safety
    /// `r`'s caller segments are valid as `submit` requires.
    unsafe fn start(&mut self, mut r: InFlight) {
        if r.bounce.is_some() {
            // SAFETY: submit's contract: the segments are readable.
            unsafe { r.begin_chunk() };
        }
        let Some(slot) = self.free.pop() else {
            // Unreachable: in_flight() < QUEUE_DEPTH was checked.
            self.finish(r, Err(BlockError::QueueFull { depth: QUEUE_DEPTH }));
            return;
        };
        self.active += 1;
        if r.is_rmw() {
            self.rmw_in_flight += 1;
        }
        // Only while a read-modify-write is in flight can two writes undo
        // each other, and only behind a write held after an error must a
        // request wait: the common case checks nothing.
        r.held = (self.rmw_in_flight > 0 || self.fences > 0)
            && self.slots.iter().flatten().any(|o| r.waits_for(o));
        let op = host_op(&r);
        let held = r.held;
        self.slots[slot] = Some(r);
        if held {
            self.held.push_back(slot);
        } else {
            self.push(slot, op);
        }
    }

    /// Starts the held requests that no longer overlap an earlier
    /// conflicting one, in the order they came.
    fn release_held(&mut self) {
        if self.releasing {
            return; // a release further up the stack rescans
        }
        self.releasing = true;
        let mut i = 0;
        while i < self.held.len() {
            let slot = self.held[i];
            // Blocked by a request running on the host, or by one held
            // ahead of it in the queue (held requests keep their order).
            // Two linear scans, not one nested: a guest that overlaps
            // many writes must not make every completion cost held x slots.
            let blocked = match self.slots[slot].as_ref() {
                Some(r) => {
                    let live = |j: usize| self.slots[j].as_ref().filter(|o| r.waits_for(o));
                    self.held.range(..i).any(|&j| live(j).is_some())
                        || (0..self.slots.len())
                            .any(|j| j != slot && live(j).is_some_and(|o| !o.held))
                }
                None => false,
            };
            if blocked {
                i += 1;
                continue;
            }
            self.held.remove(i);
            let Some(r) = self.slots[slot].as_mut() else {
                continue;
            };
            r.held = false;
            let op = host_op(r);
            self.push(slot, op);
            // An inline write may have finished others meanwhile.
            i = 0;
        }
        self.releasing = false;
    }

    /// Pushes the next host operation of the request in `slot`; the
    /// engine may run it at once (a plain page-cache write on io_uring).
    fn push(&mut self, slot: usize, op: HostOp) {
        // SAFETY: every pointer in `op` names memory owned by the request in
        // `slot` (iovecs, bounce buffer) or caller memory under submit's
        // contract; the slot is only emptied when this tag's completion is
        // reaped (or `push` said it is done), or on drop after waiting.
        match unsafe { self.engine.push(op, slot as u64) } {
            Ok(Pushed::Queued) => {}
            Ok(Pushed::Done(res)) => {
                // A short write pushes its rest, which comes back here.
                self.advance(RawCompletion {
                    tag: slot as u64,
                    res,
                });
                // Completions are collected through the eventfd, as the ring's.
                self.signal();
            }
            Err(e) => {
                if let Some(r) = self.take(slot) {
                    self.finish(r, Err(BlockError::Io(e)));
                }
                // A request held behind this one must not wait forever.
                if !self.held.is_empty() {
                    self.release_held();
                }
            }
        }
    }

    fn take(&mut self, slot: usize) -> Option<InFlight> {
        let r = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.active -= 1;
        if r.is_rmw() {
            self.rmw_in_flight -= 1;
        }
        if let Some(b) = &r.bounce {
            self.bounce_bytes -= b.len();
        }
        if r.stop_errno != 0 {
            self.fences -= 1;
        }
        self.held.retain(|&h| h != slot);
        self.parked.retain(|&p| p != slot);
        Some(r)
    }

    /// Reaps raw completions and advances their requests until the engine
    /// has nothing more ready. Does not signal the eventfd: its callers
    /// either hand the completions out now or signal themselves.
    fn process(&mut self) {
        loop {
            let mut raw = std::mem::take(&mut self.raw);
            self.engine.reap(&mut raw);
            if raw.is_empty() {
                self.raw = raw;
                break;
            }
            for c in raw.drain(..) {
                self.advance(c);
            }
            self.raw = raw;
            if let Err(e) = self.engine.kick() {
                self.fail_all(e);
            }
        }
    }

    /// Runs every in-flight request to completion (into `ready`) and
    /// signals the eventfd if that left completions to collect.
    fn quiesce(&mut self) {
        let _ = self.engine.kick();
        while self.active > 0 {
            if self.only_held() {
                // Waiting for the engine would never end.
                if self.parked.is_empty() {
                    break;
                }
                self.give_up_held();
                continue;
            }
            if let Err(e) = self.engine.wait() {
                self.fail_all(e);
            }
            self.process();
        }
        if !self.ready.is_empty() {
            self.signal();
        }
    }

    /// The engine itself failed: fail every request it holds. Only reached
    /// when the ring can no longer be entered; the kernel might then still
    /// hold the requests' iovecs and bounce buffers, so those are leaked
    /// rather than freed.
    fn fail_all(&mut self, e: io::Error) {
        for slot in 0..self.slots.len() {
            if let Some(mut r) = self.take(slot) {
                std::mem::forget(std::mem::replace(&mut r.iov, IoVecs(Box::new([]))));
                std::mem::forget(r.bounce.take());
                let err = io::Error::new(e.kind(), e.to_string());
                self.finish(r, Err(BlockError::Io(err)));
            }
        }
    }

    /// Moves one request along after a host operation finished.
    fn advance(&mut self, c: RawCompletion) {
        let slot = c.tag as usize;
        let next = if self.intercept(slot, c.res) {
            None
        } else {
            let Some(r) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
                return;
            };
            let s = step(r, c.res);
            self.stepped(slot, s)
        };
        if let Some(op) = next {
            self.push(slot, op);
        }
        if !self.held.is_empty() {
            self.release_held();
        }
    }

    /// Books what `step` said of the request in `slot`; its next host
    /// operation, if any.
    fn stepped(&mut self, slot: usize, s: Step) -> Option<HostOp> {
        match s {
            Step::Again(op) => Some(op),
            Step::Done(result) => self.end(slot, result),
            Step::Synced(gen, result) => {
                self.stats.count_fdatasync();
                if result.is_ok() {
                    self.synced_gen = self.synced_gen.max(gen);
                } else if !self.cache.direct() {
                    self.sync_failed = true;
                }
                self.end(slot, result)
            }
            Step::Modified(then) => self.modified(slot, then),
            Step::NoDiscard => {
                self.supports_discard = false;
                self.end(slot, Ok(0))
            }
        }
    }

    /// Finishes the request in `slot`; there is no next operation.
    fn end(&mut self, slot: usize, result: Result<u32, BlockError>) -> Option<HostOp> {
        if let Some(r) = self.take(slot) {
            self.finish(r, result);
        }
        None
    }

    /// The image changed: count the generation, then the request's next
    /// operation, or its end.
    fn modified(
        &mut self,
        slot: usize,
        then: Result<Option<HostOp>, BlockError>,
    ) -> Option<HostOp> {
        self.write_gen += 1;
        match then {
            Ok(Some(op)) => {
                if let Some(Some(r)) = self.slots.get_mut(slot) {
                    if let Stage::SyncAfter { .. } = r.stage {
                        // The sync about to start covers every
                        // modification completed so far, this one too.
                        r.stage = Stage::SyncAfter {
                            gen: self.write_gen,
                        };
                    }
                }
                Some(op)
            }
            Ok(None) => {
                let n = match self.slots.get(slot) {
                    Some(Some(r)) if r.kind == Kind::Write => r.caller_len(),
                    _ => 0,
                };
                self.end(slot, Ok(n))
            }
            Err(e) => self.end(slot, Err(e)),
        }
    }

    /// Completes a request that needed no host operation.
    fn finish_now(&mut self, kind: Kind, c: Completion) {
        if c.result.is_err() {
            self.stats.errors += 1;
        }
        self.record_completion(c.user_data, c.result.is_ok());
        count_kind(&mut self.stats, kind);
        self.ready.push_back(c);
        self.signal();
    }

    /// Counts and queues the completion of `r`.
    fn finish(&mut self, r: InFlight, result: Result<u32, BlockError>) {
        self.record_completion(r.user_data, result.is_ok());
        let s = &mut self.stats;
        match (r.kind, &result) {
            (_, Err(_)) => s.errors += 1,
            (Kind::Read, Ok(n)) => s.bytes_read += u64::from(*n),
            (Kind::Write, Ok(n)) => {
                s.bytes_written += u64::from(*n);
                if r.fd_dsync || r.rwf_dsync {
                    s.count_dsync_write();
                }
            }
            _ => {}
        }
        count_kind(s, r.kind);
        self.ready.push_back(Completion {
            user_data: r.user_data,
            result,
        });
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // The kernel may still be using request buffers: wait for it.
        self.quiesce();
    }
}

/// What `submit` turns an op into.
enum Prepared {
    Done(Kind, Completion),
    Queue(InFlight),
}

fn seg_total(segments: &[crate::Segment]) -> u64 {
    segments.iter().map(|s| s.len as u64).sum()
}

/// What the engine is told about the data descriptor `fd`.
fn data_fd(fd: std::os::fd::RawFd, cache: CacheMode, fd_dsync: bool, worker_only: bool) -> DataFd {
    DataFd {
        fd,
        direct: cache.direct(),
        dsync: fd_dsync,
        worker_only,
    }
}

/// Whether the data descriptor carries O_DSYNC for this mode and WCE.
fn dsync_fd(cache: CacheMode, wce: bool) -> bool {
    !wce && matches!(cache, CacheMode::Writethrough | CacheMode::DirectSync)
}

fn count_kind(s: &mut DiskStats, kind: Kind) {
    match kind {
        Kind::Read => s.reads += 1,
        Kind::Write => s.writes += 1,
        Kind::Flush => s.flushes += 1,
        Kind::Discard => s.discards += 1,
        Kind::WriteZeroes => s.write_zeroes += 1,
    }
}

mod control;
mod hold;
mod record;
#[cfg(test)]
mod tests;
