//! Per-vCPU CPUID: what KVM supports, told which vCPU it is and how many
//! there are.
//!
//! `KVM_GET_SUPPORTED_CPUID` describes the host's features as KVM can offer
//! them, with the hypervisor leaves (0x40000000 "KVMKVMKVM") included. It does
//! not know the guest's topology, so each vCPU's copy gets its APIC ID and
//! the package's logical processor count: one package, one thread per core,
//! `count` cores.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: the logical-processor count in EBX is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0x80000001 ECX: CmpLegacy, the AMD way of saying "more than one
/// core per package" (with HTT).
const LEAF_80000001_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Extended topology level types (leaf 0xB / 0x1F, ECX bits 15:8).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores in an APIC ID.
fn core_id_bits(count: u8) -> u32 {
    let count = u32::from(count.max(1));
    u32::BITS - (count - 1).leading_zeros()
}

/// The extended topology subleaves (leaf 0xB or 0x1F) for vCPU `id` of
/// `count`: level 0 is SMT (one thread per core), level 1 the cores, and
/// subleaf 2 ends the list. KVM reports only subleaf 0 of the host's, so
/// the whole leaf is written here.
fn extended_topology(function: u32, id: u8, count: u8) -> [kvm_cpuid_entry2; 3] {
    let apic_id = u32::from(id);
    let level = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        level(0, 0, 1, LEVEL_SMT),
        level(1, core_id_bits(count), u32::from(count), LEVEL_CORE),
        level(2, 0, 0, 0),
    ]
}

/// Rewrites the topology-dependent leaves for vCPU `id` of `count`.
pub fn adjust(cpuid: &mut CpuId, id: u8, count: u8) -> Result<(), vmm_sys_util::fam::Error> {
    for function in [0xb, 0x1f] {
        if cpuid.as_slice().iter().any(|e| e.function == function) {
            cpuid.retain(|e| e.function != function);
            for entry in extended_topology(function, id, count) {
                cpuid.push(entry)?;
            }
        }
    }
    let apic_id = u32::from(id);
    let count32 = u32::from(count);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count32 << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // A null descriptor (type 0) ends the cache list: leave it be.
            0x4 if e.eax & 0x1f != 0 => {
                // Deterministic cache parameters: cores in the package in
                // EAX[31:26], threads sharing this cache in EAX[25:14].
                // Caches of level 3 are shared by every core, the others
                // are per core.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count32 - 1) << 26) | (sharing << 14);
            }
            0x8000_0001 => {
                if count > 1 {
                    e.ecx |= LEAF_80000001_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !LEAF_80000001_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 => {
                // AMD: cores per package - 1 in ECX[7:0], APIC ID bits that
                // number them in ECX[15:12].
                e.ecx = (e.ecx & !0xf0ff) | (core_id_bits(count) << 12) | (count32 - 1);
            }
            0x8000_001e => {
                // AMD extended APIC ID: one thread per core (EBX[15:8] = 0),
                // core ID = vCPU, one node (ECX = node 0, 1 node per package).
                e.eax = apic_id;
                e.ebx = (e.ebx & 0xffff_0000) | (apic_id & 0xff);
                e.ecx = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(0x1, 0, 0x906ea, 0xff00_0800),
            entry(0x4, 0, 0x1c00_4121, 0),
            entry(0x4, 3, 0x1c03_c163, 0),
            entry(0x4, 4, 0, 0),
            // What KVM reports here: subleaf 0 only.
            entry(0xb, 0, 0, 0),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b),
            entry(0x8000_0001, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3030, 0),
        ])
        .unwrap()
    }

    fn adjust_ok(c: &mut CpuId, id: u8, count: u8) {
        adjust(c, id, count).unwrap();
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let mut c = sample();
        adjust_ok(&mut c, 3, 4);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        let mut single = sample();
        adjust_ok(&mut single, 0, 1);
        assert_eq!(find(&single, 1, 0).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_describes_one_package() {
        let mut c = sample();
        adjust_ok(&mut c, 2, 5);
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        let end = find(&c, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 5, 0x201, 2));
        assert_eq!((end.ebx, end.ecx >> 8, end.edx), (0, 0, 2));
        assert_eq!(c.as_slice().iter().filter(|e| e.function == 0xb).count(), 3);
        assert!(c
            .as_slice()
            .iter()
            .filter(|e| e.function == 0xb)
            .all(|e| e.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX));
        // No leaf 0x1F in, none out.
        assert!(c.as_slice().iter().all(|e| e.function != 0x1f));
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let mut c = sample();
        adjust_ok(&mut c, 0, 4);
        let l1d = find(&c, 4, 0);
        let l3 = find(&c, 4, 3);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(l1d.eax & 0x3fff, 0x0121, "cache type and level kept");
        assert_eq!(find(&c, 4, 4).eax, 0, "the null descriptor stays null");
    }

    #[test]
    fn hypervisor_leaf_is_kept() {
        let mut c = sample();
        adjust_ok(&mut c, 0, 2);
        let hv = find(&c, 0x4000_0000, 0);
        assert_eq!((hv.eax, hv.ebx), (0x4000_0001, 0x4b4d_564b));
    }

    #[test]
    fn amd_leaves_count_cores() {
        let mut c = sample();
        adjust_ok(&mut c, 1, 6);
        assert_ne!(
            find(&c, 0x8000_0001, 0).ecx & LEAF_80000001_ECX_CMP_LEGACY,
            0
        );
        let l8 = find(&c, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 5);
        assert_eq!((l8.ecx >> 12) & 0xf, 3);
        assert_eq!(l8.eax, 0x3030, "address sizes kept");
        let mut single = sample();
        adjust_ok(&mut single, 0, 1);
        assert_eq!(
            find(&single, 0x8000_0001, 0).ecx & LEAF_80000001_ECX_CMP_LEGACY,
            0
        );
        assert_eq!(find(&single, 0x8000_0008, 0).ecx & 0xf0ff, 0);
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(254), 8);
    }
}
