//! The host side of a ferrite disk.
//!
//! A guest's virtio-blk requests become, here, reads, writes, flushes,
//! discards and write-zeroes on an image file or block device, with exactly
//! the durability QEMU's `cache=` modes promise: the mode picks the open
//! flags (O_DIRECT, O_DSYNC), the guest-visible write cache (WCE) decides
//! whether each write must be durable at completion, and a flush costs an
//! fdatasync only when it has something to make durable.
//!
//! The crate knows nothing of virtio or KVM: the caller translates guest
//! memory into [`Segment`]s, submits [`Op`]s tagged with its own data,
//! waits on one eventfd and collects [`Completion`]s, whichever engine
//! (io_uring or synchronous) runs underneath. See DESIGN.md beside this
//! file for what the crate deliberately leaves out.

mod cache;
pub mod crash;
mod disk;
mod engine;
mod error;
mod inflight;
mod lifecycle;
mod lock;
mod op;
mod open;
mod policy;
pub mod stage_timing;
mod stats;

pub use cache::{CacheMode, CacheSwitches, ParseCacheModeError};
pub use disk::{Disk, DiskConfig, BOUNCE_CHUNK, QUEUE_DEPTH};
pub use engine::{io_uring_supported, EngineKind, ParseEngineKindError};
pub use error::BlockError;
pub use op::{Completion, Op, Segment};
pub use open::{on_memory_fs, probe_direct_io};
pub use policy::{ErrorAction, ErrorPolicy, ParseErrorActionError};
pub use stats::DiskStats;
