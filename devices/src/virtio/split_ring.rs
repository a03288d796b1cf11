//! The driver's side of a split virtqueue (virtio 1.2 §2.7): where its
//! three parts lie and the bytes a driver writes into them (descriptors,
//! chains, indirect tables, available-ring entries and index, the
//! EVENT_IDX fields) and reads back (used entries). One writer for every
//! driver ferrite has outside a guest: the device tests' simulator, the
//! fuzz targets (which write into a flat copy of guest memory) and
//! `ferrite bench --io-path`'s in-process driver.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio_driver::QueueAddrs;

/// Memory a driver writes its rings into.
pub trait RingMemory {
    /// Writes `bytes` at `addr`; false if they did not all land.
    fn put(&mut self, addr: u64, bytes: &[u8]) -> bool;
    /// Fills `buf` from `addr`; false if it could not all be read.
    fn get(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Publishes a ring index: every write before it is visible first.
    fn put_index(&mut self, addr: u64, value: u16) -> bool {
        fence(Ordering::Release);
        self.put(addr, &value.to_le_bytes())
    }
    /// Reads a ring index the device publishes; what it wrote before is
    /// visible after.
    fn get_index(&self, addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        let ok = self.get(addr, &mut b);
        fence(Ordering::Acquire);
        ok.then(|| u16::from_le_bytes(b))
    }
}

impl RingMemory for GuestMemoryMmap {
    fn put(&mut self, addr: u64, bytes: &[u8]) -> bool {
        self.write_slice(bytes, GuestAddress(addr)).is_ok()
    }

    fn get(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_slice(buf, GuestAddress(addr)).is_ok()
    }

    // An index is one aligned 16-bit store or load, never two byte copies:
    // the device reads it concurrently.
    fn put_index(&mut self, addr: u64, value: u16) -> bool {
        self.store(value, GuestAddress(addr), Ordering::Release)
            .is_ok()
    }

    fn get_index(&self, addr: u64) -> Option<u16> {
        self.load(GuestAddress(addr), Ordering::Acquire).ok()
    }
}

/// One descriptor as the driver writes it (§2.7.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// VRING_DESC_F_* bits.
    pub flags: u16,
    /// Next descriptor in the chain, if `flags` has NEXT.
    pub next: u16,
}

impl Desc {
    /// Its 16 bytes, little-endian.
    pub fn bytes(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.flags.to_le_bytes());
        raw[14..].copy_from_slice(&self.next.to_le_bytes());
        raw
    }
}

/// One buffer of a chain as the driver describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Buf {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Buf {
            addr,
            len,
            writable: true,
        }
    }
}

/// Writes `bufs` as a chain into the descriptor table at `table`, at
/// `indices` (one per buffer): WRITE as each buffer says, NEXT on all but
/// the last. Works for the ring's table and for indirect tables alike.
pub fn write_chain(m: &mut impl RingMemory, table: u64, indices: &[u16], bufs: &[Buf]) -> bool {
    let mut ok = true;
    for (i, (b, &index)) in bufs.iter().zip(indices).enumerate() {
        let mut flags = if b.writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let next = indices.get(i + 1).copied();
        if next.is_some() && i + 1 < bufs.len() {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        let d = Desc {
            addr: b.addr.0,
            len: b.len,
            flags,
            next: next.unwrap_or(0),
        };
        ok &= write_desc(m, table, index, d);
    }
    ok
}

/// Writes descriptor `index` of the table at `table`.
pub fn write_desc(m: &mut impl RingMemory, table: u64, index: u16, d: Desc) -> bool {
    m.put(table.wrapping_add(16 * u64::from(index)), &d.bytes())
}

/// The descriptor that points at an indirect table of `entries`
/// descriptors at `table` (§2.7.5.3).
pub fn indirect_desc(table: u64, entries: usize) -> Desc {
    Desc {
        addr: table,
        len: 16 * entries as u32,
        flags: VRING_DESC_F_INDIRECT as u16,
        next: 0,
    }
}

/// Where a split queue of `size` entries lies in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitRing {
    /// Number of entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Driver (available) ring.
    pub avail: u64,
    /// Device (used) ring.
    pub used: u64,
}

