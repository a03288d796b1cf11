//! Opening the data descriptor with the flags a cache mode demands, and
//! learning from the host what the opened file needs: its size, its logical
//! block size and the memory alignment O_DIRECT wants.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::inflight::AlignedBuf;
use crate::{BlockError, CacheMode};

vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// What the image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Regular,
    BlockDevice,
}

/// What the host told us about the opened image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub kind: FileKind,
    /// Bytes, rounded down to 512.
    pub capacity: u64,
    /// Offsets and lengths must be multiples of this (the guest's BLK_SIZE).
    pub logical_block_size: u32,
    /// Buffer addresses and segment lengths must be multiples of this.
    pub mem_alignment: usize,
}

/// The open(2) flags of the data descriptor. `dsync` is separate from the
/// mode because a write-cache switch in writethrough/directsync drops it.
pub(crate) fn data_flags(mode: CacheMode, read_only: bool, dsync: bool) -> libc::c_int {
    let mut flags = if read_only {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    if mode.direct() {
        flags |= libc::O_DIRECT;
    }
    if dsync {
        flags |= libc::O_DSYNC;
    }
    flags | libc::O_CLOEXEC
}

/// Whether files in `dir` can be opened with O_DIRECT, as `cache=none`
/// and `directsync` images are: creates a probe file there, opens it so,
/// and removes it. Some file systems refuse (tmpfs before Linux 6.6, FUSE
/// without direct I/O, ramfs).
pub fn probe_direct_io(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".ferrite-odirect-{}", std::process::id()));
    let result = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .map(drop);
    let _ = std::fs::remove_file(&probe);
    result
}

/// tmpfs and ramfs (statfs `f_type`): memory, no device under them, and
/// files that cannot be read or written without blocking (no
/// FMODE_NOWAIT), so io_uring hands every operation on them to a worker.
const MEMORY_FS_MAGIC: [i64; 2] = [0x0102_1994, 0x8584_58f6];

/// Whether `path` lies on tmpfs or ramfs; None if the host cannot say.
pub fn on_memory_fs(path: &Path) -> Option<bool> {
    // O_PATH: no read permission needed, as for statfs(2) on the path.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .ok()?;
    memory_fs(&file)
}

/// Whether the open `file` lies on tmpfs or ramfs (false if the host
/// cannot say).
pub(crate) fn file_on_memory_fs(file: &File) -> bool {
    memory_fs(file).unwrap_or(false)
}

#[allow(clippy::unnecessary_cast)] // f_type's width differs by target.
fn memory_fs(file: &File) -> Option<bool> {
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open for the call and `st` a writable statfs that
    // outlives it.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    (rc == 0).then(|| MEMORY_FS_MAGIC.contains(&(st.f_type as i64)))
}

/// Opens the data descriptor. A file system refusing O_DIRECT (EINVAL on
/// open) becomes `DirectIoUnsupported`, which tells the user what to do.
pub(crate) fn open_data(path: &Path, flags: libc::c_int) -> Result<File, BlockError> {
    let writable = flags & libc::O_ACCMODE == libc::O_RDWR;
    OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(path)
        .map_err(|source| {
            if flags & libc::O_DIRECT != 0 && source.raw_os_error() == Some(libc::EINVAL) {
                BlockError::DirectIoUnsupported {
                    path: path.to_path_buf(),
                }
            } else {
                BlockError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })
}

/// Learns the size and alignment needs of `file` (opened with O_DIRECT when
/// `direct`).
pub(crate) fn discover(file: &File, path: &Path, direct: bool) -> Result<Geometry, BlockError> {
    let probe_err = |source| BlockError::Probe {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(probe_err)?;
    let ft = meta.file_type();
    let (kind, size, dev_block) = if ft.is_file() {
        (FileKind::Regular, meta.len(), None)
    } else if ft.is_block_device() {
        let size = block_device_size(file).map_err(probe_err)?;
        let lbs = block_device_sector_size(file).map_err(probe_err)?;
        (FileKind::BlockDevice, size, Some(lbs))
    } else {
        return Err(BlockError::NotADisk {
            path: path.to_path_buf(),
        });
    };
    let (lbs, mem) = if direct {
        match (statx_dio_align(file), dev_block) {
            (Some(a), _) => a,
            (None, Some(lbs)) => (lbs, lbs as usize),
            (None, None) => probe_dio_align(file),
        }
    } else {
        (dev_block.unwrap_or(512), 1)
    };
    Ok(Geometry {
        kind,
        capacity: size & !511,
        logical_block_size: sane_pow2(lbs as usize, 512) as u32,
        mem_alignment: sane_pow2(mem, 1),
    })
}

/// `v` if it is a power of two of at least `min`, else the smallest such
/// power above it (the kernel reports powers of two; this guards the rest).
fn sane_pow2(v: usize, min: usize) -> usize {
    v.max(min).checked_next_power_of_two().unwrap_or(4096)
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live local; the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64(), &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn block_device_sector_size(file: &File) -> io::Result<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to
    // a live local; the descriptor is open.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::BLKSSZGET,
            &mut lbs as *mut libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(lbs).unwrap_or(512))
}

/// (offset alignment, memory alignment) from statx STATX_DIOALIGN, when the
/// kernel and file system report it.
fn statx_dio_align(file: &File) -> Option<(u32, usize)> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH makes statx
    // describe the open descriptor; stx is a live, writable statx.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((
        stx.stx_dio_offset_align,
        stx.stx_dio_mem_align.max(1) as usize,
    ))
}

