//! What a queue's chains let the device touch, computed from guest memory
//! before the device runs: the oracle of the `virtio_blk_request` target.
//!
//! This is written from the virtio spec and virtio-queue's documented chain
//! walk (`DescriptorChain`: at most `size` descriptors, one level of
//! indirection, a table of `len / 16` entries, the walk stops at a
//! descriptor it cannot read), not from ferrite's parser. It over-approximates
//! where unsure: every chain the available ring names counts, whether or not
//! the device gets to it.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::chain::QueueGeom;
use crate::layout::Flat;

/// A half-open byte range `[start, end)`.
pub type Span = (u64, u64);

/// One descriptor as read from memory.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// What the chains of one queue allow.
#[derive(Debug, Default)]
pub struct Effects {
    /// Guest memory the device reads to decide what to do: ring and
    /// descriptor entries, headers, discard segments.
    pub control: Vec<Span>,
    /// Guest memory the device may write: device-writable buffers and the
    /// used ring.
    pub grants: Vec<Span>,
    /// Image bytes the device may change (write, discard, write-zeroes).
    pub claims: Vec<Span>,
}

fn span(start: u64, len: u64) -> Span {
    (start, start.saturating_add(len))
}

/// Whether two spans share a byte.
pub fn overlap(a: Span, b: Span) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Whether `at` lies in one of `spans`.
pub fn covered(spans: &[Span], at: u64) -> bool {
    spans.iter().any(|&(s, e)| s <= at && at < e)
}

impl Effects {
    /// Whether the device could write memory it also reads for control, so
    /// that what it does depends on the order of its own writes: the
    /// precise checks do not apply then.
    pub fn self_modifying(&self) -> bool {
        // Sorted and merged, then one binary search per grant: the pairwise
        // check was the harness's largest cost once coverage-instrumented.
        // An empty control span reads no byte and is left out.
        let mut control: Vec<Span> = self.control.iter().copied().filter(|c| c.0 < c.1).collect();
        control.sort_unstable();
        let mut merged: Vec<Span> = Vec::with_capacity(control.len());
        for c in control {
            match merged.last_mut() {
                Some(last) if c.0 <= last.1 => last.1 = last.1.max(c.1),
                _ => merged.push(c),
            }
        }
        self.grants.iter().any(|&g| {
            let i = merged.partition_point(|c| c.1 <= g.0);
            merged.get(i).is_some_and(|&c| overlap(g, c))
        })
    }
}

/// The descriptors of the chain at `head`, mirroring virtio-queue's walk;
/// every descriptor-table entry read is added to `control`.
fn walk(flat: &Flat, geom: QueueGeom, head: u16, control: &mut Vec<Span>) -> Vec<Desc> {
    let mut out = Vec::new();
    let mut table = geom.desc;
    let mut size = geom.size;
    let mut next = head;
    let mut ttl = geom.size;
    let mut indirect = false;
    let mut yielded: u32 = 0;
    while ttl > 0 && next < size {
        let Some(at) = table.checked_add(16 * u64::from(next)) else {
            break;
        };
        control.push(span(at, 16));
        let Some(raw) = flat.read(at, 16) else {
            break;
        };
        let d = Desc {
            addr: u64::from_le_bytes(raw[..8].try_into().unwrap_or_default()),
            len: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
            flags: u16::from_le_bytes([raw[12], raw[13]]),
            next: u16::from_le_bytes([raw[14], raw[15]]),
        };
        if d.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            let entries = d.len / 16;
            if indirect || !d.len.is_multiple_of(16) || entries > u32::from(u16::MAX) {
                break;
            }
            table = d.addr;
            size = entries as u16;
            ttl = size;
            next = 0;
            indirect = true;
            continue;
        }
        let Some(y) = yielded.checked_add(d.len) else {
            break;
        };
        yielded = y;
        if d.flags & VRING_DESC_F_NEXT as u16 != 0 {
            next = d.next;
            ttl -= 1;
        } else {
            ttl = 0;
        }
        out.push(d);
    }
    out
}

/// The first `len` bytes spread over `descs`, and where they came from.
fn gather(flat: &Flat, descs: &[Desc], len: usize, control: &mut Vec<Span>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    for d in descs {
        if out.len() == len {
            break;
        }
        let n = (d.len as usize).min(len - out.len());
        control.push(span(d.addr, n as u64));
        out.extend_from_slice(flat.read(d.addr, n as u64)?);
    }
    (out.len() == len).then_some(out)
}

/// The effects of every chain the available ring of `geom` names, on a disk
/// of `capacity` bytes (`read_only`: no claims at all).
pub fn effects(flat: &Flat, geom: QueueGeom, read_only: bool) -> Effects {
    let mut fx = Effects::default();
    let n = u64::from(geom.size);
    fx.control.push(span(geom.avail, 6 + 2 * n));
    fx.grants.push(span(geom.used, 6 + 8 * n));
    let Some(avail_idx) = flat.u16(geom.avail.wrapping_add(2)) else {
        return fx;
    };
    for i in 0..avail_idx.min(geom.size) {
        let slot = geom.avail.wrapping_add(4 + 2 * u64::from(i));
        let Some(head) = flat.u16(slot) else {
            continue;
        };
        let descs = walk(flat, geom, head, &mut fx.control);
        for d in &descs {
            if d.flags & VRING_DESC_F_WRITE as u16 != 0 {
                fx.grants.push(span(d.addr, u64::from(d.len)));
            }
        }
        // §2.7.4.1: the header is the first 16 device-readable bytes
        // however split, the data what follows them (a write) or the
        // device-writable bytes before the status (a read).
        let readable: Vec<Desc> = descs
            .iter()
            .filter(|d| d.flags & VRING_DESC_F_WRITE as u16 == 0)
            .copied()
            .collect();
        let Some(hdr) = gather(flat, &readable, 16, &mut fx.control) else {
            continue;
        };
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let readable_len: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
        match kind {
            VIRTIO_BLK_T_OUT => {
                fx.claims
                    .push(span(sector.saturating_mul(512), readable_len - 16));
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if let Some(seg) = gather(flat, &readable, 32, &mut fx.control) {
                    let seg = &seg[16..];
                    let start = u64::from_le_bytes(seg[..8].try_into().unwrap_or_default());
                    let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                    fx.claims
                        .push(span(start.saturating_mul(512), u64::from(sectors) * 512));
                }
            }
            _ => {}
        }
    }
    if read_only {
        fx.claims.clear();
    }
    fx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_modifying_agrees_with_the_pairwise_definition() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for _ in 0..5000 {
            let mut fx = Effects::default();
            for _ in 0..next(6) {
                fx.control.push(span(next(200), next(20)));
            }
            for _ in 0..next(6) {
                fx.grants.push(span(next(200), next(20)));
            }
            // An empty control span reads no byte, so it cannot be written.
            let pairwise = fx
                .grants
                .iter()
                .any(|&g| fx.control.iter().any(|&c| c.0 < c.1 && overlap(g, c)));
            assert_eq!(fx.self_modifying(), pairwise, "{fx:?}");
        }
    }
}
