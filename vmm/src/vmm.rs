//! Wiring and the event loop: guest memory, the VM, the devices on their
//! buses, the kernel, the vCPU threads; then the main thread waits for a
//! reason to stop while feeding stdin to the serial port.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::legacy::debug_exit::{DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use devices::legacy::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};
use devices::legacy::{DebugExit, Serial, I8042};
use devices::virtio::block::BlockReport;
use devices::virtio::mmio::DriverSeen;
use devices::{Bus, BusError, InterruptLine};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootConfig, BootError, Kernel};
use crate::config::DriveConfig;
use crate::console::{self, EscapeFilter, Stdin};
use crate::disks::{self, Attached, DiskError, DiskSlot};
use crate::exit::{ExitCause, ExitController};
use crate::kvm::mptable::{self, MpTableError};
use crate::kvm::vcpu::{self, VcpuEnd};
use crate::kvm::{vm, KvmError};
use crate::memory::{self, MemoryError};
use crate::seccomp::{self, Filters, SeccompError, ThreadKind};
use crate::signals::{StopSignals, RESUME_SIGNAL};

/// Everything needed to start a guest.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image.
    pub kernel: Kernel,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line as the user gave it (disk entries are appended).
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Disks, in order.
    pub drives: Vec<DriveConfig>,
    /// Files the VMM writes after start-up besides its images (the
    /// `--stats-json` file); they must exist. With [`seccomp::Policy::All`]
    /// the VM's threads can open nothing else (Landlock).
    pub writable_files: Vec<PathBuf>,
}

/// Why the VMM could not start or run the guest.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A KVM call.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Loading the kernel.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The MP table.
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    /// Attaching a drive.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Placing a device.
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    /// A host resource (eventfd, signalfd, thread, terminal).
    #[error("cannot {what}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The host error.
        source: io::Error,
    },
}

fn host(what: &'static str) -> impl Fn(io::Error) -> VmmError {
    move |source| VmmError::Host { what, source }
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// Why the guest stopped.
    pub cause: ExitCause,
    /// Each disk's final report, in `--drive` order (after its shutdown).
    pub disks: Vec<BlockReport>,
    /// How far the guest's driver got with each disk, in the same order.
    pub drivers: Vec<DriverSeen>,
}

/// Makes the serial console's output sink; it gets the exit controller so
/// that it can stop the guest on what it reads (a panic, `ferrite run`'s
/// verdict).
pub type ConsoleFactory<'a> =
    Box<dyn FnOnce(&Arc<ExitController>) -> Box<dyn io::Write + Send> + 'a>;

/// A guest ready to start.
pub struct Vmm {
    /// Kept for the VM's lifetime (KVM holds host pointers into it).
    _mem: GuestMemoryMmap,
    _vm: VmFd,
    vcpus: Vec<VcpuFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    exit: Arc<ExitController>,
    disks: Vec<Attached>,
    filters: Filters,
}

/// The kernel command line: the user's, then one virtio-mmio entry per disk.
pub fn kernel_cmdline(user: &str, disks: usize) -> String {
    let mut line = user.trim().to_string();
    for i in 0..disks {
        let (base, irq) = disk_slot(i);
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
    }
    line
}

/// First IRQ for disks: 0-2 are the PIT and cascade, 3-4 the serial ports.
pub const FIRST_DISK_IRQ: u32 = 5;
/// Most disks: IRQs 5..=23 on the 24-pin IOAPIC.
pub const MAX_DISKS: usize = (mptable::IOAPIC_PINS as u32 - FIRST_DISK_IRQ) as usize;

/// MMIO window base and IRQ of disk `index`.
pub fn disk_slot(index: usize) -> (u64, u32) {
    (
        memory::VIRTIO_MMIO_BASE + index as u64 * memory::VIRTIO_MMIO_SIZE,
        FIRST_DISK_IRQ + index as u32,
    )
}

/// The Landlock ruleset of a VM whose every thread is filtered: its images
/// and `writable_files`.
fn sandbox(cfg: &VmConfig, policy: seccomp::Policy) -> Result<seccomp::FsSandbox, VmmError> {
    if policy != seccomp::Policy::All {
        return Ok(seccomp::FsSandbox::off());
    }
    let images = cfg.drives.iter().map(|d| seccomp::AllowedFile {
        path: d.path.clone(),
        writable: !d.read_only,
    });
    let others = cfg.writable_files.iter().map(|p| seccomp::AllowedFile {
        path: p.clone(),
        writable: true,
    });
    let files: Vec<_> = images.chain(others).collect();
    Ok(seccomp::FsSandbox::new(&files).map_err(SeccompError::from)?)
}

