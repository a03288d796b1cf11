//! What `--io-path` runs on: a scratch image on the user's storage
//! (`--dir`), the user's own device or file (`--device PATH`), or memory
//! (`--device ram`), whose latency does not wander as a shared host
//! disk's does, so that what is left of the difference between ferrite
//! and fio is ferrite's own cost.
//!
//! `ram` is a file in a tmpfs, not a loop device over one: tmpfs takes
//! O_DIRECT on the kernels this runs on, and serves a request in the
//! caller's thread (fio: about 1 µs for a 4 KiB read or write at QD1),
//! while a loop device hands every request to a kernel worker (fio
//! measured about 120 µs per 4 KiB read here, two wake-ups each), which
//! would put the scheduler's noise back under both sides.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::BenchError;
use crate::bench::stop;

/// Where the user asked `--io-path` to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// A scratch image in this directory (on the user's storage).
    Dir(PathBuf),
    /// A scratch image in a tmpfs the bench mounts (as root) or in
    /// /dev/shm.
    Ram,
    /// The user's block device or file, overwritten, never removed.
    Path(PathBuf),
}

impl Device {
    /// `--device`'s value: `ram` or a path.
    pub fn parse(s: &str) -> Device {
        if s == "ram" {
            Device::Ram
        } else {
            Device::Path(PathBuf::from(s))
        }
    }
}

/// The image a run uses, and whatever must be undone when it ends.
pub struct Target {
    /// The image (file or block device).
    pub path: PathBuf,
    /// Bytes of it the workloads use.
    pub size: u64,
    /// What it is, for the header line.
    pub what: String,
    // Field order matters on drop: the image goes before its mount.
    _image: Option<Scratch>,
    _mount: Option<RamMount>,
}

/// Removes a scratch image when the benchmark ends, however it ends
/// (Ctrl-C included, see `bench::stop`).
struct Scratch {
    path: PathBuf,
    _stop: stop::PathGuard,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A tmpfs the bench mounted; unmounted at the end (or at Ctrl-C).
struct RamMount {
    path: PathBuf,
    _stop: stop::PathGuard,
}

impl Drop for RamMount {
    fn drop(&mut self) {
        if let Err(e) = stop::unmount(&self.path) {
            eprintln!(
                "ferrite bench: cannot unmount {} ({e}); run `umount {0}`",
                self.path.display()
            );
        }
    }
}

/// How to set up a memory-backed device by hand, for a user who is not
/// root and has no /dev/shm.
pub const RAM_BY_HAND: &str = "as root: mkdir /mnt/ram && mount -t tmpfs -o size=300M tmpfs /mnt/ram && touch /mnt/ram/img, then ferrite bench --io-path --device /mnt/ram/img --size 256M";

fn image_err(path: &Path) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Image {
        path: path.to_path_buf(),
        source,
    }
}

/// Sets up `device` with `size` bytes of data written over it.
pub fn prepare(device: &Device, size: u64) -> Result<Target, BenchError> {
    let name = format!("ferrite-bench-{}.img", std::process::id());
    match device {
        Device::Dir(dir) => {
            let path = dir.join(name);
            let image = scratch(&path, size)?;
            Ok(Target {
                what: format!("scratch image in {}", dir.display()),
                path,
                size,
                _image: Some(image),
                _mount: None,
            })
        }
        Device::Ram => {
            let (dir, mount, what) = ram_dir(size)?;
            let path = dir.join(name);
            let image = scratch(&path, size)?;
            Ok(Target {
                what,
                path,
                size,
                _image: Some(image),
                _mount: mount,
            })
        }
        Device::Path(path) => {
            let size = usable_size(path, size)?;
            lay_out(OpenOptions::new().write(true).open(path), path, size)?;
            Ok(Target {
                what: format!("{} (overwritten)", path.display()),
                path: path.clone(),
                size,
                _image: None,
                _mount: None,
            })
        }
    }
}

/// Creates and fills a scratch image, registered for removal first.
fn scratch(path: &Path, size: u64) -> Result<Scratch, BenchError> {
    let _stop = stop::PathGuard::new(path);
    let s = Scratch {
        path: path.to_path_buf(),
        _stop,
    };
    let f = OpenOptions::new().write(true).create_new(true).open(path);
    lay_out(f, path, size)?;
    Ok(s)
}

/// A tmpfs directory for the `ram` image: a private mount sized to it when
/// root (so that it cannot fill a shared one), else /dev/shm.
fn ram_dir(size: u64) -> Result<(PathBuf, Option<RamMount>, String), BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let dir = std::env::temp_dir().join(format!("ferrite-bench-ram-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(image_err(&dir))?;
        let _stop = stop::PathGuard::mount(&dir);
        let opts = format!("size={},mode=0700", size + (4 << 20));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let what = format!("tmpfs mounted at {}", dir.display());
                let mount = RamMount {
                    path: dir.clone(),
                    _stop,
                };
                return Ok((dir, Some(mount), what));
            }
            _ => {
                drop(_stop);
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
    let shm = Path::new("/dev/shm");
    // Memory and O_DIRECT: a tmpfs (ramfs refuses O_DIRECT).
    if block::on_memory_fs(shm) == Some(true) && block::probe_direct_io(shm).is_ok() {
        return Ok((shm.to_path_buf(), None, "tmpfs /dev/shm".into()));
    }
    Err(BenchError::Usage(format!(
        "--device ram needs root (to mount a tmpfs) or a /dev/shm that takes O_DIRECT; {RAM_BY_HAND}"
    )))
}

/// The bytes of the user's device or file to use: `size`, or less if the
/// device is smaller. Refuses a mounted device.
fn usable_size(path: &Path, size: u64) -> Result<u64, BenchError> {
    let err = image_err(path);
    let meta = std::fs::metadata(path).map_err(&err)?;
    let ft = meta.file_type();
    if ft.is_block_device() {
        let canon = std::fs::canonicalize(path).map_err(&err)?;
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        if mounts
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|src| std::fs::canonicalize(src).is_ok_and(|c| c == canon))
        {
            return Err(BenchError::Usage(format!(
                "{} is mounted; --device overwrites it, so give an unused device or a file",
                path.display()
            )));
        }
        let end = File::open(path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .map_err(&err)?;
        Ok(size.min(end))
    } else if ft.is_file() {
        Ok(size)
    } else {
        Err(BenchError::Usage(format!(
            "--device {}: expected ram, a block device or a file",
            path.display()
        )))
    }
}

/// Writes `size` bytes of incompressible data over the image once, so that
/// reads find data and writes find allocated blocks, for ferrite and fio
/// alike.
fn lay_out(file: std::io::Result<File>, path: &Path, size: u64) -> Result<(), BenchError> {
    let err = image_err(path);
    let mut f = file.map_err(&err)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(&err)?;
        left -= n as u64;
    }
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_values() {
        assert_eq!(Device::parse("ram"), Device::Ram);
        assert_eq!(Device::parse("/dev/vdb"), Device::Path("/dev/vdb".into()));
    }

    #[test]
    fn a_user_file_is_overwritten_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("img");
        std::fs::write(&p, b"x").expect("write");
        let t = prepare(&Device::Path(p.clone()), 2 << 20).expect("prepare");
        assert_eq!((t.path.as_path(), t.size), (p.as_path(), 2 << 20));
        drop(t);
        assert_eq!(std::fs::metadata(&p).expect("kept").len(), 2 << 20);
    }

    #[test]
    fn a_directory_is_not_a_device() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(
            prepare(&Device::Path(dir.path().into()), 2 << 20),
            Err(BenchError::Usage(_))
        ));
    }
}
