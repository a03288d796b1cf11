//! crashfs: a FUSE file system for crash-consistency tests, in the spirit of
//! LazyFS.
//!
//! It shows the files of a backing directory, but written data stays
//! *volatile* (held in memory, per file, as 4 KiB pages) until it is made
//! durable, and [`CrashFs::power_cut`] throws away whatever was not, exactly
//! like a power cut throws away a page cache or a disk's volatile cache. The
//! backing files then hold what a recovering system would find.
//!
//! What makes data durable:
//! - fsync or fdatasync on the file (one FUSE fsync makes the whole file
//!   durable, data and size, like fdatasync on a real file system);
//! - a write through a handle opened with `O_DSYNC` or `O_SYNC` (durable
//!   before the write returns; only that write's pages, plus the size if it
//!   grew), or a write whose own flags carry `O_DSYNC`;
//! - [`CrashFs::sync_all`].
//!
//! The kernel also sends an fsync after every `O_DSYNC` or `RWF_DSYNC` write
//! on a FUSE file, so a single `pwritev2(RWF_DSYNC)` is durable too (with the
//! rest of that file).
//!
//! What is volatile: writes, size changes (truncate, extension) and
//! fallocate (punch hole, zero range, allocation past the end): all of them
//! are lost at a power cut unless synced. Directory operations (create,
//! unlink, mkdir, rmdir) and chmod go to the backing directory at once.
//!
//! `O_DIRECT`: Linux FUSE accepts `O_DIRECT` opens on this file system and
//! sends each direct read and write to it without the kernel page cache
//! (crashfs does not set `FOPEN_DIRECT_IO`). Such writes are volatile like
//! any other, which models a disk's volatile write cache: `O_DIRECT` alone
//! is volatile until fsync, `O_DIRECT|O_DSYNC` is durable at once.
//! [`CrashStats::direct_opens`] and [`CrashStats::direct_writes`] show that
//! the direct path was taken. FUSE imposes no alignment on direct I/O (any
//! buffer, offset and length work) and `statx` reports no `STATX_DIOALIGN`
//! for FUSE files (measured on Linux 6.18).
//!
//! Faults: [`CrashFs::fail_writes`] and [`CrashFs::fail_fsyncs`] make writes
//! or syncs fail with `EIO` or `ENOSPC` on demand ([`Fault`]).
//!
//! The file system runs on a background thread of the process that mounts
//! it, so another process (a VMM under test) can use the mount, be killed,
//! and the test can then cut the power and read the backing files.
//! Only one kernel request is served at a time; every request is atomic with
//! respect to a power cut.

mod fault;
mod fs;
mod mount;
mod overlay;
mod state;

pub use fault::{Fault, FaultError};
pub use mount::{unavailable_reason, CrashFs, CrashFsError};
pub use state::CrashStats;
