//! The root disk of a `ferrite run` guest without `--image`: an ext4
//! image of a static busybox (with its applet links) and, with `--rootfs
//! DIR`, DIR's tree on top, made by `mkfs.ext4 -d` (no root privileges).
//! Images are cached by content (busybox and every path, mode, symlink
//! target and file byte of DIR) under [`cache_dir`], so a second run with
//! the same inputs starts at once; each boot gets a throwaway copy.
//!
//! ferrite's init is not on this disk: it comes in the initramfs (see
//! [`super::initramfs`]) so that `--image` works the same way.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the root disk could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The busybox to put in is missing or dynamically linked.
    #[error("{0}: a static busybox is needed for the root disk (apt-get install busybox-static, or set FERRITE_BUSYBOX)")]
    Busybox(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The host error.
        source: io::Error,
    },
    /// A tool failed.
    #[error("{tool} failed: {why}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its last words.
        why: String,
    },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where ferrite caches what it builds: `$FERRITE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/ferrite`, else `~/.cache/ferrite`, else the temporary
/// directory.
pub fn cache_dir() -> PathBuf {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("FERRITE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ferrite")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/ferrite")))
        .unwrap_or_else(|| std::env::temp_dir().join("ferrite-cache"))
}

/// The busybox that goes in: `$FERRITE_BUSYBOX` or `/bin/busybox`.
fn busybox() -> PathBuf {
    std::env::var_os("FERRITE_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// Whether the ELF `bytes` has no program interpreter (is static).
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let (Some(phoff), Some(size), Some(num)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    bytes.starts_with(b"\x7fELF\x02")
        && (0..usize::from(num)).all(|i| {
            let at = phoff as usize + i * usize::from(size);
            bytes
                .get(at..at + 4)
                .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
        })
}

/// Hashes `dir`'s tree: paths, types, modes, symlink targets, contents.
fn hash_tree(dir: &Path, rel: &Path, h: &mut impl Hasher) -> Result<(), RootfsError> {
    use std::os::unix::fs::MetadataExt;
    let here = dir.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&here)
        .map_err(io_err(&here))?
        .collect::<Result<_, _>>()
        .map_err(io_err(&here))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let name = rel.join(e.file_name());
        (name.as_os_str(), meta.mode()).hash(h);
        if meta.is_dir() {
            hash_tree(dir, &name, h)?;
        } else if meta.file_type().is_symlink() {
            std::fs::read_link(&path).map_err(io_err(&path))?.hash(h);
        } else if meta.is_file() {
            std::fs::read(&path).map_err(io_err(&path))?.hash(h);
        }
    }
    Ok(())
}

/// The cached root image for `dir` (or busybox alone), built if needed.
pub fn cached(dir: Option<&Path>) -> Result<PathBuf, RootfsError> {
    let bb = busybox();
    let bb_bytes = std::fs::read(&bb).map_err(|_| RootfsError::Busybox(bb.clone()))?;
    if !is_static_elf(&bb_bytes) {
        return Err(RootfsError::Busybox(bb));
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        "ferrite-run-rootfs-v1",
        env!("CARGO_PKG_VERSION"),
        &bb_bytes,
    )
        .hash(&mut h);
    if let Some(dir) = dir {
        hash_tree(dir, Path::new(""), &mut h)?;
    }
    let cache = cache_dir().join("rootfs");
    let image = cache.join(format!("{:016x}.ext4", h.finish()));
    if image.exists() {
        return Ok(image);
    }
    std::fs::create_dir_all(&cache).map_err(io_err(&cache))?;
    let stage = tempfile::Builder::new()
        .prefix(".stage-")
        .tempdir_in(&cache)
        .map_err(io_err(&cache))?;
    let root = stage.path().join("root");
    populate(&root, &bb, dir)?;
    let tmp = stage.path().join("root.ext4");
    let size_mib = tree_bytes(&root) / (1 << 20) * 5 / 4 + 64;
    tool(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "ferrite-run",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&root)
            .arg(&tmp)
            .arg(format!("{size_mib}M")),
        "mkfs.ext4",
    )?;
    // Another ferrite may have built the same image meanwhile: same bytes.
    std::fs::rename(&tmp, &image).map_err(io_err(&image))?;
    Ok(image)
}

/// Fills `root` with busybox, its links, the usual directories and `dir`.
fn populate(root: &Path, bb: &Path, dir: Option<&Path>) -> Result<(), RootfsError> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "out",
    ] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let target = root.join("bin/busybox");
    std::fs::copy(bb, &target).map_err(io_err(&target))?;
    let list = tool(Command::new(bb).arg("--list-full"), "busybox --list-full")?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "bin/busybox")
    {
        let link = root.join(applet);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        // Absolute targets resolve inside the guest's root.
        let _ = std::os::unix::fs::symlink("/bin/busybox", &link);
    }
    if let Some(dir) = dir {
        let mut src = dir.as_os_str().to_owned();
        src.push("/.");
        tool(Command::new("cp").arg("-a").arg(src).arg(root), "cp -a")?;
    }
    Ok(())
}

/// Bytes of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Runs `cmd`; its stdout, or its stderr's last line as the error.
pub fn tool(cmd: &mut Command, name: &'static str) -> Result<String, RootfsError> {
    let out = cmd.output().map_err(|e| RootfsError::Tool {
        tool: name,
        why: e.to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(RootfsError::Tool {
            tool: name,
            why: err.lines().last().unwrap_or("no message").to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_elves_are_told_apart() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me), "the test binary is dynamically linked");
        assert!(is_static_elf(super::super::initramfs::INIT));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn the_tree_hash_sees_contents_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let hash = || {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            hash_tree(dir.path(), Path::new(""), &mut h).unwrap();
            h.finish()
        };
        std::fs::write(dir.path().join("a"), "1").unwrap();
        let one = hash();
        assert_eq!(one, hash());
        std::fs::write(dir.path().join("a"), "2").unwrap();
        let two = hash();
        assert_ne!(one, two);
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_ne!(two, hash());
    }
}
