//! The kernel inside a `bzImage`, uncompressed, so that its embedded
//! config can be read before booting (see [`super::ikconfig`]).
//!
//! The boot protocol's setup header says where the compressed kernel sits
//! (`payload_offset`, `payload_length` at 0x248, counted from the
//! protected-mode code after `setup_sects` + 1 sectors;
//! Documentation/arch/x86/boot.rst). Two compressions are read: gzip (the
//! kernel's default) and LZ4 (`CONFIG_KERNEL_LZ4`, the "legacy" LZ4 format
//! of `lz4 -l`: a magic number, then blocks of at most 8 MiB, each after
//! its compressed size; the kernel appends the uncompressed size, which
//! ends the walk). XZ, LZMA, bzip2, LZO and zstd kernels are not unpacked:
//! their config is not checked before the boot.

use std::io::Read;

/// gzip's magic.
const GZIP: &[u8] = &[0x1f, 0x8b];
/// Legacy LZ4's magic (0x184c2102, little-endian).
const LZ4_LEGACY: &[u8] = &[0x02, 0x21, 0x4c, 0x18];
/// Largest block of legacy LZ4.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Larger outputs are not a kernel (and must not exhaust memory).
const MAX_KERNEL: usize = 512 << 20;

/// The compressed payload of the bzImage `image`, if the header is sound.
pub fn compressed(image: &[u8]) -> Option<&[u8]> {
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    // "HdrS" and a protocol with payload fields (2.08+).
    if image.get(0x202..0x206) != Some(b"HdrS") || u32_at(0x206)? & 0xffff < 0x208 {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    image.get(start..start.checked_add(u32_at(0x24c)?)?)
}

/// The uncompressed kernel of the bzImage `image`, where its compression
/// is one ferrite reads.
pub fn kernel(image: &[u8]) -> Option<Vec<u8>> {
    let payload = compressed(image)?;
    if payload.starts_with(GZIP) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .take(MAX_KERNEL as u64)
            .read_to_end(&mut out)
            .ok()?;
        return Some(out);
    }
    if let Some(mut rest) = payload.strip_prefix(LZ4_LEGACY) {
        let mut out = Vec::new();
        let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
        while let Some(size) = rest.get(..4) {
            let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
            // The appended uncompressed size, or a new frame: the end.
            let Some(data) = rest.get(4..4 + size) else {
                break;
            };
            let n = lz4_flex::block::decompress_into(data, &mut block).ok()?;
            out.extend_from_slice(&block[..n]);
            if out.len() > MAX_KERNEL {
                return None;
            }
            rest = &rest[4 + size..];
        }
        return Some(out);
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A bzImage-shaped file: the header fields this module reads, and
    /// `payload` where they say.
    pub fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend([0u8; 16]);
        image.extend(payload);
        image.extend(b"trailing code");
        image
    }

    #[test]
    fn gzip_and_legacy_lz4_payloads_are_unpacked() {
        let kernel_bytes = b"kernel text IKCFG_ST...IKCFG_ED".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&kernel_bytes).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(kernel(&fake_bzimage(&gz)).unwrap(), kernel_bytes);

        let mut lz4 = LZ4_LEGACY.to_vec();
        for half in kernel_bytes.chunks(kernel_bytes.len() / 2) {
            let block = lz4_flex::block::compress(half);
            lz4.extend((block.len() as u32).to_le_bytes());
            lz4.extend(block);
        }
        lz4.extend((kernel_bytes.len() as u32).to_le_bytes());
        assert_eq!(kernel(&fake_bzimage(&lz4)).unwrap(), kernel_bytes);
    }

    #[test]
    fn other_files_and_compressions_are_left_alone() {
        assert_eq!(kernel(b"\x7fELF not a bzImage"), None);
        assert_eq!(kernel(&fake_bzimage(b"\xfd7zXZ\0 xz data")), None);
        let mut short = fake_bzimage(b"");
        short[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(compressed(&short), None);
    }

    #[test]
    fn the_projects_bzimage_carries_its_config() {
        // Present where the guest kernel was built (cached under target/).
        let Some(path) = std::env::var_os("FERRITE_TEST_BZIMAGE") else {
            return;
        };
        let image = std::fs::read(path).unwrap();
        let kernel = kernel(&image).expect("an LZ4 or gzip payload");
        let config = super::super::ikconfig::embedded_config(&kernel).unwrap();
        assert!(config.contains("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y"));
    }
}
