//! virtio-blk requests: parse a descriptor chain, then finish it.
//!
//! [`Request::parse`] is a pure function of the chain, guest memory and the
//! disk's limits: it reads the header (and discard segments) and checks
//! everything before any byte of the image is touched. The checks are the
//! MUSTs of the virtio 1.2 spec, cited beside each one.
//!
//! A request then moves through a typed lifecycle: [`Request`] (parsed) →
//! [`InFlight`] (holding the descriptor head and the status byte's address)
//! → [`Finished`] (status written, ready for the used ring). `finish`
//! consumes the in-flight value, so the status byte is written exactly once
//! whether the engine succeeded, failed, or the request was refused.
//!
//! Framing: any layout §2.7.4.1 allows. The header is the first 16
//! device-readable bytes of the chain, the status byte the last byte of its
//! last (device-writable) descriptor, the data what lies between; each may
//! share a descriptor with its neighbour or be split across several. Linux
//! puts each in descriptors of its own; QEMU's tests merge header and data,
//! or data and status, and this parser reads all of them the same way.

use std::ops::Deref;

use block::{Disk, Op, Segment};

pub use super::error::{ChainError, RequestError};

use smallvec::SmallVec;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

/// Bytes per virtio-blk sector, whatever the disk's logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of a GET_ID answer (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;
/// Size of the request header (`struct virtio_blk_outhdr`).
const HEADER_LEN: u32 = 16;
/// Size of one discard / write-zeroes segment.
const SEGMENT_LEN: u32 = 16;
/// Most descriptors in a chain, an indirect table's included: the queue
/// size (`device::QUEUE_SIZE`). §2.7.5.3.1: the driver MUST NOT create a
/// longer chain. virtio-queue walks an indirect table of up to 65535
/// entries; reading no further bounds what one request costs the host
/// (its descriptor, segment and iovec vectors) whatever the guest writes.
pub const MAX_CHAIN: usize = 256;

/// What [`Request::parse`] needs to know about the disk and the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLimits {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// The device offers VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The device offers VIRTIO_BLK_F_DISCARD.
    pub discard: bool,
    /// The device offers VIRTIO_BLK_F_WRITE_ZEROES.
    pub write_zeroes: bool,
    /// `max_discard_sectors` / `max_write_zeroes_sectors` of the config space.
    pub max_zeroing_sectors: u32,
    /// `max_discard_seg` / `max_write_zeroes_seg` of the config space.
    pub max_zeroing_segments: u32,
}

/// A guest-physical buffer of a request (one data descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// Start in guest memory.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// What a request asks for, with everything already checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// VIRTIO_BLK_T_IN: read into `data` from `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Device-writable buffers, in order.
        data: Vec<GuestRange>,
    },
    /// VIRTIO_BLK_T_OUT: write `data` at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Device-readable buffers, in order.
        data: Vec<GuestRange>,
    },
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: the serial into `data`.
    GetId {
        /// Device-writable buffers, in order.
        data: Vec<GuestRange>,
    },
    /// VIRTIO_BLK_T_DISCARD of one segment.
    Discard {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u32,
    },
    /// VIRTIO_BLK_T_WRITE_ZEROES of one segment.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u32,
        /// The driver allows deallocating the range.
        may_unmap: bool,
    },
}

/// Total length of `ranges`.
pub fn total_len(ranges: &[GuestRange]) -> u64 {
    ranges.iter().map(|r| u64::from(r.len)).sum()
}

/// Why [`Request::parse`] gave no request.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Nothing can be answered: the device must enter DEVICE_NEEDS_RESET.
    #[error("malformed chain at head {head}: {reason}")]
    Malformed {
        /// Descriptor head index.
        head: u16,
        /// What is wrong.
        reason: ChainError,
    },
    /// The request is refused; `slot` is where to say so.
    #[error("request at head {} refused: {reason}", slot.head)]
    Refused {
        /// Where the status byte goes.
        slot: StatusSlot,
        /// Why.
        reason: RequestError,
    },
}

