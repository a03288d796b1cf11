//! Shared set-up of the crashfs integration tests.

#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crashfs::CrashFs;
use tempfile::TempDir;

/// A mounted crashfs over a fresh backing directory, with its directories.
pub struct Mounted {
    // Field order is drop order: unmount before the directories go.
    pub fs: CrashFs,
    pub backing: TempDir,
    pub mnt: TempDir,
}

/// Mounts crashfs over a new backing directory holding `files`, or prints
/// `SKIP: <reason>` and returns None when FUSE is unavailable.
pub fn mount_with(files: &[(&str, &[u8])]) -> Option<Mounted> {
    if let Some(reason) = crashfs::unavailable_reason() {
        eprintln!("SKIP: {reason}");
        return None;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    for (name, content) in files {
        fs::write(backing.path().join(name), content).unwrap();
    }
    let fs = CrashFs::mount(backing.path(), mnt.path()).expect("mount crashfs");
    Some(Mounted { fs, backing, mnt })
}

/// The whole backing file (the durable content).
pub fn durable(m: &Mounted, name: &str) -> Vec<u8> {
    fs::read(m.fs.backing_path(name)).unwrap()
}

/// `len` bytes at `offset` read through the mount with a fresh open.
pub fn visible(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, offset).unwrap();
    buf.truncate(n);
    buf
}

/// A zeroed buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    pub fn new(len: usize, byte: u8) -> AlignedBuf {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size (callers pass len > 0).
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        let mut buf = AlignedBuf { ptr, layout };
        buf.as_mut().fill(byte);
        buf
    }

    pub fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout and is freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}
