//! Checks a kernel's embedded config (`CONFIG_IKCONFIG`) for the options a
//! `ferrite run` guest needs, before it boots, so a kernel that could not
//! work fails at once with the options named instead of after a boot.
//!
//! The kernel embeds its `.config` gzip-compressed between the markers
//! `IKCFG_ST` and `IKCFG_ED`. In an ELF `vmlinux` that data is plain to
//! see. In a `bzImage` it sits inside the compressed payload, which is
//! unpacked for gzip and LZ4 kernels ([`super::payload`]); a bzImage
//! compressed otherwise, like a kernel without IKCONFIG, boots unchecked,
//! and the run's diagnosis after the boot still names a missing virtio
//! option.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The options `ferrite run` needs built in (`=y`; modules cannot be
/// loaded before the root disk is there).
pub const NEEDED: &[&str] = &[
    "VIRTIO_MMIO",
    "VIRTIO_MMIO_CMDLINE_DEVICES",
    "VIRTIO_BLK",
    "EXT4_FS",
    "BLK_DEV_INITRD",
    "DEVTMPFS",
    "SERIAL_8250_CONSOLE",
    "BINFMT_ELF",
];

const START: &[u8] = b"IKCFG_ST";
const END: &[u8] = b"IKCFG_ED";

/// Why the kernel cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KernelConfigError {
    /// The kernel file cannot be read.
    #[error("cannot read the kernel {path}: {source}")]
    Read {
        /// The kernel.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// Options are missing.
    #[error("the kernel {path} lacks {} (from its embedded config); ferrite run needs {}", .missing.join(", "), needed())]
    Missing {
        /// The kernel.
        path: PathBuf,
        /// `CONFIG_` names not set to `y`.
        missing: Vec<String>,
    },
}

fn needed() -> String {
    NEEDED
        .iter()
        .map(|o| format!("CONFIG_{o}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The embedded config of an uncompressed kernel image, if it has one.
pub fn embedded_config(image: &[u8]) -> Option<String> {
    let start = find(image, START)? + START.len();
    let len = find(&image[start..], END)?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&image[start..start + len])
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `CONFIG_` options of [`NEEDED`] that `config` does not set to `y`.
pub fn missing(config: &str) -> Vec<String> {
    NEEDED
        .iter()
        .map(|o| format!("CONFIG_{o}"))
        .filter(|o| {
            !config
                .lines()
                .any(|l| l.strip_prefix(o.as_str()) == Some("=y"))
        })
        .collect()
}

/// Checks the kernel at `path` where its config can be read.
pub fn check_file(path: &Path) -> Result<(), KernelConfigError> {
    let image = std::fs::read(path).map_err(|source| KernelConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = if image.starts_with(b"\x7fELF") {
        embedded_config(&image)
    } else {
        super::payload::kernel(&image).and_then(|k| embedded_config(&k))
    };
    match config.map(|c| missing(&c)) {
        Some(missing) if !missing.is_empty() => Err(KernelConfigError::Missing {
            path: path.to_path_buf(),
            missing,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fake vmlinux holding `config` the way the kernel embeds it.
    pub fn fake_vmlinux(config: &str) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(config.as_bytes()).unwrap();
        let mut image = b"\x7fELF\x02 some code ".to_vec();
        image.extend(START);
        image.extend(gz.finish().unwrap());
        image.extend(END);
        image.extend(b" more");
        image
    }

    fn full() -> String {
        NEEDED.iter().map(|o| format!("CONFIG_{o}=y\n")).collect()
    }

    #[test]
    fn the_embedded_config_is_found_and_read() {
        let image = fake_vmlinux(&full());
        assert_eq!(embedded_config(&image).unwrap(), full());
        assert!(missing(&full()).is_empty());
        assert_eq!(embedded_config(b"\x7fELF no config"), None);
    }

    #[test]
    fn missing_options_are_named() {
        let config = full()
            .replace(
                "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
                "# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set",
            )
            .replace("CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_BLK=m");
        assert_eq!(
            missing(&config),
            ["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_VIRTIO_BLK"]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, fake_vmlinux(&config)).unwrap();
        let line = check_file(&path).unwrap_err().to_string();
        assert!(
            line.contains("lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, CONFIG_VIRTIO_BLK"),
            "{line}"
        );
        std::fs::write(&path, b"MZ bzImage").unwrap();
        assert!(check_file(&path).is_ok());
        // The same config inside a gzip bzImage is found too.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&fake_vmlinux(&config)).unwrap();
        let bz = super::super::payload::tests::fake_bzimage(&gz.finish().unwrap());
        std::fs::write(&path, bz).unwrap();
        let line = check_file(&path).unwrap_err().to_string();
        assert!(
            line.contains("lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"),
            "{line}"
        );
    }
}
