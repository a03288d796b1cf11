//! The recorder: a disk's write stream on the host's file system, as
//! `ferrite crashtest` needs it. Off unless a disk is told to record
//! ([`crate::Disk::record_to`]).
//!
//! A recording is a directory with two files:
//! - `events.jsonl`: one JSON object a line: a `start` line (the write
//!   cache the guest saw when recording began), then each [`Event`] in the
//!   order the disk saw it, each write's `submitted` event preceded by a
//!   `data` line saying where its bytes are;
//! - `data.bin`: every write's bytes, appended once at submission.
//!
//! Nothing is kept in memory but the ids of the requests in flight and two
//! buffers (1 MiB of data, 64 KiB of events, written out when full and at
//! each completed FLUSH), so a recording of any length costs the host disk
//! space, not RAM. Recording costs each write a copy of its bytes and two
//! JSON lines (measured in the README, "Crash testing").

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::log::Event;

/// The events file of a recording.
pub const EVENTS_FILE: &str = "events.jsonl";
/// The data file of a recording.
pub const DATA_FILE: &str = "data.bin";

/// Where a write's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `len` bytes at this offset of the data file.
    File {
        /// Offset in `data.bin`.
        at: u64,
    },
    /// Zeros (write-zeroes, or a discard, which ferrite turns into a hole).
    Zeroes,
}

/// One line of `events.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Line {
    /// The first line.
    Start {
        /// The guest-visible write cache when recording began.
        write_cache: bool,
    },
    /// Where the bytes of the next submitted write are.
    Data {
        /// The write's id.
        id: u64,
        /// Its bytes.
        source: Source,
    },
    /// Something the disk saw.
    Event(Event),
    /// The recorder could not keep up (a host error): the log stops here.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// Why a recording could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file of the recording.
    #[error("recording {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The host error.
        source: io::Error,
    },
    /// A line that is not a recorder's.
    #[error("recording {}, line {line}: {reason}", path.display())]
    Parse {
        /// The events file.
        path: PathBuf,
        /// Its 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The recorder stopped early.
    #[error("recording {} is incomplete: {reason}", path.display())]
    Failed {
        /// The events file.
        path: PathBuf,
        /// What the recorder said.
        reason: String,
    },
}

/// A request the recorder saw submitted and not yet completed.
#[derive(Clone, Copy, Debug)]
enum Pending {
    Write(u64),
    Flush(u64),
}

/// Writes one disk's recording. Ids are the recorder's own (the caller's
/// tags are reused as soon as a request completes).
pub struct Recorder {
    dir: PathBuf,
    events: BufWriter<File>,
    data: BufWriter<File>,
    data_len: u64,
    next_write: u64,
    next_flush: u64,
    /// Caller tag -> the request it names, while in flight.
    in_flight: HashMap<u64, Pending>,
    /// The first host error; nothing is recorded after it.
    failed: bool,
}

