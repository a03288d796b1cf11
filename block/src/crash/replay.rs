//! Reading a recording back, and building a crash state's disk image from
//! it: the base image (the disk before the run) with the state's kept
//! writes applied in order. The caller makes the copy of the base (a
//! reflink where it can); this module only writes the kept bytes into it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::log::{Event, WriteLog};
use super::record::{Line, RecordError, Source, DATA_FILE, EVENTS_FILE};
use super::states::CrashState;

/// The unit a torn write is kept or lost in.
const SECTOR: usize = 512;

/// A recording, read back: the log, and where each write's bytes are.
#[derive(Debug)]
pub struct Recording {
    /// The events, in order.
    pub log: WriteLog,
    /// Write id -> (offset on the disk, length, bytes).
    writes: HashMap<u64, (u64, u64, Source)>,
    data: PathBuf,
}

impl Recording {
    /// Reads the recording in `dir` and checks that its log is possible.
    pub fn load(dir: &Path) -> Result<Recording, RecordError> {
        let path = dir.join(EVENTS_FILE);
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let parse = |line: usize, reason: String| RecordError::Parse {
            path: path.clone(),
            line,
            reason,
        };
        let reader = BufReader::new(File::open(&path).map_err(io)?);
        let mut log = WriteLog::default();
        let mut writes = HashMap::new();
        let mut sources: HashMap<u64, Source> = HashMap::new();
        for (i, text) in reader.lines().enumerate() {
            let text = text.map_err(io)?;
            let line: Line =
                serde_json::from_str(&text).map_err(|e| parse(i + 1, e.to_string()))?;
            match line {
                Line::Start { write_cache } if i == 0 => log.initial_write_cache = write_cache,
                Line::Start { .. } => return Err(parse(i + 1, "a second start line".into())),
                _ if i == 0 => return Err(parse(1, "no start line".into())),
                Line::Data { id, source } => {
                    sources.insert(id, source);
                }
                Line::Event(e) => {
                    if let Event::WriteSubmitted { id, offset, len } = e {
                        let source = sources
                            .remove(&id)
                            .ok_or_else(|| parse(i + 1, format!("write {id} has no data line")))?;
                        writes.insert(id, (offset, len, source));
                    }
                    log.events.push(e);
                }
                Line::Failed { reason } => return Err(RecordError::Failed { path, reason }),
            }
        }
        log.validate()
            .map_err(|e| parse(0, format!("impossible log: {e}")))?;
        Ok(Recording {
            log,
            writes,
            data: dir.join(DATA_FILE),
        })
    }

    /// Writes the writes `kept` (ids, in apply order) into the image at
    /// `image`, which must already hold the base.
    pub fn apply(&self, image: &Path, kept: &[u64]) -> Result<(), RecordError> {
        self.apply_torn(image, kept, &HashMap::new())
    }

    /// Writes `state` into the image at `image`, which must already hold
    /// the base: its kept writes in order, of a torn one only the sectors
    /// that reached the disk.
    pub fn apply_state(&self, image: &Path, state: &CrashState) -> Result<(), RecordError> {
        let torn = state
            .torn
            .iter()
            .map(|t| (t.id, t.sectors.as_slice()))
            .collect();
        self.apply_torn(image, &state.kept, &torn)
    }

