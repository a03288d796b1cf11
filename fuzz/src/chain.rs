//! Structured fuzz input for virtio-blk requests, and the "driver" that
//! writes it into guest memory.
//!
//! The types steer the fuzzer towards plausible requests (lengths in
//! sectors, sectors near the capacity, buffers from an allocator) while
//! every field can still go wrong: raw addresses, raw lengths, flipped
//! directions, raw descriptors and available-ring entries, and pokes at
//! any byte of memory (descriptor table and rings included).

use arbitrary::Arbitrary;
use devices::virtio::split_ring::{self, Desc};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::GuestAddress;

use crate::layout::{Alloc, Flat, AVAIL, DESC, MAX_ALLOC, MEM_END, USED};
use crate::rig::SECTORS;

/// Where a buffer or ring goes.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Addr {
    /// Next free spot of the allocator.
    Alloc,
    /// Anywhere in or just past guest memory (the hole included).
    At(u32),
    /// Any 64-bit address.
    Raw(u64),
}

/// A descriptor length.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Len {
    /// 0 to 8 sectors.
    Sectors(u8),
    /// 0 to 4096 bytes.
    Bytes(u16),
    /// Any length.
    Any(u32),
}

impl Len {
    /// The length in bytes.
    pub fn bytes(self) -> u32 {
        match self {
            Len::Sectors(n) => 512 * u32::from(n % 9),
            Len::Bytes(n) => u32::from(n) % 0x1001,
            Len::Any(n) => n,
        }
    }
}

/// A sector number.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Sector {
    /// Around the capacity (up to 8 sectors past it).
    Small(u8),
    /// Any 64-bit sector.
    Any(u64),
}

impl Sector {
    /// The sector number.
    pub fn get(self) -> u64 {
        match self {
            Sector::Small(n) => u64::from(n) % (SECTORS + 9),
            Sector::Any(n) => n,
        }
    }
}

/// The request type in the header.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum ReqType {
    /// VIRTIO_BLK_T_IN.
    In,
    /// VIRTIO_BLK_T_OUT.
    Out,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID.
    GetId,
    /// VIRTIO_BLK_T_DISCARD.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    WriteZeroes,
    /// Anything else.
    Other(u32),
}

impl ReqType {
    /// The raw type value.
    pub fn raw(self) -> u32 {
        match self {
            ReqType::In => VIRTIO_BLK_T_IN,
            ReqType::Out => VIRTIO_BLK_T_OUT,
            ReqType::Flush => VIRTIO_BLK_T_FLUSH,
            ReqType::GetId => VIRTIO_BLK_T_GET_ID,
            ReqType::Discard => VIRTIO_BLK_T_DISCARD,
            ReqType::WriteZeroes => VIRTIO_BLK_T_WRITE_ZEROES,
            ReqType::Other(t) => t,
        }
    }

    /// Whether its data buffers are naturally device-writable.
    fn device_writes(self) -> bool {
        matches!(self, ReqType::In | ReqType::GetId)
    }
}

/// The request header and its descriptor.
#[derive(Arbitrary, Clone, Debug)]
pub struct Header {
    /// Request type.
    pub kind: ReqType,
    /// The `ioprio` field (ignored by the device).
    pub ioprio: u32,
    /// The `sector` field.
    pub sector: Sector,
    /// Where it goes.
    pub addr: Addr,
    /// Descriptor length; None is the correct 16.
    pub len: Option<u8>,
    /// Marks the descriptor device-writable (wrong).
    pub writable: bool,
}

/// A discard / write-zeroes segment written at the start of a buffer.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Segment {
    /// First sector.
    pub sector: Sector,
    /// Number of sectors.
    pub sectors: Sector,
    /// Flags: bit 0 UNMAP, bit 1 unknown, bit 7 a raw high flag.
    pub flags: u8,
}

impl Segment {
    /// The 16 bytes of `struct virtio_blk_discard_write_zeroes`.
    pub fn bytes(self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.sector.get().to_le_bytes());
        raw[8..12].copy_from_slice(&(self.sectors.get() as u32).to_le_bytes());
        let flags = u32::from(self.flags & 3) | (u32::from(self.flags & 0x80) << 24);
        raw[12..].copy_from_slice(&flags.to_le_bytes());
        raw
    }
}

/// A data buffer.
#[derive(Arbitrary, Clone, Debug)]
pub struct Buf {
    /// Descriptor length.
    pub len: Len,
    /// Points the wrong way for the request type.
    pub flip: bool,
    /// Where it goes.
    pub addr: Addr,
    /// Byte it is filled with.
    pub fill: u8,
    /// A segment written at its start.
    pub segment: Option<Segment>,
}

/// The status descriptor.
#[derive(Arbitrary, Clone, Debug)]
pub struct Status {
    /// Where it goes.
    pub addr: Addr,
    /// Descriptor length; None is the correct 1.
    pub len: Option<u8>,
    /// Marks it device-readable (wrong).
    pub readonly: bool,
}