/// Finds O_DIRECT alignment by trying reads, as QEMU does when the kernel
/// will not say: the smallest read size that works is the offset alignment,
/// the smallest buffer alignment that works the memory alignment. When no
/// read tells (an empty file reads 0 bytes whatever the alignment) the safe
/// 4096 is assumed.
fn probe_dio_align(file: &File) -> (u32, usize) {
    const SIZES: [usize; 4] = [512, 1024, 2048, 4096];
    let Some(buf) = AlignedBuf::zeroed(2 * 4096, 4096) else {
        return (4096, 4096);
    };
    let read_ok = |ptr: *mut u8, len: usize| {
        // SAFETY: ptr..ptr+len lies inside buf (callers stay below 8192).
        let n = unsafe { libc::pread(file.as_raw_fd(), ptr.cast(), len, 0) };
        n > 0
    };
    let lbs = SIZES.into_iter().find(|&s| read_ok(buf.as_mut_ptr(), s));
    let Some(lbs) = lbs else {
        return (4096, 4096);
    };
    let mem = SIZES.into_iter().find(|&a| {
        // SAFETY: a <= 4096 and lbs <= 4096 keep the read inside the 8192 bytes.
        read_ok(unsafe { buf.as_mut_ptr().add(a) }, lbs)
    });
    (lbs as u32, mem.unwrap_or(4096))
}

/// True when `path` is on a file system that can punch holes: tries it past
/// the end of the file with KEEP_SIZE, which changes neither data nor size.
pub(crate) fn probe_punch_hole(file: &File, kind: FileKind, capacity: u64) -> bool {
    if kind == FileKind::BlockDevice {
        // blkdev_fallocate has supported PUNCH_HOLE|KEEP_SIZE since 4.9; a
        // device that cannot discard fails the request with EOPNOTSUPP.
        return true;
    }
    let start = (capacity + 4095) & !4095;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on an open descriptor; the range is past EOF and
    // KEEP_SIZE keeps the size, so no data or metadata visible changes.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, start as libc::off_t, 4096) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_and_an_open_file_on_it_get_the_same_answer() {
        assert_eq!(on_memory_fs(Path::new("/nonexistent/ferrite")), None);
        for dir in ["/dev/shm", env!("CARGO_MANIFEST_DIR")] {
            let Ok(f) = File::open(dir) else {
                eprintln!("SKIP: no {dir} here");
                continue;
            };
            assert_eq!(
                on_memory_fs(Path::new(dir)),
                Some(file_on_memory_fs(&f)),
                "{dir}"
            );
        }
    }

    #[test]
    fn flags_per_mode() {
        use libc::{O_CLOEXEC as C, O_DIRECT as D, O_DSYNC as S, O_RDONLY as RO, O_RDWR as RW};
        assert_eq!(data_flags(CacheMode::Writeback, false, false), RW | C);
        assert_eq!(data_flags(CacheMode::None, false, false), RW | D | C);
        assert_eq!(data_flags(CacheMode::Writethrough, false, true), RW | S | C);
        assert_eq!(
            data_flags(CacheMode::DirectSync, false, true),
            RW | D | S | C
        );
        assert_eq!(
            data_flags(CacheMode::DirectSync, true, true),
            RO | D | S | C
        );
        assert_eq!(data_flags(CacheMode::Unsafe, true, false), RO | C);
    }

    #[test]
    fn the_direct_io_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
        // Whatever the file system answers, the probe file is gone.
        let _ = probe_direct_io(dir.path());
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        assert!(probe_direct_io(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn regular_file_geometry() {
        let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
        f.as_file().set_len(1_000_000).expect("set_len");
        let g = discover(f.as_file(), f.path(), false).expect("discover");
        assert_eq!(g.kind, FileKind::Regular);
        assert_eq!(g.capacity, 1_000_000 & !511);
        assert_eq!((g.logical_block_size, g.mem_alignment), (512, 1));
    }

    #[test]
    fn direct_geometry_is_a_power_of_two() {
        let f = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).expect("temp");
        f.as_file().set_len(65536).expect("set_len");
        let Ok(file) = open_data(f.path(), data_flags(CacheMode::None, false, false)) else {
            eprintln!("SKIP: the crate directory's file system refuses O_DIRECT");
            return;
        };
        let g = discover(&file, f.path(), true).expect("discover");
        assert!(g.logical_block_size >= 512 && g.logical_block_size.is_power_of_two());
        assert!(g.mem_alignment.is_power_of_two());
        let (plbs, pmem) = probe_dio_align(&file);
        assert!(
            plbs <= g.logical_block_size,
            "probe {plbs} vs statx {}",
            g.logical_block_size
        );
        assert!(pmem >= 512 && pmem.is_power_of_two());
    }

    #[test]
    fn sane_pow2_guards() {
        assert_eq!(sane_pow2(0, 512), 512);
        assert_eq!(sane_pow2(4, 1), 4);
        assert_eq!(sane_pow2(3000, 512), 4096);
    }

    #[test]
    fn refuses_directories() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = File::open(d.path()).expect("open dir");
        assert!(matches!(
            discover(&f, d.path(), false),
            Err(BlockError::NotADisk { .. })
        ));
    }
}