    fn apply_torn(
        &self,
        image: &Path,
        kept: &[u64],
        torn: &HashMap<u64, &[bool]>,
    ) -> Result<(), RecordError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RecordError::Io { path, source }
        };
        let out = OpenOptions::new()
            .write(true)
            .open(image)
            .map_err(io(image))?;
        let data = File::open(&self.data).map_err(io(&self.data))?;
        let mut buf = Vec::new();
        for id in kept {
            let &(offset, len, source) = self.writes.get(id).ok_or_else(|| RecordError::Io {
                path: self.data.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, format!("no write {id}")),
            })?;
            buf.clear();
            buf.resize(len as usize, 0);
            if let Source::File { at } = source {
                data.read_exact_at(&mut buf, at).map_err(io(&self.data))?;
            }
            match torn.get(id) {
                None => out.write_all_at(&buf, offset).map_err(io(image))?,
                Some(sectors) => {
                    for (i, bytes) in buf.chunks(SECTOR).enumerate() {
                        if sectors.get(i).copied().unwrap_or(false) {
                            let at = offset + (i * SECTOR) as u64;
                            out.write_all_at(bytes, at).map_err(io(image))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The disk range a write covered: (offset, length).
    pub fn range(&self, id: u64) -> Option<(u64, u64)> {
        self.writes.get(&id).map(|&(o, l, _)| (o, l))
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Recorder;
    use super::super::states::generate;
    use super::*;

    fn recorded(dir: &Path) {
        let mut r = Recorder::create(dir, true).unwrap();
        r.write_submitted(1, 0, 4, Some(&[b"AAAA"]));
        r.completed(1, true);
        r.flush_submitted(2);
        r.completed(2, true);
        r.write_submitted(1, 2, 4, Some(&[b"BB", b"BB"]));
        r.write_submitted(3, 8, 2, None);
        r.completed(3, true);
    }

    #[test]
    fn states_are_the_base_with_their_kept_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        recorded(dir.path());
        let rec = Recording::load(dir.path()).unwrap();
        assert!(rec.log.initial_write_cache);
        assert_eq!(rec.log.events.len(), 7);
        assert_eq!(rec.range(1), Some((2, 4)));
        let img = dir.path().join("state.img");
        let build = |kept: &[u64]| {
            std::fs::write(&img, b"..........").unwrap();
            rec.apply(&img, kept).unwrap();
            std::fs::read(&img).unwrap()
        };
        assert_eq!(build(&[]), b"..........");
        assert_eq!(build(&[0]), b"AAAA......");
        // 2 (zeros) completed before 1, which was still in flight.
        assert_eq!(build(&[0, 2, 1]), b"AABBBB..\0\0");
        let states = generate(&rec.log, 20, 3).unwrap();
        assert!(states
            .iter()
            .all(|s| s.kept.first() == Some(&0) || s.cut < 4));
        assert!(rec.apply(&img, &[9]).is_err());
    }

    #[test]
    fn a_torn_write_keeps_only_its_chosen_sectors() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::create(dir.path(), true).unwrap();
        r.write_submitted(1, 512, 1536, Some(&[&[7u8; 1536][..]]));
        drop(r);
        let rec = Recording::load(dir.path()).unwrap();
        let img = dir.path().join("state.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let state = CrashState {
            cut: 1,
            kept: vec![0],
            dropped: vec![],
            torn: vec![super::super::states::Torn {
                id: 0,
                sectors: vec![true, false, true],
            }],
        };
        rec.apply_state(&img, &state).unwrap();
        let got = std::fs::read(&img).unwrap();
        let sector = |i: usize| &got[i * 512..(i + 1) * 512];
        assert!(sector(0).iter().all(|&b| b == 0));
        assert!(sector(1).iter().all(|&b| b == 7));
        assert!(sector(2).iter().all(|&b| b == 0));
        assert!(sector(3).iter().all(|&b| b == 7));
        assert!(got[2048..].iter().all(|&b| b == 0));
    }

    #[test]
    fn broken_recordings_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        recorded(dir.path());
        let events = dir.path().join(EVENTS_FILE);
        let text = std::fs::read_to_string(&events).unwrap();
        std::fs::write(&events, format!("{text}not json\n")).unwrap();
        let e = Recording::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 12"), "{e}");
        std::fs::write(
            &events,
            format!("{text}{{\"failed\":{{\"reason\":\"disk full\"}}}}\n"),
        )
        .unwrap();
        let e = Recording::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("incomplete: disk full"), "{e}");
        std::fs::write(&events, text.lines().skip(1).collect::<Vec<_>>().join("\n")).unwrap();
        let e = Recording::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no start line"), "{e}");
    }
}
