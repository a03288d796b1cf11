//! The fuzz targets' input types (here, not in the targets, so that the
//! seed corpus can be written from typed values; see [`crate::seeds`]).

use arbitrary::Arbitrary;

use crate::chain::{Queue, Rings};

/// Input of `virtio_blk_request`.
#[derive(Arbitrary, Debug)]
pub struct BlkCase {
    /// Which disk (cache mode, read-only).
    pub disk: u8,
    /// Bits 0-6: optional features; bit 7: keep bits the device does not
    /// offer (FEATURES_OK is then refused).
    pub features: u8,
    /// The `writeback` byte written while the device works.
    pub wce: u8,
    /// The driver's queue.
    pub queue: Queue,
}

/// An access width of `virtio_mmio_registers`.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Width {
    W1,
    W2,
    W4,
    W8,
}

impl Width {
    /// Access size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Width::W1 => 1,
            Width::W2 => 2,
            Width::W4 => 4,
            Width::W8 => 8,
        }
    }
}

/// One step of `virtio_mmio_registers`.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// A read anywhere (offsets past the window included).
    Read { width: Width, offset: u16 },
    /// A write anywhere.
    Write {
        width: Width,
        offset: u16,
        value: u64,
    },
    /// A 32-bit write to register `index * 4` (below the config space).
    Reg { index: u8, value: u32 },
    /// A Status write.
    Status(u8),
    /// ACKNOWLEDGE, DRIVER, the offered features minus `drop` plus `add`,
    /// FEATURES_OK.
    Negotiate { drop: u64, add: u64 },
    /// Queue `sel`'s registers: size, ring addresses, ready.
    Queue {
        sel: u8,
        size: u16,
        rings: Rings,
        ready: u32,
    },
    /// A driver's queue with its chains written to guest memory, its
    /// registers set up, then DRIVER_OK.
    Start(Queue),
    /// A QueueNotify write of `value`.
    Notify(u32),
    /// InterruptACK of `bits`.
    Ack(u32),
    /// A config-space write.
    Config { offset: u8, data: Vec<u8> },
    /// Raw guest memory bytes.
    Memory { addr: u32, bytes: Vec<u8> },
    /// Status 0.
    Reset,
}

/// Input of `virtio_mmio_registers`.
#[derive(Arbitrary, Debug)]
pub struct RegCase {
    /// Which disk (see `rig::KINDS`).
    pub disk: u8,
    /// What the driver does (the first 256 are used).
    pub ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
/// The parser's `DiskLimits`, from the input.
pub struct Limits {
    pub read_only: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    pub max_zeroing_sectors: u8,
    pub max_zeroing_segments: u8,
}

#[derive(Arbitrary, Debug)]
/// Input of `block_parse`.
pub struct ParseCase {
    pub limits: Limits,
    pub queue: Queue,
}
