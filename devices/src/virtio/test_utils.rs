//! A guest-driver simulator for tests: it writes the transport's registers
//! the way a virtio-mmio driver does and builds split-queue descriptor chains
//! in a `GuestMemoryMmap`, so a device can be driven end to end without a
//! guest. Available to other crates' tests through the `test-utils` feature.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_OUT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio_driver;
pub use super::split_ring::Buf;
use super::split_ring::{self, RingMemory, SplitRing};
use crate::bus::{lock, SharedDevice};

/// Register offsets a driver uses (virtio 1.2 §4.2.2).
pub use super::mmio::reg;

/// Status bits.
pub use super::mmio_driver::status;

/// The 16-byte header of a virtio-blk request (§5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkHeader {
    /// VIRTIO_BLK_T_*.
    pub request_type: u32,
    /// First sector.
    pub sector: u64,
}

impl BlkHeader {
    /// Its bytes as the driver writes them.
    pub fn bytes(self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&self.request_type.to_le_bytes());
        raw[8..].copy_from_slice(&self.sector.to_le_bytes());
        raw
    }
}

/// Where a request's two byte streams are cut into descriptors: offsets
/// into the readable bytes (header + OUT data) and into the writable bytes
/// (IN data + status). Offsets out of order, repeated, 0 or past the end
/// make empty descriptors or are dropped, as [`cut`] says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    /// Cuts in the device-readable bytes.
    pub readable: Vec<u32>,
    /// Cuts in the device-writable bytes.
    pub writable: Vec<u32>,
    /// Put the chain in an indirect table (§2.7.5.3).
    pub indirect: bool,
}

impl Framing {
    /// Linux's framing: the header alone, the data alone (if any), the
    /// status byte alone; `in_len` is the writable data length.
    pub fn linux(in_len: u32) -> Framing {
        Framing {
            readable: vec![16],
            writable: vec![in_len],
            indirect: false,
        }
    }
}

/// `len` bytes from `start` as buffers cut at the sorted, distinct `cuts`
/// strictly inside them (others are ignored).
pub fn cut(start: GuestAddress, len: u64, cuts: &[u32], writable: bool) -> Vec<Buf> {
    let mut points: Vec<u64> = cuts
        .iter()
        .map(|&c| u64::from(c))
        .filter(|&c| c > 0 && c < len)
        .collect();
    points.sort_unstable();
    points.dedup();
    points.push(len);
    let mut at = 0;
    points
        .into_iter()
        .map(|p| {
            let b = Buf {
                addr: start.unchecked_add(at),
                len: (p - at) as u32,
                writable,
            };
            at = p;
            b
        })
        .collect()
}

/// A virtio-blk request the simulator placed in guest memory.
#[derive(Clone, Debug)]
pub struct BlkRequest {
    /// Descriptor head.
    pub head: u16,
    /// The data buffers, in order.
    pub data: Vec<Buf>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A driver for one device with one split queue.
///
/// Layout in guest memory from `base`: descriptor table, available ring,
/// used ring (each page-aligned), then a bump area for buffers.
pub struct Driver {
    dev: SharedDevice,
    mem: GuestMemoryMmap,
    size: u16,
    ring: SplitRing,
    buf_start: u64,
    next_buf: u64,
    buf_end: u64,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
}

/// How long [`Driver::wait_used`] waits before giving up.
pub const WAIT: Duration = Duration::from_secs(10);

impl Driver {
    /// A driver for `dev` whose rings and buffers live in
    /// `[base, base + area)` of `mem`, with a queue of `size` entries.
    pub fn new(dev: SharedDevice, mem: GuestMemoryMmap, base: u64, area: u64, size: u16) -> Self {
        let ring = SplitRing::at(base, size);
        Driver {
            dev,
            mem,
            size,
            ring,
            buf_start: ring.end(),
            next_buf: ring.end(),
            buf_end: base + area,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: u64) -> u32 {
        mmio_driver::read32(&mut *lock(&self.dev), offset)
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: u64, value: u32) {
        mmio_driver::write32(&mut *lock(&self.dev), offset, value);
    }

    /// Reads `len` bytes of configuration space at `offset` in one access.
    pub fn read_config(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        lock(&self.dev).read(reg::CONFIG + offset, &mut b);
        b
    }

    /// Writes configuration space at `offset` in one access.
    pub fn write_config(&self, offset: u64, data: &[u8]) {
        lock(&self.dev).write(reg::CONFIG + offset, data);
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.read32(reg::STATUS)
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        mmio_driver::device_features(&mut *lock(&self.dev))
    }

    /// Resets the device (status 0) and the driver's view of the queue.
    pub fn reset(&mut self) {
        self.write32(reg::STATUS, 0);
        self.free = (0..self.size).rev().collect();
        self.chains.clear();
        self.avail_idx = 0;
        self.last_used = 0;
        // The rings start from zero again (§2.7: a fresh queue).
        let _ = self.mem.write_obj(0u32, GuestAddress(self.ring.avail));
        let _ = self.mem.write_obj(0u32, GuestAddress(self.ring.used));
    }

    /// Resets, then ACKNOWLEDGE, DRIVER, writes `features` as they are, and
    /// asks for FEATURES_OK. Returns whether the device kept FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.reset();
        mmio_driver::negotiate(&mut *lock(&self.dev), features)
    }