/// Where a request's status byte goes, and which head to return. Not
/// `Clone`: finishing consumes it, so the status is written once.
#[derive(Debug, PartialEq, Eq)]
pub struct StatusSlot {
    head: u16,
    addr: GuestAddress,
}

/// A request ready for the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Descriptor head index.
    pub head: u16,
    /// Bytes the device wrote into the chain (data plus the status byte).
    pub used_len: u32,
    /// The status byte written.
    pub status: u8,
}

impl StatusSlot {
    /// The descriptor head this answers.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Writes the status byte. `written` is how many data bytes the device
    /// wrote on success (reads, GET_ID); nothing counts on failure.
    pub fn finish(self, mem: &GuestMemoryMmap, result: Result<u32, &RequestError>) -> Finished {
        let (status, written) = match result {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(e) => (e.status(), 0),
        };
        // The address was checked at parse time; if the write still fails
        // there is nobody to tell, and the used entry must go out anyway.
        let _ = mem.write_obj(status, self.addr);
        Finished {
            head: self.head,
            used_len: written.saturating_add(1),
            status,
        }
    }
}

/// A request handed to the engine: what is needed to answer it later.
#[derive(Debug, PartialEq, Eq)]
pub struct InFlight {
    slot: StatusSlot,
    written_on_success: u32,
}

impl InFlight {
    /// The descriptor head this answers.
    pub fn head(&self) -> u16 {
        self.slot.head
    }

    /// Writes the status for `result` and gives the used-ring entry.
    pub fn finish(self, mem: &GuestMemoryMmap, result: Result<(), &RequestError>) -> Finished {
        let written = self.written_on_success;
        self.slot.finish(mem, result.map(|()| written))
    }
}

/// A parsed, fully checked request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestKind,
    slot: StatusSlot,
}

impl Request {
    /// The descriptor head this request came from.
    pub fn head(&self) -> u16 {
        self.slot.head
    }

    /// Moves the request in flight: the caller executes `kind` and later
    /// finishes the [`InFlight`].
    pub fn begin(self) -> (RequestKind, InFlight) {
        let written_on_success = match &self.kind {
            // Bounded by the chain's total, which virtio-queue keeps < 2^32.
            RequestKind::Read { data, .. } => u32::try_from(total_len(data)).unwrap_or(u32::MAX),
            RequestKind::GetId { data } => total_len(data).min(ID_BYTES as u64) as u32,
            _ => 0,
        };
        (
            self.kind,
            InFlight {
                slot: self.slot,
                written_on_success,
            },
        )
    }

    /// Parses and checks one descriptor chain, whatever its layout.
    ///
    /// §2.7.4.1: the device MUST NOT assume a particular arrangement of
    /// descriptors. The chain is read as two byte streams, its
    /// device-readable bytes and its device-writable bytes, in order: the
    /// header is the first 16 readable bytes, the status the last byte of
    /// the last (writable) descriptor, and the data whatever lies between,
    /// however the driver split or merged them.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        limits: &DiskLimits,
    ) -> Result<Request, ParseError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let malformed = |reason| ParseError::Malformed { head, reason };
        // Inline storage for the usual chains (Linux sends 3 descriptors for
        // a 4 KiB request): no allocation per request on the common path.
        let descs: SmallVec<[Descriptor; 4]> = chain.take(MAX_CHAIN + 1).collect();
        if descs.len() > MAX_CHAIN {
            return Err(malformed(ChainError::TooLong { max: MAX_CHAIN }));
        }
        let status = check_chain(&descs, mem).map_err(malformed)?;
        let slot = StatusSlot { head, addr: status };
        let streams = Streams::of(&descs);
        // §5.2.6: without the 16-byte header nothing can be answered (the
        // device cannot tell what was asked; QEMU calls it a virtio error).
        let readable = total_len(&streams.readable);
        if readable < u64::from(HEADER_LEN) {
            return Err(malformed(ChainError::ShortHeader {
                len: readable as u32,
            }));
        }
        match parse_streams(&streams, mem, limits) {
            Ok(kind) => Ok(Request { kind, slot }),
            Err(reason) => Err(ParseError::Refused { slot, reason }),
        }
    }
}

