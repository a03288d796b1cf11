//! The volatile state of one file: what a page cache (or a disk's volatile
//! write cache) holds that the backing file does not.
//!
//! The backing file is the durable medium. Writes, truncations and zeroed
//! ranges land here first, page by page; [`Overlay::sync`] writes the dirty
//! pages (and the size) to the backing file, [`Overlay::sync_range`] only
//! those of one range, and dropping the overlay is a power cut.
//!
//! Pages that a failed fsync could not write are kept readable but no longer
//! dirty ("lost"), as Linux does after a writeback error: a later fsync does
//! not write them and a power cut drops them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Granularity of the overlay, the page size of the model.
pub(crate) const PAGE: u64 = 4096;

/// Contents of one overlaid page.
#[derive(Debug, Clone)]
enum Data {
    /// All zeroes (punched or zeroed), kept without a buffer so that
    /// discarding a large range stays cheap.
    Zero,
    /// `PAGE` bytes.
    Bytes(Box<[u8]>),
}

#[derive(Debug, Clone)]
struct Page {
    data: Data,
    /// Not yet written to the backing file (false for pages a failed fsync
    /// gave up on).
    dirty: bool,
}

/// Volatile pages and size of one file over its durable backing file.
///
/// Invariant: overlay bytes at or past the volatile size are zero, and
/// backing bytes at or past `cut` are stale (read as zero).
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pages: BTreeMap<u64, Page>,
    /// Volatile size; `None` while it equals the durable (backing) size.
    size: Option<u64>,
    /// Lowest size the file was truncated to since it was last durable.
    cut: Option<u64>,
}

fn page_span(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / PAGE..(offset + len).div_ceil(PAGE)
}

