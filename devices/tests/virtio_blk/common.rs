//! A block device on a real image file, driven through its MMIO transport
//! by the guest-driver simulator.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block::{BlockError, CacheMode, Disk, DiskConfig, EngineKind};
use devices::bus::SharedDevice;
use devices::interrupt::CountingInterrupt;
use devices::virtio::block::{
    BlockDevice, BlockHandle, BlockOptions, BlockReport, CpuList, DEFAULT_POLL_MAX,
};
use devices::virtio::mmio::MmioTransport;
use devices::virtio::test_utils::{BlkRequest, Driver};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use virtio_bindings::virtio_blk::*;
pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Guest RAM of every rig.
pub const MEM_SIZE: u64 = 0x40_0000;
/// Where guest RAM's second region starts.
pub const REGION_SPLIT: u64 = MEM_SIZE / 2;
/// Queue size the simulated driver picks.
pub const QUEUE: u16 = 256;
/// Default image size in sectors (256 KiB).
pub const SECTORS: u64 = 512;

pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
pub const NEEDS_RESET: u32 = 0x40;

pub fn bit(b: u32) -> u64 {
    1u64 << b
}

/// The byte the image holds at `offset` before any test writes.
pub fn pattern_byte(offset: u64) -> u8 {
    ((offset / 512) as u8).wrapping_mul(31) ^ (offset as u8) ^ 0x5a
}

pub fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(pattern_byte).collect()
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub cache: CacheMode,
    pub read_only: bool,
    pub serial: Option<String>,
    pub engine: Option<EngineKind>,
    pub sectors: u64,
    /// The I/O thread's poll window.
    pub poll_max: Duration,
    /// Whether a preemption ends the window early.
    pub poll_yields: bool,
    /// The host's logical block as the disk is forced to see it.
    pub block_size: u32,
    /// `BlockOptions::inline`: no I/O thread.
    pub inline: bool,
    /// `BlockOptions::iothread_cpus`.
    pub iothread_cpus: Option<CpuList>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            cache: CacheMode::Writeback,
            read_only: false,
            serial: Some("ferrite-test".into()),
            engine: None,
            sectors: SECTORS,
            poll_max: DEFAULT_POLL_MAX,
            poll_yields: true,
            block_size: 512,
            inline: false,
            iothread_cpus: None,
        }
    }
}

pub struct Rig {
    pub driver: Driver,
    pub transport: Arc<Mutex<MmioTransport<BlockDevice>>>,
    pub handle: BlockHandle,
    pub irq: Arc<CountingInterrupt>,
    pub path: PathBuf,
    pub supports_discard: bool,
    _dir: tempfile::TempDir,
}

/// A rig on a fresh patterned image, or None (after printing SKIP) when
/// the host cannot do what `opts` asks (O_DIRECT, io_uring).
pub fn rig(opts: Opts) -> Option<Rig> {
    let dir = tempfile::Builder::new()
        .prefix("blk-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, pattern(opts.sectors * 512)).unwrap();
    let cfg = DiskConfig {
        path: path.clone(),
        cache: opts.cache,
        read_only: opts.read_only,
        engine: opts.engine,
    };
    let disk = match Disk::open_with_alignment(&cfg, 1, opts.block_size) {
        Ok(d) => d,
        Err(e @ (BlockError::DirectIoUnsupported { .. } | BlockError::Engine(_))) => {
            eprintln!("SKIP: {e}");
            return None;
        }
        Err(e) => panic!("cannot open the test image: {e}"),
    };
    let supports_discard = disk.supports_discard();
    let device = BlockDevice::with_options(
        disk,
        BlockOptions {
            serial: opts.serial,
            poll_max: opts.poll_max,
            inline: opts.inline,
            poll_yields: opts.poll_yields,
            iothread_cpus: opts.iothread_cpus,
            ..BlockOptions::default()
        },
    )
    .unwrap();
    // Two adjacent regions, so a buffer can straddle them (REGION_SPLIT).
    let half = (MEM_SIZE / 2) as usize;
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), half),
        (GuestAddress(REGION_SPLIT), half),
    ])
    .unwrap();
    let irq = Arc::new(CountingInterrupt::default());
    let transport = MmioTransport::new(device, mem.clone(), irq.clone()).unwrap();
    let handle = transport.block_handle();
    let transport = Arc::new(Mutex::new(transport));
    let shared: SharedDevice = transport.clone();
    let driver = Driver::new(shared, mem, 0x1_0000, MEM_SIZE - 0x1_0000, QUEUE);
    Some(Rig {
        driver,
        transport,
        handle,
        irq,
        path,
        supports_discard,
        _dir: dir,
    })
}

