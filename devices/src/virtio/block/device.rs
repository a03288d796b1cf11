//! The virtio-blk device as the transport sees it: features, configuration
//! space, and the vCPU-side half of activation, reset and the `writeback`
//! byte. All disk work happens on the device's I/O thread; the few calls
//! that must wait for it (reset, activation, a write-cache change, which all
//! drain in-flight I/O first) send it a message and wait for the answer.

use std::sync::Arc;
use std::time::Duration;

use block::{CacheMode, Disk};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::EventFd;

use super::affinity::CpuList;
pub use super::error::{BlockDeviceError, StartHookError, ThreadStart};
use super::handle::BlockHandle;
use super::io_thread::{Control, ThreadSetup, Worker};
use super::metrics::{BlockReport, Identity};
use super::poll::{PollWindow, DEFAULT_POLL_MAX};
use super::request::{id_bytes, DiskLimits, SECTOR_SIZE};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{ActivateContext, ActivateError, VirtioDevice};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest discard / write-zeroes segment, in sectors (2 GiB: a multiple of
/// any block size, so a maximal request is still aligned).
pub const MAX_ZEROING_SECTORS: u32 = 1 << 22;

// Configuration space layout (virtio 1.2 §5.2.4, struct virtio_blk_config).
const CAPACITY: usize = 0;
const SEG_MAX: usize = 12;
const BLK_SIZE: usize = 20;
/// Offset of the `writeback` byte.
pub const WRITEBACK: usize = 32;
const NUM_QUEUES: usize = 34;
const MAX_DISCARD_SECTORS: usize = 36;
const MAX_DISCARD_SEG: usize = 40;
const DISCARD_SECTOR_ALIGNMENT: usize = 44;
const MAX_WRITE_ZEROES_SECTORS: usize = 48;
const MAX_WRITE_ZEROES_SEG: usize = 52;
const WRITE_ZEROES_MAY_UNMAP: usize = 56;
/// Bytes of configuration space, up to the fields ferrite does not offer
/// (secure erase, zoned).
pub const CONFIG_LEN: usize = 60;

/// The features a disk gets (DESIGN.md "Cache modes": VERSION_1, FLUSH and
/// CONFIG_WCE always; RO, DISCARD, WRITE_ZEROES as the disk allows).
/// INDIRECT_DESC lets a driver put a large request in one ring entry
/// (virtio-queue walks the tables; §2.7.5.3).
pub fn features_for(disk: &Disk) -> u64 {
    let mut f = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_BLK_F_FLUSH)
        | (1 << VIRTIO_BLK_F_CONFIG_WCE)
        | (1 << VIRTIO_BLK_F_BLK_SIZE)
        | (1 << VIRTIO_BLK_F_SEG_MAX)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC);
    if disk.read_only() {
        f |= 1 << VIRTIO_BLK_F_RO;
    }
    if disk.supports_discard() {
        f |= 1 << VIRTIO_BLK_F_DISCARD;
    }
    if disk.supports_write_zeroes() {
        f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    f
}

