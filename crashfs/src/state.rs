//! The file system's state: inodes over backing paths, open handles, the
//! volatile overlays, faults and counters. Every FUSE operation is one method
//! here, called under one lock, so each is atomic with respect to
//! [`State::power_cut`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::fault::{FaultError, FaultSlot};
use crate::overlay::Overlay;

/// Counters of what reached the file system, for tests to check that the
/// path they meant to exercise was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashStats {
    /// Files opened or created.
    pub opens: u64,
    /// Opens that carried `O_DIRECT`.
    pub direct_opens: u64,
    /// Opens that carried `O_DSYNC` (or `O_SYNC`).
    pub dsync_opens: u64,
    /// FUSE write requests, failed ones included.
    pub writes: u64,
    /// Writes made durable at once (`O_DSYNC` handle or write flags).
    pub dsync_writes: u64,
    /// Writes arriving on a handle opened with `O_DIRECT`.
    pub direct_writes: u64,
    /// FUSE fsync requests (fsync, fdatasync, and the kernel's own after
    /// `O_DSYNC`/`RWF_DSYNC` writes), failed ones included.
    pub fsyncs: u64,
    /// Writes failed by an injected fault.
    pub failed_writes: u64,
    /// Syncs (fsyncs or `O_DSYNC` writes) failed by an injected fault.
    pub failed_fsyncs: u64,
    /// Calls to power_cut.
    pub power_cuts: u64,
    /// Pages (4 KiB) currently volatile and dirty, over all files.
    pub dirty_pages: u64,
}

#[derive(Debug)]
struct Inode {
    /// Path relative to the backing directory ("" for the root).
    rel: PathBuf,
    kind: FileType,
    /// The backing file, opened at first use and kept while the inode lives
    /// (so an unlinked but open file keeps working).
    file: Option<File>,
    overlay: Overlay,
    open_handles: u32,
    unlinked: bool,
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    dsync: bool,
    direct: bool,
}

/// Result of an operation: the errno goes back to the kernel.
pub(crate) type OpResult<T> = Result<T, Errno>;

fn io_errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn fault_errno(e: FaultError) -> Errno {
    Errno::from_i32(e.errno())
}

/// All mutable state of one mount.
#[derive(Debug)]
pub(crate) struct State {
    root: PathBuf,
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<PathBuf, u64>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_fh: u64,
    pub(crate) write_fault: FaultSlot,
    pub(crate) fsync_fault: FaultSlot,
    stats: CrashStats,
}

impl State {
    /// State over the backing directory `root` (already canonical).
    pub(crate) fn new(root: PathBuf) -> State {
        let mut state = State {
            root,
            inodes: HashMap::new(),
            by_path: HashMap::new(),
            handles: HashMap::new(),
            next_ino: INodeNo::ROOT.0 + 1,
            next_fh: 1,
            write_fault: FaultSlot::default(),
            fsync_fault: FaultSlot::default(),
            stats: CrashStats::default(),
        };
        state.insert_inode(INodeNo::ROOT.0, PathBuf::new(), FileType::Directory);
        state
    }

    fn insert_inode(&mut self, ino: u64, rel: PathBuf, kind: FileType) {
        self.by_path.insert(rel.clone(), ino);
        self.inodes.insert(
            ino,
            Inode {
                rel,
                kind,
                file: None,
                overlay: Overlay::default(),
                open_handles: 0,
                unlinked: false,
            },
        );
    }