/// What became of a request handed to [`Request::submit`].
#[derive(Debug)]
pub enum Submitted {
    /// On the disk under the given tag: finish it when that completion
    /// comes back.
    InFlight(InFlight),
    /// Answered without the disk: GET_ID, an empty transfer, or an
    /// operation the disk refused (`failed`).
    Answered {
        /// The used-ring entry.
        finished: Finished,
        /// It was answered IOERR.
        failed: bool,
    },
}

impl Request {
    /// Turns the request into a block operation and submits it to `disk`
    /// tagged `tag` (GET_ID is answered here, from `id`). The status byte
    /// is written now if the request does not reach the disk, else by
    /// [`InFlight::finish`] once its completion is back.
    ///
    /// # Safety
    /// `mem` must be the guest memory the request was parsed against, and
    /// its mappings must stay alive until `disk` has returned the
    /// completion tagged `tag` (`Disk::submit`'s contract).
    pub unsafe fn submit(
        self,
        mem: &GuestMemoryMmap,
        id: &[u8; ID_BYTES],
        disk: &mut Disk,
        tag: u64,
    ) -> Submitted {
        let (kind, in_flight) = self.begin();
        let answered = |in_flight: InFlight, result: Result<(), RequestError>| {
            let finished = in_flight.finish(mem, result.as_ref().map(|_| ()));
            Submitted::Answered {
                finished,
                failed: result.is_err(),
            }
        };
        let op = match to_op(kind, mem, id) {
            Ok(Some(op)) => op,
            Ok(None) => return answered(in_flight, Ok(())),
            Err(e) => return answered(in_flight, Err(e)),
        };
        // SAFETY: every segment of `op` was made by `to_op` from ranges
        // `parse` proved to lie inside `mem`, so each points into mapped
        // guest RAM (readable and writable), valid for its length; the
        // caller keeps the mappings alive until the completion. The device
        // does not touch these buffers meanwhile; the guest may, as with
        // DMA on real hardware, but guest memory is only ever accessed
        // through raw pointers and volatile copies, never Rust references.
        match unsafe { disk.submit(op, tag) } {
            Ok(()) => Submitted::InFlight(in_flight),
            // The disk refused it: it comes back with the error and is
            // answered once.
            Err(e) => answered(in_flight, Err(RequestError::Io(e))),
        }
    }
}

/// Turns a parsed request into a disk operation, or answers it in guest
/// memory (Ok(None)) when the disk is not needed.
fn to_op(
    kind: RequestKind,
    mem: &GuestMemoryMmap,
    id: &[u8; ID_BYTES],
) -> Result<Option<Op>, RequestError> {
    let bytes = |sector: u64| sector * SECTOR_SIZE;
    Ok(Some(match kind {
        RequestKind::Read { sector, data } => match segments(mem, &data)? {
            s if s.is_empty() => return Ok(None),
            segments => Op::Read {
                offset: bytes(sector),
                segments,
            },
        },
        RequestKind::Write { sector, data } => match segments(mem, &data)? {
            s if s.is_empty() => return Ok(None),
            segments => Op::Write {
                offset: bytes(sector),
                segments,
            },
        },
        RequestKind::Flush => Op::Flush,
        RequestKind::GetId { data } => {
            write_id(mem, &data, id)?;
            return Ok(None);
        }
        RequestKind::Discard { sector, sectors } => Op::Discard {
            offset: bytes(sector),
            len: bytes(u64::from(sectors)),
        },
        RequestKind::WriteZeroes {
            sector,
            sectors,
            may_unmap,
        } => Op::WriteZeroes {
            offset: bytes(sector),
            len: bytes(u64::from(sectors)),
            may_unmap,
        },
    }))
}

