//! The probe guest, embedded.
//!
//! A tiny x86-64 guest kernel of ferrite's own (sources in `guest/`, built by
//! `build.rs` with gcc) that drives virtio-blk over virtio-mmio by polling and
//! reports on COM1. See `README.md` in this crate for scenarios and output.

/// The probe guest: a static x86-64 ELF with a PVH entry note
/// (`XEN_ELFNOTE_PHYS32_ENTRY`), linked at 1 MiB, meant to be booted through
/// its 32-bit PVH entry with `%ebx` pointing at an `hvm_start_info`.
///
/// The kernel command line selects what it does (`probe=rw,flush ...`) and
/// names the disks (`virtio_mmio.device=4K@0xd0000000:5`, one per disk).
/// It prints `PROBE key=value ...` lines on COM1 (port 0x3f8), ends with
/// `PROBE verdict=pass|fail reason=...` and writes 0 (pass) or 1 (fail) to
/// the debug-exit port 0xf4, so a VMM exits with status 1 or 3.
pub static PROBE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.elf"));

#[cfg(test)]
#[path = "../build/forbidden.rs"]
mod forbidden;

#[cfg(test)]
mod tests {
    use super::PROBE_ELF;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// Returns the PVH entry from the image's PT_NOTE segments, if any.
    fn pvh_entry(elf: &[u8]) -> Option<u32> {
        let (phoff, phentsize, phnum) = (
            u64_at(elf, 32) as usize,
            u16_at(elf, 54) as usize,
            u16_at(elf, 56) as usize,
        );
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            if u32_at(elf, ph) != 4 {
                continue; // not PT_NOTE
            }
            let (off, size) = (u64_at(elf, ph + 8) as usize, u64_at(elf, ph + 32) as usize);
            let mut n = off;
            while n + 12 <= off + size {
                let (namesz, descsz, ty) = (
                    u32_at(elf, n) as usize,
                    u32_at(elf, n + 4) as usize,
                    u32_at(elf, n + 8),
                );
                let name = &elf[n + 12..n + 12 + namesz];
                let desc = n + 12 + namesz.next_multiple_of(4);
                if name == b"Xen\0" && ty == 18 && descsz == 4 {
                    return Some(u32_at(elf, desc));
                }
                n = desc + descsz.next_multiple_of(4);
            }
        }
        None
    }

    #[test]
    fn is_a_static_x86_64_elf() {
        assert_eq!(&PROBE_ELF[..4], b"\x7fELF");
        assert_eq!(PROBE_ELF[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(PROBE_ELF, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(PROBE_ELF, 18), 62, "EM_X86_64");
    }

    #[test]
    fn has_a_pvh_entry_in_the_first_loaded_page() {
        // link.ld puts the 32-bit entry first, at 1 MiB.
        assert_eq!(pvh_entry(PROBE_ELF), Some(0x10_0000));
    }

    #[test]
    fn note_segment_is_four_byte_aligned() {
        // QEMU aligns the note name by the segment's p_align: keep it 4.
        let (phoff, phentsize, phnum) = (
            u64_at(PROBE_ELF, 32) as usize,
            u16_at(PROBE_ELF, 54) as usize,
            u16_at(PROBE_ELF, 56) as usize,
        );
        let aligns: Vec<u64> = (0..phnum)
            .map(|i| phoff + i * phentsize)
            .filter(|&ph| u32_at(PROBE_ELF, ph) == 4)
            .map(|ph| u64_at(PROBE_ELF, ph + 48))
            .collect();
        assert_eq!(aligns, vec![4]);
    }
}
