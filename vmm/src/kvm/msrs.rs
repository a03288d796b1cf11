//! The MSR values a vCPU starts with.
//!
//! A freshly created vCPU holds whatever KVM's reset left; firmware would
//! normally clear the system-call MSRs, enable fast string operations and
//! turn on MTRRs with write-back as the default type. ferrite boots the
//! kernel directly, so it sets the same values itself.

use kvm_bindings::{kvm_msr_entry, Msrs};

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The (index, value) pairs every vCPU starts with.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// The boot MSRs in the form `KVM_SET_MSRS` takes.
pub fn boot_msr_list() -> Result<Msrs, vmm_sys_util::fam::Error> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_holds_every_boot_msr_once() {
        let list = boot_msr_list().unwrap();
        let msrs = boot_msrs();
        assert_eq!(list.as_slice().len(), msrs.len());
        let mut indices: Vec<u32> = msrs.iter().map(|m| m.0).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), msrs.len());
        let mtrr = list
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
    }
}
