//! What the caller hands in (`Op` over `Segment`s), what comes back
//! (`Completion`), and the in-flight request in between, which owns every
//! piece of memory the kernel is pointed at until the request completes.

use crate::bounce::AlignedBuf;
use crate::BlockError;

/// One host memory segment of a guest request (already translated from
/// guest memory by the caller).
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// First byte.
    pub addr: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: a Segment is only an address and a length; it is dereferenced
// solely under `Disk::submit`'s contract, whichever thread holds it.
unsafe impl Send for Segment {}

/// One operation. Offsets and lengths in bytes; data lengths are multiples
/// of 512 (the caller checked), offsets sector-aligned, ranges inside
/// capacity (the disk checks again and refuses what is not).
#[derive(Debug)]
pub enum Op {
    /// Read `offset..` into the segments, in order.
    Read {
        /// First byte on the disk.
        offset: u64,
        /// Destination memory.
        segments: Vec<Segment>,
    },
    /// Write the segments, in order, at `offset..`.
    Write {
        /// First byte on the disk.
        offset: u64,
        /// Source memory.
        segments: Vec<Segment>,
    },
    /// Make completed writes durable (what depends on the cache mode and WCE).
    Flush,
    /// Deallocate a range; reads of it return zeros afterwards.
    Discard {
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Make a range read as zeros, deallocating it when `may_unmap` allows.
    WriteZeroes {
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The range may be deallocated (virtio's UNMAP flag).
        may_unmap: bool,
    },
}

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The tag given to `submit`.
    pub user_data: u64,
    /// Ok(bytes transferred: the data length for reads and writes, 0
    /// otherwise) or the host error (counted in stats.errors).
    pub result: Result<u32, BlockError>,
}

/// What a request is, for counting and finishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

/// Where an in-flight request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// preadv/pwritev of the data, `done` bytes so far.
    Transfer,
    /// fdatasync of a guest flush; covers writes up to generation `gen`.
    Flush { gen: u64 },
    /// fallocate with `mode` (discard or write-zeroes).
    Fallocate { mode: i32 },
    /// write-zeroes by writing the zeroed bounce buffer, `done` bytes so far.
    ZeroFill,
    /// fdatasync that makes a write-zeroes durable (write cache off).
    SyncAfter { gen: u64 },
    /// The read half of a read-modify-write: the whole host blocks around
    /// a 512-aligned write that is not aligned to them, into the bounce
    /// buffer, `done` bytes so far.
    RmwRead,
}

/// Where the caller's bytes lie inside a request widened to whole host
/// blocks (virtio's 512-byte units on a host with larger blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Bytes of the widened range before the caller's.
    pub skip: usize,
    /// The caller's length.
    pub len: usize,
}

/// The iovec array the kernel reads. Boxed so it never moves while the
/// request is in flight, even when the request itself does.
pub(crate) struct IoVecs(pub Box<[libc::iovec]>);

// SAFETY: the iovecs point either into the request's own bounce buffer or
// into caller memory governed by `Disk::submit`'s contract; moving the array
// to another thread with its request shares nothing.
unsafe impl Send for IoVecs {}

/// A request between `submit` and its `Completion`.
pub(crate) struct InFlight {
    pub user_data: u64,
    pub kind: Kind,
    pub stage: Stage,
    /// First byte on the disk.
    pub offset: u64,
    /// Total bytes to transfer (or to discard/zero).
    pub len: u64,
    /// Bytes done in the current stage.
    pub done: u64,
    /// The caller's segments (read back into after a bounced read).
    pub segments: Vec<Segment>,
    pub iov: IoVecs,
    /// First iovec not yet fully transferred.
    pub iov_start: usize,
    /// The aligned copy of the data (or zeros), when bouncing.
    pub bounce: Option<AlignedBuf>,
    /// Write with RWF_DSYNC.
    pub rwf_dsync: bool,
    /// The data descriptor had O_DSYNC when this was submitted.
    pub fd_dsync: bool,
    /// Follow a write-zeroes with fdatasync (durable writes promised).
    pub sync_after: bool,
    /// Host operations retried after EINTR/EAGAIN.
    pub retries: u8,
    /// Widened to whole host blocks: where the caller's bytes are.
    pub window: Option<Window>,
    /// Waits for an overlapping request before its first host operation.
    pub held: bool,
}

