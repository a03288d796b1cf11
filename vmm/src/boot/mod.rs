//! Putting a kernel into guest memory and describing the machine to it.
//!
//! Three ways in, picked from the image itself:
//! - an ELF `vmlinux` with a PVH note: 32-bit protected-mode entry at the
//!   note's address, `ebx` pointing at `hvm_start_info` (the PVH ABI);
//! - an ELF without the note: its 64-bit entry, with a Linux zero page in
//!   `rsi`, identity-mapped page tables and a flat GDT already loaded;
//! - a `bzImage`: the same 64-bit entry, at load address + 0x200, with the
//!   image's own setup header copied into the zero page.
//!
//! The kernel and initrd are loaded by `linux-loader`; the boot structures
//! (zero page, PVH start info, memory map, page tables, GDT) are written here.

pub mod bzimage;
pub mod elf;
pub mod gdt;
pub mod params;

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::{self, CMDLINE_MAX_SIZE, CMDLINE_START};

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode, paging off, `ebx` = start info.
    Pvh {
        /// Physical entry address from the PVH note.
        addr: u64,
    },
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64 {
        /// Physical entry address.
        addr: u64,
    },
}

impl EntryPoint {
    /// The entry address, whichever protocol.
    pub fn addr(self) -> u64 {
        match self {
            EntryPoint::Pvh { addr } | EntryPoint::Linux64 { addr } => addr,
        }
    }
}

/// Where the kernel image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// A file (ELF vmlinux or bzImage).
    File(PathBuf),
    /// An image built into the binary (e.g. `probe::PROBE_ELF`), with a
    /// name for messages.
    #[allow(dead_code)] // for `ferrite demo` and `ferrite bench`
    Embedded {
        /// How messages call it.
        name: &'static str,
        /// The image.
        bytes: &'static [u8],
    },
}

/// What linux-loader needs to read a kernel from.
pub trait KernelImage: Read + Seek + vm_memory::ReadVolatile {}
impl<T: Read + Seek + vm_memory::ReadVolatile> KernelImage for T {}

/// What a boot needs besides guest memory.
#[derive(Clone, Debug)]
pub struct BootConfig<'a> {
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: &'a Kernel,
    /// Optional initial ramdisk.
    pub initrd: Option<&'a Path>,
    /// Full kernel command line (without the terminating NUL).
    pub cmdline: &'a str,
    /// Guest RAM in bytes (for the memory map).
    pub mem_size: u64,
}

/// Why the kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// The kernel is neither an ELF nor a bzImage.
    #[error("{path} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat {
        /// The kernel image.
        path: PathBuf,
    },
    /// linux-loader refused the image.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The kernel image.
        path: PathBuf,
        /// What linux-loader reported.
        source: linux_loader::loader::Error,
    },
    /// A bzImage too old for the 64-bit boot protocol.
    #[error("{path} does not support the 64-bit boot protocol (boot protocol {version:#x}, xloadflags {xloadflags:#x}; need 2.12+ with XLF_KERNEL_64)")]
    No64BitEntry {
        /// The kernel image.
        path: PathBuf,
        /// Its boot protocol version.
        version: u16,
        /// Its xloadflags.
        xloadflags: u16,
    },
    /// The initrd does not fit between the kernel and its highest allowed address.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel (ends at {kernel_end:#x})")]
    InitrdTooBig {
        /// The initrd.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Highest address it may end at.
        limit: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Writing boot structures into guest memory failed.
    #[error("cannot write the {what} into guest memory: {detail}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The underlying error.
        detail: String,
    },
}

/// Where the kernel landed and what the boot structures need to know.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// How to enter it.
    pub entry: EntryPoint,
    /// First byte after the kernel.
    pub kernel_end: u64,
    /// Highest address (exclusive) the initrd may end at.
    pub initrd_limit: u64,
    /// Longest command line the kernel accepts (without the NUL).
    pub cmdline_max: usize,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Where the initrd was put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest physical start.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Kernel image formats recognised by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
}