impl Recorder {
    /// Starts a recording in `dir` (created if missing; its recording
    /// files are replaced). `write_cache` is what the guest sees now.
    pub fn create(dir: &Path, write_cache: bool) -> Result<Recorder, RecordError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RecordError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let events_path = dir.join(EVENTS_FILE);
        let data_path = dir.join(DATA_FILE);
        let events = File::create(&events_path).map_err(io(&events_path))?;
        let data = File::create(&data_path).map_err(io(&data_path))?;
        let mut r = Recorder {
            dir: dir.to_path_buf(),
            events: BufWriter::with_capacity(64 << 10, events),
            data: BufWriter::with_capacity(1 << 20, data),
            data_len: 0,
            next_write: 0,
            next_flush: 0,
            in_flight: HashMap::new(),
            failed: false,
        };
        r.line(&Line::Start { write_cache });
        r.events.flush().map_err(io(&events_path))?;
        Ok(r)
    }

    /// The recording's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A write of `len` bytes at `offset` was queued under `tag`; `data`
    /// is its bytes (in pieces, `len` in all), or `None` for zeros.
    pub fn write_submitted(&mut self, tag: u64, offset: u64, len: u64, data: Option<&[&[u8]]>) {
        if self.failed {
            return;
        }
        let id = self.next_write;
        self.next_write += 1;
        let source = match data {
            None => Source::Zeroes,
            Some(pieces) => {
                let at = self.data_len;
                for p in pieces {
                    if let Err(e) = self.data.write_all(p) {
                        self.fail(format!("cannot write {DATA_FILE}: {e}"));
                        return;
                    }
                    self.data_len += p.len() as u64;
                }
                Source::File { at }
            }
        };
        self.line(&Line::Data { id, source });
        self.line(&Line::Event(Event::WriteSubmitted { id, offset, len }));
        self.in_flight.insert(tag, Pending::Write(id));
    }

    /// A FLUSH was queued under `tag`.
    pub fn flush_submitted(&mut self, tag: u64) {
        if self.failed {
            return;
        }
        let id = self.next_flush;
        self.next_flush += 1;
        self.line(&Line::Event(Event::FlushSubmitted { id }));
        self.in_flight.insert(tag, Pending::Flush(id));
    }

    /// The request `tag` finished, with success or not. A failed write
    /// stays in flight in the log (it may have reached the disk in part,
    /// which the model allows: an in-flight write is optional).
    pub fn completed(&mut self, tag: u64, ok: bool) {
        let Some(p) = self.in_flight.remove(&tag) else {
            return; // not recorded (a no-op request), or after a failure
        };
        if !ok || self.failed {
            return;
        }
        match p {
            Pending::Write(id) => self.line(&Line::Event(Event::WriteCompleted { id })),
            Pending::Flush(id) => {
                self.line(&Line::Event(Event::FlushCompleted { id }));
                // A persistence point: get the log this far onto the host
                // even if the process ends without dropping the disk.
                self.sync_events();
            }
        }
    }

    /// The guest switched the write cache.
    pub fn write_cache(&mut self, enabled: bool) {
        self.line(&Line::Event(Event::WriteCache { enabled }));
        self.sync_events();
    }

    fn line(&mut self, line: &Line) {
        if self.failed {
            return;
        }
        let mut text = match serde_json::to_string(line) {
            Ok(t) => t,
            Err(e) => return self.fail(format!("cannot encode an event: {e}")),
        };
        text.push('\n');
        if let Err(e) = self.events.write_all(text.as_bytes()) {
            self.fail(format!("cannot write {EVENTS_FILE}: {e}"));
        }
    }

    /// Gets the data, then the events that refer to it, out of the
    /// buffers and onto the host.
    fn sync_events(&mut self) {
        if let Err(e) = self.data.flush() {
            self.fail(format!("cannot write {DATA_FILE}: {e}"));
        } else if let Err(e) = self.events.flush() {
            self.fail(format!("cannot write {EVENTS_FILE}: {e}"));
        }
    }

    /// Records why the log stops here; later events are dropped, so the
    /// log stays a true prefix of what happened.
    fn fail(&mut self, reason: String) {
        if !self.failed {
            let _ = self
                .events
                .write_all(format!("{}\n", failed_line(&reason)).as_bytes());
            let _ = self.events.flush();
            self.failed = true;
        }
    }
}

fn failed_line(reason: &str) -> String {
    serde_json::to_string(&Line::Failed {
        reason: reason.to_string(),
    })
    .unwrap_or_else(|_| r#"{"failed":{"reason":"unknown"}}"#.into())
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.sync_events();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_read_as_the_doc_says() {
        let l = Line::Event(Event::WriteCompleted { id: 3 });
        let t = serde_json::to_string(&l).unwrap();
        assert_eq!(t, r#"{"event":{"event":"write_completed","id":3}}"#);
        assert_eq!(serde_json::from_str::<Line>(&t).unwrap(), l);
        let d = Line::Data {
            id: 1,
            source: Source::File { at: 4096 },
        };
        let t = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Line>(&t).unwrap(), d);
        assert!(failed_line("x").contains("failed"));
    }

    #[test]
    fn a_recorder_writes_data_once_and_events_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::create(dir.path(), true).unwrap();
        r.write_submitted(7, 4096, 6, Some(&[b"abc", b"def"]));
        r.flush_submitted(8);
        r.completed(7, true);
        r.write_submitted(7, 0, 512, None);
        r.completed(7, false);
        r.completed(8, true);
        r.completed(99, true); // never submitted: ignored
        r.write_cache(false);
        drop(r);
        let data = std::fs::read(dir.path().join(DATA_FILE)).unwrap();
        assert_eq!(data, b"abcdef");
        let text = std::fs::read_to_string(dir.path().join(EVENTS_FILE)).unwrap();
        let lines: Vec<Line> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        use Event::*;
        assert_eq!(
            lines,
            [
                Line::Start { write_cache: true },
                Line::Data {
                    id: 0,
                    source: Source::File { at: 0 }
                },
                Line::Event(WriteSubmitted {
                    id: 0,
                    offset: 4096,
                    len: 6
                }),
                Line::Event(FlushSubmitted { id: 0 }),
                Line::Event(WriteCompleted { id: 0 }),
                Line::Data {
                    id: 1,
                    source: Source::Zeroes
                },
                Line::Event(WriteSubmitted {
                    id: 1,
                    offset: 0,
                    len: 512
                }),
                Line::Event(FlushCompleted { id: 0 }),
                Line::Event(WriteCache { enabled: false }),
            ]
        );
    }
}
