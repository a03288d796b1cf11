//! A request between `Disk::submit` and its `Completion`, and every piece
//! of memory the kernel is pointed at meanwhile: its iovec array and, when
//! the caller's buffers cannot go to the kernel as they are (O_DIRECT
//! alignment, too many segments, a range widened to whole host blocks),
//! the aligned bounce buffer the data goes through. The request owns them
//! until it completes, which is what makes handing their addresses to the
//! kernel sound.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::engine::HostOp;
use crate::Segment;

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
    /// Bytes done in the current stage of the current chunk.
    pub done: u64,
    /// Where the current chunk starts, in bytes from `offset`. A bounced
    /// request moves through its range one bounce buffer at a time; one
    /// that is not bounced is a single chunk.
    pub chunk_start: u64,
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
    /// The host error it was held after (`werror=`/`rerror=` stop or
    /// enospc), 0 if never: until it completes, a later flush and later
    /// requests overlapping it wait.
    pub stop_errno: i32,
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
            chunk_start: 0,
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
            stop_errno: 0,
        }
    }

    /// Bytes the caller asked for (the completion's count on success).
    pub(crate) fn caller_len(&self) -> u32 {
        self.window.map_or(self.len, |w| w.len as u64) as u32
    }

    /// Length of the current chunk: at most the bounce buffer, the whole
    /// rest of the range when not bounced.
    pub(crate) fn chunk_len(&self) -> u64 {
        let rest = self.len.saturating_sub(self.chunk_start);
        self.bounce
            .as_ref()
            .map_or(rest, |b| rest.min(b.len() as u64))
    }

    /// Whether a chunk follows the current one.
    pub(crate) fn more_chunks(&self) -> bool {
        self.chunk_start + self.chunk_len() < self.len
    }

    /// The caller's bytes inside the current chunk: (offset in the bounce
    /// buffer, offset in the caller's segments, length).
    fn chunk_window(&self) -> (usize, usize, usize) {
        let w = self.window.unwrap_or(Window {
            skip: 0,
            len: self.len as usize,
        });
        let start = self.chunk_start as usize;
        let lo = start.max(w.skip);
        let hi = (start + self.chunk_len() as usize).min(w.skip + w.len);
        (lo - start, lo - w.skip, hi.saturating_sub(lo))
    }

    /// Sets up the current chunk of a bounced request (`chunk_start` set):
    /// a read reads it; a write whose chunk holds host-block bytes outside
    /// the caller's (read-modify-write) reads it first, else copies the
    /// caller's bytes in and writes them.
    ///
    /// # Safety
    /// The caller's segments are readable, as `Disk::submit` requires.
    pub(crate) unsafe fn begin_chunk(&mut self) {
        self.done = 0;
        self.bounce_iovec(self.chunk_len() as usize);
        if self.kind != Kind::Write {
            self.stage = Stage::Transfer;
            return;
        }
        let (_, _, n) = self.chunk_window();
        if n as u64 == self.chunk_len() {
            // SAFETY: forwarded from this function's contract.
            unsafe { self.gather_chunk() };
            self.stage = Stage::Transfer;
        } else {
            self.stage = Stage::RmwRead;
        }
    }

    /// Copies the caller's bytes of the current chunk into the bounce
    /// buffer.
    ///
    /// # Safety
    /// The caller's segments are readable, as `Disk::submit` requires.
    pub(crate) unsafe fn gather_chunk(&mut self) {
        let (at, from, n) = self.chunk_window();
        if let Some(b) = self.bounce.as_mut() {
            // SAFETY: forwarded from this function's contract.
            unsafe { gather(&self.segments, from, n, b, at) };
        }
    }

    /// Copies the caller's bytes of the current chunk out of the bounce
    /// buffer.
    ///
    /// # Safety
    /// The caller's segments are writable and not otherwise accessed, as
    /// `Disk::submit` requires.
    pub(crate) unsafe fn scatter_chunk(&self) {
        let (at, from, n) = self.chunk_window();
        if let Some(b) = &self.bounce {
            // SAFETY: forwarded from this function's contract.
            unsafe { scatter(b, at, n, &self.segments, from) };
        }
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

    /// Whether `self`, arriving later, must wait for `other`: they
    /// conflict (above), or `other` is a write held after an error and
    /// `self` is a flush (which must not complete before it) or touches
    /// its bytes (and must not pass it).
    pub(crate) fn waits_for(&self, other: &InFlight) -> bool {
        self.conflicts_with(other)
            || (other.stop_errno != 0
                && other.modifies()
                && (self.kind == Kind::Flush
                    || (self.offset < other.offset + other.len
                        && other.offset < self.offset + self.len)))
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

    /// Points one iovec at `len` (at most `ZERO_CHUNK`) shared zero bytes.
    pub(crate) fn zero_iovec(&mut self, len: usize) {
        self.iov = IoVecs(Box::new([libc::iovec {
            // The kernel only reads it (a write's source): never written.
            iov_base: ZEROS.0.as_ptr().cast_mut().cast(),
            iov_len: len.min(ZERO_CHUNK),
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

/// The host operation for the current stage of `r`.
pub(crate) fn host_op(r: &InFlight) -> HostOp {
    let (iov, count) = r.pending_iovecs();
    let offset = r.offset + r.chunk_start + r.done;
    match (r.stage, r.kind) {
        (Stage::Transfer, Kind::Read) | (Stage::RmwRead, _) => HostOp::Readv { iov, count, offset },
        (Stage::Transfer, _) | (Stage::ZeroFill, _) => HostOp::Writev {
            iov,
            count,
            offset,
            dsync: r.rwf_dsync,
        },
        (Stage::Flush { .. }, _) | (Stage::SyncAfter { .. }, _) => HostOp::Fdatasync,
        (Stage::Fallocate { mode }, _) => HostOp::Fallocate {
            offset: r.offset,
            len: r.len,
            mode,
        },
    }
}

/// Bytes of zeros a write-zeroes written by hand (the file system can
/// neither punch holes nor zero ranges) writes per host call.
pub(crate) const ZERO_CHUNK: usize = 256 << 10;

/// Zeros to write from, aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Zeros([u8; ZERO_CHUNK]);

/// Shared by every request: the kernel only reads it, so writing zeros
/// costs no memory per request.
static ZEROS: Zeros = Zeros([0; ZERO_CHUNK]);

/// Most segments one vectored host call takes (Linux UIO_MAXIOV). A request
/// with more is bounced into a single segment.
pub(crate) const MAX_IOVECS: usize = 1024;

/// A heap buffer aligned to a power of two, zero-filled at allocation.
/// It never moves while alive, so its address may be handed to the kernel.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like a Box<[u8]>; moving
// it to another thread moves that ownership, nothing is shared.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to `align` (a power of two).
    /// Returns None for an impossible layout.
    pub(crate) fn zeroed(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)?;
        Some(AlignedBuf { ptr, layout, len })
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialized (zeroed) bytes for our lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated by alloc_zeroed with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// True when the segments cannot go to the kernel as they are: an address or
/// a length not a multiple of `align`, or more segments than one call takes.
pub(crate) fn needs_bounce(segments: &[Segment], align: usize) -> bool {
    segments.len() > MAX_IOVECS
        || (align > 1
            && segments
                .iter()
                .any(|s| !(s.addr as usize).is_multiple_of(align) || !s.len.is_multiple_of(align)))
}

/// The caller's segments from byte `from` on, as (segment, offset in it)
/// pairs of the bytes that remain.
fn segments_from(segments: &[Segment], mut from: usize) -> impl Iterator<Item = Segment> + '_ {
    segments.iter().filter_map(move |s| {
        if from >= s.len {
            from -= s.len;
            return None;
        }
        let rest = Segment {
            addr: s.addr.wrapping_add(from),
            len: s.len - from,
        };
        from = 0;
        Some(rest)
    })
}

/// Copies `n` bytes of the caller's segments, starting `from` bytes into
/// them, into `buf` at byte `at`.
///
/// # Safety
/// Each segment must be valid for reads of `len` bytes and not overlap `buf`.
pub(crate) unsafe fn gather(
    segments: &[Segment],
    from: usize,
    n: usize,
    buf: &mut AlignedBuf,
    at: usize,
) {
    let all = buf.as_mut_slice();
    let at = at.min(all.len());
    let end = at + n.min(all.len() - at);
    let dst = &mut all[at..end];
    let mut done = 0;
    for s in segments_from(segments, from) {
        if done >= dst.len() {
            break;
        }
        let k = s.len.min(dst.len() - done);
        // SAFETY: the caller guarantees the segment is readable for its
        // length >= k (`segments_from` only moves inside it); dst[done..
        // done + k] is in bounds by the min above.
        unsafe { std::ptr::copy_nonoverlapping(s.addr, dst[done..].as_mut_ptr(), k) };
        done += k;
    }
}

/// Copies `n` bytes of `buf` from byte `at` on out over the caller's
/// segments, starting `from` bytes into them.
///
/// # Safety
/// Each segment must be valid for writes of `len` bytes and not overlap `buf`.
pub(crate) unsafe fn scatter(
    buf: &AlignedBuf,
    at: usize,
    n: usize,
    segments: &[Segment],
    from: usize,
) {
    let all = buf.as_slice();
    let at = at.min(all.len());
    let src = &all[at..at + n.min(all.len() - at)];
    let mut done = 0;
    for s in segments_from(segments, from) {
        if done >= src.len() {
            break;
        }
        let k = s.len.min(src.len() - done);
        // SAFETY: the caller guarantees the segment is writable for its
        // length >= k; src[done..done + k] is in bounds by the min above.
        unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), s.addr, k) };
        done += k;
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

    fn seg(v: &mut [u8]) -> Segment {
        Segment {
            addr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    #[test]
    fn buffer_is_aligned_and_zeroed() {
        for align in [1, 512, 4096] {
            let b = AlignedBuf::zeroed(3 * 512, align).expect("alloc");
            assert_eq!(b.as_mut_ptr() as usize % align, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
        assert!(
            AlignedBuf::zeroed(512, 3).is_none(),
            "non power of two accepted"
        );
    }

    #[test]
    fn bounce_decision() {
        let mut back = AlignedBuf::zeroed(8192, 4096).expect("alloc");
        let base = back.as_mut_ptr();
        let aligned = Segment {
            addr: base,
            len: 4096,
        };
        let odd = Segment {
            addr: base.wrapping_add(1),
            len: 512,
        };
        assert!(!needs_bounce(&[aligned], 512));
        assert!(needs_bounce(&[odd], 512));
        assert!(!needs_bounce(&[odd], 1));
        assert!(needs_bounce(
            &[Segment {
                addr: base,
                len: 100
            }],
            512
        ));
        assert!(needs_bounce(&vec![aligned; MAX_IOVECS + 1], 1));
        let _ = back.as_mut_slice();
    }

    #[test]
    fn gather_scatter_round_trip() {
        let mut a: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        let mut b: Vec<u8> = (0..324u32).map(|i| (i * 7) as u8).collect();
        let expect: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let segs = [seg(&mut a), seg(&mut b)];
        let mut buf = AlignedBuf::zeroed(1024, 512).expect("alloc");
        // SAFETY: the segments point into live vectors distinct from buf.
        unsafe { gather(&segs, 0, 1024, &mut buf, 0) };
        assert_eq!(buf.as_slice(), &expect[..]);
        let mut c = vec![0u8; 1000];
        let mut d = vec![0u8; 24];
        let out = [seg(&mut c), seg(&mut d)];
        // SAFETY: as above.
        unsafe { scatter(&buf, 0, 1024, &out, 0) };
        assert_eq!(c[..], expect[..1000]);
        assert_eq!(d[..], expect[1000..]);
        // With an offset: the caller's bytes in the middle of host blocks.
        let mut e = vec![0u8; 100];
        let out = [seg(&mut e)];
        // SAFETY: as above.
        unsafe { scatter(&buf, 700, 100, &out, 0) };
        assert_eq!(e[..], expect[700..800]);
        let mut f = vec![9u8; 24];
        // SAFETY: as above.
        unsafe { gather(&[seg(&mut f)], 0, 24, &mut buf, 1000) };
        assert!(buf.as_slice()[1000..].iter().all(|&x| x == 9));
        // From the middle of the caller's segments, across a boundary.
        let mut g = vec![0u8; 50];
        let mut h = vec![0u8; 50];
        let out = [seg(&mut g), seg(&mut h)];
        // SAFETY: as above.
        unsafe { scatter(&buf, 0, 60, &out, 30) };
        assert_eq!(g[30..], expect[..20]);
        assert_eq!(h[..40], expect[20..60]);
        assert!(g[..30].iter().all(|&x| x == 0) && h[40..].iter().all(|&x| x == 0));
        let mut back = AlignedBuf::zeroed(512, 512).expect("alloc");
        // SAFETY: as above.
        unsafe { gather(&out, 40, 20, &mut back, 100) };
        assert_eq!(back.as_slice()[100..110], expect[10..20]);
        assert_eq!(back.as_slice()[110..120], expect[20..30]);
    }
}
