//! The recorder's hooks on a disk (`ferrite crashtest`): every write that
//! is queued (with its bytes), every FLUSH, their successful completions
//! and every write-cache switch go to a [`Recorder`]. Off unless
//! [`Disk::record_to`] was called; then each hook is one branch on the
//! request path.

use std::path::Path;

use super::{Disk, Prepared};
use crate::crash::{RecordError, Recorder};
use crate::inflight::Kind;
use crate::Op;

/// What the recorder needs of an op before `prepare` consumes it: the
/// range the guest asked for (a write `prepare` widens to host blocks
/// keeps the guest's range here).
pub(super) struct Noted {
    offset: u64,
    len: u64,
}

impl Noted {
    pub(super) fn of(op: &Op) -> Noted {
        let (offset, len) = match op {
            Op::Write { offset, segments } => {
                (*offset, segments.iter().map(|s| s.len as u64).sum())
            }
            Op::Discard { offset, len } | Op::WriteZeroes { offset, len, .. } => (*offset, *len),
            Op::Read { .. } | Op::Flush => (0, 0),
        };
        Noted { offset, len }
    }
}

impl Disk {
    /// Records this disk's writes, flushes and write-cache switches from
    /// now on into the directory `dir` (docs/crash-model.md), replacing a
    /// recording there. The recording ends when the disk is dropped.
    pub fn record_to(&mut self, dir: &Path) -> Result<(), RecordError> {
        self.recorder = Some(Box::new(Recorder::create(dir, self.wce)?));
        Ok(())
    }

    /// Notes a request `prepare` accepted, before anything can complete it.
    ///
    /// # Safety
    /// `req`'s caller segments are readable, as `submit` requires.
    pub(super) unsafe fn record_submit(&mut self, noted: Noted, user_data: u64, req: &Prepared) {
        let Some(rec) = self.recorder.as_mut() else {
            return;
        };
        match req {
            // A write that needs no host operation changes nothing: only a
            // FLUSH answered at once is an event (it still completes).
            Prepared::Done(Kind::Flush, _) => rec.flush_submitted(user_data),
            Prepared::Done(..) => {}
            Prepared::Queue(r) => match r.kind {
                Kind::Flush => rec.flush_submitted(user_data),
                Kind::Write => {
                    let pieces: Vec<&[u8]> = r
                        .segments
                        .iter()
                        // An empty segment's address may be anything (null).
                        .filter(|s| s.len > 0)
                        // SAFETY: submit's contract: each segment is valid
                        // for `len` bytes until this request completes, and
                        // it has not been queued yet.
                        .map(|s| unsafe { std::slice::from_raw_parts(s.addr.cast_const(), s.len) })
                        .collect();
                    rec.write_submitted(user_data, noted.offset, noted.len, Some(&pieces));
                }
                Kind::Discard | Kind::WriteZeroes => {
                    rec.write_submitted(user_data, noted.offset, noted.len, None)
                }
                Kind::Read => {}
            },
        }
    }

    /// Notes that the request `user_data` finished.
    pub(super) fn record_completion(&mut self, user_data: u64, ok: bool) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.completed(user_data, ok);
        }
    }

    /// Notes the guest-visible write cache after a switch.
    pub(super) fn record_write_cache(&mut self) {
        let wce = self.wce;
        if let Some(rec) = self.recorder.as_mut() {
            rec.write_cache(wce);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::crash::{generate, Event, Recording};
    use crate::{CacheMode, Disk, DiskConfig, EngineKind, Op, Segment};

    fn write(disk: &mut Disk, offset: u64, buf: &mut [u8], tag: u64) {
        let seg = Segment {
            addr: buf.as_mut_ptr(),
            len: buf.len(),
        };
        // SAFETY: `buf` outlives the request: the caller waits for it.
        unsafe {
            disk.submit(
                Op::Write {
                    offset,
                    segments: vec![seg],
                },
                tag,
            )
        }
        .unwrap();
    }

    /// Runs the same requests on every engine: the recording says what
    /// happened, and replaying all its writes on the base gives the disk.
    #[test]
    fn a_recorded_disk_replays_to_its_own_contents() {
        for engine in [EngineKind::Sync, EngineKind::IoUring] {
            if engine == EngineKind::IoUring && !crate::io_uring_supported() {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let (img, base) = (dir.path().join("d.img"), dir.path().join("base.img"));
            let bytes: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
            std::fs::write(&img, &bytes).unwrap();
            std::fs::write(&base, &bytes).unwrap();
            let cfg = DiskConfig {
                engine: Some(engine),
                cache: CacheMode::Writeback,
                ..DiskConfig::new(&img)
            };
            let mut disk = Disk::open(&cfg).unwrap();
            let rec_dir = dir.path().join("rec");
            disk.record_to(&rec_dir).unwrap();
            let mut out = Vec::new();
            let (mut a, mut b) = (vec![1u8; 4096], vec![2u8; 1024]);
            write(&mut disk, 0, &mut a, 1);
            write(&mut disk, 4096 + 512, &mut b, 2); // not host-block aligned on 4Kn
            disk.kick().unwrap();
            disk.wait_idle(&mut out);
            // SAFETY: no segments.
            unsafe { disk.submit(Op::Flush, 3) }.unwrap();
            disk.kick().unwrap();
            disk.wait_idle(&mut out);
            disk.set_write_cache(false).unwrap();
            // SAFETY: no segments.
            unsafe {
                disk.submit(
                    Op::WriteZeroes {
                        offset: 8192,
                        len: 4096,
                        may_unmap: false,
                    },
                    4,
                )
            }
            .unwrap();
            disk.kick().unwrap();
            disk.wait_idle(&mut out);
            assert!(out.iter().all(|c| c.result.is_ok()), "{out:?}");
            drop(disk);

            let rec = Recording::load(&rec_dir).unwrap();
            assert!(rec.log.initial_write_cache);
            let n = |f: fn(&Event) -> bool| rec.log.events.iter().filter(|e| f(e)).count();
            assert_eq!(n(|e| matches!(e, Event::WriteSubmitted { .. })), 3);
            assert_eq!(n(|e| matches!(e, Event::WriteCompleted { .. })), 3);
            assert_eq!(n(|e| matches!(e, Event::FlushCompleted { .. })), 1);
            assert!(rec
                .log
                .events
                .contains(&Event::WriteCache { enabled: false }));
            assert_eq!(rec.range(1), Some((4096 + 512, 1024)));
            // The whole log, every write kept: the disk as it is now.
            let all = generate(&rec.log, 64, 0).unwrap();
            let full = all
                .iter()
                .find(|s| s.cut == rec.log.events.len() && s.dropped.is_empty())
                .expect("the final state");
            rec.apply(&base, &full.kept).unwrap();
            assert_eq!(
                std::fs::read(&base).unwrap(),
                std::fs::read(&img).unwrap(),
                "{engine:?}"
            );
        }
    }
}
