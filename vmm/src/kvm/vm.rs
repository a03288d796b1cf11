//! The VM: memory slots, the in-kernel interrupt controllers and PIT, and
//! the eventfd plumbing (irqfd, ioeventfd) devices use to bypass userspace.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{ioctl, KvmError};
use crate::memory::KVM_TSS_ADDRESS;

/// Opens KVM and creates a VM backed by `mem`, with the in-kernel IOAPIC,
/// PICs, local APICs and PIT.
///
/// `mem` must stay mapped for as long as the VM (and any vCPU) exists: KVM
/// keeps the host addresses of its regions.
pub fn create(mem: &GuestMemoryMmap) -> Result<(Kvm, VmFd), KvmError> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    for (slot, region) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region describes a live mapping owned by `mem`, which
        // the caller keeps alive as long as the VM (documented above), and
        // slots do not overlap because vm-memory's regions do not.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    // VMX needs three pages for its real-mode TSS; they sit in the hole
    // below 4 GiB, out of RAM. Harmless elsewhere.
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    Ok((kvm, vm))
}

/// Delivers writes to `fd` as edge interrupts on `irq` (an IOAPIC/PIC line).
pub fn register_irqfd(vm: &VmFd, fd: &EventFd, irq: u32) -> Result<(), KvmError> {
    vm.register_irqfd(fd, irq).map_err(ioctl("KVM_IRQFD"))
}

/// Turns a guest's 32-bit write of `value` at `addr` into a write to `fd`,
/// without an exit to userspace (virtio QueueNotify).
pub fn register_mmio_ioeventfd(
    vm: &VmFd,
    fd: &EventFd,
    addr: u64,
    value: u32,
) -> Result<(), KvmError> {
    vm.register_ioevent(fd, &IoEventAddress::Mmio(addr), value)
        .map_err(ioctl("KVM_IOEVENTFD"))
}
