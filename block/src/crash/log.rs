//! The write log: what a guest asked of a disk and when the disk answered,
//! in the order the disk saw it. The data of each write is kept apart (a
//! log file, by write id), so a log of any length stays small.

/// One thing that happened on the disk, in the order it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The guest set the write cache (the virtio-blk `writeback` byte).
    WriteCache {
        /// Whether the guest now sees a volatile write cache.
        enabled: bool,
    },
    /// A write (or write-zeroes, or discard) was taken from the queue.
    WriteSubmitted {
        /// The write's id (unique in the log).
        id: u64,
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The write was completed to the guest with success.
    WriteCompleted {
        /// The write's id.
        id: u64,
    },
    /// A FLUSH was taken from the queue.
    FlushSubmitted {
        /// The flush's id (unique among flushes).
        id: u64,
    },
    /// The FLUSH was completed to the guest with success.
    FlushCompleted {
        /// The flush's id.
        id: u64,
    },
}

/// A recorded run: the write cache the guest saw at the start, then every
/// event.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteLog {
    /// The `writeback` byte at the start (the mode's default).
    pub initial_write_cache: bool,
    /// Every event, in the order the disk saw them.
    pub events: Vec<Event>,
}

/// What makes a log impossible (a recorder bug or a damaged file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// An id was submitted twice.
    #[error("event {index}: {what} {id} was submitted twice")]
    Duplicate {
        /// Position in the log.
        index: usize,
        /// "write" or "flush".
        what: &'static str,
        /// The id.
        id: u64,
    },
    /// A completion without its submission, or a second completion.
    #[error("event {index}: {what} {id} completed without being in flight")]
    NotInFlight {
        /// Position in the log.
        index: usize,
        /// "write" or "flush".
        what: &'static str,
        /// The id.
        id: u64,
    },
}

impl WriteLog {
    /// Checks that every completion follows its submission, once.
    pub fn validate(&self) -> Result<(), LogError> {
        use std::collections::HashMap;
        // id -> still in flight
        let mut writes: HashMap<u64, bool> = HashMap::new();
        let mut flushes: HashMap<u64, bool> = HashMap::new();
        for (index, e) in self.events.iter().enumerate() {
            let (map, what, id, submit) = match *e {
                Event::WriteCache { .. } => continue,
                Event::WriteSubmitted { id, .. } => (&mut writes, "write", id, true),
                Event::WriteCompleted { id } => (&mut writes, "write", id, false),
                Event::FlushSubmitted { id } => (&mut flushes, "flush", id, true),
                Event::FlushCompleted { id } => (&mut flushes, "flush", id, false),
            };
            if submit {
                if map.insert(id, true).is_some() {
                    return Err(LogError::Duplicate { index, what, id });
                }
            } else if map.insert(id, false) != Some(true) {
                return Err(LogError::NotInFlight { index, what, id });
            }
        }
        Ok(())
    }
}