/// A re-framing of a chain (§2.7.4.1: any layout): its device-readable
/// buffers' bytes laid out back to back, then its device-writable ones,
/// each stream cut into descriptors at these offsets (modulo its length).
#[derive(Arbitrary, Clone, Debug, Default)]
pub struct Reframe {
    /// Cuts in the device-readable bytes (the first 8 are used).
    pub readable: Vec<u16>,
    /// Cuts in the device-writable bytes (the first 8 are used).
    pub writable: Vec<u16>,
}

/// One request as a driver would build it.
#[derive(Arbitrary, Clone, Debug)]
pub struct Chain {
    /// Put the chain in an indirect table.
    pub indirect: bool,
    /// Leave the header descriptor out.
    pub no_header: bool,
    /// The header.
    pub header: Header,
    /// Data buffers (the first 8 are used).
    pub data: Vec<Buf>,
    /// The status byte.
    pub status: Status,
    /// Lay the buffers out again, cut elsewhere.
    pub reframe: Option<Reframe>,
}

/// One thing the driver does to guest memory.
#[derive(Arbitrary, Clone, Debug)]
pub enum Item {
    /// A request chain, made available.
    Chain(Chain),
    /// A raw descriptor at `index % queue size`.
    RawDesc {
        /// Table index (modulo the queue size).
        index: u16,
        /// Buffer address.
        addr: Addr,
        /// Buffer length.
        len: Len,
        /// Raw flags.
        flags: u16,
        /// Raw next index.
        next: u16,
    },
    /// A raw available-ring entry (any head value).
    Avail(u16),
    /// Raw bytes anywhere.
    Poke {
        /// Where.
        addr: Addr,
        /// What (the first 64 bytes).
        bytes: Vec<u8>,
    },
}

/// The three ring addresses.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Rings {
    /// Descriptor table.
    pub desc: Addr,
    /// Available ring.
    pub avail: Addr,
    /// Used ring.
    pub used: Addr,
}

/// Where the queue is: the driver-side ring of `devices`, which writes
/// the descriptors and chains here as it does for the device tests and the
/// bench driver.
pub use devices::virtio::split_ring::SplitRing as QueueGeom;

/// A whole queue's worth of driver activity.
#[derive(Arbitrary, Clone, Debug)]
pub struct Queue {
    /// log2 of the queue size (modulo 9: 1 to 256 entries).
    pub size_log2: u8,
    /// Ring addresses; None puts them at the default places.
    pub rings: Option<Rings>,
    /// The available ring's `idx`; None is the number of heads made available.
    pub avail_idx: Option<u16>,
    /// The available ring's `flags`.
    pub avail_flags: u16,
    /// `used_event` (EVENT_IDX).
    pub used_event: u16,
    /// What the driver writes (the first 64 are used).
    pub items: Vec<Item>,
}

/// Most items and buffers a case uses (keeps every run short).
const MAX_ITEMS: usize = 64;
const MAX_BUFS: usize = 8;

struct Builder<'a> {
    flat: &'a mut Flat,
    alloc: Alloc,
    geom: QueueGeom,
    heads: Vec<u16>,
    next_desc: u16,
}