const PAGE: u64 = 0x1000;

impl SplitRing {
    /// The table, the available ring and the used ring one after the
    /// other from `base`, each starting on a page.
    pub fn at(base: u64, size: u16) -> SplitRing {
        let n = u64::from(size);
        let avail = base + (16 * n).next_multiple_of(PAGE);
        let used = avail + (6 + 2 * n).next_multiple_of(PAGE);
        SplitRing {
            size,
            desc: base,
            avail,
            used,
        }
    }

    /// The first page after the used ring.
    pub fn end(&self) -> u64 {
        self.used + (6 + 8 * u64::from(self.size)).next_multiple_of(PAGE)
    }

    /// The addresses the transport is told.
    pub fn addrs(&self) -> QueueAddrs {
        QueueAddrs {
            desc: self.desc,
            avail: self.avail,
            used: self.used,
        }
    }

    /// Writes descriptor `index` of the ring's table.
    pub fn write_desc(&self, m: &mut impl RingMemory, index: u16, d: Desc) -> bool {
        write_desc(m, self.desc, index, d)
    }

    /// Address of available-ring entry `idx` (modulo the size).
    pub fn avail_entry(&self, idx: u16) -> u64 {
        self.avail + 4 + 2 * u64::from(idx % self.size.max(1))
    }

    /// Puts `head` at available-ring position `idx` and publishes
    /// `idx + 1` as the available index.
    pub fn make_available(&self, m: &mut impl RingMemory, idx: u16, head: u16) -> bool {
        m.put(self.avail_entry(idx), &head.to_le_bytes())
            && m.put_index(self.avail + 2, idx.wrapping_add(1))
    }

    /// `used_event` (EVENT_IDX, §2.7.10): written by the driver.
    pub fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    /// `avail_event` (EVENT_IDX): written by the device.
    pub fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }

    /// The used index the device last published.
    pub fn used_idx(&self, m: &impl RingMemory) -> Option<u16> {
        m.get_index(self.used + 2)
    }

    /// Used-ring entry `idx` (modulo the size): (descriptor head, length).
    pub fn used_entry(&self, m: &impl RingMemory, idx: u16) -> Option<(u32, u32)> {
        let mut raw = [0u8; 8];
        let at = self.used + 4 + 8 * u64::from(idx % self.size.max(1));
        m.get(at, &mut raw).then(|| {
            (
                u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
                u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_chains_as_the_spec_says() {
        let r = SplitRing::at(0x1_0000, 256);
        assert_eq!((r.desc, r.avail, r.used), (0x1_0000, 0x1_1000, 0x1_2000));
        assert_eq!(r.end(), 0x1_3000);
        assert_eq!(r.used_event(), 0x1_1000 + 4 + 512);
        let mut m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
        let bufs = [
            Buf::readable(GuestAddress(0x8000), 16),
            Buf::writable(GuestAddress(0x9000), 1),
        ];
        assert!(write_chain(&mut m, r.desc, &[7, 3], &bufs));
        let mut raw = [0u8; 16];
        assert!(m.get(r.desc + 16 * 7, &mut raw));
        assert_eq!(
            raw,
            Desc {
                addr: 0x8000,
                len: 16,
                flags: VRING_DESC_F_NEXT as u16,
                next: 3
            }
            .bytes()
        );
        assert!(m.get(r.desc + 16 * 3, &mut raw));
        assert_eq!(
            u16::from_le_bytes([raw[12], raw[13]]),
            VRING_DESC_F_WRITE as u16
        );
        assert!(r.make_available(&mut m, 0, 7));
        assert_eq!(m.get_index(r.avail + 2), Some(1));
        assert_eq!(m.get_index(r.avail_entry(0)), Some(7));
        assert_eq!(r.used_idx(&m), Some(0));
        assert_eq!(r.used_entry(&m, 0), Some((0, 0)));
    }
}
