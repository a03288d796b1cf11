//! virtio-blk end to end: guest memory from vm-memory, descriptor chains
//! built in it by a driver simulator, registers written through the MMIO
//! transport, a real image file behind the device.

mod affinity;
mod cache;
mod common;
mod fuzz;
mod layouts;
mod requests;
mod transport;
