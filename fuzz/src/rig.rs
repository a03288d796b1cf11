//! A real virtio-blk device over a real image, behind a real virtio-mmio
//! transport, driven by register accesses from the fuzz target's thread.
//!
//! Rigs are built once per process and reused: each iteration starts with a
//! device reset. The device runs inline, on the fuzzing thread: each
//! message the transport sends it (DRIVER_OK, a `writeback` write, a reset)
//! first runs all pending work to the end. Images live in
//! `/dev/shm/ferrite-fuzz/<pid>-<kind>` (tmpfs: no disk I/O, and it supports
//! hole punching); directories of dead processes are removed at start-up.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use block::{BlockError, CacheMode, Disk, DiskConfig, EngineKind};
use devices::bus::BusDevice;
use devices::interrupt::CountingInterrupt;
use devices::virtio::block::device::WRITEBACK;
use devices::virtio::block::BlockOptions;
use devices::virtio::mmio::{MmioTransport, CONFIG_OFFSET};
use devices::virtio::mmio_driver::{self, QueueAddrs};
use devices::virtio::test_utils::reg;
use devices::BlockDevice;
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_CONFIG_WCE;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::GuestMemoryMmap;

use crate::chain::QueueGeom;
use crate::layout::guest_memory;

/// Image size in sectors (32 KiB).
pub const SECTORS: u64 = 64;
/// Image size in bytes.
pub const IMAGE_LEN: u64 = SECTORS * 512;
/// The serial GET_ID returns: 21 bytes, so the answer is cut at 20.
pub const SERIAL: &str = "ferrite-fuzz-serial-0";

/// The byte the image holds at `offset` when no request changed it.
pub fn pattern_byte(offset: u64) -> u8 {
    ((offset / 512) as u8).wrapping_mul(31) ^ (offset as u8) ^ 0x5a
}

/// One disk a case can pick.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// Cache mode.
    pub cache: CacheMode,
    /// Read-only drive.
    pub read_only: bool,
    /// I/O engine.
    pub engine: EngineKind,
    /// Memory alignment the disk assumes (4096 sends every buffer that is
    /// not page-aligned through the bounce path).
    pub mem_alignment: usize,
    /// Logical block the disk assumes (4096: requests not aligned to it
    /// are widened, writes read-modify-written).
    pub block_size: u32,
}

const fn kind(cache: CacheMode, read_only: bool, engine: EngineKind, mem_alignment: usize) -> Kind {
    Kind {
        cache,
        read_only,
        engine,
        mem_alignment,
        block_size: 512,
    }
}

const fn four_k(cache: CacheMode, engine: EngineKind) -> Kind {
    Kind {
        block_size: 4096,
        ..kind(cache, false, engine, 1)
    }
}

/// The disks a case can pick (append only: inputs name them by index).
pub const KINDS: [Kind; 9] = [
    kind(CacheMode::Writeback, false, EngineKind::Sync, 1),
    kind(CacheMode::Writethrough, false, EngineKind::Sync, 1),
    kind(CacheMode::Unsafe, false, EngineKind::Sync, 1),
    kind(CacheMode::Writeback, true, EngineKind::Sync, 1),
    kind(CacheMode::Writeback, false, EngineKind::Sync, 4096),
    kind(CacheMode::Writeback, false, EngineKind::IoUring, 1),
    kind(CacheMode::DirectSync, false, EngineKind::Sync, 1),
    four_k(CacheMode::Writeback, EngineKind::Sync),
    four_k(CacheMode::Writeback, EngineKind::IoUring),
];

/// One device, its guest memory and its image.
pub struct Rig {
    transport: MmioTransport<BlockDevice>,
    /// Guest memory the device's queue lives in.
    pub mem: GuestMemoryMmap,
    /// The disk is read-only.
    pub read_only: bool,
    image: File,
    pattern: Vec<u8>,
    scratch: Vec<u8>,
}

fn base_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let root = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    root.join("ferrite-fuzz")
}

