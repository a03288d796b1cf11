//! Opening a disk, what it reports about itself, and the write-cache
//! switch: the `Disk` calls that are not on a request's path.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vmm_sys_util::eventfd::EventFd;

use super::{data_fd, dsync_fd, Disk, DiskConfig, BOUNCE_CHUNK, QUEUE_DEPTH};
use crate::engine::{self, EngineKind};
use crate::lock::ImageLock;
use crate::open::{self, FileKind};
use crate::policy::ErrorPolicy;
use crate::{BlockError, CacheMode, DiskStats};

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
        let data = data_fd(
            file.as_raw_fd(),
            cfg.cache,
            fd_dsync,
            open::file_on_memory_fs(&file),
        );
        let worker_only = data.worker_only;
        let engine = engine::create(cfg.engine, data, &eventfd, QUEUE_DEPTH)?;
        Ok(Disk {
            path,
            cache: cfg.cache,
            read_only: cfg.read_only,
            geometry,
            supports_discard,
            wce,
            fd_dsync,
            worker_only,
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
            bounce_bytes: 0,
            held: VecDeque::new(),
            releasing: false,
            policy: ErrorPolicy::default(),
            parked: Vec::new(),
            fences: 0,
            stop_errno: 0,
            eventfd,
            recorder: None,
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

    /// The bounce buffer one request holds at most: `BOUNCE_CHUNK`, or
    /// the host block if larger (a chunk is whole host blocks).
    pub fn bounce_chunk(&self) -> usize {
        BOUNCE_CHUNK.max(self.geometry.logical_block_size as usize)
    }

    /// The most bounce-buffer memory this disk ever holds at once:
    /// one chunk per request in flight.
    pub fn bounce_budget(&self) -> usize {
        QUEUE_DEPTH * self.bounce_chunk()
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
            self.record_write_cache();
            return Ok(());
        }
        self.quiesce();
        let want_dsync = dsync_fd(self.cache, enabled);
        if want_dsync != self.fd_dsync {
            let flags = open::data_flags(self.cache, self.read_only, want_dsync);
            let file = open::open_data(&self.path, flags)?;
            self.engine
                .set_fd(data_fd(
                    file.as_raw_fd(),
                    self.cache,
                    want_dsync,
                    // The same file: its file system did not change (and
                    // the I/O thread may not call fstatfs).
                    self.worker_only,
                ))
                .map_err(BlockError::Io)?;
            self.file = file;
            self.fd_dsync = want_dsync;
        }
        self.wce = enabled;
        self.record_write_cache();
        if !enabled {
            // What the cache held must be durable before writes are promised to be.
            self.sync_now()?;
        }
        Ok(())
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