impl Vmm {
    /// Builds the machine: memory, VM, devices, kernel, vCPUs, with the
    /// seccomp filters `policy` asks for (vCPU and disk threads install
    /// theirs when they start); with
    /// [`seccomp::Policy::All`] the calling thread installs its own filter in
    /// [`Vmm::run`] and may do little afterwards besides exiting.
    ///
    /// The serial console writes to what `console` makes (stdout for a
    /// plain boot).
    pub fn with_console(
        cfg: &VmConfig,
        policy: seccomp::Policy,
        console: ConsoleFactory<'_>,
    ) -> Result<Self, VmmError> {
        let filters = Filters::compile(policy)?.with_sandbox(sandbox(cfg, policy)?);
        let mem = memory::create_guest_memory(cfg.mem_size)?;
        let (kvm, vm_fd) = vm::create(&mem)?;
        let exit = ExitController::new().map_err(host("create an eventfd"))?;

        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host("create an eventfd"))?;
        vm::register_irqfd(&vm_fd, &serial_irq, COM1_IRQ)?;
        let serial_line: Arc<dyn InterruptLine> = Arc::new(serial_irq);
        let serial = Arc::new(Mutex::new(Serial::new(serial_line, console(&exit))));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_BASE, COM1_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            I8042_BASE,
            I8042_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
            DEBUG_EXIT_PORT,
            DEBUG_EXIT_LEN,
        )?;
        // The kernel first: a bad image fails before any disk thread starts.
        let cmdline = kernel_cmdline(&cfg.cmdline, cfg.drives.len());
        let entry = boot::load(
            &mem,
            &BootConfig {
                kernel: &cfg.kernel,
                initrd: cfg.initrd.as_deref(),
                cmdline: &cmdline,
                mem_size: cfg.mem_size,
            },
        )?;
        mptable::write(&mem, cfg.cpus)?;

        let mut mmio = Bus::new();
        let mut disks = Vec::with_capacity(cfg.drives.len());
        for (index, drive) in cfg.drives.iter().enumerate() {
            let (base, irq) = disk_slot(index);
            let io_filters = filters.clone();
            disks.push(disks::attach(
                &vm_fd,
                &mem,
                &mut mmio,
                DiskSlot { index, base, irq },
                drive,
                Some(Box::new(move || {
                    io_filters
                        .install(ThreadKind::Io, "ferrite-blk")
                        .map_err(Into::into)
                })),
            )?);
        }

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(crate::kvm::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(cfg.cpus as usize);
        for id in 0..cfg.cpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(crate::kvm::ioctl("KVM_CREATE_VCPU"))?;
            let boot_entry = (id == 0).then_some(entry);
            vcpu::configure(&fd, id, cfg.cpus, &supported, boot_entry)?;
            vcpus.push(fd);
        }
        Ok(Self {
            _mem: mem,
            _vm: vm_fd,
            vcpus,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            serial,
            exit,
            disks,
            filters,
        })
    }

    /// The controller that stops the guest; `ferrite run`'s time limits
    /// report through it.
    pub fn exit_controller(&self) -> Arc<ExitController> {
        self.exit.clone()
    }

    /// Runs the guest until something stops it; the console is on stdin
    /// and stdout.
    pub fn run(mut self, stdin: Stdin) -> Result<RunOutcome, VmmError> {
        let signals = StopSignals::with_resume().map_err(host("create a signalfd"))?;
        vcpu::install_kick_handler()?;
        let count = self.vcpus.len();
        let halted = Arc::new(AtomicUsize::new(0));
        let mut threads: Vec<JoinHandle<()>> = Vec::with_capacity(count);
        for (id, mut fd) in self.vcpus.drain(..).enumerate() {
            let (pio, mmio, exit, halted, filters) = (
                self.pio.clone(),
                self.mmio.clone(),
                self.exit.clone(),
                halted.clone(),
                self.filters.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let end =
                        vcpu::run_loop(&mut fd, id as u8, &pio, &mmio, exit.stop_flag(), &filters);
                    match end {
                        VcpuEnd::Stopped => {}
                        VcpuEnd::Halted => {
                            if halted.fetch_add(1, Ordering::AcqRel) + 1 == count {
                                exit.report(ExitCause::AllHalted);
                            }
                        }
                        VcpuEnd::Shutdown => exit.report(ExitCause::TripleFault),
                        VcpuEnd::SystemEvent(_) => exit.report(ExitCause::SystemEvent),
                        VcpuEnd::Failed(why) => exit.report(ExitCause::VcpuFailed(why)),
                    }
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    self.exit.report(ExitCause::VcpuFailed(format!(
                        "cannot start vCPU {id}: {e}"
                    )));
                    break;
                }
            }
        }
        // Last: every other thread exists (and would inherit it otherwise).
        if let Err(e) = self.filters.install(ThreadKind::Main, "main") {
            // Sets the stop flag the vCPU loops poll.
            self.exit.report(ExitCause::VcpuFailed(e.to_string()));
        }
        let cause = self.event_loop(stdin, &signals);
        stop_vcpus(&threads);
        // Completes what is in flight and flushes (except cache=unsafe).
        let disks = self.disks.iter().map(|d| d.handle.shutdown()).collect();
        let drivers = self.disks.iter().map(Attached::driver_seen).collect();
        Ok(RunOutcome {
            cause,
            disks,
            drivers,
        })
    }

    /// Waits for an exit cause while moving console input to the guest.
    fn event_loop(&self, stdin: Stdin, signals: &StopSignals) -> ExitCause {
        let mut stdin_open = stdin != Stdin::Closed;
        let mut escapes = (stdin == Stdin::Terminal).then(EscapeFilter::default);
        let mut buf = vec![0u8; 4096];
        let mut filtered = Vec::with_capacity(4096);
        loop {
            if let Some(cause) = self.exit.cause() {
                return cause;
            }
            let room = lock_serial(&self.serial).input_room();
            let want_stdin = stdin_open && room > 0;
            let mut fds = vec![
                libc::pollfd {
                    fd: self.exit.event().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: signals.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if want_stdin {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // With input waiting for the guest to drain the FIFO, look
            // again soon; otherwise sleep until an fd is ready.
            let timeout = if stdin_open && room == 0 { 20 } else { -1 };
            // SAFETY: `fds` is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                // EINTR (the kick signal, say): just look again.
                continue;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                while let Some(sig) = signals.next() {
                    if sig == RESUME_SIGNAL {
                        self.disks.iter().for_each(|d| d.handle.resume());
                    } else {
                        self.exit.report(ExitCause::Signal(sig));
                    }
                }
            }
            if want_stdin && fds[2].revents != 0 {
                let len = room.min(buf.len());
                // SAFETY: reads at most `len` bytes into `buf`, which is that long.
                let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), len) };
                match got {
                    n if n > 0 => {
                        let input = &buf[..n as usize];
                        let bytes = match escapes.as_mut() {
                            Some(filter) => {
                                filtered.clear();
                                if filter.feed(input, &mut filtered) {
                                    self.exit.report(ExitCause::ConsoleQuit);
                                }
                                &filtered[..]
                            }
                            None => input,
                        };
                        lock_serial(&self.serial).queue_input(bytes);
                    }
                    0 => stdin_open = false,
                    _ => {
                        let err = io::Error::last_os_error().kind();
                        if !matches!(err, io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                            stdin_open = false;
                        }
                    }
                }
            }
        }
    }
}

