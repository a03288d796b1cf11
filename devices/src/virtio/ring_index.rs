//! A ring index (the avail or used `idx` of a split virtqueue) read
//! straight from its host mapping.
//!
//! A thread that polls a ring reads its index millions of times a second.
//! Through `vm-memory` each read looks the address up among the guest's
//! regions and builds a slice: perf on `ferrite bench --io-path` showed
//! that lookup as the largest cost of the I/O thread's poll loop. The
//! index never moves while the queue is live, so its host address is
//! looked up once, and the same acquire load is made on it directly. The
//! guest memory handle kept here holds the mapping alive.

use std::sync::atomic::{AtomicU16, Ordering};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A 16-bit ring index in guest memory.
pub struct RingIndex {
    /// Keeps the mapping `at` points into alive.
    _mem: GuestMemoryMmap,
    at: *const AtomicU16,
}

// SAFETY: the pointer targets guest memory that `_mem` keeps mapped for the
// lifetime of this value; it is only read, atomically, and guest memory is
// shared with other threads (and the guest) by design.
unsafe impl Send for RingIndex {}

impl RingIndex {
    /// The index at `addr`, if its two bytes lie in one region of `mem`
    /// and are 2-byte aligned (virtio requires both for ring indices).
    pub fn new(mem: &GuestMemoryMmap, addr: GuestAddress) -> Option<RingIndex> {
        if !addr.0.is_multiple_of(2) {
            return None;
        }
        // A slice of exactly two bytes exists only inside one region.
        let slice = mem.get_slice(addr, 2).ok()?;
        let at = slice.ptr_guard().as_ptr().cast::<AtomicU16>();
        if !at.is_aligned() {
            return None;
        }
        Some(RingIndex {
            _mem: mem.clone(),
            at,
        })
    }

    /// The index as the guest last wrote it (little-endian in memory).
    pub fn load(&self) -> u16 {
        // SAFETY: `at` is aligned, points at two bytes of a mapping `_mem`
        // keeps alive (checked in `new`), and is only accessed atomically
        // here; the guest's concurrent writes are what the atomic is for.
        u16::from_le(unsafe { (*self.at).load(Ordering::Acquire) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn reads_what_the_guest_wrote_and_refuses_bad_addresses() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_obj(0xbeefu16.to_le(), GuestAddress(0x102))
            .unwrap();
        let idx = RingIndex::new(&mem, GuestAddress(0x102)).expect("in memory");
        assert_eq!(idx.load(), 0xbeef);
        mem.write_obj(7u16.to_le(), GuestAddress(0x102)).unwrap();
        assert_eq!(idx.load(), 7);
        assert!(RingIndex::new(&mem, GuestAddress(0x103)).is_none(), "odd");
        assert!(
            RingIndex::new(&mem, GuestAddress(0xfff)).is_none(),
            "straddles the end"
        );
        assert!(
            RingIndex::new(&mem, GuestAddress(0x1000)).is_none(),
            "outside"
        );
    }
}
