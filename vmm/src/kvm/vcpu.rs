//! One vCPU: its initial state and the loop that dispatches its exits.
//!
//! The loop does nothing but route port and MMIO exits to the buses and
//! turn terminal exits into a [`VcpuEnd`]; device work that takes time
//! happens on other threads. A vCPU is stopped by setting the shared stop
//! flag and sending its thread [`kick_signal`]: the handler sets the run
//! structure's `immediate_exit`, so the stop is seen whether the thread was
//! inside `KVM_RUN` or about to enter it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use devices::Bus;
use kvm_bindings::{
    kvm_fpu, kvm_run, CpuId, KVM_EXIT_INTERNAL_ERROR, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::{cpuid, ioctl, msrs, KvmError};
use crate::boot::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::boot::EntryPoint;
use crate::memory::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::seccomp::{Filters, ThreadKind};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Local APIC LVT registers and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets up vCPU `id` of `count`: CPUID, MSRs, FPU, LAPIC, and, for the boot
/// vCPU (`boot` is `Some`), the registers that enter the kernel. The other
/// vCPUs stay in reset and wait for the guest's INIT/SIPI.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    supported: &CpuId,
    boot: Option<EntryPoint>,
) -> Result<(), KvmError> {
    let mut cpuid = supported.clone();
    cpuid::adjust(&mut cpuid, id, count).map_err(|e| KvmError::Build {
        what: "CPUID",
        detail: format!("{e:?}"),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;

    let list = msrs::boot_msr_list().map_err(|e| KvmError::Build {
        what: "MSR list",
        detail: format!("{e:?}"),
    })?;
    let set = vcpu.set_msrs(&list).map_err(ioctl("KVM_SET_MSRS"))?;
    let wanted = list.as_slice().len();
    if set != wanted {
        return Err(KvmError::PartialMsrs { set, wanted });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;
    set_lint(vcpu)?;
    if let Some(entry) = boot {
        set_boot_registers(vcpu, entry)?;
    }
    Ok(())
}

/// LINT0 receives the PIC's ExtINT, LINT1 NMIs: what the MP table says and
/// what a PC firmware programs.
fn set_lint(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let value = (value & !0x700) | (mode << 8);
        for (dst, src) in lapic.regs[reg..reg + 4].iter_mut().zip(value.to_le_bytes()) {
            *dst = src as std::os::raw::c_char;
        }
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))
}

fn set_boot_registers(vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), KvmError> {
    let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    let table = gdt::gdt_for(entry);
    let code = gdt::segment(table[1], CODE_SELECTOR);
    let data = gdt::segment(table[2], DATA_SELECTOR);
    let tss = gdt::segment(table[3], TSS_SELECTOR);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = data;
    }
    sregs.tr = tss;
    let mut regs = kvm_bindings::kvm_regs {
        rflags: 0x2,
        rip: entry.addr(),
        ..Default::default()
    };
    match entry {
        EntryPoint::Pvh { .. } => {
            // 32-bit protected mode, paging off (PVH ABI).
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = PVH_INFO_START;
        }
        EntryPoint::Linux64 { .. } => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))
}

/// Why a vCPU's loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The VMM asked it to stop.
    Stopped,
    /// It executed HLT with nothing to wake it (only without an in-kernel LAPIC).
    Halted,
    /// Triple fault: the PC answer is a reset.
    Shutdown,
    /// The guest asked KVM for a shutdown or reset (PSCI-like system event).
    SystemEvent(u32),
    /// KVM could not go on (emulation failure, failed entry, unknown exit).
    Failed(String),
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|p| p.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // `run_loop` before its first KVM_RUN and cleared before the VcpuFd
        // (which owns the mapping) can be dropped. A byte-sized volatile
        // store cannot tear, and KVM reads the field on its next entry.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal's handler; call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), KvmError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick).map_err(|e| {
        KvmError::Build {
            what: "vCPU kick signal handler",
            detail: e.to_string(),
        }
    })
}

/// Runs vCPU `id` until it ends or `stop` is set, under its seccomp
/// filter (installed here, before the guest runs).
pub fn run_loop(
    vcpu: &mut VcpuFd,
    id: u8,
    pio: &Bus,
    mmio: &Bus,
    stop: &AtomicBool,
    filters: &Filters,
) -> VcpuEnd {
    if id == 0 {
        crate::bench::overhead::note_first_kvm_run();
    }
    if let Err(e) = filters.install(ThreadKind::Vcpu, &format!("vcpu{id}")) {
        return VcpuEnd::Failed(e.to_string());
    }
    let run: *mut kvm_run = vcpu.get_kvm_run();
    KVM_RUN.with(|p| p.set(run));
    let end = dispatch(vcpu, id, pio, mmio, stop);
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    end
}

fn dispatch(vcpu: &mut VcpuFd, id: u8, pio: &Bus, mmio: &Bus, stop: &AtomicBool) -> VcpuEnd {
    loop {
        if stop.load(Ordering::Acquire) {
            return VcpuEnd::Stopped;
        }
        let what = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                // Unclaimed ports swallow writes, as on a PC.
                pio.write(u64::from(port), data);
                continue;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
                continue;
            }
            Ok(VcpuExit::Hlt) => return VcpuEnd::Halted,
            Ok(VcpuExit::Shutdown) => return VcpuEnd::Shutdown,
            Ok(VcpuExit::SystemEvent(kind, _))
                if kind == KVM_SYSTEM_EVENT_SHUTDOWN || kind == KVM_SYSTEM_EVENT_RESET =>
            {
                return VcpuEnd::SystemEvent(kind)
            }
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => continue,
            Ok(VcpuExit::InternalError) => {
                let sub = internal_suberror(vcpu);
                format!(
                    "KVM_EXIT_INTERNAL_ERROR (suberror {sub}: {})",
                    suberror_name(sub)
                )
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})")
            }
            Ok(other) => format!("unexpected exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => format!("KVM_RUN failed: {e}"),
        };
        return VcpuEnd::Failed(format!("vCPU {id}: {what} at RIP {}", rip(vcpu)));
    }
}

fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return 0;
    }
    // SAFETY: exit_reason says the union holds the `internal` member.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

/// KVM_INTERNAL_ERROR_* names (include/uapi/linux/kvm.h).
fn suberror_name(sub: u32) -> &'static str {
    match sub {
        1 => "emulation failure",
        2 => "exception while delivering an exception",
        3 => "cannot deliver an event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

fn rip(vcpu: &VcpuFd) -> String {
    match vcpu.get_regs() {
        Ok(regs) => format!("{:#x}", regs.rip),
        Err(_) => "unknown".to_string(),
    }
}
