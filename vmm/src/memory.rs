//! Guest physical memory: the fixed layout, the RAM regions, the e820 map.
//!
//! RAM starts at 0. The 1 GiB below 4 GiB is a hole for devices (virtio-mmio
//! windows, the IOAPIC, the local APICs), so RAM beyond 3 GiB continues at
//! 4 GiB. Boot structures live in low memory at fixed addresses, below the
//! 1 MiB where kernels are loaded:
//!
//! | address | what |
//! |---|---|
//! | 0x500 | GDT (4 entries) |
//! | 0x520 | IDT (empty) |
//! | 0x6000 | PVH `hvm_start_info`, then its module list at 0x6040 |
//! | 0x7000 | Linux zero page (`boot_params`); the PVH memory map in PVH boots |
//! | 0x8ff0 | initial stack pointer (grows down) |
//! | 0x9000 | PML4, then PDPT (0xa000) and four page directories (0xb000..0xf000) |
//! | 0x20000 | kernel command line |
//! | 0xf0000 | MP floating pointer and MP configuration table |
//! | 0x100000 | kernel |

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Where the GDT is written.
pub const GDT_START: u64 = 0x500;
/// Where the (empty) IDT is.
pub const IDT_START: u64 = 0x520;
/// PVH start info.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// Linux zero page, or the PVH memory map.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// PVH memory map (shares the zero page's place; a boot uses one or the other).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-table root.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First of four page directories (identity map of the low 4 GiB).
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line (the kernel's own limit may be lower).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// MP tables (in the BIOS area, where Linux searches).
pub const MPTABLE_START: u64 = 0xf0000;
/// End of the BIOS area: kernels load above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// End of conventional memory usable as RAM (EBDA starts here).
pub const EBDA_START: u64 = 0x9fc00;

/// Start of the device hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the device hole (where high RAM starts).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window; disk `i` is at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS region (needed by VMX), at the top of the hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Smallest guest memory accepted: room for boot structures and a kernel.
pub const MIN_MEMORY: u64 = 16 << 20;

/// e820 entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type: reserved.
pub const E820_RESERVED: u32 = 2;

// The fixed addresses must not overlap: page tables (PML4, PDPT, four PDs)
// are contiguous pages below the command line; the stack page sits between
// the zero page and the page tables; devices sit in the hole.
const _: () = assert!(PDPT_START == PML4_START + 0x1000 && PD_START == PDPT_START + 0x1000);
const _: () = assert!(PD_START + 4 * 0x1000 <= CMDLINE_START);
const _: () = assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
const _: () = assert!(VIRTIO_MMIO_BASE >= MMIO_HOLE_START && IOAPIC_START > VIRTIO_MMIO_BASE);

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is below the minimum or not a whole number of pages.
    #[error("guest memory of {size} bytes is not usable: it must be a multiple of 4 KiB and at least 16 MiB")]
    BadSize {
        /// The size asked for.
        size: u64,
    },
    /// mmap failed.
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    Allocate {
        /// The size asked for.
        size: u64,
        /// What vm-memory reported.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM regions for `size` bytes of guest memory: one region, or two when
/// RAM would reach into the device hole.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

/// End of RAM below the hole (where the initrd goes at most).
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// Allocates the guest's RAM.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size < MIN_MEMORY || !size.is_multiple_of(4096) {
        return Err(MemoryError::BadSize { size });
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(size)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate { size, source })
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map for `size` bytes of RAM: conventional memory up to the EBDA,
/// the BIOS area (holding the MP table) reserved, RAM from 1 MiB to the hole,
/// and RAM above 4 GiB for the rest.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: MPTABLE_START,
            size: HIMEM_START - MPTABLE_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = low_ram_end(size);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: size - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn small_memory_is_one_region_and_three_e820_entries() {
        let size = 512 << 20;
        assert_eq!(ram_regions(size), vec![(GuestAddress(0), size)]);
        let map = e820_map(size);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, size);
        assert_eq!(map[1].kind, E820_RESERVED);
    }

    #[test]
    fn memory_above_3g_continues_at_4g() {
        let size = 5u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0], (GuestAddress(0), 3 << 30));
        assert_eq!(regions[1], (GuestAddress(4 << 30), 2 << 30));
        let map = e820_map(size);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // All RAM but the BIOS area and the EBDA is in the map.
        assert_eq!(ram, size - (HIMEM_START - EBDA_START));
        assert_eq!(map.last().unwrap().addr, MMIO_HOLE_END);
        // Nothing is RAM inside the hole.
        for e in &map {
            assert!(e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END);
        }
    }

    #[test]
    fn exactly_3g_needs_no_high_region() {
        assert_eq!(ram_regions(3 << 30).len(), 1);
        assert_eq!(e820_map(3 << 30).len(), 3);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            create_guest_memory(1 << 20),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            create_guest_memory((16 << 20) + 1),
            Err(MemoryError::BadSize { .. })
        ));
        let mem = create_guest_memory(16 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
    }
}