/// Host segments for guest ranges (a range crossing a region boundary
/// becomes several segments).
fn segments(mem: &GuestMemoryMmap, data: &[GuestRange]) -> Result<Vec<Segment>, RequestError> {
    let mut out = Vec::with_capacity(data.len());
    for r in data.iter().filter(|r| r.len > 0) {
        for slice in GuestMemoryBackend::get_slices(mem, r.addr, r.len as usize) {
            let slice = slice.map_err(|_| RequestError::GuestMemory(r.addr.0))?;
            // For the plain mmap backend the guard is just the pointer; the
            // mapping is kept alive by `mem` (see `Request::submit`).
            let guard = slice.ptr_guard_mut();
            out.push(Segment {
                addr: guard.as_ptr(),
                len: guard.len(),
            });
        }
    }
    Ok(out)
}

/// The checks that decide whether the chain can be answered at all;
/// returns the address of its status byte.
fn check_chain(descs: &[Descriptor], mem: &GuestMemoryMmap) -> Result<GuestAddress, ChainError> {
    // virtio-queue ends the iteration silently on a loop, a chain longer
    // than the queue (§2.7.5.2: the driver MUST NOT create a loop; the
    // device MUST handle it), a next index past the table, an unreadable
    // descriptor, or a bad indirect table (§2.7.5.3.2); in each case the
    // last descriptor read still has NEXT set.
    let last = *descs.last().ok_or(ChainError::Empty)?;
    if last.has_next() {
        return Err(ChainError::Truncated {
            descriptors: descs.len(),
        });
    }
    // Every buffer must lie in guest memory before anything is read or
    // written (DESIGN.md "Requests"; the device may touch nothing else).
    // An empty one must still start in it: vm-memory's range check finds
    // nothing to refuse in zero bytes, wherever they are.
    for d in descs {
        let inside = if d.len() == 0 {
            mem.address_in_range(d.addr())
        } else {
            GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize)
        };
        if !inside {
            return Err(ChainError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    // §5.2.6: the status byte is the last byte of the chain, written by
    // the device; §2.7.5.1: the device MUST NOT write a device-readable
    // buffer. It is the last byte of the last descriptor, however long.
    if !last.is_write_only() {
        return Err(ChainError::StatusNotWritable);
    }
    if last.len() == 0 {
        return Err(ChainError::StatusEmpty);
    }
    // In memory: checked above, and len >= 1.
    Ok(GuestAddress(last.addr().0 + u64::from(last.len()) - 1))
}

/// A chain as the two byte streams §2.7.4.2 makes of it.
struct Streams {
    /// Device-readable buffers in order: the header, then OUT data or
    /// discard/write-zeroes segments.
    readable: SmallVec<[GuestRange; 4]>,
    /// Device-writable buffers in order: IN data or the GET_ID answer,
    /// then the status byte.
    writable: SmallVec<[GuestRange; 4]>,
    /// The first device-readable buffer that follows a device-writable one.
    misplaced: Option<GuestAddress>,
}

impl Streams {
    fn of(descs: &[Descriptor]) -> Streams {
        let mut s = Streams {
            readable: SmallVec::new(),
            writable: SmallVec::new(),
            misplaced: None,
        };
        for d in descs {
            let range = GuestRange {
                addr: d.addr(),
                len: d.len(),
            };
            if d.is_write_only() {
                s.writable.push(range);
            } else {
                if !s.writable.is_empty() && s.misplaced.is_none() {
                    s.misplaced = Some(d.addr());
                }
                s.readable.push(range);
            }
        }
        s
    }

    /// Readable bytes after the 16-byte header.
    fn readable_data(&self) -> impl Iterator<Item = GuestRange> + '_ {
        sub_ranges(&self.readable, u64::from(HEADER_LEN), 0)
    }

    /// Writable bytes before the status byte.
    fn writable_data(&self) -> impl Iterator<Item = GuestRange> + '_ {
        sub_ranges(&self.writable, 0, 1)
    }
}

