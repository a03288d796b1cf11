//! Guest memory of the fuzz targets.
//!
//! `[0, 0x8000)` and `[0x8000, 0x10000)` are two adjacent regions (a buffer
//! may straddle them), `[0x10000, 0x11000)` is a hole, and `[0x11000,
//! 0x12000)` a last small region, so that "inside memory", "across a region
//! boundary", "into the hole" and "past the end" are all a few bits apart.

use devices::virtio::split_ring::RingMemory;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// End of the first region / start of the second.
pub const SPLIT: u64 = 0x8000;
/// Start of the hole.
pub const HOLE: u64 = 0x1_0000;
/// Start of the last region.
pub const LAST: u64 = 0x1_1000;
/// End of guest memory.
pub const MEM_END: u64 = 0x1_2000;

/// Default descriptor table (room for 256 descriptors).
pub const DESC: u64 = 0x0000;
/// Default available ring.
pub const AVAIL: u64 = 0x1000;
/// Default used ring (6 + 8 * 256 bytes fit before `BUFS`).
pub const USED: u64 = 0x1400;
/// Start of the buffer area the allocator hands out.
pub const BUFS: u64 = 0x2000;
/// Largest buffer the allocator reserves (longer descriptors overrun it).
pub const MAX_ALLOC: u64 = 0x1000;

/// Fresh guest memory with the layout above.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), SPLIT as usize),
        (GuestAddress(SPLIT), (HOLE - SPLIT) as usize),
        (GuestAddress(LAST), (MEM_END - LAST) as usize),
    ])
    .expect("the fixed fuzz memory layout is valid")
}

/// Whether `[addr, addr + len)` is backed by guest memory.
pub fn in_memory(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    end <= MEM_END && !(addr < LAST && end > HOLE)
}

/// A bump allocator over the buffer area that skips the hole and wraps
/// around (a wrapped buffer overlaps older ones, which is fine: the model
/// sees the final memory).
pub struct Alloc {
    next: u64,
}

impl Default for Alloc {
    fn default() -> Self {
        Alloc { next: BUFS }
    }
}

impl Alloc {
    /// Reserves `len` bytes (at least 1, at most [`MAX_ALLOC`]) aligned to `align`.
    pub fn take(&mut self, len: u64, align: u64) -> u64 {
        let len = len.clamp(1, MAX_ALLOC);
        let mut at = self.next.next_multiple_of(align);
        if at < LAST && at + len > HOLE {
            at = LAST;
        }
        if at + len > MEM_END {
            at = BUFS;
        }
        self.next = at + len;
        at
    }
}

/// A flat copy of guest memory, `[0, MEM_END)`; the hole's bytes exist here
/// but never reach (or come from) guest memory.
#[derive(Clone)]
pub struct Flat(pub Vec<u8>);

impl Default for Flat {
    fn default() -> Self {
        Flat(vec![0; MEM_END as usize])
    }
}

impl Flat {
    /// Clears every byte.
    pub fn clear(&mut self) {
        self.0.fill(0);
    }

    /// Writes `bytes` at `addr` (wrapping past 2^64 to 0, as the byte
    /// addresses do); what falls outside guest memory is dropped.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        // Whole slices, not bytes: this runs for every buffer of every
        // input, and coverage instrumentation makes a per-byte loop the
        // harness's largest cost.
        let len = bytes.len() as u64;
        let first = if addr == 0 {
            len
        } else {
            len.min(addr.wrapping_neg())
        };
        self.write_unwrapped(addr, &bytes[..first as usize]);
        self.write_unwrapped(0, &bytes[first as usize..]);
    }

    /// `write` for a range that does not wrap.
    fn write_unwrapped(&mut self, addr: u64, bytes: &[u8]) {
        if addr >= MEM_END {
            return;
        }
        let end = addr + bytes.len() as u64;
        for (start, stop) in [(0, HOLE), (LAST, MEM_END)] {
            let (from, to) = (addr.max(start), end.min(stop));
            if from < to {
                let src = &bytes[(from - addr) as usize..(to - addr) as usize];
                self.0[from as usize..to as usize].copy_from_slice(src);
            }
        }
    }

    /// The bytes at `[addr, addr + len)`, if all of them are guest memory.
    pub fn read(&self, addr: u64, len: u64) -> Option<&[u8]> {
        in_memory(addr, len).then(|| &self.0[addr as usize..(addr + len) as usize])
    }

    /// A little-endian u16 at `addr`.
    pub fn u16(&self, addr: u64) -> Option<u16> {
        self.read(addr, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// Copies this image into guest memory.
    pub fn store(&self, mem: &GuestMemoryMmap) {
        use vm_memory::Bytes;
        for (start, end) in [(0, HOLE), (LAST, MEM_END)] {
            mem.write_slice(&self.0[start as usize..end as usize], GuestAddress(start))
                .expect("the layout's regions are mapped");
        }
    }

    /// Copies guest memory into this image (the hole stays as it was).
    pub fn load(&mut self, mem: &GuestMemoryMmap) {
        use vm_memory::Bytes;
        for (start, end) in [(0, HOLE), (LAST, MEM_END)] {
            mem.read_slice(
                &mut self.0[start as usize..end as usize],
                GuestAddress(start),
            )
            .expect("the layout's regions are mapped");
        }
    }
}

/// The rings of a case are written into the flat image first, where the
/// oracle reads them before the device runs.
impl RingMemory for Flat {
    fn put(&mut self, addr: u64, bytes: &[u8]) -> bool {
        self.write(addr, bytes);
        in_memory(addr, bytes.len() as u64)
    }

    fn get(&self, addr: u64, buf: &mut [u8]) -> bool {
        match self.read(addr, buf.len() as u64) {
            Some(b) => {
                buf.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time definition `Flat::write` must agree with.
    fn write_bytewise(flat: &mut Flat, addr: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = addr.wrapping_add(i as u64);
            if in_memory(at, 1) {
                flat.0[at as usize] = b;
            }
        }
    }

    #[test]
    fn slice_writes_match_byte_writes_at_every_edge() {
        let addrs = [
            0,
            1,
            SPLIT - 3,
            HOLE - 5,
            HOLE,
            LAST - 7,
            LAST,
            MEM_END - 9,
            MEM_END,
            u64::MAX - 4,
            u64::MAX,
        ];
        for &addr in &addrs {
            for len in [0usize, 1, 9, 13, 0x1000, 0x2000] {
                let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
                let (mut fast, mut slow) = (Flat::default(), Flat::default());
                fast.write(addr, &bytes);
                write_bytewise(&mut slow, addr, &bytes);
                assert!(fast.0 == slow.0, "addr {addr:#x} len {len}");
            }
        }
    }
}
