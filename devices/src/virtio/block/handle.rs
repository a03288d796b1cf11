//! [`BlockHandle`]: what the VMM keeps of a block device, in a module of
//! its own so that the device and the module root need not import each
//! other.

use std::sync::Arc;

use super::io_thread::Worker;
use super::metrics::BlockReport;

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

    /// Retries at once the requests held after a host error (werror=/
    /// rerror= stop or enospc), if any; the I/O thread also retries them
    /// every second by itself.
    pub fn resume(&self) {
        self.worker.post(super::io_thread::Control::Resume);
    }

    /// Stops the I/O thread: in-flight requests complete (and are answered),
    /// then a final flush unless the cache mode is `unsafe`. Idempotent;
    /// returns the final report. After it, the device answers nothing more.
    pub fn shutdown(&self) -> BlockReport {
        self.worker.stop()
    }
}
