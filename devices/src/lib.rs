//! Guest-visible devices of ferrite.
//!
//! This crate owns what a guest can touch: the bus that routes port and MMIO
//! accesses, the virtio-mmio transport, the virtio-blk device on top of it,
//! and the legacy devices a PC guest expects (8250 serial, i8042 reset line,
//! the debug-exit port). It knows nothing about KVM ioctls: the VMM delivers
//! exits to the [`bus::Bus`] and hands in an [`InterruptLine`] per device
//! (an irqfd under KVM, a recorder in tests). The host side of a disk lives
//! in the `block` crate.

#![deny(missing_docs)]

pub mod bus;
pub mod interrupt;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use interrupt::InterruptLine;
pub use virtio::{block::BlockDevice, block::BlockHandle, block::BlockReport, mmio::MmioTransport};
