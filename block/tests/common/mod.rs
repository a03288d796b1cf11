//! Helpers shared by the integration tests: scratch images on a file system
//! that supports O_DIRECT, running one op to completion, reading the
//! kernel's view of a descriptor's flags.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use block::{CacheMode, Completion, Disk, DiskConfig, EngineKind, Op, Segment};

pub const O_DIRECT: u32 = 0o40000;
pub const O_DSYNC: u32 = 0o10000;
/// The bit O_SYNC adds on top of O_DSYNC (__O_SYNC).
pub const O_SYNC_ONLY: u32 = 0o4000000;

/// A scratch directory under the target dir (ext4 here; /tmp may be tmpfs).
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir under target")
}

/// A sparse image of `len` bytes in `dir`.
pub fn image(dir: &Path, len: u64) -> PathBuf {
    let p = dir.join("disk.img");
    let f = std::fs::File::create(&p).expect("create image");
    f.set_len(len).expect("size image");
    p
}

pub fn config(path: &Path, cache: CacheMode, engine: EngineKind, read_only: bool) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        cache,
        read_only,
        engine: Some(engine),
    }
}

pub fn open(path: &Path, cache: CacheMode, engine: EngineKind) -> Disk {
    let d = Disk::open(&config(path, cache, engine, false)).expect("open disk");
    assert_eq!(d.engine_kind(), engine);
    d
}

/// The `flags:` field of /proc/self/fdinfo/FD (octal).
pub fn fd_flags(fd: i32) -> u32 {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
    let line = text
        .lines()
        .find(|l| l.starts_with("flags:"))
        .expect("flags line");
    u32::from_str_radix(line["flags:".len()..].trim(), 8).expect("octal flags")
}

/// Submits `op`, kicks and waits; returns its one completion.
///
/// # Safety
/// The op's segments must be valid as `Disk::submit` requires until return.
pub unsafe fn run(disk: &mut Disk, op: Op) -> Completion {
    // SAFETY: forwarded to the caller.
    unsafe { disk.submit(op, 77) }.expect("submit");
    disk.kick().expect("kick");
    let mut out = Vec::new();
    disk.wait_idle(&mut out);
    assert_eq!(out.len(), 1, "one completion expected");
    let c = out.pop().expect("completion");
    assert_eq!(c.user_data, 77);
    c
}

/// A buffer whose first byte sits `skew` bytes past a 4096 boundary.
pub struct Skewed {
    back: Vec<u8>,
    start: usize,
    len: usize,
}

impl Skewed {
    pub fn new(len: usize, skew: usize) -> Skewed {
        let back = vec![0u8; len + 8192];
        let base = back.as_ptr() as usize;
        let start = (4096 - base % 4096) % 4096 + skew;
        Skewed { back, start, len }
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.back[self.start..self.start + self.len]
    }

    /// Splits the buffer into segments of the given lengths (the rest last).
    pub fn segments(&mut self, lens: &[usize]) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut at = 0;
        let bytes = self.bytes();
        for &l in lens {
            out.push(Segment {
                addr: bytes[at..].as_mut_ptr(),
                len: l,
            });
            at += l;
        }
        if at < bytes.len() {
            out.push(Segment {
                addr: bytes[at..].as_mut_ptr(),
                len: bytes.len() - at,
            });
        }
        out
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` at `offset` from a buffer skewed by `skew`, split as `lens`.
pub fn write_at(
    disk: &mut Disk,
    offset: u64,
    data: &[u8],
    skew: usize,
    lens: &[usize],
) -> Completion {
    let mut buf = Skewed::new(data.len(), skew);
    buf.bytes().copy_from_slice(data);
    let segments = buf.segments(lens);
    // SAFETY: buf outlives the completed op and nothing else touches it.
    unsafe { run(disk, Op::Write { offset, segments }) }
}

/// Reads `len` bytes at `offset` into a buffer skewed by `skew`, split as `lens`.
pub fn read_at(disk: &mut Disk, offset: u64, len: usize, skew: usize, lens: &[usize]) -> Vec<u8> {
    let mut buf = Skewed::new(len, skew);
    let segments = buf.segments(lens);
    // SAFETY: buf outlives the completed op and nothing else touches it.
    let c = unsafe { run(disk, Op::Read { offset, segments }) };
    assert_eq!(c.result.expect("read ok") as usize, len);
    buf.bytes().to_vec()
}

pub fn op(disk: &mut Disk, op: Op) -> Completion {
    // SAFETY: the ops passed here carry no segments.
    unsafe { run(disk, op) }
}

/// Allocated 512-byte blocks of the file.
pub fn st_blocks(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks()
}

/// The engines to run the shared tests against on this host.
pub fn engine_available(engine: EngineKind) -> bool {
    if engine == EngineKind::IoUring && !block::io_uring_supported() {
        eprintln!("SKIP: io_uring is not available on this kernel");
        return false;
    }
    true
}

/// A crashfs mount whose backing directory holds a 1 MiB image.
pub struct Crash {
    pub fs: crashfs::CrashFs,
    _backing: tempfile::TempDir,
    _mnt: tempfile::TempDir,
}

pub fn crashfs_with_image() -> Option<Crash> {
    if let Some(reason) = crashfs::unavailable_reason() {
        eprintln!("SKIP: {reason}");
        return None;
    }
    let backing = scratch();
    let mnt = scratch();
    image(backing.path(), 1 << 20);
    let fs = crashfs::CrashFs::mount(backing.path(), mnt.path()).expect("mount crashfs");
    Some(Crash {
        fs,
        _backing: backing,
        _mnt: mnt,
    })
}

/// Turns each named `fn(EngineKind)` test body into two tests, one per
/// engine; the io_uring one skips (with a reason) where io_uring is missing.
#[allow(unused_macros)] // not every test file that includes `common` uses it
macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod sync_engine {
            $(#[test] fn $name() { super::$name(block::EngineKind::Sync) })*
        }
        mod io_uring_engine {
            $(#[test] fn $name() {
                if super::engine_available(block::EngineKind::IoUring) {
                    super::$name(block::EngineKind::IoUring)
                }
            })*
        }
    };
}
