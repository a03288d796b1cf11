//! Aligned memory for O_DIRECT: the bounce buffer a misaligned request goes
//! through, and the test that decides whether it must.
//!
//! O_DIRECT wants every segment's address and length aligned to the file's
//! memory alignment. Guest buffers often are not; rather than fail with
//! EINVAL, such a request is copied through one aligned buffer that the
//! in-flight operation owns until it completes.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::Segment;

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

/// Copies the segments, in order, into `buf` from byte `skip` on.
///
/// # Safety
/// Each segment must be valid for reads of `len` bytes and not overlap `buf`.
pub(crate) unsafe fn gather(segments: &[Segment], buf: &mut AlignedBuf, skip: usize) {
    let all = buf.as_mut_slice();
    let from = skip.min(all.len());
    let dst = &mut all[from..];
    let mut at = 0;
    for s in segments {
        let n = s.len.min(dst.len() - at);
        // SAFETY: the caller guarantees s.addr is readable for s.len >= n
        // bytes; dst[at..at + n] is in bounds by the min above.
        unsafe { std::ptr::copy_nonoverlapping(s.addr, dst[at..].as_mut_ptr(), n) };
        at += n;
    }
}

/// Copies `n` bytes of `buf` from byte `skip` on out over the segments, in
/// order.
///
/// # Safety
/// Each segment must be valid for writes of `len` bytes and not overlap `buf`.
pub(crate) unsafe fn scatter(buf: &AlignedBuf, skip: usize, n: usize, segments: &[Segment]) {
    let all = buf.as_slice();
    let from = skip.min(all.len());
    let src = &all[from..from + n.min(all.len() - from)];
    let mut at = 0;
    for s in segments {
        if at >= src.len() {
            break;
        }
        let k = s.len.min(src.len() - at);
        // SAFETY: the caller guarantees s.addr is writable for s.len >= k
        // bytes; src[at..at + k] is in bounds by the min above.
        unsafe { std::ptr::copy_nonoverlapping(src[at..].as_ptr(), s.addr, k) };
        at += k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        unsafe { gather(&segs, &mut buf, 0) };
        assert_eq!(buf.as_slice(), &expect[..]);
        let mut c = vec![0u8; 1000];
        let mut d = vec![0u8; 24];
        let out = [seg(&mut c), seg(&mut d)];
        // SAFETY: as above.
        unsafe { scatter(&buf, 0, 1024, &out) };
        assert_eq!(c[..], expect[..1000]);
        assert_eq!(d[..], expect[1000..]);
        // With an offset: the caller's bytes in the middle of host blocks.
        let mut e = vec![0u8; 100];
        let out = [seg(&mut e)];
        // SAFETY: as above.
        unsafe { scatter(&buf, 700, 100, &out) };
        assert_eq!(e[..], expect[700..800]);
        let mut f = vec![9u8; 24];
        // SAFETY: as above.
        unsafe { gather(&[seg(&mut f)], &mut buf, 1000) };
        assert!(buf.as_slice()[1000..].iter().all(|&x| x == 9));
    }
}
