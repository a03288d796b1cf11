//! ELF `vmlinux` loading: PVH entry when the kernel has the note, else its
//! 64-bit entry point.

use std::path::Path;

use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{BootError, EntryPoint, KernelImage, LoadedKernel};
use crate::memory::HIMEM_START;

/// x86 Linux's default `COMMAND_LINE_SIZE` (2048, with the NUL): what an ELF
/// kernel, which carries no setup header to say otherwise, accepts.
const ELF_CMDLINE_MAX: usize = 2047;

/// The highest initrd end an ELF kernel gets: Linux's default
/// `initrd_addr_max` (2 GiB), as it has no setup header to raise it.
const ELF_INITRD_LIMIT: u64 = 0x8000_0000;

/// Loads each PT_LOAD segment at its physical address.
pub fn load(
    mem: &GuestMemoryMmap,
    file: &mut impl KernelImage,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let result = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        BootError::Load {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh { addr: addr.0 },
        _ => EntryPoint::Linux64 {
            addr: result.kernel_load.0,
        },
    };
    Ok(LoadedKernel {
        entry,
        kernel_end: result.kernel_end,
        initrd_limit: ELF_INITRD_LIMIT,
        cmdline_max: ELF_CMDLINE_MAX,
        setup_header: None,
    })
}
