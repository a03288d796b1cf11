//! What the caller hands in (`Op` over `Segment`s) and what comes back
//! (`Completion`): the crate's interface for one operation.

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