impl Builder<'_> {
    fn place(&mut self, addr: Addr, len: u64, align: u64) -> u64 {
        match addr {
            Addr::Alloc => self.alloc.take(len, align),
            Addr::At(a) => u64::from(a) % (MEM_END + 0x1000),
            Addr::Raw(a) => a,
        }
    }

    fn fill(&mut self, addr: u64, len: u64, byte: u8) {
        let n = len.min(MAX_ALLOC) as usize;
        self.flat.write(addr, &vec![byte; n]);
    }

    fn write_desc(&mut self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Desc {
            addr,
            len,
            flags,
            next,
        };
        split_ring::write_desc(self.flat, table, index, d);
    }

    fn take_index(&mut self) -> u16 {
        let i = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.geom.size;
        i
    }

    fn chain(&mut self, c: &Chain) {
        // (addr, len, writable) of each buffer, in chain order.
        let mut bufs: Vec<(u64, u32, bool)> = Vec::new();
        let h = &c.header;
        if !c.no_header {
            let len = h.len.map_or(16, u32::from);
            let addr = self.place(h.addr, u64::from(len.max(16)), 8);
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&h.kind.raw().to_le_bytes());
            raw[4..8].copy_from_slice(&h.ioprio.to_le_bytes());
            raw[8..].copy_from_slice(&h.sector.get().to_le_bytes());
            self.flat.write(addr, &raw);
            bufs.push((addr, len, h.writable));
        }
        for b in c.data.iter().take(MAX_BUFS) {
            let len = b.len.bytes();
            let addr = self.place(b.addr, u64::from(len), 8);
            self.fill(addr, u64::from(len), b.fill);
            if let Some(seg) = b.segment {
                self.flat.write(addr, &seg.bytes());
            }
            bufs.push((addr, len, h.kind.device_writes() != b.flip));
        }
        let s = &c.status;
        let len = s.len.map_or(1, u32::from);
        let addr = self.place(s.addr, u64::from(len), 1);
        self.fill(addr, u64::from(len), 0xff);
        bufs.push((addr, len, !s.readonly));
        if let Some(r) = &c.reframe {
            let reframed = self.reframe(&bufs, r);
            // Nothing but empty buffers: keep them as they were.
            if !reframed.is_empty() {
                bufs = reframed;
            }
        }

        let bufs: Vec<split_ring::Buf> = bufs
            .iter()
            .map(|&(addr, len, writable)| split_ring::Buf {
                addr: GuestAddress(addr),
                len,
                writable,
            })
            .collect();
        let head = if c.indirect {
            let table = self.alloc.take(16 * bufs.len() as u64, 16);
            let indices: Vec<u16> = (0..bufs.len() as u16).collect();
            split_ring::write_chain(self.flat, table, &indices, &bufs);
            let head = self.take_index();
            let d = split_ring::indirect_desc(table, bufs.len());
            split_ring::write_desc(self.flat, self.geom.desc, head, d);
            head
        } else {
            let indices: Vec<u16> = bufs.iter().map(|_| self.take_index()).collect();
            split_ring::write_chain(self.flat, self.geom.desc, &indices, &bufs);
            indices[0]
        };
        self.heads.push(head);
    }

    /// `bufs` as two contiguous streams (readable, then writable; bytes
    /// of buffers outside memory read as zeros, each stream at most
    /// [`MAX_ALLOC`]) cut at `r`'s offsets.
    fn reframe(&mut self, bufs: &[(u64, u32, bool)], r: &Reframe) -> Vec<(u64, u32, bool)> {
        let mut out = Vec::new();
        for (writable, cuts) in [(false, &r.readable), (true, &r.writable)] {
            let mut bytes = Vec::new();
            for &(addr, len, _) in bufs.iter().filter(|b| b.2 == writable) {
                let n = u64::from(len).min(MAX_ALLOC - bytes.len() as u64);
                match self.flat.read(addr, n) {
                    Some(b) => bytes.extend_from_slice(b),
                    None => bytes.resize(bytes.len() + n as usize, 0),
                }
            }
            if bytes.is_empty() {
                continue;
            }
            let start = self.alloc.take(bytes.len() as u64, 8);
            self.flat.write(start, &bytes);
            let total = bytes.len() as u64;
            let mut points: Vec<u64> = cuts
                .iter()
                .take(MAX_BUFS)
                .map(|&c| u64::from(c) % total)
                .filter(|&c| c > 0)
                .collect();
            points.sort_unstable();
            points.dedup();
            points.push(total);
            let mut at = 0;
            for p in points {
                out.push((start + at, (p - at) as u32, writable));
                at = p;
            }
        }
        out
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Chain(c) => self.chain(c),
            Item::RawDesc {
                index,
                addr,
                len,
                flags,
                next,
            } => {
                let len = len.bytes();
                let a = self.place(*addr, u64::from(len), 8);
                let desc = self.geom.desc;
                self.write_desc(desc, index % self.geom.size, a, len, *flags, *next);
            }
            Item::Avail(head) => self.heads.push(*head),
            Item::Poke { addr, bytes } => {
                let bytes = &bytes[..bytes.len().min(64)];
                let a = self.place(*addr, bytes.len() as u64, 1);
                self.flat.write(a, bytes);
            }
        }
    }
}

impl Queue {
    /// Queue size (a power of two, 1 to 256).
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % 9)
    }

    /// Writes rings, descriptors and buffers into `flat` (which should be
    /// zeroed) and returns where the queue is.
    pub fn build(&self, flat: &mut Flat) -> QueueGeom {
        let size = self.size();
        let mut alloc = Alloc::default();
        let mut place = |a: Addr, len: u64, align: u64| match a {
            Addr::Alloc => alloc.take(len, align),
            Addr::At(x) => u64::from(x) % (MEM_END + 0x1000),
            Addr::Raw(x) => x,
        };
        let n = u64::from(size);
        let geom = match self.rings {
            None => QueueGeom {
                size,
                desc: DESC,
                avail: AVAIL,
                used: USED,
            },
            Some(r) => QueueGeom {
                size,
                desc: place(r.desc, 16 * n, 16),
                avail: place(r.avail, 6 + 2 * n, 2),
                used: place(r.used, 6 + 8 * n, 4),
            },
        };
        let mut b = Builder {
            flat,
            alloc,
            geom,
            heads: Vec::new(),
            next_desc: 0,
        };
        for item in self.items.iter().take(MAX_ITEMS) {
            b.item(item);
        }
        let heads = std::mem::take(&mut b.heads);
        let idx = self.avail_idx.unwrap_or(heads.len() as u16);
        let mut ring = Vec::with_capacity(6 + 2 * size as usize);
        ring.extend_from_slice(&self.avail_flags.to_le_bytes());
        ring.extend_from_slice(&idx.to_le_bytes());
        let mut entries = vec![0u16; size as usize];
        for (i, &h) in heads.iter().enumerate() {
            entries[i % size as usize] = h;
        }
        for e in entries {
            ring.extend_from_slice(&e.to_le_bytes());
        }
        ring.extend_from_slice(&self.used_event.to_le_bytes());
        b.flat.write(geom.avail, &ring);
        geom
    }
}
