//! virtio-blk (virtio 1.2 §5.2) over a [`block::Disk`].
//!
//! - [`device`]: features, configuration space, and the vCPU-side half
//!   (what the transport calls);
//! - [`request`]: parsing a descriptor chain into a checked request, and the
//!   request lifecycle that writes each status byte once;
//! - `io_thread`: the disk's own thread, which pops, submits, completes
//!   and interrupts;
//! - [`poll`]: how long that thread spins for work before it sleeps;
//! - [`metrics`]: the [`BlockReport`] of `--stats-json`.
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

pub mod device;
mod error;
mod io_thread;
pub mod metrics;
pub mod poll;
pub mod request;

use std::sync::Arc;

pub use device::{BlockDevice, BlockOptions};
pub use error::{BlockDeviceError, StartHookError, ThreadStart};
pub use metrics::{BlockReport, DeviceCounters};
pub use poll::DEFAULT_POLL_MAX;

use io_thread::Worker;

/// The VMM's handle on a block device: counters and shutdown, from any
/// thread, for as long as it likes (also after the device is dropped).
#[derive(Clone)]
pub struct BlockHandle {
    worker: Arc<Worker>,
}

impl BlockHandle {
    pub(crate) fn new(worker: Arc<Worker>) -> Self {
        BlockHandle { worker }
    }

    /// The report as of the I/O thread's last batch.
    pub fn stats(&self) -> BlockReport {
        self.worker.report()
    }

    /// Stops the I/O thread: in-flight requests complete (and are answered),
    /// then a final flush unless the cache mode is `unsafe`. Idempotent;
    /// returns the final report. After it, the device answers nothing more.
    pub fn shutdown(&self) -> BlockReport {
        self.worker.stop()
    }
}
