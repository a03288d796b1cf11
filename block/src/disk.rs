//! `Disk`: one open image and the state machine around it: which flags the
//! data descriptor has, the guest-visible write cache (WCE), when a flush
//! really syncs, in-flight requests and their completions, counters.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use vmm_sys_util::eventfd::EventFd;

use crate::bounce::{self, AlignedBuf};
use crate::engine::{self, Engine, EngineKind, HostOp, RawCompletion};
use crate::lifecycle::{host_op, step, Step};
use crate::lock::ImageLock;
use crate::open::{self, FileKind, Geometry};
use crate::request::{InFlight, Kind, Stage, Window};
use crate::{BlockError, CacheMode, Completion, DiskStats, Op};

/// Operations in flight at most, per disk.
pub const QUEUE_DEPTH: usize = 128;

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
    /// Slots whose request waits for an overlapping one, oldest first.
    held: VecDeque<usize>,
    /// `release_held` is running (it can be re-entered through an inline
    /// write's completion).
    releasing: bool,
    eventfd: EventFd,
    /// This side wrote `eventfd` since the last `drain_completions` read
    /// it: one signal is enough until then, and a polling caller that
    /// never reads it pays for one write, not one per completion.
    signalled: bool,
    file: File,
    _lock: ImageLock,
}

impl Disk {
    /// Opens (and locks: exclusive if writable, shared if read-only) the image.
    pub fn open(cfg: &DiskConfig) -> Result<Disk, BlockError> {
        Disk::open_inner(cfg, 1, 512)
    }

    /// Like `open`, but treats buffers as misaligned unless their address and
    /// length are multiples of `mem_alignment` (a power of two), whatever the
    /// host needs. For tests and diagnostics: it makes the bounce path run on
    /// any file system and cache mode.
    pub fn open_with_mem_alignment(
        cfg: &DiskConfig,
        mem_alignment: usize,
    ) -> Result<Disk, BlockError> {
        Disk::open_inner(cfg, mem_alignment, 512)
    }

    /// Like `open_with_mem_alignment`, and also treats the image as if its
    /// logical block were `block_size` bytes (a power of two, at least
    /// 512): what the guest is told as BLK_SIZE, and the unit below which
    /// reads are widened and writes read-modify-written. For tests: a 4Kn
    /// host on any file system and cache mode.
    pub fn open_with_alignment(
        cfg: &DiskConfig,
        mem_alignment: usize,
        block_size: u32,
    ) -> Result<Disk, BlockError> {
        Disk::open_inner(cfg, mem_alignment, block_size)
    }