impl Rig {
    /// Negotiates everything the device offers and starts the queue.
    pub fn init_all(&mut self) -> u64 {
        let f = self.driver.device_features();
        self.driver.init(f);
        f
    }

    pub fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    pub fn stats(&self) -> BlockReport {
        self.handle.stats()
    }

    /// Notifies, waits for `reqs` to be used, returns (status, used len) in
    /// request order.
    pub fn run(&mut self, reqs: &[&BlkRequest]) -> Vec<(u8, u32)> {
        self.driver.notify();
        let used = self.driver.wait_used(reqs.len());
        reqs.iter()
            .map(|r| {
                let len = used
                    .iter()
                    .find(|(head, _)| *head == r.head)
                    .map(|(_, len)| *len)
                    .expect("request not in the used ring");
                (self.driver.status_of(r), len)
            })
            .collect()
    }

    /// Builds, submits and waits for one request.
    pub fn one(
        &mut self,
        request_type: u32,
        sector: u64,
        lens: &[u32],
        writable: bool,
    ) -> (BlkRequest, u8, u32) {
        let r = self
            .driver
            .blk_request(request_type, sector, lens, writable);
        let out = self.run(&[&r]);
        (r, out[0].0, out[0].1)
    }

    /// Writes `fill` (sector-sized pattern) at `sector` and checks OK.
    pub fn write(&mut self, sector: u64, data: &[u8]) {
        let r = self
            .driver
            .blk_request(VIRTIO_BLK_T_OUT, sector, &[data.len() as u32], false);
        self.driver.mem().write_slice(data, r.data[0].addr).unwrap();
        let out = self.run(&[&r]);
        assert_eq!(out[0], (OK, 1), "write at sector {sector}");
    }

    /// Reads `len` bytes at `sector`.
    pub fn read(&mut self, sector: u64, len: u32) -> Vec<u8> {
        let (r, status, used) = self.one(VIRTIO_BLK_T_IN, sector, &[len], true);
        assert_eq!((status, used), (OK, len + 1), "read at sector {sector}");
        let mut buf = vec![0u8; len as usize];
        self.driver
            .mem()
            .read_slice(&mut buf, r.data[0].addr)
            .unwrap();
        buf
    }

    pub fn flush(&mut self) {
        let (_, status, _) = self.one(VIRTIO_BLK_T_FLUSH, 0, &[], false);
        assert_eq!(status, OK);
    }

    /// The `writeback` config byte.
    pub fn wce(&self) -> u8 {
        self.driver.read_config(32, 1)[0]
    }

    pub fn set_wce(&self, v: u8) {
        self.driver.write_config(32, &[v]);
    }

    /// Waits until the Status register has NEEDS_RESET.
    pub fn wait_needs_reset(&self) -> bool {
        self.driver.wait_status(|s| s & NEEDS_RESET != 0) & NEEDS_RESET != 0
    }

    /// Asserts the used ring stays at `idx` for a while.
    pub fn assert_used_stays(&self, idx: u16) {
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            assert_eq!(self.driver.used_idx(), idx, "the device used a buffer");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Polls `f` for up to 5 s.
pub fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f()
}