impl InFlight {
    pub(crate) fn new(user_data: u64, kind: Kind, stage: Stage, offset: u64, len: u64) -> InFlight {
        InFlight {
            user_data,
            kind,
            stage,
            offset,
            len,
            done: 0,
            segments: Vec::new(),
            iov: IoVecs(Box::new([])),
            iov_start: 0,
            bounce: None,
            rwf_dsync: false,
            fd_dsync: false,
            sync_after: false,
            retries: 0,
            window: None,
            held: false,
        }
    }

    /// Bytes the caller asked for (the completion's count on success).
    pub(crate) fn caller_len(&self) -> u32 {
        self.window.map_or(self.len, |w| w.len as u64) as u32
    }

    /// A write, discard or write-zeroes: it changes the image.
    pub(crate) fn modifies(&self) -> bool {
        self.kind != Kind::Read && self.kind != Kind::Flush
    }

    /// A write that reads its host blocks first.
    pub(crate) fn is_rmw(&self) -> bool {
        self.kind == Kind::Write && self.window.is_some()
    }

    /// Whether `self` must wait for `other` (or the other way round):
    /// both change overlapping bytes and one of them rewrites whole host
    /// blocks from what it read, which would undo the other's bytes.
    pub(crate) fn conflicts_with(&self, other: &InFlight) -> bool {
        self.modifies()
            && other.modifies()
            && (self.is_rmw() || other.is_rmw())
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }

    /// Points the iovecs at the segments themselves.
    pub(crate) fn direct_iovecs(&mut self) {
        self.iov = IoVecs(
            self.segments
                .iter()
                .map(|s| libc::iovec {
                    iov_base: s.addr.cast(),
                    iov_len: s.len,
                })
                .collect(),
        );
        self.iov_start = 0;
    }

    /// Points one iovec at the first `len` bytes of the bounce buffer.
    pub(crate) fn bounce_iovec(&mut self, len: usize) {
        let (base, cap) = match &self.bounce {
            Some(b) => (b.as_mut_ptr(), b.len()),
            None => (std::ptr::null_mut(), 0),
        };
        self.iov = IoVecs(Box::new([libc::iovec {
            iov_base: base.cast(),
            iov_len: len.min(cap),
        }]));
        self.iov_start = 0;
    }

    /// The iovecs still to transfer.
    pub(crate) fn pending_iovecs(&self) -> (*const libc::iovec, u32) {
        let rest = &self.iov.0[self.iov_start.min(self.iov.0.len())..];
        (rest.as_ptr(), rest.len() as u32)
    }

    /// Skips `n` transferred bytes after a short transfer.
    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 && self.iov_start < self.iov.0.len() {
            let v = &mut self.iov.0[self.iov_start];
            if n >= v.iov_len {
                n -= v.iov_len;
                v.iov_len = 0;
                self.iov_start += 1;
            } else {
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
                v.iov_len -= n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_skips_whole_and_partial_iovecs() {
        let mut a = [0u8; 100];
        let mut b = [0u8; 50];
        let mut r = InFlight::new(1, Kind::Read, Stage::Transfer, 0, 150);
        r.segments = vec![
            Segment {
                addr: a.as_mut_ptr(),
                len: 100,
            },
            Segment {
                addr: b.as_mut_ptr(),
                len: 50,
            },
        ];
        r.direct_iovecs();
        r.advance(120);
        let (ptr, count) = r.pending_iovecs();
        assert_eq!(count, 1);
        // SAFETY: ptr points at the one remaining iovec in r.iov.
        let v = unsafe { *ptr };
        assert_eq!(v.iov_base as usize, b.as_ptr() as usize + 20);
        assert_eq!(v.iov_len, 30);
        r.advance(30);
        assert_eq!(r.pending_iovecs().1, 0);
    }
}