/// Removes image directories whose process is gone.
fn remove_stale(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or("");
        if !pid.is_empty() && !PathBuf::from("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Rig {
    /// A fresh rig on a patterned image (panics on host setup failure: that
    /// is the harness, not a finding).
    pub fn new(index: usize) -> Rig {
        let kind = KINDS[index % KINDS.len()];
        let base = base_dir();
        std::fs::create_dir_all(&base).expect("create the fuzz image directory");
        remove_stale(&base);
        let dir = base.join(format!("{}-{index}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the rig directory");
        let path = dir.join("disk.img");
        let pattern: Vec<u8> = (0..IMAGE_LEN).map(pattern_byte).collect();
        std::fs::write(&path, &pattern).expect("write the fuzz image");
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the fuzz image");
        let mut cfg = DiskConfig {
            path,
            cache: kind.cache,
            read_only: kind.read_only,
            // Sync is deterministic: every operation runs on the I/O thread
            // at kick. io_uring completes in any order, which the checks
            // allow (they do not depend on the order of completions).
            engine: Some(kind.engine),
        };
        let disk = match Disk::open_with_alignment(&cfg, kind.mem_alignment, kind.block_size) {
            Ok(d) => d,
            // A host without io_uring or O_DIRECT on /dev/shm: say so once
            // and fuzz that slot on a plain disk instead.
            Err(e @ (BlockError::Engine(_) | BlockError::DirectIoUnsupported { .. })) => {
                eprintln!("ferrite-fuzz: disk {kind:?} unavailable ({e}); using writeback/sync");
                cfg.cache = CacheMode::Writeback;
                cfg.engine = Some(EngineKind::Sync);
                Disk::open(&cfg).expect("open the fuzz disk")
            }
            Err(e) => panic!("cannot open the fuzz disk {kind:?}: {e}"),
        };
        // Inline: the device works on the fuzzing thread, so an input costs
        // no hand-off between threads (see BlockOptions::inline).
        let opts = BlockOptions {
            serial: Some(SERIAL.into()),
            inline: true,
            ..BlockOptions::default()
        };
        let device = BlockDevice::with_options(disk, opts).expect("start the device");
        let mem = guest_memory();
        let irq = Arc::new(CountingInterrupt::default());
        let transport = MmioTransport::new(device, mem.clone(), irq).expect("build the transport");
        Rig {
            transport,
            mem,
            read_only: kind.read_only,
            image,
            pattern,
            scratch: vec![0; IMAGE_LEN as usize],
        }
    }

    /// A bus read of `data.len()` bytes at `offset` in the MMIO window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }

    /// A bus write at `offset` in the MMIO window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.transport.write(offset, data);
    }

    /// A 32-bit register read.
    pub fn read32(&mut self, offset: u64) -> u32 {
        mmio_driver::read32(&mut self.transport, offset)
    }

    /// A 32-bit register write.
    pub fn write32(&mut self, offset: u64, value: u32) {
        mmio_driver::write32(&mut self.transport, offset, value);
    }

    /// Device reset; returns once the I/O thread is idle.
    pub fn reset(&mut self) {
        self.write32(reg::STATUS, 0);
    }

    /// The features the device offers.
    pub fn device_features(&mut self) -> u64 {
        mmio_driver::device_features(&mut self.transport)
    }

    /// ACKNOWLEDGE, DRIVER, `features`, FEATURES_OK; whether it was accepted.
    pub fn negotiate(&mut self, features: u64) -> bool {
        mmio_driver::negotiate(&mut self.transport, features)
    }

    /// Sets up queue 0 at `geom` and writes DRIVER_OK (the device activates,
    /// or enters NEEDS_RESET if the rings are unusable).
    pub fn start(&mut self, geom: QueueGeom) {
        let addrs = QueueAddrs {
            desc: geom.desc,
            avail: geom.avail,
            used: geom.used,
        };
        mmio_driver::set_queue(&mut self.transport, 0, geom.size, addrs);
        // Unusable rings are the fuzzer's business: NEEDS_RESET is fine.
        let _ = mmio_driver::driver_ok(&mut self.transport);
    }

    /// The features always negotiated by the request target: VERSION_1,
    /// and CONFIG_WCE, which [`Rig::settle`] needs.
    pub fn base_features() -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_CONFIG_WCE)
    }

    /// Notifies queue 0, lets the device run a batch over what guest memory
    /// holds, then resets it (which waits for in-flight I/O). `wce` is the
    /// `writeback` byte written meanwhile.
    ///
    /// The device runs inline: the notify itself sends no message, and the
    /// first `writeback` write runs the batch (every chain was written
    /// before DRIVER_OK) and completes it before the byte is handled.
    pub fn settle(&mut self, wce: u8) {
        self.write32(reg::QUEUE_NOTIFY, 0);
        let at = CONFIG_OFFSET + WRITEBACK as u64;
        self.write(at, &[wce]);
        self.write(at, &[wce]);
        self.reset();
    }

    /// Offsets of image bytes that differ from the pattern; restores them.
    pub fn image_changes(&mut self) -> Vec<u64> {
        self.image
            .read_exact_at(&mut self.scratch, 0)
            .expect("read the fuzz image back");
        let changed: Vec<u64> = crate::diff::changed_offsets(&self.scratch, &self.pattern)
            .into_iter()
            .map(|i| i as u64)
            .collect();
        if !changed.is_empty() {
            self.image
                .write_all_at(&self.pattern, 0)
                .expect("restore the fuzz image");
        }
        changed
    }

    /// The image's length now.
    pub fn image_len(&self) -> u64 {
        self.image.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

/// The process's rigs, one per entry of [`KINDS`], built on first use.
pub fn rigs() -> &'static [Mutex<Rig>] {
    static RIGS: OnceLock<Vec<Mutex<Rig>>> = OnceLock::new();
    RIGS.get_or_init(|| (0..KINDS.len()).map(|k| Mutex::new(Rig::new(k))).collect())
}