/// The bytes of `ranges` from byte `skip` on, without the last `trim`
/// bytes, as ranges (empty pieces left out).
fn sub_ranges(
    ranges: &[GuestRange],
    skip: u64,
    trim: u64,
) -> impl Iterator<Item = GuestRange> + '_ {
    let end = total_len(ranges).saturating_sub(trim);
    ranges
        .iter()
        .scan(0u64, move |at, r| {
            let (start, stop) = (*at, *at + u64::from(r.len));
            *at = stop;
            let (from, to) = (start.max(skip), stop.min(end));
            Some((from < to).then(|| GuestRange {
                addr: r.addr.unchecked_add(from - start),
                len: (to - from) as u32,
            }))
        })
        .flatten()
}

/// Checks a chain whose status byte and header are known to be there.
fn parse_streams(
    streams: &Streams,
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
) -> Result<RequestKind, RequestError> {
    // §2.7.4.2: the driver MUST place device-writable descriptors after
    // device-readable ones; the status byte is there, so say IOERR.
    if let Some(addr) = streams.misplaced {
        return Err(RequestError::ReadableAfterWritable { addr: addr.0 });
    }
    let raw: [u8; HEADER_LEN as usize] = gather(mem, &streams.readable)?;
    let request_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&raw[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    match request_type {
        VIRTIO_BLK_T_IN => {
            // §5.2.6: IN data is device-writable.
            let data = only(streams.writable_data(), streams.readable_data(), true)?;
            check_rw(sector, &data, limits)?;
            Ok(RequestKind::Read { sector, data })
        }
        VIRTIO_BLK_T_OUT => {
            // §5.2.6.2: a read-only device MUST answer writes with IOERR and
            // MUST NOT write any data.
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            // §5.2.6: OUT data is device-readable.
            let data = only(streams.readable_data(), streams.writable_data(), false)?;
            check_rw(sector, &data, limits)?;
            Ok(RequestKind::Write { sector, data })
        }
        // Flush carries no data (§5.2.6); stray buffers are not touched.
        VIRTIO_BLK_T_FLUSH => Ok(RequestKind::Flush),
        VIRTIO_BLK_T_GET_ID => Ok(RequestKind::GetId {
            data: only(streams.writable_data(), streams.readable_data(), true)?,
        }),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            parse_zeroing(request_type, streams, mem, limits)
        }
        // §5.2.6.2: anything else (SCSI, zoned, secure erase, and discard or
        // write-zeroes when not offered) is answered with UNSUPP.
        other => Err(RequestError::Unsupported(other)),
    }
}

/// `data`, if no data byte points the other way (`stray`): §2.7.5.1, the
/// device MUST NOT write a device-readable buffer, and SHOULD NOT read a
/// device-writable one; §5.2.6 gives each request type one direction.
fn only(
    data: impl Iterator<Item = GuestRange>,
    mut stray: impl Iterator<Item = GuestRange>,
    writable: bool,
) -> Result<Vec<GuestRange>, RequestError> {
    let name = |w: bool| {
        if w {
            "device-writable"
        } else {
            "device-readable"
        }
    };
    match stray.next() {
        Some(r) => Err(RequestError::DataDirection {
            addr: r.addr.0,
            found: name(!writable),
            wanted: name(writable),
        }),
        None => Ok(data.collect()),
    }
}

/// §5.2.6.1: IN/OUT data is a multiple of 512 bytes and MUST NOT reach past
/// the capacity; the device answers a violation with IOERR.
fn check_rw(sector: u64, data: &[GuestRange], limits: &DiskLimits) -> Result<(), RequestError> {
    let len = total_len(data);
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::DataNotSectorMultiple { len });
    }
    check_range(sector, len / SECTOR_SIZE, limits)
}

fn check_range(sector: u64, sectors: u64, limits: &DiskLimits) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity: limits.capacity_sectors,
        }),
    }
}