    fn open_inner(cfg: &DiskConfig, min_align: usize, min_block: u32) -> Result<Disk, BlockError> {
        let path = cfg.path.clone();
        let lock = ImageLock::acquire(&path, !cfg.read_only)?;
        let wce = cfg.cache.default_write_cache();
        let fd_dsync = dsync_fd(cfg.cache, wce);
        let file = open::open_data(&path, open::data_flags(cfg.cache, cfg.read_only, fd_dsync))?;
        let mut geometry = open::discover(&file, &path, cfg.cache.direct())?;
        geometry.mem_alignment = geometry
            .mem_alignment
            .max(min_align.max(1).next_power_of_two());
        geometry.logical_block_size = geometry
            .logical_block_size
            .max(min_block.max(512).next_power_of_two());
        let supports_discard =
            !cfg.read_only && open::probe_punch_hole(&file, geometry.kind, geometry.capacity);
        let eventfd =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(BlockError::Io)?;
        let engine = engine::create(cfg.engine, file.as_raw_fd(), &eventfd, QUEUE_DEPTH)?;
        Ok(Disk {
            path,
            cache: cfg.cache,
            read_only: cfg.read_only,
            geometry,
            supports_discard,
            wce,
            fd_dsync,
            sync_failed: false,
            write_gen: 0,
            synced_gen: 0,
            stats: DiskStats::default(),
            engine,
            slots: (0..QUEUE_DEPTH).map(|_| None).collect(),
            free: (0..QUEUE_DEPTH).rev().collect(),
            active: 0,
            ready: VecDeque::new(),
            raw: Vec::with_capacity(QUEUE_DEPTH),
            rmw_in_flight: 0,
            held: VecDeque::new(),
            releasing: false,
            eventfd,
            signalled: false,
            file,
            _lock: lock,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in bytes, rounded down to 512.
    pub fn capacity(&self) -> u64 {
        self.geometry.capacity
    }

    /// Block size to tell the guest (BLK_SIZE); offsets and lengths must be
    /// multiples of it.
    pub fn logical_block_size(&self) -> u32 {
        self.geometry.logical_block_size
    }

    /// Buffer alignment below which requests are bounced (1: none needed).
    pub fn mem_alignment(&self) -> usize {
        self.geometry.mem_alignment
    }

    /// True for a block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.geometry.kind == FileKind::BlockDevice
    }

    /// Opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The cache mode.
    pub fn cache_mode(&self) -> CacheMode {
        self.cache
    }

    /// The engine running this disk's I/O.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// Discard can deallocate (the host punches holes).
    pub fn supports_discard(&self) -> bool {
        self.supports_discard
    }

    /// Write-zeroes works (falling back to writing zeros when needed).
    pub fn supports_write_zeroes(&self) -> bool {
        !self.read_only
    }

    /// Current guest-visible write cache (WCE).
    pub fn write_cache(&self) -> bool {
        self.wce
    }

    /// The open(2) flags the data descriptor has now (O_DIRECT, O_DSYNC...).
    pub fn data_open_flags(&self) -> i32 {
        open::data_flags(self.cache, self.read_only, self.fd_dsync)
    }

    /// The data descriptor (it changes when a write-cache switch reopens
    /// the image). For diagnostics and tests only: do no I/O on it.
    pub fn data_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Eventfd that becomes readable when completions are ready (epoll it).
    pub fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Max operations in flight at once; submit beyond it returns QueueFull.
    pub fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }

    /// Operations submitted whose completion has not been returned yet.
    pub fn in_flight(&self) -> usize {
        self.active + self.ready.len()
    }

    /// Counters since open.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// Switches the guest-visible write cache as DESIGN.md says. Drains
    /// in-flight I/O first; completions produced while draining are kept for
    /// `drain_completions` (and the eventfd is signalled).
    ///
    /// - writeback/none, 1→0: fdatasync once; later writes use RWF_DSYNC.
    /// - writethrough/directsync: reopen the data descriptor without O_DSYNC
    ///   (1) or with it (0, after an fdatasync of what the cache held).
    /// - unsafe, read-only: only the flag changes (nothing is promised / written).
    pub fn set_write_cache(&mut self, enabled: bool) -> Result<(), BlockError> {
        if enabled == self.wce {
            return Ok(());
        }
        if self.read_only || self.cache == CacheMode::Unsafe {
            self.wce = enabled;
            return Ok(());
        }
        self.quiesce();
        let want_dsync = dsync_fd(self.cache, enabled);
        if want_dsync != self.fd_dsync {
            let flags = open::data_flags(self.cache, self.read_only, want_dsync);
            let file = open::open_data(&self.path, flags)?;
            self.engine
                .set_fd(file.as_raw_fd())
                .map_err(BlockError::Io)?;
            self.file = file;
            self.fd_dsync = want_dsync;
        }
        self.wce = enabled;
        if !enabled {
            // What the cache held must be durable before writes are promised to be.
            self.sync_now()?;
        }
        Ok(())
    }

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
        let req = self
            .prepare(op, user_data)
            .inspect_err(|_| self.stats.errors += 1)?;
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

    /// Whether a completion is waiting to be collected (no system call):
    /// what a polling caller checks between its other work.
    pub fn has_completions(&mut self) -> bool {
        !self.ready.is_empty() || self.engine.has_completions()
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
                if !self.wce && self.write_gen == self.synced_gen {
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
        let buf = AlignedBuf::zeroed(r.len as usize, align)
            .ok_or_else(|| BlockError::Io(io::Error::from(io::ErrorKind::OutOfMemory)))?;
        r.bounce = Some(buf);
        r.bounce_iovec(r.len as usize);
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
        bounce::needs_bounce(segments, mem)
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
            r.stage = Stage::RmwRead;
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
        if let Some(b) = r.bounce.as_mut() {
            if r.kind == Kind::Write && r.stage == Stage::Transfer {
                // SAFETY: submit's contract: the segments are readable.
                unsafe { bounce::gather(&r.segments, b, 0) };
            }
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
        // each other: the common case checks nothing.
        r.held =
            self.rmw_in_flight > 0 && self.slots.iter().flatten().any(|o| o.conflicts_with(&r));
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
            let blocked = match self.slots[slot].as_ref() {
                Some(r) => self.slots.iter().enumerate().any(|(j, o)| {
                    o.as_ref().is_some_and(|o| {
                        j != slot
                            && o.conflicts_with(r)
                            && (!o.held || self.held.iter().take(i).any(|&h| h == j))
                    })
                }),
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

    /// Whether `op` is a plain buffered write (page cache, no sync per
    /// write) that the io_uring engine should not carry. Such a write only
    /// copies into the page cache, but io_uring hands it to an io-wq worker
    /// thread on file systems without async buffered writes (ext4 among
    /// them): two thread switches per write, more than the copy itself.
    /// Measured with `ferrite bench --io-path`, 4 KiB random writes in
    /// `writeback`: 3-4x the IOPS at queue depth 1 done here on the disk's
    /// thread, as the sync engine does.
    fn write_inline(&self, op: &HostOp) -> bool {
        matches!(op, HostOp::Writev { dsync: false, .. })
            && !self.cache.direct()
            && !self.fd_dsync
            && self.engine.kind() == EngineKind::IoUring
    }

    /// Pushes the next host operation of the request in `slot`.
    fn push(&mut self, slot: usize, op: HostOp) {
        if self.write_inline(&op) {
            // SAFETY: as below for the engine: the memory `op` names is
            // owned by the request in `slot` or covered by submit's
            // contract, and nobody else touches it during the call.
            let res = unsafe { engine::run_now(self.file.as_raw_fd(), op) };
            // A short write pushes its rest, which comes back here.
            self.advance(RawCompletion {
                tag: slot as u64,
                res,
            });
            // Completions are collected through the eventfd, as the ring's.
            self.signal();
            return;
        }
        // SAFETY: every pointer in `op` names memory owned by the request in
        // `slot` (iovecs, bounce buffer) or caller memory under submit's
        // contract; the slot is only emptied when this tag's completion is
        // reaped, or on drop after waiting for it.
        let pushed = unsafe { self.engine.push(op, slot as u64) };
        if let Err(e) = pushed {
            if let Some(r) = self.take(slot) {
                self.finish(r, Err(BlockError::Io(e)));
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
        self.held.retain(|&h| h != slot);
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
                std::mem::forget(std::mem::replace(
                    &mut r.iov,
                    crate::request::IoVecs(Box::new([])),
                ));
                std::mem::forget(r.bounce.take());
                let err = io::Error::new(e.kind(), e.to_string());
                self.finish(r, Err(BlockError::Io(err)));
            }
        }
    }

    /// Moves one request along after a host operation finished.
    fn advance(&mut self, c: RawCompletion) {
        let slot = c.tag as usize;
        let Some(r) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        let next = step(r, c.res);
        let mut next_op = None;
        match next {
            Step::Again(op) => next_op = Some(op),
            Step::Done(result) => {
                if let Some(r) = self.take(slot) {
                    self.finish(r, result);
                }
            }
            Step::Synced(gen, result) => {
                self.stats.count_fdatasync();
                if result.is_ok() {
                    self.synced_gen = self.synced_gen.max(gen);
                } else if !self.cache.direct() {
                    self.sync_failed = true;
                }
                if let Some(r) = self.take(slot) {
                    self.finish(r, result);
                }
            }
            Step::Modified(then) => {
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
                        next_op = Some(op);
                    }
                    Ok(None) => {
                        if let Some(r) = self.take(slot) {
                            let n = if r.kind == Kind::Write {
                                r.caller_len()
                            } else {
                                0
                            };
                            self.finish(r, Ok(n));
                        }
                    }
                    Err(e) => {
                        if let Some(r) = self.take(slot) {
                            self.finish(r, Err(e));
                        }
                    }
                }
            }
            Step::NoDiscard => {
                self.supports_discard = false;
                if let Some(r) = self.take(slot) {
                    self.finish(r, Ok(0));
                }
            }
        }
        if let Some(op) = next_op {
            self.push(slot, op);
        }
        if !self.held.is_empty() {
            self.release_held();
        }
    }

    /// Completes a request that needed no host operation.
    fn finish_now(&mut self, kind: Kind, c: Completion) {
        if c.result.is_err() {
            self.stats.errors += 1;
        }
        count_kind(&mut self.stats, kind);
        self.ready.push_back(c);
        self.signal();
    }

    /// Counts and queues the completion of `r`.
    fn finish(&mut self, r: InFlight, result: Result<u32, BlockError>) {
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

    /// fdatasync now, on this thread (nothing is in flight).
    fn sync_now(&mut self) -> Result<(), BlockError> {
        self.stats.count_fdatasync();
        // SAFETY: fdatasync on the data descriptor we own.
        let rc = unsafe { libc::fdatasync(self.file.as_raw_fd()) };
        if rc != 0 {
            if !self.cache.direct() {
                self.sync_failed = true;
            }
            self.stats.errors += 1;
            return Err(BlockError::Io(io::Error::last_os_error()));
        }
        self.synced_gen = self.write_gen;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_moves_to_an_io_thread() {
        fn send<T: Send>() {}
        send::<Disk>();
        send::<Op>();
        send::<Completion>();
    }

    #[test]
    fn o_dsync_only_where_the_mode_and_wce_ask() {
        for mode in CacheMode::ALL {
            let default = dsync_fd(mode, mode.default_write_cache());
            assert_eq!(default, !mode.switches().writeback, "{mode} at reset");
            assert!(
                !dsync_fd(mode, true),
                "{mode} with a write cache never needs O_DSYNC"
            );
        }
        // WCE=0 in writeback/none is served by RWF_DSYNC, not a reopen.
        assert!(!dsync_fd(CacheMode::None, false));
        assert!(!dsync_fd(CacheMode::Unsafe, false));
    }

    #[test]
    fn synchronous_completions_signal_once_until_the_eventfd_is_read() {
        let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
        f.as_file().set_len(1 << 20).expect("size");
        let mut cfg = DiskConfig::new(f.path());
        cfg.engine = Some(EngineKind::Sync);
        let mut d = Disk::open(&cfg).expect("open");
        let mut buf = vec![0x5au8; 3 * 4096];
        let write = |d: &mut Disk, i: usize, buf: &mut [u8]| {
            let seg = crate::Segment {
                addr: buf[i * 4096..].as_mut_ptr(),
                len: 4096,
            };
            let op = Op::Write {
                offset: i as u64 * 4096,
                segments: vec![seg],
            };
            // SAFETY: `buf` outlives the request, which the sync engine
            // finishes inside `kick`, before the next line.
            unsafe { d.submit(op, i as u64) }.expect("submit");
            d.kick().expect("kick");
        };
        write(&mut d, 0, &mut buf);
        write(&mut d, 1, &mut buf);
        assert!(d.has_completions());
        // Two completions, one signal.
        assert_eq!(d.eventfd.read().ok(), Some(1));
        let mut done = Vec::new();
        d.poll_completions(&mut done);
        assert_eq!(done.len(), 2);
        assert!(!d.has_completions());
        // The eventfd was read by hand, not through drain_completions: the
        // disk still believes it signalled, so it does not signal again...
        write(&mut d, 2, &mut buf);
        assert!(d.eventfd.read().is_err(), "signalled twice");
        // ...until drain_completions has read it.
        d.drain_completions(&mut done);
        assert_eq!(done.len(), 3);
        write(&mut d, 0, &mut buf);
        assert_eq!(d.eventfd.read().ok(), Some(1));
    }

    #[test]
    fn buffered_writes_without_sync_bypass_the_ring() {
        if !crate::io_uring_supported() {
            eprintln!("SKIP: no io_uring here");
            return;
        }
        let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
        f.as_file().set_len(1 << 20).expect("size");
        let open = |cache| {
            let mut cfg = DiskConfig::new(f.path());
            cfg.cache = cache;
            cfg.engine = Some(EngineKind::IoUring);
            Disk::open(&cfg)
        };
        let op = HostOp::Writev {
            iov: std::ptr::null(),
            count: 0,
            offset: 0,
            dsync: false,
        };
        let dsync_op = HostOp::Writev {
            iov: std::ptr::null(),
            count: 0,
            offset: 0,
            dsync: true,
        };
        for (mode, inline) in [
            (CacheMode::Writeback, true),
            (CacheMode::Unsafe, true),
            (CacheMode::Writethrough, false),
        ] {
            let mut d = open(mode).expect("open");
            assert_eq!(d.write_inline(&op), inline, "{mode}");
            assert!(
                !d.write_inline(&dsync_op),
                "{mode}: RWF_DSYNC writes stay on the ring"
            );
            assert!(!d.write_inline(&HostOp::Fdatasync), "{mode}");
            if mode == CacheMode::Writeback {
                // WCE off: durable writes go to the ring (RWF_DSYNC).
                d.set_write_cache(false).expect("wce off");
                let mut buf = vec![0xabu8; 8192];
                let seg = crate::Segment {
                    addr: buf.as_mut_ptr(),
                    len: 4096,
                };
                // SAFETY: `buf` outlives the request, which wait_idle ends.
                unsafe {
                    d.submit(
                        Op::Write {
                            offset: 0,
                            segments: vec![seg],
                        },
                        1,
                    )
                }
                .expect("submit");
                let mut done = Vec::new();
                d.wait_idle(&mut done);
                assert_eq!(done.len(), 1);
                assert_eq!(d.stats().dsync_writes, 1);
            }
        }
        // An inline write completes at submit, signals the eventfd, and
        // its data is in the file.
        let mut d = open(CacheMode::Writeback).expect("open");
        let mut buf = vec![0x5au8; 4096];
        let seg = crate::Segment {
            addr: buf.as_mut_ptr(),
            len: buf.len(),
        };
        // SAFETY: `buf` outlives the request, which completes before
        // drain_completions returns it below.
        unsafe {
            d.submit(
                Op::Write {
                    offset: 8192,
                    segments: vec![seg],
                },
                7,
            )
        }
        .expect("submit");
        assert_eq!(d.eventfd.read().ok(), Some(1), "completion signalled");
        d.eventfd.write(1).expect("re-signal");
        let mut done = Vec::new();
        d.drain_completions(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(
            (done[0].user_data, done[0].result.as_ref().ok()),
            (7, Some(&4096))
        );
        assert_eq!(d.in_flight(), 0);
        let data = std::fs::read(f.path()).expect("read");
        assert!(data[8192..12288].iter().all(|&b| b == 0x5a));
        assert_eq!(d.stats().writes, 1);
    }

    #[test]
    fn config_defaults() {
        let c = DiskConfig::new("/x.img");
        assert_eq!(
            (c.cache, c.read_only, c.engine),
            (CacheMode::Writeback, false, None)
        );
    }

    #[test]
    fn default_engine_is_io_uring_where_supported() {
        let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
        f.as_file().set_len(4096).expect("size");
        let d = Disk::open(&DiskConfig::new(f.path())).expect("open");
        let want = if crate::io_uring_supported() {
            EngineKind::IoUring
        } else {
            EngineKind::Sync
        };
        assert_eq!(d.engine_kind(), want);
        assert_eq!(d.path(), f.path());
    }
}