/// Locks the serial port even if a vCPU thread panicked holding it.
fn lock_serial(serial: &Mutex<Serial>) -> std::sync::MutexGuard<'_, Serial> {
    serial.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kicks every vCPU thread until it has left its loop (the stop flag is
/// already set), giving up after two seconds: the process is about to exit.
fn stop_vcpus(threads: &[JoinHandle<()>]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            // A thread that just finished cannot be signalled; that is fine.
            let _ = t.kill(vcpu::kick_signal());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Raw mode on the console's terminal, for the guest's lifetime.
pub fn prepare_console(stdin: Stdin) -> Result<(), VmmError> {
    if stdin == Stdin::Terminal {
        console::enter_raw_mode().map_err(host("put the terminal in raw mode"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_get_windows_and_irqs_in_order() {
        assert_eq!(disk_slot(0), (0xd000_0000, 5));
        assert_eq!(disk_slot(2), (0xd000_2000, 7));
        assert_eq!(MAX_DISKS, 19);
        assert_eq!(disk_slot(MAX_DISKS - 1).1, 23);
    }

    #[test]
    fn cmdline_gets_one_entry_per_disk() {
        assert_eq!(kernel_cmdline("console=ttyS0 ", 0), "console=ttyS0");
        assert_eq!(
            kernel_cmdline("console=ttyS0", 2),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(kernel_cmdline("", 1), "virtio_mmio.device=4K@0xd0000000:5");
    }
}
