//! The flat GDT and identity page tables a kernel entered in protected or
//! long mode expects, and the segment registers that match them.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootError, EntryPoint};
use crate::memory::{GDT_START, IDT_START, PDPT_START, PD_START, PML4_START};

/// Selector of the code segment (GDT entry 1).
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment (GDT entry 2).
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS (GDT entry 3).
pub const TSS_SELECTOR: u16 = 0x18;

/// Access/flag words (flags nibble in bits 12..16, access byte in 0..8).
/// Code: present, ring 0, execute/read, accessed; 4 KiB granularity, plus
/// L (long mode) or D (32-bit default operand size).
const CODE64_FLAGS: u16 = 0xa09b;
const CODE32_FLAGS: u16 = 0xc09b;
/// Data: present, ring 0, read/write, accessed; 4 KiB granularity, 32-bit.
const DATA_FLAGS: u16 = 0xc093;
/// Busy 32/64-bit TSS, present.
const TSS_FLAGS: u16 = 0x808b;

/// Builds one segment descriptor.
pub fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((flags & 0xff) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags >> 12) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The four GDT entries for an entry protocol: null, code, data, TSS.
pub fn gdt_for(entry: EntryPoint) -> [u64; 4] {
    let code = match entry {
        EntryPoint::Pvh { .. } => CODE32_FLAGS,
        EntryPoint::Linux64 { .. } => CODE64_FLAGS,
    };
    [
        0,
        descriptor(code, 0, 0xfffff),
        descriptor(DATA_FLAGS, 0, 0xfffff),
        descriptor(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// The KVM view of the segment a descriptor describes.
pub fn segment(desc: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((desc >> n) & 1) as u8;
    let base = ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24);
    let raw_limit = ((desc & 0xffff) | (((desc >> 48) & 0xf) << 16)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present,
        dpl: ((desc >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    value: T,
    addr: u64,
    what: &'static str,
) -> Result<(), BootError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|e| BootError::GuestMemory {
            what,
            detail: e.to_string(),
        })
}

/// Writes the GDT at [`GDT_START`] and an empty IDT at [`IDT_START`].
pub fn write_gdt(mem: &GuestMemoryMmap, entry: EntryPoint) -> Result<(), BootError> {
    for (i, desc) in gdt_for(entry).iter().enumerate() {
        write(mem, *desc, GDT_START + 8 * i as u64, "GDT")?;
    }
    write(mem, 0u64, IDT_START, "IDT")
}

/// Identity-maps the low 4 GiB with 2 MiB pages: the kernel, low memory and
/// the device hole (APICs, virtio-mmio windows) are all reachable at entry.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    // Present | writable.
    const TABLE: u64 = 0x3;
    // Present | writable | page size (2 MiB).
    const LARGE_PAGE: u64 = 0x83;
    write(mem, PDPT_START | TABLE, PML4_START, "page tables")?;
    for gib in 0..4u64 {
        let pd = PD_START + gib * 0x1000;
        write(mem, pd | TABLE, PDPT_START + gib * 8, "page tables")?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) + (i << 21)) | LARGE_PAGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))
            .map_err(|e| BootError::GuestMemory {
                what: "page tables",
                detail: e.to_string(),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn descriptors_match_the_architecture() {
        // The well-known flat descriptors.
        assert_eq!(descriptor(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(descriptor(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(
            descriptor(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn segments_decode_descriptors() {
        let cs = segment(descriptor(CODE64_FLAGS, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.s), (1, 0, 1, 1, 1));
        assert_eq!(
            (cs.type_, cs.dpl, cs.limit, cs.base),
            (0xb, 0, 0xffff_ffff, 0)
        );
        assert_eq!(cs.selector, CODE_SELECTOR);
        let cs32 = segment(descriptor(CODE32_FLAGS, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let odd = segment(descriptor(0x0093, 0x1234_5678, 0xabcde), 0);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = create_guest_memory(16 << 20).unwrap();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_START);
        // The LAPIC page (0xfee00000) is in PD 3, entry 0x1f7.
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_START + 24)).unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 0x1f7 * 8))
            .unwrap();
        assert_eq!(pde & !0xfff, 0xfee0_0000);
        assert_eq!(pde & 0x83, 0x83);
    }
}