/// Discard and write-zeroes: segments of `{le64 sector, le32 num_sectors,
/// le32 flags}` in device-readable data.
fn parse_zeroing(
    request_type: u32,
    streams: &Streams,
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
) -> Result<RequestKind, RequestError> {
    let write_zeroes = request_type == VIRTIO_BLK_T_WRITE_ZEROES;
    // §5.2.6.2 (RO): a read-only device writes nothing; DESIGN.md answers
    // IOERR whether or not the command is offered.
    if limits.read_only {
        return Err(RequestError::ReadOnly);
    }
    let offered = if write_zeroes {
        limits.write_zeroes
    } else {
        limits.discard
    };
    if !offered {
        return Err(RequestError::Unsupported(request_type));
    }
    // §5.2.6: the segments are device-readable.
    let data = &only(streams.readable_data(), streams.writable_data(), false)?;
    let raw = first_segment(data, mem, limits)?;
    let sector = u64::from_le_bytes([
        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
    ]);
    let sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
    // §5.2.6.2: UNSUPP for any unknown flag, and for unmap on a discard.
    let known = if write_zeroes {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    if flags & !known != 0 {
        return Err(RequestError::UnsupportedFlags(flags));
    }
    // §5.2.6.1: num_sectors MUST NOT exceed max_*_sectors.
    if sectors > limits.max_zeroing_sectors {
        return Err(RequestError::SegmentTooLarge {
            sectors,
            max: limits.max_zeroing_sectors,
        });
    }
    check_range(sector, u64::from(sectors), limits)?;
    Ok(if write_zeroes {
        RequestKind::WriteZeroes {
            sector,
            sectors,
            may_unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        }
    } else {
        RequestKind::Discard { sector, sectors }
    })
}

/// The bytes of the first discard/write-zeroes segment. §5.2.6.1: the data
/// is a multiple of the segment size, with at most max_*_seg segments
/// (ferrite offers one, so exactly 16 bytes).
fn first_segment(
    data: &[GuestRange],
    mem: &GuestMemoryMmap,
    limits: &DiskLimits,
) -> Result<[u8; SEGMENT_LEN as usize], RequestError> {
    let len = total_len(data);
    let max = limits.max_zeroing_segments;
    if len == 0
        || !len.is_multiple_of(u64::from(SEGMENT_LEN))
        || len / u64::from(SEGMENT_LEN) > u64::from(max)
    {
        return Err(RequestError::SegmentCount { len, max });
    }
    gather(mem, data)
}

/// Reads the first `N` bytes spread over `ranges` (the caller checked
/// that there are that many).
fn gather<const N: usize>(
    mem: &GuestMemoryMmap,
    ranges: &[GuestRange],
) -> Result<[u8; N], RequestError> {
    let (mut out, len) = ([0u8; N], N);
    let mut done = 0;
    for r in ranges {
        if done == len {
            break;
        }
        let n = (r.len as usize).min(len - done);
        mem.read_slice(&mut out[done..done + n], r.addr)
            .map_err(|_| RequestError::GuestMemory(r.addr.0))?;
        done += n;
    }
    Ok(out)
}

/// The GET_ID answer for `serial`: its first 20 bytes, NUL-padded when
/// shorter (§5.2.6: no terminating NUL when it fills all 20).
pub fn id_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let n = serial.len().min(ID_BYTES);
    id[..n].copy_from_slice(&serial.as_bytes()[..n]);
    id
}

/// Writes the GET_ID answer into the request's buffers (at most 20 bytes,
/// fewer if the buffers are shorter); returns the bytes written.
pub fn write_id(
    mem: &GuestMemoryMmap,
    data: &[GuestRange],
    id: &[u8; ID_BYTES],
) -> Result<u32, RequestError> {
    let mut done = 0;
    for r in data {
        if done == ID_BYTES {
            break;
        }
        let n = (r.len as usize).min(ID_BYTES - done);
        mem.write_slice(&id[done..done + n], r.addr)
            .map_err(|_| RequestError::GuestMemory(r.addr.0))?;
        done += n;
    }
    Ok(done as u32)
}

#[cfg(test)]
mod tests;
