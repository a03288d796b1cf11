//! The life of an in-flight request after each host operation: the pure
//! step function that says what comes next (retry the rest of a short
//! transfer, fall back from punching holes to zeroing to writing zeros,
//! sync after a durable write-zeroes, finish), kept apart from the
//! bookkeeping in `disk.rs` so each can be read alone.

use std::io;

use crate::engine::HostOp;
use crate::inflight::{host_op, InFlight, Kind, Stage, ZERO_CHUNK};
use crate::BlockError;

/// How often an operation interrupted (EINTR/EAGAIN) is retried.
const MAX_RETRIES: u8 = 16;

/// What happens after a host operation of a request finished.
pub(crate) enum Step {
    /// Push this next host operation.
    Again(HostOp),
    /// Finished with this result.
    Done(Result<u32, BlockError>),
    /// An fdatasync covering `gen` finished.
    Synced(u64, Result<u32, BlockError>),
    /// The image changed (write, discard, write-zeroes): then push the
    /// next operation, finish, or fail.
    Modified(Result<Option<HostOp>, BlockError>),
    /// Punching holes is unsupported; the discard did nothing.
    NoDiscard,
}

/// The pure part of advancing a request: given its host result, its next
/// step.
pub(crate) fn step(r: &mut InFlight, res: i64) -> Step {
    let err = |res: i64| BlockError::Io(io::Error::from_raw_os_error((-res) as i32));
    let interrupted = res == -(libc::EINTR as i64) || res == -(libc::EAGAIN as i64);
    if interrupted && r.retries < MAX_RETRIES {
        r.retries += 1;
        return Step::Again(host_op(r));
    }
    match r.stage {
        Stage::Transfer | Stage::ZeroFill => transfer_done(r, res),
        Stage::RmwRead => rmw_read_done(r, res),
        Stage::Flush { gen } => Step::Synced(gen, if res < 0 { Err(err(res)) } else { Ok(0) }),
        Stage::SyncAfter { gen } => Step::Synced(gen, if res < 0 { Err(err(res)) } else { Ok(0) }),
        Stage::Fallocate { mode } => {
            let unsupported = res == -(libc::EOPNOTSUPP as i64) || res == -(libc::ENOSYS as i64);
            if unsupported && r.kind == Kind::Discard {
                return Step::NoDiscard;
            }
            if unsupported && mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
                r.stage = Stage::Fallocate {
                    mode: libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                };
                return Step::Again(host_op(r));
            }
            if unsupported {
                // No way to zero a range in place: write zeros.
                r.stage = Stage::ZeroFill;
                r.sync_after = r.sync_after && !(r.rwf_dsync || r.fd_dsync);
                return Step::Again(zero_chunk(r));
            }
            if res < 0 {
                return Step::Modified(Err(err(res)));
            }
            if r.sync_after && r.kind == Kind::WriteZeroes {
                r.stage = Stage::SyncAfter { gen: 0 }; // set once the generation moved
                return Step::Modified(Ok(Some(HostOp::Fdatasync)));
            }
            Step::Modified(Ok(None))
        }
    }
}

/// After (part of) a data transfer or a zero-fill chunk: transfer on,
/// copy a bounced read out, or finish. A write that fails may have changed
/// the image already, so it is `Modified` either way.
fn transfer_done(r: &mut InFlight, res: i64) -> Step {
    let writing = r.kind != Kind::Read;
    let failed = |e| {
        if writing {
            Step::Modified(Err(e))
        } else {
            Step::Done(Err(e))
        }
    };
    if res < 0 {
        return failed(BlockError::Io(io::Error::from_raw_os_error((-res) as i32)));
    }
    if res == 0 {
        return failed(short_transfer(r, writing));
    }
    r.done += res as u64;
    if r.stage == Stage::ZeroFill {
        return Step::Modified(Ok(next_zero_chunk(r)));
    }
    if r.done < r.chunk_len() {
        r.advance(res as usize);
        return Step::Again(host_op(r));
    }
    if !writing {
        // SAFETY: submit's contract: the segments are writable and
        // untouched by anyone else until this completion is returned.
        unsafe { r.scatter_chunk() };
    }
    if r.more_chunks() {
        r.chunk_start += r.chunk_len();
        // SAFETY: submit's contract: the segments are readable.
        unsafe { r.begin_chunk() };
        return Step::Again(host_op(r));
    }
    if writing {
        return Step::Modified(Ok(None));
    }
    Step::Done(Ok(r.caller_len()))
}

/// After (part of) the read of a read-modify-write: read on, or put the
/// caller's bytes over the host blocks and write them back. Nothing was
/// changed yet, so a failure is a plain error.
fn rmw_read_done(r: &mut InFlight, res: i64) -> Step {
    if res < 0 {
        return Step::Done(Err(BlockError::Io(io::Error::from_raw_os_error(
            (-res) as i32,
        ))));
    }
    if res == 0 {
        return Step::Done(Err(short_transfer(r, false)));
    }
    r.done += res as u64;
    if r.done < r.chunk_len() {
        r.advance(res as usize);
        return Step::Again(host_op(r));
    }
    // SAFETY: submit's contract: the segments are readable and untouched
    // by anyone else until this completion is returned.
    unsafe { r.gather_chunk() };
    r.stage = Stage::Transfer;
    r.done = 0;
    r.bounce_iovec(r.chunk_len() as usize);
    Step::Again(host_op(r))
}