fn put(cfg: &mut [u8; CONFIG_LEN], at: usize, bytes: &[u8]) {
    cfg[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The configuration space without the `writeback` byte (filled at read).
fn config_for(disk: &Disk) -> [u8; CONFIG_LEN] {
    let mut cfg = [0u8; CONFIG_LEN];
    let sectors_per_block = (disk.logical_block_size() / SECTOR_SIZE as u32).max(1);
    put(
        &mut cfg,
        CAPACITY,
        &(disk.capacity() / SECTOR_SIZE).to_le_bytes(),
    );
    // size_max stays 0: SIZE_MAX is not offered, segments of any size work.
    // Header and status take two descriptors of the queue.
    put(
        &mut cfg,
        SEG_MAX,
        &(u32::from(QUEUE_SIZE) - 2).to_le_bytes(),
    );
    // Geometry and topology stay 0: those features are not offered.
    put(&mut cfg, BLK_SIZE, &disk.logical_block_size().to_le_bytes());
    put(&mut cfg, NUM_QUEUES, &1u16.to_le_bytes());
    put(
        &mut cfg,
        MAX_DISCARD_SECTORS,
        &MAX_ZEROING_SECTORS.to_le_bytes(),
    );
    put(&mut cfg, MAX_DISCARD_SEG, &1u32.to_le_bytes());
    put(
        &mut cfg,
        DISCARD_SECTOR_ALIGNMENT,
        &sectors_per_block.to_le_bytes(),
    );
    put(
        &mut cfg,
        MAX_WRITE_ZEROES_SECTORS,
        &MAX_ZEROING_SECTORS.to_le_bytes(),
    );
    put(&mut cfg, MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
    // Write-zeroes with UNMAP may punch a hole only if discard works.
    cfg[WRITE_ZEROES_MAY_UNMAP] = u8::from(disk.supports_discard());
    cfg
}

/// A virtio-blk device over one [`block::Disk`]; wrap it in an
/// [`MmioTransport`] to put it on the bus.
pub struct BlockDevice {
    features: u64,
    config: [u8; CONFIG_LEN],
    /// The guest-visible WCE, as the I/O thread last reported it.
    write_cache: bool,
    queue_sizes: [u16; 1],
    notify: EventFd,
    worker: Arc<Worker>,
}

/// How a [`BlockDevice`] runs, besides its disk.
pub struct BlockOptions {
    /// What GET_ID returns (first 20 bytes; none: empty).
    pub serial: Option<String>,
    /// Run first on the I/O thread; the device is created once it has run.
    pub thread_start: Option<ThreadStart>,
    /// The longest the I/O thread spins for work before it sleeps (see
    /// [`crate::virtio::block::poll`]); zero never spins.
    pub poll_max: Duration,
    /// How lines on stderr name the disk ("disk 0"; default "disk").
    pub name: String,
    /// No I/O thread: every message the transport sends the device (DRIVER_OK,
    /// a `writeback` write, a reset) first runs the device's pending work to
    /// the end on the caller's thread. For harnesses that drive a device
    /// from one thread (the fuzzers: no hand-off between threads per input,
    /// and deterministic); never for a VM, whose vCPU must not wait for the
    /// disk. `thread_start`, `poll_max` and `iothread_cpus` do not apply.
    pub inline: bool,
    /// The I/O thread offers its CPU to other runnable tasks every few
    /// microseconds while it spins (see [`crate::virtio::block::poll::Spin`]).
    pub poll_yields: bool,
    /// The host CPUs the I/O thread may run on (`iothread-cpus=`; see
    /// [`crate::virtio::block::affinity`]); None leaves it to the scheduler.
    pub iothread_cpus: Option<CpuList>,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            serial: None,
            thread_start: None,
            poll_max: DEFAULT_POLL_MAX,
            name: "disk".into(),
            inline: false,
            poll_yields: true,
            iothread_cpus: None,
        }
    }
}

impl BlockDevice {
    /// Takes over `disk` (moved to the device's I/O thread, which starts
    /// now). `serial` is what GET_ID returns (first 20 bytes; none: empty).
    pub fn new(disk: Disk, serial: Option<String>) -> Result<Self, BlockDeviceError> {
        Self::with_options(
            disk,
            BlockOptions {
                serial,
                ..BlockOptions::default()
            },
        )
    }

    /// As [`BlockDevice::new`], with every option.
    pub fn with_options(disk: Disk, opts: BlockOptions) -> Result<Self, BlockDeviceError> {
        // Here, while the process may still open files: the I/O thread's
        // filters would refuse it (see contention::prepare).
        super::contention::prepare();
        let features = features_for(&disk);
        let config = config_for(&disk);
        let limits = DiskLimits {
            capacity_sectors: disk.capacity() / SECTOR_SIZE,
            read_only: disk.read_only(),
            discard: features & (1 << VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: features & (1 << VIRTIO_BLK_F_WRITE_ZEROES) != 0,
            max_zeroing_sectors: MAX_ZEROING_SECTORS,
            max_zeroing_segments: 1,
        };
        let identity = Identity {
            name: opts.name,
            path: disk.path().to_path_buf(),
            cache: disk.cache_mode(),
            read_only: disk.read_only(),
            engine: disk.engine_kind().to_string(),
            block_size: disk.logical_block_size(),
        };
        let write_cache = disk.write_cache();
        let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(BlockDeviceError::Events)?;
        let id = id_bytes(opts.serial.as_deref().unwrap_or(""));
        let worker = Worker::spawn(
            disk,
            &notify,
            limits,
            id,
            identity,
            (!opts.inline).then_some(ThreadSetup {
                cpus: opts.iothread_cpus,
                start: opts.thread_start,
                poll: PollWindow {
                    max: opts.poll_max,
                    yields: opts.poll_yields,
                },
            }),
        )?;
        Ok(BlockDevice {
            features,
            config,
            write_cache,
            queue_sizes: [QUEUE_SIZE],
            notify,
            worker,
        })
    }

    /// A handle for the VMM: statistics and shutdown, from any thread.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle::new(self.worker.clone())
    }

    /// The eventfd behind QueueNotify; register it as a KVM ioeventfd at
    /// the window base + [`crate::virtio::mmio::NOTIFY_OFFSET`].
    pub fn notify_eventfd(&self) -> &EventFd {
        &self.notify
    }

    /// The current report (same as [`BlockHandle::stats`]).
    pub fn report(&self) -> BlockReport {
        self.worker.report()
    }

    /// The cache mode of the disk.
    pub fn cache_mode(&self) -> CacheMode {
        self.worker.identity().cache
    }
}

impl MmioTransport<BlockDevice> {
    /// The eventfd to register as a KVM ioeventfd at the window base +
    /// [`crate::virtio::mmio::NOTIFY_OFFSET`] (any value written).
    pub fn notify_eventfd(&self) -> &EventFd {
        self.device().notify_eventfd()
    }

    /// A handle for the VMM: statistics and shutdown, from any thread.
    pub fn block_handle(&self) -> BlockHandle {
        self.device().handle()
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_notify_evt(&self, index: usize) -> Option<&EventFd> {
        (index == 0).then_some(&self.notify)
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = match at {
                Some(WRITEBACK) => u8::from(self.write_cache),
                Some(at) => self.config.get(at).copied().unwrap_or(0),
                None => 0,
            };
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8], features: u64) -> bool {
        // §5.2.5: `writeback` is the only writable field, and only once
        // CONFIG_WCE is negotiated; every other write is ignored.
        if offset != WRITEBACK as u64
            || data.len() != 1
            || features & (1 << VIRTIO_BLK_F_CONFIG_WCE) == 0
        {
            return false;
        }
        let enabled = data[0] != 0;
        let before = self.write_cache;
        if let Some(now) = self
            .worker
            .request(|reply| Control::SetWriteCache { enabled, reply })
        {
            self.write_cache = now;
        }
        self.write_cache != before
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let queue = ctx
            .queues
            .into_iter()
            .next()
            .ok_or(ActivateError::MissingQueue { wanted: 1, got })?;
        let reply = self
            .worker
            .request(|reply| Control::Activate {
                mem: ctx.mem,
                queue,
                features: ctx.features,
                interrupt: ctx.interrupt,
                reply,
            })
            .ok_or(ActivateError::WorkerGone)?;
        self.write_cache = reply?;
        Ok(())
    }

    fn activation_failed(&mut self, _error: &(dyn std::error::Error + 'static)) {
        self.worker.post(Control::ActivationFailed);
    }

    fn reset(&mut self) {
        if let Some(now) = self.worker.request(|reply| Control::Reset { reply }) {
            self.write_cache = now;
        }
    }
}

impl Drop for BlockDevice {
    /// Nobody can reach the device any more: stop its thread (idempotent;
    /// the final report stays available through the handles).
    fn drop(&mut self) {
        self.worker.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &std::path::Path) -> Disk {
        let path = dir.join("img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        Disk::open(&block::DiskConfig::new(path)).unwrap()
    }

    fn with_hook(hook: ThreadStart) -> BlockOptions {
        BlockOptions {
            thread_start: Some(hook),
            ..BlockOptions::default()
        }
    }

    #[test]
    fn the_start_hook_runs_on_the_io_thread_before_new_returns() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(None));
        let record = seen.clone();
        let hook: ThreadStart = Box::new(move || {
            *record.lock().unwrap() = std::thread::current().name().map(str::to_string);
            Ok(())
        });
        let device = BlockDevice::with_options(disk(dir.path()), with_hook(hook)).unwrap();
        assert_eq!(seen.lock().unwrap().as_deref(), Some("ferrite-blk"));
        drop(device);
    }

    #[test]
    fn a_failing_start_hook_fails_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let hook: ThreadStart = Box::new(|| Err("no filter".into()));
        match BlockDevice::with_options(disk(dir.path()), with_hook(hook)) {
            Err(BlockDeviceError::ThreadStart(why)) => assert_eq!(why.to_string(), "no filter"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("the device started"),
        }
    }
}