impl Overlay {
    /// True when nothing volatile remains (not even lost pages).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.pages.is_empty() && self.size.is_none() && self.cut.is_none()
    }

    /// Number of pages not yet durable that a sync would write.
    pub(crate) fn dirty_pages(&self) -> usize {
        self.pages.values().filter(|p| p.dirty).count()
    }

    /// Size the file has for its readers.
    pub(crate) fn size(&self, durable_size: u64) -> u64 {
        self.size.unwrap_or(durable_size)
    }

    /// Bytes `[offset, offset + len)` as readers see them, clipped at the
    /// volatile end of file.
    pub(crate) fn read(&self, file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let durable = file.metadata()?.len();
        let size = self.size(durable);
        if offset >= size {
            return Ok(Vec::new());
        }
        let len = len.min(size - offset);
        let mut buf = vec![0u8; len as usize];
        self.fill(file, durable, offset, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` with the visible bytes at `offset`, ignoring the size.
    fn fill(&self, file: &File, durable: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let valid_end = durable.min(self.cut.unwrap_or(u64::MAX)).min(end);
        if valid_end > offset {
            read_exact_or_zero(file, offset, &mut buf[..(valid_end - offset) as usize])?;
        }
        for (&idx, page) in self.pages.range(page_span(offset, buf.len() as u64)) {
            let page_start = idx * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match &page.data {
                Data::Zero => dst.fill(0),
                Data::Bytes(bytes) => dst.copy_from_slice(
                    &bytes[(from - page_start) as usize..(to - page_start) as usize],
                ),
            }
        }
        Ok(())
    }

    /// Takes page `idx` into the overlay (filled from what readers see) and
    /// returns its buffer, marked dirty.
    fn page_mut(&mut self, file: &File, durable: u64, idx: u64) -> io::Result<&mut [u8]> {
        if !self.pages.contains_key(&idx) {
            let mut bytes = vec![0u8; PAGE as usize].into_boxed_slice();
            self.fill(file, durable, idx * PAGE, &mut bytes)?;
            self.pages.insert(
                idx,
                Page {
                    data: Data::Bytes(bytes),
                    dirty: true,
                },
            );
        }
        let page = self
            .pages
            .get_mut(&idx)
            .ok_or_else(|| io::Error::other("overlay page vanished"))?;
        page.dirty = true;
        if let Data::Zero = page.data {
            page.data = Data::Bytes(vec![0u8; PAGE as usize].into_boxed_slice());
        }
        match &mut page.data {
            Data::Bytes(bytes) => Ok(bytes),
            Data::Zero => Err(io::Error::other("overlay page not materialised")),
        }
    }

    /// Volatile write of `data` at `offset`; extends the size if needed.
    pub(crate) fn write(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let durable = file.metadata()?.len();
        let end = offset + data.len() as u64;
        for idx in page_span(offset, data.len() as u64) {
            let page_start = idx * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            let bytes = self.page_mut(file, durable, idx)?;
            bytes[(from - page_start) as usize..(to - page_start) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        }
        if end > self.size(durable) {
            self.size = Some(end);
        }
        Ok(())
    }

    /// Volatile zeroing of `[offset, offset + len)`. With `keep_size` the
    /// range is clipped at the end of file; without, the file grows to cover it.
    pub(crate) fn zero(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> io::Result<()> {
        let durable = file.metadata()?.len();
        let size = self.size(durable);
        let end = if keep_size {
            (offset + len).min(size)
        } else {
            offset + len
        };
        if end <= offset {
            return Ok(());
        }
        for idx in page_span(offset, end - offset) {
            let page_start = idx * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            if from == page_start && to == page_start + PAGE {
                self.pages.insert(
                    idx,
                    Page {
                        data: Data::Zero,
                        dirty: true,
                    },
                );
            } else {
                let bytes = self.page_mut(file, durable, idx)?;
                bytes[(from - page_start) as usize..(to - page_start) as usize].fill(0);
            }
        }
        if end > size {
            self.size = Some(end);
        }
        Ok(())
    }

    /// Volatile size change (truncate or extend).
    pub(crate) fn set_size(&mut self, file: &File, new_size: u64) -> io::Result<()> {
        let durable = file.metadata()?.len();
        let size = self.size(durable);
        if new_size < size {
            // Keep the invariant: nothing visible past the new end.
            let first_gone = new_size.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if !new_size.is_multiple_of(PAGE) {
                let idx = new_size / PAGE;
                let tail = (new_size % PAGE) as usize;
                if let Some(page) = self.pages.get_mut(&idx) {
                    page.dirty = true;
                    if let Data::Bytes(bytes) = &mut page.data {
                        bytes[tail..].fill(0);
                    }
                }
            }
            if new_size < durable {
                self.cut = Some(self.cut.map_or(new_size, |c| c.min(new_size)));
            }
        }
        self.size = Some(new_size);
        self.normalise(durable);
        Ok(())
    }

    fn normalise(&mut self, durable: u64) {
        if self.size == Some(durable) && self.cut.is_none() {
            self.size = None;
        }
    }

    /// Makes everything volatile durable: the equivalent of fdatasync.
    pub(crate) fn sync(&mut self, file: &File) -> io::Result<()> {
        let durable = file.metadata()?.len();
        let target = self.size(durable);
        if let Some(cut) = self.cut {
            if cut < durable {
                file.set_len(cut)?;
            }
        }
        let dirty: Vec<u64> = self
            .pages
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(&i, _)| i)
            .collect();
        for &idx in &dirty {
            self.write_back(file, idx, target)?;
        }
        if file.metadata()?.len() != target {
            file.set_len(target)?;
        }
        for idx in dirty {
            self.pages.remove(&idx);
        }
        self.size = None;
        self.cut = None;
        Ok(())
    }

    /// Makes the pages of `[offset, offset + len)` durable, and the size if
    /// it grew: what an `O_DSYNC` write guarantees for its own range. A
    /// pending truncation forces a full sync (its order matters).
    pub(crate) fn sync_range(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        if self.cut.is_some() {
            return self.sync(file);
        }
        let durable = file.metadata()?.len();
        let target = self.size(durable);
        let dirty: Vec<u64> = self
            .pages
            .range(page_span(offset, len))
            .filter(|(_, p)| p.dirty)
            .map(|(&i, _)| i)
            .collect();
        for &idx in &dirty {
            self.write_back(file, idx, target)?;
        }
        if target > durable {
            file.set_len(target)?;
            self.size = None;
        }
        for idx in dirty {
            self.pages.remove(&idx);
        }
        Ok(())
    }

    /// Writes page `idx` to the backing file, clipped at `size`.
    fn write_back(&self, file: &File, idx: u64, size: u64) -> io::Result<()> {
        let Some(page) = self.pages.get(&idx) else {
            return Ok(());
        };
        let start = idx * PAGE;
        if start >= size {
            return Ok(());
        }
        let len = PAGE.min(size - start);
        match &page.data {
            Data::Bytes(bytes) => file.write_all_at(&bytes[..len as usize], start),
            Data::Zero => punch_hole(file, start, len),
        }
    }

    /// A fsync failed: what was dirty will never be written by a later
    /// fsync (Linux marks such pages clean), but stays readable until a
    /// power cut.
    pub(crate) fn lose_dirty(&mut self) {
        for page in self.pages.values_mut() {
            page.dirty = false;
        }
    }

    /// Like [`Overlay::lose_dirty`], for one range (a failed `O_DSYNC` write).
    pub(crate) fn lose_range(&mut self, offset: u64, len: u64) {
        for page in self.pages.range_mut(page_span(offset, len)) {
            page.1.dirty = false;
        }
    }
}

/// `pread` that treats the end of file as zeroes.
fn read_exact_or_zero(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Zeroes a range of the backing file, deallocating it where possible.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by
    // `file`, which outlives the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // The backing file system cannot punch: write the zeroes.
        return file.write_all_at(&vec![0u8; len as usize], offset);
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> File {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(content, 0).unwrap();
        file
    }

    fn durable(file: &File) -> Vec<u8> {
        let mut buf = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn write_is_visible_but_not_durable_until_sync() {
        let file = backing(&[1u8; 10000]);
        let mut ov = Overlay::default();
        ov.write(&file, 4000, &[7u8; 200]).unwrap();
        let seen = ov.read(&file, 0, 20000).unwrap();
        assert_eq!(seen.len(), 10000);
        assert!(seen[..4000].iter().all(|&b| b == 1));
        assert!(seen[4000..4200].iter().all(|&b| b == 7));
        assert!(seen[4200..].iter().all(|&b| b == 1));
        assert_eq!(durable(&file), vec![1u8; 10000]);
        assert_eq!(ov.dirty_pages(), 2);
        ov.sync(&file).unwrap();
        assert_eq!(durable(&file), seen);
        assert!(ov.is_empty());
    }

    #[test]
    fn extension_is_volatile() {
        let file = backing(&[1u8; 100]);
        let mut ov = Overlay::default();
        ov.write(&file, 5000, &[2u8; 10]).unwrap();
        assert_eq!(ov.size(100), 5010);
        let seen = ov.read(&file, 0, 6000).unwrap();
        assert_eq!(seen.len(), 5010);
        assert!(seen[100..5000].iter().all(|&b| b == 0));
        assert_eq!(file.metadata().unwrap().len(), 100);
        ov.sync(&file).unwrap();
        assert_eq!(durable(&file), seen);
    }

    #[test]
    fn truncate_then_extend_reads_zeroes_and_syncs_them() {
        let file = backing(&[9u8; 12000]);
        let mut ov = Overlay::default();
        ov.set_size(&file, 1000).unwrap();
        ov.set_size(&file, 12000).unwrap();
        let seen = ov.read(&file, 0, 12000).unwrap();
        assert!(seen[..1000].iter().all(|&b| b == 9));
        assert!(seen[1000..].iter().all(|&b| b == 0));
        assert_eq!(durable(&file), vec![9u8; 12000]);
        ov.sync(&file).unwrap();
        assert_eq!(durable(&file), seen);
    }

    #[test]
    fn zero_range_is_volatile_and_punches_on_sync() {
        let file = backing(&[5u8; 3 * PAGE as usize]);
        let mut ov = Overlay::default();
        ov.zero(&file, 100, 2 * PAGE, true).unwrap();
        let seen = ov.read(&file, 0, 3 * PAGE).unwrap();
        assert!(seen[..100].iter().all(|&b| b == 5));
        assert!(seen[100..100 + 2 * PAGE as usize].iter().all(|&b| b == 0));
        assert!(seen[100 + 2 * PAGE as usize..].iter().all(|&b| b == 5));
        assert_eq!(durable(&file), vec![5u8; 3 * PAGE as usize]);
        ov.sync(&file).unwrap();
        assert_eq!(durable(&file), seen);
    }

    #[test]
    fn zero_with_keep_size_stops_at_eof() {
        let file = backing(&[5u8; 100]);
        let mut ov = Overlay::default();
        ov.zero(&file, 50, 10000, true).unwrap();
        assert_eq!(ov.read(&file, 0, 20000).unwrap().len(), 100);
        ov.zero(&file, 50, 10000, false).unwrap();
        assert_eq!(ov.read(&file, 0, 20000).unwrap().len(), 10050);
    }

    #[test]
    fn sync_range_only_writes_its_pages() {
        let file = backing(&[0u8; 4 * PAGE as usize]);
        let mut ov = Overlay::default();
        ov.write(&file, 0, &[1u8; 10]).unwrap();
        ov.write(&file, 2 * PAGE, &[2u8; 10]).unwrap();
        ov.sync_range(&file, 2 * PAGE, 10).unwrap();
        let d = durable(&file);
        assert_eq!(d[0], 0);
        assert_eq!(d[2 * PAGE as usize], 2);
        assert_eq!(ov.dirty_pages(), 1);
    }

    #[test]
    fn lost_pages_stay_readable_but_are_never_written() {
        let file = backing(&[0u8; PAGE as usize]);
        let mut ov = Overlay::default();
        ov.write(&file, 0, &[3u8; 10]).unwrap();
        ov.lose_dirty();
        assert_eq!(ov.read(&file, 0, 10).unwrap(), vec![3u8; 10]);
        ov.sync(&file).unwrap();
        assert_eq!(durable(&file)[0], 0);
        assert_eq!(ov.read(&file, 0, 10).unwrap(), vec![3u8; 10]);
    }

    #[test]
    fn dropping_the_overlay_is_a_power_cut() {
        let file = backing(&[4u8; 100]);
        let mut ov = Overlay::default();
        ov.write(&file, 0, &[8u8; 100]).unwrap();
        ov.set_size(&file, 50).unwrap();
        drop(ov);
        assert_eq!(durable(&file), vec![4u8; 100]);
        let ov = Overlay::default();
        assert_eq!(ov.read(&file, 0, 200).unwrap(), vec![4u8; 100]);
    }
}
