//! bzImage loading for the 64-bit boot protocol.
//!
//! linux-loader copies the protected-mode part to `code32_start` (1 MiB) and
//! hands back the setup header. The 64-bit entry is 0x200 past the load
//! address (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL"); the
//! kernel decompresses itself from there.

use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{BootError, EntryPoint, KernelImage, LoadedKernel};
use crate::memory::HIMEM_START;

/// Offset of the 64-bit entry from the protected-mode load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// First boot protocol with `xloadflags` (2.12).
const MIN_PROTOCOL: u16 = 0x020c;

/// Loads a bzImage; refuses images without a 64-bit entry.
pub fn load(
    mem: &GuestMemoryMmap,
    file: &mut impl KernelImage,
    path: &Path,
) -> Result<LoadedKernel, BootError> {
    let result =
        BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
    // BzImage::load always returns the header; its absence would be a bug there.
    let hdr = result
        .setup_header
        .ok_or_else(|| BootError::UnknownFormat {
            path: path.to_path_buf(),
        })?;
    check_64bit(&hdr, path)?;
    let load = result.kernel_load.0;
    // The kernel decompresses in place and needs `init_size` bytes from its
    // load address: nothing (the initrd) may go below that.
    let kernel_end = result.kernel_end.max(load + u64::from(hdr.init_size));
    Ok(LoadedKernel {
        entry: EntryPoint::Linux64 {
            addr: load + ENTRY_64_OFFSET,
        },
        kernel_end,
        initrd_limit: initrd_limit(&hdr),
        cmdline_max: hdr.cmdline_size as usize,
        setup_header: Some(hdr),
    })
}

/// End of the range the initrd may occupy: `initrd_addr_max` is the address
/// of its last byte; protocols before 2.03 leave it 0 and mean 0x37ffffff.
fn initrd_limit(hdr: &setup_header) -> u64 {
    match hdr.initrd_addr_max {
        0 => 0x3800_0000,
        max => u64::from(max) + 1,
    }
}

fn check_64bit(hdr: &setup_header, path: &Path) -> Result<(), BootError> {
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < MIN_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry {
            path: path.to_path_buf(),
            version,
            xloadflags,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_or_32bit_only_images_are_refused() {
        let path = Path::new("k");
        let mut hdr = setup_header {
            version: 0x020f,
            xloadflags: 1,
            ..Default::default()
        };
        check_64bit(&hdr, path).unwrap();
        hdr.xloadflags = 0;
        assert!(matches!(
            check_64bit(&hdr, path),
            Err(BootError::No64BitEntry { .. })
        ));
        hdr.xloadflags = 1;
        hdr.version = 0x020a;
        assert!(check_64bit(&hdr, path).is_err());
    }

    #[test]
    fn initrd_limit_defaults_for_old_headers() {
        let mut hdr = setup_header::default();
        assert_eq!(initrd_limit(&hdr), 0x3800_0000);
        hdr.initrd_addr_max = 0x7fff_ffff;
        assert_eq!(initrd_limit(&hdr), 0x8000_0000);
    }
}