/// After a zero-fill chunk: the next chunk, the durability sync, or done.
fn next_zero_chunk(r: &mut InFlight) -> Option<HostOp> {
    if r.done < r.len {
        return Some(zero_chunk(r));
    }
    if r.sync_after {
        r.stage = Stage::SyncAfter { gen: 0 };
        return Some(HostOp::Fdatasync);
    }
    None
}

/// The write of the next chunk of zeros.
fn zero_chunk(r: &mut InFlight) -> HostOp {
    let n = (r.len - r.done).min(ZERO_CHUNK as u64);
    r.zero_iovec(n as usize);
    let (iov, count) = r.pending_iovecs();
    HostOp::Writev {
        iov,
        count,
        offset: r.offset + r.done,
        dsync: r.rwf_dsync,
    }
}

fn short_transfer(r: &InFlight, writing: bool) -> BlockError {
    let what = if writing { "write" } else { "read" };
    let kind = if writing {
        io::ErrorKind::WriteZero
    } else {
        io::ErrorKind::UnexpectedEof
    };
    BlockError::Io(io::Error::new(
        kind,
        format!(
            "short {what}: {} of {} bytes at offset {} transferred",
            r.chunk_start + r.done,
            r.len,
            r.offset
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Segment;

    fn write_req(buf: &mut [u8]) -> InFlight {
        let mut r = InFlight::new(9, Kind::Write, Stage::Transfer, 4096, buf.len() as u64);
        r.segments = vec![Segment {
            addr: buf.as_mut_ptr(),
            len: buf.len(),
        }];
        r.direct_iovecs();
        r
    }

    #[test]
    fn short_write_resumes_where_it_stopped() {
        let mut buf = vec![0u8; 4096];
        let mut r = write_req(&mut buf);
        match step(&mut r, 1000) {
            Step::Again(HostOp::Writev {
                iov, count, offset, ..
            }) => {
                assert_eq!((count, offset), (1, 4096 + 1000));
                // SAFETY: iov points at r's one live iovec.
                let v = unsafe { *iov };
                assert_eq!(v.iov_base as usize, buf.as_ptr() as usize + 1000);
                assert_eq!(v.iov_len, 3096);
            }
            _ => panic!("short write not resumed"),
        }
        assert!(matches!(step(&mut r, 3096), Step::Modified(Ok(None))));
    }

    #[test]
    fn zero_progress_is_an_error_not_a_truncation() {
        let mut buf = vec![0u8; 4096];
        let mut r = write_req(&mut buf);
        let _ = step(&mut r, 512);
        match step(&mut r, 0) {
            Step::Modified(Err(e)) => assert!(e.to_string().contains("short write"), "{e}"),
            _ => panic!("zero progress accepted"),
        }
        let mut r = InFlight::new(1, Kind::Read, Stage::Transfer, 0, 512);
        assert!(matches!(step(&mut r, 0), Step::Done(Err(_))));
    }

    #[test]
    fn host_errors_and_interruptions() {
        let mut buf = vec![0u8; 512];
        let mut r = write_req(&mut buf);
        assert!(matches!(
            step(&mut r, -(libc::EINTR as i64)),
            Step::Again(HostOp::Writev { .. })
        ));
        match step(&mut r, -(libc::ENOSPC as i64)) {
            Step::Modified(Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC)),
            _ => panic!("ENOSPC lost"),
        }
        r.retries = MAX_RETRIES;
        assert!(matches!(
            step(&mut r, -(libc::EAGAIN as i64)),
            Step::Modified(Err(_))
        ));
    }

    #[test]
    fn write_zeroes_falls_back_to_writing_zeros() {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let len = 3 * ZERO_CHUNK as u64 / 2;
        let mut r = InFlight::new(
            1,
            Kind::WriteZeroes,
            Stage::Fallocate { mode: punch },
            0,
            len,
        );
        r.sync_after = true;
        let unsupported = -(libc::EOPNOTSUPP as i64);
        match step(&mut r, unsupported) {
            Step::Again(HostOp::Fallocate { mode, .. }) => {
                assert_eq!(mode, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
            }
            _ => panic!("no ZERO_RANGE after PUNCH_HOLE"),
        }
        match step(&mut r, unsupported) {
            Step::Again(HostOp::Writev {
                offset: 0,
                count: 1,
                iov,
                ..
            }) => {
                // SAFETY: iov points at r's one live iovec.
                assert_eq!(unsafe { *iov }.iov_len, ZERO_CHUNK);
            }
            _ => panic!("no zero writes after ZERO_RANGE"),
        }
        let next = step(&mut r, ZERO_CHUNK as i64);
        assert!(
            matches!(next, Step::Modified(Ok(Some(HostOp::Writev { offset, .. }))) if offset == ZERO_CHUNK as u64)
        );
        let last = step(&mut r, (len - ZERO_CHUNK as u64) as i64);
        assert!(
            matches!(last, Step::Modified(Ok(Some(HostOp::Fdatasync)))),
            "durable: sync after"
        );
        assert!(matches!(step(&mut r, 0), Step::Synced(_, Ok(0))));
    }

    #[test]
    fn discard_unsupported_is_a_no_op() {
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let mut r = InFlight::new(1, Kind::Discard, Stage::Fallocate { mode: punch }, 0, 4096);
        assert!(matches!(
            step(&mut r, -(libc::EOPNOTSUPP as i64)),
            Step::NoDiscard
        ));
    }
}
