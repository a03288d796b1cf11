//! Crash-state exploration for `ferrite crashtest`: the log of a disk's
//! writes, flushes and write-cache changes ([`WriteLog`]), and the disk
//! states a power cut could leave at any point of it under the virtio-blk
//! contract ([`generate`], [`analyse`]). Plain functions over the log,
//! tested without a guest; docs/crash-model.md explains the model.

mod log;
mod states;

pub use log::{Event, LogError, WriteLog};
pub use states::{analyse, generate, CrashState, Cut};
