//! virtio-blk (virtio 1.2 §5.2) over a [`block::Disk`].
//!
//! - [`device`]: features, configuration space, and the vCPU-side half
//!   (what the transport calls);
//! - [`request`]: parsing a descriptor chain into a checked request (any
//!   layout), turning it into a block operation and submitting it, and the
//!   request lifecycle that writes each status byte once;
//! - `io_thread`: the disk's own thread, which pops, holds the in-flight
//!   slots, completes and interrupts;
//! - [`poll`]: how long that thread spins for work before it sleeps;
//! - [`affinity`]: the host CPUs that thread may run on;
//! - [`metrics`]: the [`BlockReport`] of `--stats-json`;
//! - `error`, `handle`: the errors and the VMM's [`BlockHandle`], apart so
//!   that no two of these modules import each other.
//!
//! How the VMM wires one disk:
//!
//! ```text
//! let disk = block::Disk::open(&cfg)?;
//! let device = BlockDevice::new(disk, serial)?;
//! let transport = MmioTransport::new(device, mem.clone(), Arc::new(irqfd))?;
//! vm.register_ioevent(transport.notify_eventfd(), base + NOTIFY_OFFSET)?;
//! let handle = transport.block_handle();
//! mmio_bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)?;
//! // ... at exit:
//! let report = handle.shutdown(); // serde::Serialize, see `metrics`
//! ```

pub mod affinity;
pub mod contention;
pub mod device;
mod error;
mod handle;
mod io_thread;
pub mod metrics;
pub mod poll;
pub mod request;
mod stall;

pub use affinity::{CpuList, CpuListError};
pub use device::{BlockDevice, BlockOptions};
pub use error::{BlockDeviceError, StartHookError, ThreadStart};
pub use handle::BlockHandle;
pub use metrics::{BlockReport, DeviceCounters};
pub use poll::DEFAULT_POLL_MAX;
pub use stall::RETRY_EVERY;
