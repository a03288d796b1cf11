//! The structures that describe the machine to the kernel: the Linux zero
//! page (`boot_params`) and the PVH start info with its memory map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{BootError, InitrdRegion, LoadedKernel};
use crate::memory::{
    E820Entry, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

/// "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// Loader type "undefined" (we have no assigned ID).
const LOADER_TYPE_OTHER: u8 = 0xff;
/// Alignment an ELF kernel without a header is assumed to need.
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// PVH start info magic (xen/include/public/arch-x86/hvm/start_info.h).
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

fn guest_err(what: &'static str) -> impl Fn(linux_loader::configurator::Error) -> BootError {
    move |e| BootError::GuestMemory {
        what,
        detail: e.to_string(),
    }
}

/// Builds the zero page for the 64-bit boot protocol.
pub fn zero_page(
    kernel: &LoadedKernel,
    cmdline: &str,
    e820: &[E820Entry],
    initrd: Option<InitrdRegion>,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = KERNEL_ALIGNMENT,
    }
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    if let Some(initrd) = initrd {
        // The initrd sits below the device hole, so 32 bits hold it.
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(BootError::GuestMemory {
            what: "e820 map",
            detail: format!("{} entries do not fit the zero page", e820.len()),
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    e820: &[E820Entry],
    initrd: Option<InitrdRegion>,
) -> Result<(), BootError> {
    let params = zero_page(kernel, cmdline, e820, initrd)?;
    let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(guest_err("zero page"))
}

/// Builds the PVH start info and memory map.
pub fn pvh_start_info(
    e820: &[E820Entry],
    initrd: Option<InitrdRegion>,
) -> (hvm_start_info, Vec<hvm_memmap_table_entry>) {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    if initrd.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    (info, memmap)
}

/// Writes the PVH start info at [`PVH_INFO_START`], its memory map and the
/// initrd's module entry.
pub fn write_pvh(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    initrd: Option<InitrdRegion>,
) -> Result<(), BootError> {
    let (info, memmap) = pvh_start_info(e820, initrd);
    let mut boot = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        boot.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&boot, mem).map_err(guest_err("PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::EntryPoint;
    use crate::memory::{create_guest_memory, e820_map};
    use vm_memory::Bytes;

    fn elf_kernel() -> LoadedKernel {
        LoadedKernel {
            entry: EntryPoint::Linux64 { addr: 0x100_0000 },
            kernel_end: 0x200_0000,
            initrd_limit: 0x8000_0000,
            cmdline_max: 2047,
            setup_header: None,
        }
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let e820 = e820_map(512 << 20);
        let initrd = InitrdRegion {
            addr: 0x1000_0000,
            size: 0x2345,
        };
        let p = zero_page(&elf_kernel(), "console=ttyS0", &e820, Some(initrd)).unwrap();
        assert_eq!({ p.hdr.header }, HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 13);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x2345);
        assert_eq!({ p.hdr.kernel_alignment }, KERNEL_ALIGNMENT);
        assert_eq!(p.e820_entries as usize, e820.len());
        assert_eq!({ p.e820_table[2].addr }, e820[2].addr);
        assert_eq!({ p.e820_table[2].r#type }, 1);
    }

    #[test]
    fn bzimage_header_is_kept() {
        let mut k = elf_kernel();
        k.setup_header = Some(linux_loader::loader::bootparam::setup_header {
            version: 0x020f,
            init_size: 0x1234,
            ..Default::default()
        });
        let p = zero_page(&k, "", &e820_map(64 << 20), None).unwrap();
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.init_size }, 0x1234);
        assert_eq!({ p.hdr.type_of_loader }, LOADER_TYPE_OTHER);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn pvh_start_info_lands_in_guest_memory() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let e820 = e820_map(64 << 20);
        let initrd = InitrdRegion {
            addr: 0x300_0000,
            size: 4096,
        };
        write_pvh(&mem, &e820, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries as usize, e820.len());
        assert_eq!(info.nr_modules, 1);
        let entry: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24 * 2))
            .unwrap();
        assert_eq!(entry.addr, e820[2].addr);
        assert_eq!(entry.size, e820[2].size);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(module.paddr, 0x300_0000);
    }
}