    /// The inode number of `rel`, allocated on first sight.
    fn ino_for(&mut self, rel: &Path, kind: FileType) -> u64 {
        if let Some(&ino) = self.by_path.get(rel) {
            if self.inodes.get(&ino).is_some_and(|i| i.kind == kind) {
                return ino;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.insert_inode(ino, rel.to_path_buf(), kind);
        ino
    }

    fn inode(&self, ino: u64) -> OpResult<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> OpResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn child_rel(&self, parent: u64, name: &OsStr) -> OpResult<PathBuf> {
        let parent = self.inode(parent)?;
        if parent.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(parent.rel.join(name))
    }

    /// Opens the backing file of a regular-file inode if not yet open.
    fn ensure_open(&mut self, ino: u64) -> OpResult<()> {
        let path = {
            let inode = self.inode(ino)?;
            if inode.kind != FileType::RegularFile {
                return Err(Errno::EINVAL);
            }
            if inode.file.is_some() {
                return Ok(());
            }
            self.root.join(&inode.rel)
        };
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS)) => {
                File::open(&path).map_err(io_errno)?
            }
            Err(e) => return Err(io_errno(e)),
        };
        self.inode_mut(ino)?.file = Some(file);
        Ok(())
    }

    /// Attributes as readers see them (volatile size included).
    pub(crate) fn getattr(&mut self, ino: u64) -> OpResult<FileAttr> {
        let inode = self.inode(ino)?;
        let meta = match &inode.file {
            Some(f) => f.metadata(),
            None => fs::symlink_metadata(self.root.join(&inode.rel)),
        }
        .map_err(io_errno)?;
        Ok(attr_of(ino, &meta, inode.overlay.size(meta.len())))
    }

    pub(crate) fn lookup(&mut self, parent: u64, name: &OsStr) -> OpResult<FileAttr> {
        let rel = self.child_rel(parent, name)?;
        let meta = fs::symlink_metadata(self.root.join(&rel)).map_err(io_errno)?;
        let kind = FileType::from_std(meta.file_type()).ok_or(Errno::EIO)?;
        let ino = self.ino_for(&rel, kind);
        self.getattr(ino)
    }

    /// Mode changes go to the backing file at once; size changes are volatile.
    pub(crate) fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
    ) -> OpResult<FileAttr> {
        if let Some(mode) = mode {
            let path = self.root.join(&self.inode(ino)?.rel);
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io_errno)?;
        }
        if let Some(size) = size {
            self.ensure_open(ino)?;
            let inode = self.inode_mut(ino)?;
            let file = inode.file.as_ref().ok_or(Errno::EBADF)?;
            inode.overlay.set_size(file, size).map_err(io_errno)?;
        }
        self.getattr(ino)
    }

    fn new_handle(&mut self, ino: u64, flags: i32) -> OpResult<u64> {
        self.ensure_open(ino)?;
        let handle = Handle {
            ino,
            dsync: flags & libc::O_DSYNC != 0,
            direct: flags & libc::O_DIRECT != 0,
        };
        self.stats.opens += 1;
        self.stats.direct_opens += u64::from(handle.direct);
        self.stats.dsync_opens += u64::from(handle.dsync);
        self.inode_mut(ino)?.open_handles += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        Ok(fh)
    }

    pub(crate) fn open(&mut self, ino: u64, flags: i32) -> OpResult<u64> {
        match self.inode(ino)?.kind {
            FileType::RegularFile => self.new_handle(ino, flags),
            FileType::Directory => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Creates the backing file (durable at once, empty) and opens it.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> OpResult<(FileAttr, u64)> {
        let rel = self.child_rel(parent, name)?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).mode(mode & 0o7777);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        let file = opts.open(self.root.join(&rel)).map_err(io_errno)?;
        let ino = self.ino_for(&rel, FileType::RegularFile);
        let inode = self.inode_mut(ino)?;
        if inode.file.is_none() {
            inode.file = Some(file);
        }
        let fh = self.new_handle(ino, flags)?;
        Ok((self.getattr(ino)?, fh))
    }

    pub(crate) fn release(&mut self, fh: u64) {
        let Some(handle) = self.handles.remove(&fh) else {
            return;
        };
        if let Some(inode) = self.inodes.get_mut(&handle.ino) {
            inode.open_handles = inode.open_handles.saturating_sub(1);
            if inode.unlinked && inode.open_handles == 0 {
                self.inodes.remove(&handle.ino);
            }
        }
    }

    pub(crate) fn read(&mut self, ino: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        self.ensure_open(ino)?;
        let inode = self.inode(ino)?;
        let file = inode.file.as_ref().ok_or(Errno::EBADF)?;
        inode
            .overlay
            .read(file, offset, u64::from(size))
            .map_err(io_errno)
    }

    /// Volatile write, durable at once through an `O_DSYNC` handle.
    pub(crate) fn write(
        &mut self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> OpResult<u32> {
        self.stats.writes += 1;
        let handle = self.handles.get(&fh).copied();
        self.stats.direct_writes += u64::from(handle.is_some_and(|h| h.direct));
        if let Some(e) = self.write_fault.check() {
            self.stats.failed_writes += 1;
            return Err(fault_errno(e));
        }
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let dsync = handle.is_some_and(|h| h.dsync) || flags & libc::O_DSYNC != 0;
        self.ensure_open(ino)?;
        let inode = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let file = inode.file.as_ref().ok_or(Errno::EBADF)?;
        inode.overlay.write(file, offset, data).map_err(io_errno)?;
        if dsync {
            self.stats.dsync_writes += 1;
            if let Some(e) = self.fsync_fault.check() {
                self.stats.failed_fsyncs += 1;
                inode.overlay.lose_range(offset, data.len() as u64);
                return Err(fault_errno(e));
            }
            inode
                .overlay
                .sync_range(file, offset, data.len() as u64)
                .map_err(io_errno)?;
        }
        Ok(len)
    }

    /// fsync/fdatasync: the file's volatile state becomes durable.
    pub(crate) fn fsync(&mut self, ino: u64) -> OpResult<()> {
        self.stats.fsyncs += 1;
        let fault = self.fsync_fault.check();
        let inode = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Some(e) = fault {
            self.stats.failed_fsyncs += 1;
            inode.overlay.lose_dirty();
            return Err(fault_errno(e));
        }
        match &inode.file {
            Some(file) => inode.overlay.sync(file).map_err(io_errno),
            None => Ok(()),
        }
    }

    /// fallocate: allocation, punch hole and zero range, all volatile.
    pub(crate) fn fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> OpResult<()> {
        const KNOWN: i32 =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !KNOWN != 0 {
            return Err(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if punch && (!keep_size || zero) {
            return Err(Errno::EINVAL);
        }
        self.ensure_open(ino)?;
        let inode = self.inode_mut(ino)?;
        let file = inode.file.as_ref().ok_or(Errno::EBADF)?;
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if punch || zero {
            inode
                .overlay
                .zero(file, offset, len, keep_size)
                .map_err(io_errno)
        } else if !keep_size {
            // Plain allocation: only the size can change.
            let durable = file.metadata().map_err(io_errno)?.len();
            if end > inode.overlay.size(durable) {
                inode.overlay.set_size(file, end).map_err(io_errno)?;
            }
            Ok(())
        } else {
            Ok(())
        }
    }

    /// Entries of a directory: (inode, kind, name), "." and ".." first.
    pub(crate) fn readdir(
        &mut self,
        ino: u64,
    ) -> OpResult<Vec<(u64, FileType, std::ffi::OsString)>> {
        let rel = {
            let inode = self.inode(ino)?;
            if inode.kind != FileType::Directory {
                return Err(Errno::ENOTDIR);
            }
            inode.rel.clone()
        };
        let parent_ino = match rel.parent() {
            Some(p) => self.by_path.get(p).copied().unwrap_or(INodeNo::ROOT.0),
            None => INodeNo::ROOT.0,
        };
        let mut out = vec![
            (ino, FileType::Directory, ".".into()),
            (parent_ino, FileType::Directory, "..".into()),
        ];
        for entry in fs::read_dir(self.root.join(&rel)).map_err(io_errno)? {
            let entry = entry.map_err(io_errno)?;
            let Some(kind) = entry.file_type().ok().and_then(FileType::from_std) else {
                continue;
            };
            let child = rel.join(entry.file_name());
            let child_ino = self.ino_for(&child, kind);
            out.push((child_ino, kind, entry.file_name()));
        }
        Ok(out)
    }

    /// Removes the name durably; an open file lives on until released.
    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> OpResult<()> {
        let rel = self.child_rel(parent, name)?;
        fs::remove_file(self.root.join(&rel)).map_err(io_errno)?;
        self.forget_path(&rel);
        Ok(())
    }

    pub(crate) fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> OpResult<FileAttr> {
        let rel = self.child_rel(parent, name)?;
        let path = self.root.join(&rel);
        fs::create_dir(&path).map_err(io_errno)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_errno)?;
        let ino = self.ino_for(&rel, FileType::Directory);
        self.getattr(ino)
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> OpResult<()> {
        let rel = self.child_rel(parent, name)?;
        fs::remove_dir(self.root.join(&rel)).map_err(io_errno)?;
        self.forget_path(&rel);
        Ok(())
    }

    fn forget_path(&mut self, rel: &Path) {
        let Some(ino) = self.by_path.remove(rel) else {
            return;
        };
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.unlinked = true;
            if inode.open_handles == 0 {
                self.inodes.remove(&ino);
            }
        }
    }

    /// Drops everything volatile. Returns the inodes whose kernel caches
    /// must be invalidated.
    pub(crate) fn power_cut(&mut self) -> Vec<u64> {
        self.stats.power_cuts += 1;
        let mut touched = Vec::new();
        for (&ino, inode) in &mut self.inodes {
            if inode.kind == FileType::RegularFile {
                inode.overlay = Overlay::default();
                touched.push(ino);
            }
        }
        touched
    }

    /// Makes every file's volatile state durable (like `sync(2)`).
    pub(crate) fn sync_all(&mut self) -> io::Result<()> {
        for inode in self.inodes.values_mut() {
            if let Some(file) = &inode.file {
                inode.overlay.sync(file)?;
            }
        }
        Ok(())
    }

    /// Counters, with the current number of dirty pages.
    pub(crate) fn stats(&self) -> CrashStats {
        let dirty = self
            .inodes
            .values()
            .map(|i| i.overlay.dirty_pages() as u64)
            .sum();
        CrashStats {
            dirty_pages: dirty,
            ..self.stats
        }
    }
}

fn time_of(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nsecs),
        Err(_) => UNIX_EPOCH,
    }
}

/// FUSE attributes of a backing file, with the size readers see.
fn attr_of(ino: u64, meta: &Metadata, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: meta.blocks(),
        atime: time_of(meta.atime(), meta.atime_nsec()),
        mtime: time_of(meta.mtime(), meta.mtime_nsec()),
        ctime: time_of(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}
