//! `--out DIR`: an empty ext4 disk that init mounts on `/out` in the
//! guest; after the run, what the command left there is copied into DIR
//! with `debugfs rdump` (e2fsprogs, no root privileges, no mount). A file
//! system rather than a tar stream because init then needs no archiver
//! (the user's `--image` may have none) and makes no extra system calls.

use std::path::Path;
use std::process::Command;

use super::rootfs::{tool, RootfsError};

/// The disk's size; sparse, so only what the command writes takes space.
const OUT_SIZE: u64 = 1 << 30;

/// Makes the empty disk at `image`.
pub fn create(image: &Path) -> Result<(), RootfsError> {
    let file = std::fs::File::create(image).map_err(|source| RootfsError::Io {
        path: image.to_path_buf(),
        source,
    })?;
    file.set_len(OUT_SIZE).map_err(|source| RootfsError::Io {
        path: image.to_path_buf(),
        source,
    })?;
    tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "ferrite-out", "-E", "root_owner=0:0"])
            .arg(image),
        "mkfs.ext4",
    )?;
    Ok(())
}

/// Copies the disk's files (all but `lost+found`) into `dir`; returns
/// how many top-level entries came back.
pub fn extract(image: &Path, dir: &Path) -> Result<usize, RootfsError> {
    std::fs::create_dir_all(dir).map_err(|source| RootfsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // `ls -p` prints /inode/mode/uid/gid/name/size/ per entry.
    let listing = tool(
        Command::new("debugfs").args(["-R", "ls -p /"]).arg(image),
        "debugfs ls",
    )?;
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| !matches!(*n, "" | "." | ".." | "lost+found"))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let request = format!("rdump {} \"{}\"", quoted.join(" "), dir.display());
    tool(
        Command::new("debugfs").arg("-R").arg(request).arg(image),
        "debugfs rdump",
    )?;
    Ok(names.len())
}