fn detect_format(file: &mut impl KernelImage, path: &Path) -> Result<Format, BootError> {
    let read_err = |source| BootError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let n = read_up_to(file, &mut head).map_err(read_err)?;
    format_of(&head[..n]).ok_or_else(|| BootError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// ELF magic at 0, or the bzImage "HdrS" signature at 0x202.
fn format_of(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"\x7fELF") {
        Some(Format::Elf)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(Format::BzImage)
    } else {
        None
    }
}

/// Loads the kernel (and initrd), writes the command line and every boot
/// structure; returns how the boot vCPU must enter.
pub fn load(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<EntryPoint, BootError> {
    let loaded = match cfg.kernel {
        Kernel::File(path) => load_kernel(mem, &mut open(path)?, path)?,
        Kernel::Embedded { name, bytes } => {
            load_kernel(mem, &mut Cursor::new(*bytes), Path::new(name))?
        }
    };
    let initrd = match cfg.initrd {
        Some(path) => Some(load_initrd(mem, path, &loaded, cfg.mem_size)?),
        None => None,
    };
    write_cmdline(mem, cfg.cmdline, loaded.cmdline_max)?;
    let e820 = memory::e820_map(cfg.mem_size);
    match loaded.entry {
        EntryPoint::Pvh { .. } => params::write_pvh(mem, &e820, initrd)?,
        EntryPoint::Linux64 { .. } => {
            params::write_zero_page(mem, &loaded, cfg.cmdline, &e820, initrd)?;
            gdt::write_page_tables(mem)?;
        }
    }
    gdt::write_gdt(mem, loaded.entry)?;
    Ok(loaded.entry)
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &mut impl KernelImage,
    name: &Path,
) -> Result<LoadedKernel, BootError> {
    match detect_format(image, name)? {
        Format::Elf => elf::load(mem, image, name),
        Format::BzImage => bzimage::load(mem, image, name),
    }
}

/// Puts the initrd as high as allowed, page aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<InitrdRegion, BootError> {
    let read_err = |source| BootError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = open(path)?;
    let size = file.metadata().map_err(read_err)?.len();
    let limit = memory::low_ram_end(mem_size).min(kernel.initrd_limit);
    let kernel_end = kernel.kernel_end.next_multiple_of(4096);
    let addr = initrd_address(size, limit, kernel_end).ok_or(BootError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        limit,
        kernel_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(InitrdRegion { addr, size })
}

/// The page-aligned start of a `size`-byte initrd ending at or below `limit`
/// and starting at or above `floor`.
fn initrd_address(size: u64, limit: u64, floor: u64) -> Option<u64> {
    let addr = limit.checked_sub(size)? & !0xfff;
    (addr >= floor && size > 0).then_some(addr)
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let max = max.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| BootError::GuestMemory {
            what: "command line",
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_their_magic() {
        assert_eq!(format_of(b"\x7fELF\x02\x01"), Some(Format::Elf));
        let mut bz = vec![0u8; 0x206];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(format_of(&bz), Some(Format::BzImage));
        assert_eq!(format_of(b"MZ"), None);
        assert_eq!(format_of(&[0u8; 0x300]), None);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned_above_the_kernel() {
        assert_eq!(
            initrd_address(0x1800, 0x100_0000, 0x20_0000),
            Some(0xffe000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x100_0000, 0x20_0000),
            Some(0xfff000)
        );
        // Does not fit above the kernel.
        assert_eq!(initrd_address(0x10_0000, 0x30_0000, 0x28_0000), None);
        // Larger than the limit itself.
        assert_eq!(initrd_address(0x40_0000, 0x30_0000, 0), None);
        assert_eq!(initrd_address(0, 0x30_0000, 0), None);
    }

    #[test]
    fn embedded_kernels_load_like_files() {
        // A minimal ELF64 with one PT_LOAD of 4 bytes at 1 MiB.
        let mut elf = Vec::new();
        elf.extend(b"\x7fELF");
        elf.extend([2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        elf.extend(2u16.to_le_bytes());
        elf.extend(62u16.to_le_bytes());
        elf.extend(1u32.to_le_bytes());
        elf.extend(0x10_0000u64.to_le_bytes()); // entry
        elf.extend(64u64.to_le_bytes()); // phoff
        elf.extend(0u64.to_le_bytes());
        elf.extend(0u32.to_le_bytes());
        elf.extend(64u16.to_le_bytes());
        elf.extend(56u16.to_le_bytes());
        elf.extend(1u16.to_le_bytes());
        elf.extend([64, 0, 0, 0, 0, 0]);
        elf.extend(1u32.to_le_bytes()); // PT_LOAD
        elf.extend(5u32.to_le_bytes());
        elf.extend(120u64.to_le_bytes()); // offset
        elf.extend(0x10_0000u64.to_le_bytes());
        elf.extend(0x10_0000u64.to_le_bytes());
        elf.extend(4u64.to_le_bytes());
        elf.extend(4u64.to_le_bytes());
        elf.extend(0x1000u64.to_le_bytes());
        elf.extend([0xf4, 0xeb, 0xfd, 0x90]);
        let bytes: &'static [u8] = Box::leak(elf.into_boxed_slice());
        let mem = memory::create_guest_memory(16 << 20).unwrap();
        let kernel = Kernel::Embedded {
            name: "tiny",
            bytes,
        };
        let cfg = BootConfig {
            kernel: &kernel,
            initrd: None,
            cmdline: "x",
            mem_size: 16 << 20,
        };
        assert_eq!(
            load(&mem, &cfg).unwrap(),
            EntryPoint::Linux64 { addr: 0x10_0000 }
        );
        let mut code = [0u8; 4];
        mem.read_slice(&mut code, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(code, [0xf4, 0xeb, 0xfd, 0x90]);
        let garbage = Kernel::Embedded {
            name: "garbage",
            bytes: b"nothing to boot",
        };
        let cfg = BootConfig {
            kernel: &garbage,
            ..cfg
        };
        assert!(matches!(
            load(&mem, &cfg),
            Err(BootError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn command_line_limits_are_enforced() {
        let mem = memory::create_guest_memory(16 << 20).unwrap();
        write_cmdline(&mem, "console=ttyS0", 2047).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&mem, "abcdef", 5),
            Err(BootError::CmdlineTooLong { len: 6, max: 5 })
        ));
        assert!(matches!(
            write_cmdline(&mem, "a\0b", 100),
            Err(BootError::CmdlineNul)
        ));
    }
}