    /// Sets up queue 0 and writes DRIVER_OK (after a successful negotiate).
    pub fn start(&mut self) {
        let mut dev = lock(&self.dev);
        mmio_driver::set_queue(&mut *dev, 0, self.size, self.ring.addrs());
        // Whether the device took it is for the test to check.
        let _ = mmio_driver::driver_ok(&mut *dev);
    }

    /// negotiate + start; panics (it is a test helper) if refused.
    pub fn init(&mut self, features: u64) {
        assert!(
            self.negotiate(features),
            "device refused features {features:#x}"
        );
        self.start();
    }

    /// Reserves `len` bytes (8-byte aligned) in the buffer area.
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let addr = self.next_buf;
        self.next_buf = (addr + len.max(1)).next_multiple_of(8);
        assert!(
            self.next_buf <= self.buf_end,
            "driver buffer area exhausted"
        );
        GuestAddress(addr)
    }

    /// Forgets every buffer handed out by [`Driver::alloc`], so the area can
    /// be reused; call it only when the device holds no chain.
    pub fn recycle_buffers(&mut self) {
        assert!(self.chains.is_empty(), "the device still holds chains");
        self.next_buf = self.buf_start;
    }

    /// Writes one raw descriptor (for crafting malformed chains).
    pub fn write_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = split_ring::Desc {
            addr,
            len,
            flags,
            next,
        };
        assert!(self.ring.write_desc(&mut self.mem, index, d));
    }

    /// Descriptors not in any chain the device still holds.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Puts `head` in the available ring (no notification).
    pub fn push_avail(&mut self, head: u16) {
        assert!(self
            .ring
            .make_available(&mut self.mem, self.avail_idx, head));
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Links `bufs` into a chain from free descriptors and makes it
    /// available. Returns the head.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        assert!(
            !bufs.is_empty() && bufs.len() <= self.free.len(),
            "no room for the chain"
        );
        let indices: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        assert!(split_ring::write_chain(
            &mut self.mem,
            self.ring.desc,
            &indices,
            bufs
        ));
        let head = indices[0];
        self.chains.insert(head, indices);
        self.push_avail(head);
        head
    }

    /// Makes `bufs` available as one descriptor pointing to an indirect
    /// table (§2.7.5.3) placed in the buffer area. Returns the head.
    pub fn add_indirect_chain(&mut self, bufs: &[Buf]) -> u16 {
        let table = self.alloc(16 * bufs.len() as u64 + 16);
        let table = table.0.next_multiple_of(16);
        let indices: Vec<u16> = (0..bufs.len() as u16).collect();
        assert!(split_ring::write_chain(
            &mut self.mem,
            table,
            &indices,
            bufs
        ));
        let head = self.free.pop().expect("no free descriptor");
        let d = split_ring::indirect_desc(table, bufs.len());
        assert!(self.ring.write_desc(&mut self.mem, head, d));
        self.chains.insert(head, vec![head]);
        self.push_avail(head);
        head
    }

    /// Builds a virtio-blk request: header, data buffers of `data_lens`
    /// (device-writable if `writable`), and a status byte preset to 0xff.
    pub fn blk_request(
        &mut self,
        request_type: u32,
        sector: u64,
        data_lens: &[u32],
        writable: bool,
    ) -> BlkRequest {
        let data: Vec<Buf> = data_lens
            .iter()
            .map(|&len| Buf {
                addr: self.alloc(u64::from(len)),
                len,
                writable,
            })
            .collect();
        self.publish_blk(request_type, sector, data)
    }

    /// Puts header, `data` and a status byte preset to 0xff in one chain
    /// and makes it available.
    fn publish_blk(&mut self, request_type: u32, sector: u64, data: Vec<Buf>) -> BlkRequest {
        let hdr = self.alloc(16);
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&request_type.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, hdr).unwrap();
        let status = self.alloc(1);
        self.mem.write_obj(0xffu8, status).unwrap();
        let mut bufs = vec![Buf::readable(hdr, 16)];
        bufs.extend(&data);
        bufs.push(Buf::writable(status, 1));
        let head = self.add_chain(&bufs);
        BlkRequest { head, data, status }
    }

    /// A virtio-blk request in any layout §2.7.4.1 allows. Its
    /// device-readable bytes (header, then `payload`) and device-writable
    /// bytes (`in_len` data bytes, then the status byte, preset to 0xff)
    /// each lie contiguously in guest memory, cut into descriptors at
    /// `framing`'s offsets. The returned data is the one writable data
    /// range (reads) or readable data range (writes).
    pub fn blk_framed(
        &mut self,
        header: BlkHeader,
        payload: &[u8],
        in_len: u32,
        framing: &Framing,
    ) -> BlkRequest {
        let out_len = 16 + payload.len() as u64;
        let readable = self.alloc(out_len);
        self.mem.write_slice(&header.bytes(), readable).unwrap();
        self.mem
            .write_slice(payload, readable.unchecked_add(16))
            .unwrap();
        let writable = self.alloc(u64::from(in_len) + 1);
        let status = writable.unchecked_add(u64::from(in_len));
        self.mem.write_obj(0xffu8, status).unwrap();
        let mut bufs = cut(readable, out_len, &framing.readable, false);
        bufs.extend(cut(
            writable,
            u64::from(in_len) + 1,
            &framing.writable,
            true,
        ));
        let data = if in_len > 0 {
            vec![Buf::writable(writable, in_len)]
        } else if !payload.is_empty() {
            vec![Buf::readable(
                readable.unchecked_add(16),
                payload.len() as u32,
            )]
        } else {
            Vec::new()
        };
        let head = if framing.indirect {
            self.add_indirect_chain(&bufs)
        } else {
            self.add_chain(&bufs)
        };
        BlkRequest { head, data, status }
    }

    /// A T_OUT request whose one data buffer holds `payload`, written to
    /// guest memory before the chain becomes available: a device may
    /// process a chain as soon as it is in the available ring, before the
    /// next notification.
    pub fn blk_write(&mut self, sector: u64, payload: &[u8]) -> BlkRequest {
        let len = u32::try_from(payload.len()).expect("payload fits a descriptor");
        let buf = Buf::readable(self.alloc(u64::from(len)), len);
        self.mem.write_slice(payload, buf.addr).unwrap();
        self.publish_blk(VIRTIO_BLK_T_OUT, sector, vec![buf])
    }

    /// A GET_ID request with a buffer of `len` bytes.
    pub fn get_id(&mut self, len: u32) -> BlkRequest {
        self.blk_request(VIRTIO_BLK_T_GET_ID, 0, &[len], true)
    }

    /// Notifies queue 0 through the QueueNotify register.
    pub fn notify(&self) {
        self.write32(reg::QUEUE_NOTIFY, 0);
    }

    /// The used ring's index as the device last published it.
    pub fn used_idx(&self) -> u16 {
        self.ring.used_idx(&self.mem).unwrap()
    }

    /// Takes the next used entry `(head, len)`, freeing its descriptors.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        let (id, len) = self.ring.used_entry(&self.mem, self.last_used).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        let head = id as u16;
        if let Some(indices) = self.chains.remove(&head) {
            self.free.extend(indices);
        }
        Some((head, len))
    }

    /// Waits until `n` used entries are there and takes them.
    pub fn wait_used(&mut self, n: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n {
            match self.pop_used() {
                Some(e) => out.push(e),
                None if Instant::now() > deadline => {
                    panic!("only {} of {n} used entries after {WAIT:?}", out.len())
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        out
    }

    /// Waits until `pred` holds on the Status register, or the deadline.
    pub fn wait_status(&self, pred: impl Fn(u32) -> bool) -> u32 {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status();
            if pred(s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sets `used_event` (EVENT_IDX): interrupt only once the used index
    /// passes `idx`.
    pub fn set_used_event(&mut self, idx: u16) {
        let at = self.ring.used_event();
        assert!(self.mem.put_index(at, idx));
    }

    /// `avail_event` (EVENT_IDX) as the device wrote it.
    pub fn avail_event(&self) -> u16 {
        self.mem.get_index(self.ring.avail_event()).unwrap()
    }

    /// The status byte of `req`.
    pub fn status_of(&self, req: &BlkRequest) -> u8 {
        self.mem.read_obj(req.status).unwrap()
    }
}
