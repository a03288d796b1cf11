//! Attaching `--drive`s: each becomes a `block::Disk` behind a virtio-blk
//! device in a virtio-mmio window, with its QueueNotify register as a KVM
//! ioeventfd (the guest's notify never leaves the kernel for a vCPU exit to
//! userspace) and its interrupt as an irqfd.

use std::sync::{Arc, Mutex};

use devices::virtio::block::{
    BlockDevice, BlockDeviceError, BlockHandle, BlockOptions, ThreadStart,
};
use devices::virtio::mmio::{
    DriverSeen, MmioTransport, TransportError, MMIO_WINDOW_SIZE, NOTIFY_OFFSET,
};
use devices::{Bus, BusError, InterruptLine};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::DriveConfig;
use crate::kvm::{vm, KvmError};

/// Why a drive could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image could not be opened or locked (the message names it).
    #[error(transparent)]
    Open(#[from] block::BlockError),
    /// `ferrite crashtest`'s recording could not start.
    #[error(transparent)]
    Record(#[from] block::crash::RecordError),
    /// The device could not start.
    #[error("drive {path}: {source}")]
    Device {
        /// The image.
        path: String,
        /// Why.
        source: BlockDeviceError,
    },
    /// The transport refused the device.
    #[error("drive {path}: {source}")]
    Transport {
        /// The image.
        path: String,
        /// Why.
        source: TransportError,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for drive {path}: {source}")]
    EventFd {
        /// The image.
        path: String,
        /// The host error.
        source: std::io::Error,
    },
    /// irqfd or ioeventfd registration failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The window overlaps another device.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Where a disk sits: its MMIO window and its IRQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSlot {
    /// The disk's place on the command line (0: /dev/vda), for messages.
    pub index: usize,
    /// Window base.
    pub base: u64,
    /// IOAPIC pin / ISA IRQ.
    pub irq: u32,
}

/// An attached disk: its device's handle, and its transport, which knows
/// how far the guest's driver got with it.
pub struct Attached {
    /// The device's handle (statistics, shutdown).
    pub handle: BlockHandle,
    /// The transport on the bus.
    pub transport: Arc<Mutex<MmioTransport<BlockDevice>>>,
}

impl Attached {
    /// How far the guest's driver got with this disk.
    pub fn driver_seen(&self) -> DriverSeen {
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .driver_seen()
    }
}

/// The device's options for the drive at `index`.
fn block_options(
    drive: &DriveConfig,
    index: usize,
    thread_start: Option<ThreadStart>,
) -> BlockOptions {
    BlockOptions {
        name: format!("disk {index}"),
        serial: drive.serial.clone(),
        thread_start,
        iothread_cpus: drive.iothread_cpus.clone(),
        poll_max: drive.iothread_poll,
        ..BlockOptions::default()
    }
}

/// Opens `drive` and puts its device on `mmio` at `slot`.
pub fn attach(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slot: DiskSlot,
    drive: &DriveConfig,
    io_thread_start: Option<ThreadStart>,
) -> Result<Attached, DiskError> {
    let path = drive.path.display().to_string();
    let mut disk = block::Disk::open(&drive.disk_config())?;
    if let Some(dir) = &drive.record {
        disk.record_to(dir)?;
    }
    disk.set_error_policy(drive.errors);
    let opts = block_options(drive, slot.index, io_thread_start);
    let device = BlockDevice::with_options(disk, opts).map_err(|source| DiskError::Device {
        path: path.clone(),
        source,
    })?;
    let irq = EventFd::new(EFD_NONBLOCK).map_err(|source| DiskError::EventFd {
        path: path.clone(),
        source,
    })?;
    vm::register_irqfd(vm_fd, &irq, slot.irq)?;
    let line: Arc<dyn InterruptLine> = Arc::new(irq);
    let transport = MmioTransport::new(device, mem.clone(), line)
        .map_err(|source| DiskError::Transport { path, source })?;
    // The driver writes the queue index (0, the only queue) to QueueNotify.
    vm::register_mmio_ioeventfd(
        vm_fd,
        transport.notify_eventfd(),
        slot.base + NOTIFY_OFFSET,
        0,
    )?;
    let handle = transport.block_handle();
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(transport.clone(), slot.base, MMIO_WINDOW_SIZE)?;
    Ok(Attached { handle, transport })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_drive;
    use std::time::Duration;

    #[test]
    fn the_drive_options_reach_the_device() {
        let drive = parse_drive("file=a,serial=s1,iothread-cpus=0,iothread-poll-us=250").unwrap();
        let opts = block_options(&drive, 2, None);
        assert_eq!(opts.name, "disk 2");
        assert_eq!(opts.serial.as_deref(), Some("s1"));
        assert_eq!(opts.iothread_cpus, drive.iothread_cpus);
        assert_eq!(opts.poll_max, Duration::from_micros(250));
        let plain = block_options(&parse_drive("file=a").unwrap(), 0, None);
        assert_eq!(plain.poll_max, devices::virtio::block::DEFAULT_POLL_MAX);
    }
}
