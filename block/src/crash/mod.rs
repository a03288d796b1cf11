//! Crash-state exploration for `ferrite crashtest`: the log of a disk's
//! writes, flushes and write-cache changes ([`WriteLog`]), the recorder
//! that writes it to the host from a running disk ([`Recorder`]), the disk
//! states a power cut could leave at any point of it under the virtio-blk
//! contract ([`generate`], [`analyse`]), and the images of those states
//! ([`Recording::apply`]). Plain functions over the log, tested without a
//! guest; docs/crash-model.md explains the model.

mod log;
mod record;
mod replay;
mod states;

pub use log::{Event, LogError, WriteLog};
pub use record::{RecordError, Recorder, Source, DATA_FILE, EVENTS_FILE};
pub use replay::Recording;
pub use states::{analyse, generate, generate_torn, CrashState, Cut, Torn};
