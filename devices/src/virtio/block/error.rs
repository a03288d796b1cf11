//! The errors of the block device: what it reports to the VMM, and why a
//! request is malformed or refused. In a module of their own so that the
//! vCPU-side device, its I/O thread and the request parser all use them
//! without importing each other.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};

/// What the I/O thread's start hook may fail with: any error of the
/// VMM's (a seccomp filter that would not install, for one), kept whole.
pub type StartHookError = Box<dyn std::error::Error + Send + Sync>;

/// Runs first on the device's I/O thread, before it serves anything (the
/// VMM installs the thread's seccomp filter here). An error stops the
/// thread and fails [`super::BlockDevice::with_options`].
pub type ThreadStart = Box<dyn FnOnce() -> Result<(), StartHookError> + Send>;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    /// An eventfd or the epoll instance could not be created.
    #[error("cannot create the virtio-blk event plumbing: {0}")]
    Events(#[source] std::io::Error),
    /// The I/O thread could not be started.
    #[error("cannot start the virtio-blk I/O thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The I/O thread's start hook failed (e.g. its seccomp filter).
    #[error("the virtio-blk I/O thread's start hook failed: {0}")]
    ThreadStart(#[source] StartHookError),
    /// The I/O thread could not be confined to `iothread-cpus`.
    #[error("cannot run the virtio-blk I/O thread on CPUs {cpus}: {source}")]
    Affinity {
        /// The CPUs asked for.
        cpus: String,
        /// What the kernel said (EINVAL: none of them is online and allowed).
        source: std::io::Error,
    },
    /// The I/O thread ended before it said whether it started.
    #[error("the virtio-blk I/O thread died while starting")]
    ThreadDied,
}

/// A chain the device cannot even answer: no status byte to write, or a
/// descriptor it must not touch. The device then needs a reset.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index yields no descriptor (out of the table, or the table
    /// is unreadable).
    #[error("the chain has no descriptor")]
    Empty,
    /// The chain loops, is longer than the queue, leaves the table, or has a
    /// bad indirect table: the last descriptor read still says NEXT.
    #[error(
        "the chain is cut off after {descriptors} descriptors (loop, too long, or bad next index)"
    )]
    Truncated {
        /// Descriptors read before the chain broke.
        descriptors: usize,
    },
    /// More descriptors than the queue size, an indirect table's included
    /// (§2.7.5.3.1).
    #[error("the chain has more than {max} descriptors")]
    TooLong {
        /// The most a chain may have.
        max: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} lies outside guest memory")]
    OutsideMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The last descriptor is device-readable, so there is no status byte
    /// (§5.2.6: it is the last byte, device-writable).
    #[error("the last descriptor is not device-writable, so there is no status byte")]
    StatusNotWritable,
    /// The last descriptor has no bytes.
    #[error("the status descriptor is empty")]
    StatusEmpty,
    /// The chain has fewer than the 16 device-readable bytes of the
    /// request header, however split: the device cannot tell what was
    /// asked, so it cannot answer (QEMU treats this as a virtio error too,
    /// which sets DEVICE_NEEDS_RESET).
    #[error("the chain has {len} device-readable bytes, fewer than the 16 of a header")]
    ShortHeader {
        /// Device-readable bytes in the whole chain.
        len: u32,
    },
}

/// Why a well-framed request is refused or failed; [`RequestError::status`]
/// is what the guest reads in the status byte.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A device-readable descriptor follows a device-writable one
    /// (§2.7.4.2 forbids it).
    #[error("device-readable buffer at {addr:#x} follows a device-writable one")]
    ReadableAfterWritable {
        /// Guest address of the misplaced buffer.
        addr: u64,
    },
    /// Data bytes point the wrong way for the request type.
    #[error("data at {addr:#x} is {found}, the request needs {wanted}")]
    DataDirection {
        /// Guest address of the buffer.
        addr: u64,
        /// "device-readable" or "device-writable".
        found: &'static str,
        /// The direction the request type needs.
        wanted: &'static str,
    },
    /// IN/OUT data not a whole number of sectors.
    #[error("data length {len} is not a multiple of 512")]
    DataNotSectorMultiple {
        /// Total data length.
        len: u64,
    },
    /// The sector range runs past the end of the disk.
    #[error("sectors {sector}+{sectors} run past the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write, discard or write-zeroes to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A request type the device does not implement or offer.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// A discard/write-zeroes segment with a flag the device must refuse.
    #[error("segment flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    /// Segment data not a whole number of 16-byte segments, or more segments
    /// than `max_*_seg`.
    #[error("{len} bytes of segments (at most {max} segments of 16 bytes)")]
    SegmentCount {
        /// Total segment data length.
        len: u64,
        /// Segments allowed.
        max: u32,
    },
    /// A segment larger than `max_*_sectors`.
    #[error("segment of {sectors} sectors exceeds the limit of {max}")]
    SegmentTooLarge {
        /// Sectors asked for.
        sectors: u32,
        /// The limit.
        max: u32,
    },
    /// Guest memory could not be read or written (it was checked, so this
    /// means the guest changed a buffer under the device's feet).
    #[error("guest memory access at {0:#x} failed")]
    GuestMemory(u64),
    /// The disk refused the operation or the host I/O failed.
    #[error("{0}")]
    Io(block::BlockError),
}

impl RequestError {
    /// The virtio status byte for this error (§5.2.6: UNSUPP for what the
    /// device does not support, IOERR for everything else).
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::UnsupportedFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}
