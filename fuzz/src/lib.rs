//! Shared pieces of ferrite's fuzz targets.
//!
//! - [`layout`]: the guest memory the targets use (two adjacent regions, a
//!   hole, a small third region) and a bump allocator over it;
//! - [`chain`]: structured fuzz input for virtio-blk descriptor chains and
//!   the code that writes it into guest memory the way a (buggy) driver
//!   would;
//! - [`model`]: an independent model of what a chain lets the device touch
//!   (the oracle for "nothing outside the request's range changed");
//! - [`rig`]: a real `BlockDevice` over a small patterned image behind a real
//!   `MmioTransport`, reused across fuzz iterations;
//! - [`diff`]: where two byte strings differ, without a per-byte loop
//!   over equal stretches;
//! - [`cases`] and [`seeds`]: the targets' input types, and the seed corpus
//!   written from typed values (`cargo run --example seeds`).

pub mod cases;
pub mod chain;
pub mod diff;
pub mod layout;
pub mod model;
pub mod rig;
pub mod seeds;
