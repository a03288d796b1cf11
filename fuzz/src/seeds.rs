//! The seed corpus, as typed values, and the byte encoding `arbitrary`
//! 1.x decodes them from (integers little-endian, `bool` one byte, `Option`
//! a bool then the value, a `Vec` a `true` byte before each element and a
//! `false` byte after the last, an enum variant `i` of `n` a u32 `x` with
//! `x * n >> 32 == i`). `encode_round_trips` pins the encoding.

use crate::cases::{BlkCase, Limits, Op, ParseCase, RegCase, Width};
use crate::chain::{
    Addr, Buf, Chain, Header, Item, Len, Queue, Reframe, ReqType, Rings, Sector, Segment, Status,
};

/// A value `arbitrary` can decode from what `encode` writes.
pub trait Encode {
    /// Appends the bytes that decode to `self`.
    fn encode(&self, out: &mut Vec<u8>);
}

fn variant(out: &mut Vec<u8>, index: u32, count: u32) {
    let x = (u64::from(index) << 32).div_ceil(u64::from(count)) as u32;
    out.extend_from_slice(&x.to_le_bytes());
}

macro_rules! ints {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
ints!(u8, u16, u32, u64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(v) = self {
            v.encode(out);
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            true.encode(out);
            v.encode(out);
        }
        false.encode(out);
    }
}

/// Encodes a variant index (of `count`) then the fields.
macro_rules! var {
    ($out:expr, $i:expr, $n:expr $(, $f:expr)*) => {{
        variant($out, $i, $n);
        $($f.encode($out);)*
    }};
}

/// Encodes fields in order.
macro_rules! all {
    ($out:expr $(, $f:expr)*) => {{
        $($f.encode($out);)*
    }};
}

impl Encode for Addr {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Addr::Alloc => var!(out, 0, 3),
            Addr::At(a) => var!(out, 1, 3, a),
            Addr::Raw(a) => var!(out, 2, 3, a),
        }
    }
}

impl Encode for Len {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Len::Sectors(n) => var!(out, 0, 3, n),
            Len::Bytes(n) => var!(out, 1, 3, n),
            Len::Any(n) => var!(out, 2, 3, n),
        }
    }
}

impl Encode for Sector {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Sector::Small(n) => var!(out, 0, 2, n),
            Sector::Any(n) => var!(out, 1, 2, n),
        }
    }
}

impl Encode for ReqType {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ReqType::In => var!(out, 0, 7),
            ReqType::Out => var!(out, 1, 7),
            ReqType::Flush => var!(out, 2, 7),
            ReqType::GetId => var!(out, 3, 7),
            ReqType::Discard => var!(out, 4, 7),
            ReqType::WriteZeroes => var!(out, 5, 7),
            ReqType::Other(t) => var!(out, 6, 7, t),
        }
    }
}

impl Encode for Header {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(
            out,
            self.kind,
            self.ioprio,
            self.sector,
            self.addr,
            self.len,
            self.writable
        );
    }
}

impl Encode for Segment {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.sector, self.sectors, self.flags);
    }
}

impl Encode for Buf {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.len, self.flip, self.addr, self.fill, self.segment);
    }
}

impl Encode for Status {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.addr, self.len, self.readonly);
    }
}

impl Encode for Chain {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(
            out,
            self.indirect,
            self.no_header,
            self.header,
            self.data,
            self.status,
            self.reframe
        );
    }
}

impl Encode for Reframe {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.readable, self.writable);
    }
}

impl Encode for Item {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Item::Chain(c) => var!(out, 0, 4, c),
            Item::RawDesc {
                index,
                addr,
                len,
                flags,
                next,
            } => var!(out, 1, 4, index, addr, len, flags, next),
            Item::Avail(h) => var!(out, 2, 4, h),
            Item::Poke { addr, bytes } => var!(out, 3, 4, addr, bytes),
        }
    }
}

impl Encode for Rings {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.desc, self.avail, self.used);
    }
}

impl Encode for Queue {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(
            out,
            self.size_log2,
            self.rings,
            self.avail_idx,
            self.avail_flags,
            self.used_event,
            self.items
        );
    }
}

impl Encode for BlkCase {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.disk, self.features, self.wce, self.queue);
    }
}

impl Encode for Width {
    fn encode(&self, out: &mut Vec<u8>) {
        let i = match self {
            Width::W1 => 0,
            Width::W2 => 1,
            Width::W4 => 2,
            Width::W8 => 3,
        };
        variant(out, i, 4);
    }
}

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u32 = 12;
        match self {
            Op::Read { width, offset } => var!(out, 0, N, width, offset),
            Op::Write {
                width,
                offset,
                value,
            } => var!(out, 1, N, width, offset, value),
            Op::Reg { index, value } => var!(out, 2, N, index, value),
            Op::Status(s) => var!(out, 3, N, s),
            Op::Negotiate { drop, add } => var!(out, 4, N, drop, add),
            Op::Queue {
                sel,
                size,
                rings,
                ready,
            } => var!(out, 5, N, sel, size, rings, ready),
            Op::Start(q) => var!(out, 6, N, q),
            Op::Notify(v) => var!(out, 7, N, v),
            Op::Ack(v) => var!(out, 8, N, v),
            Op::Config { offset, data } => var!(out, 9, N, offset, data),
            Op::Memory { addr, bytes } => var!(out, 10, N, addr, bytes),
            Op::Reset => var!(out, 11, N),
        }
    }
}

impl Encode for RegCase {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.disk, self.ops);
    }
}

impl Encode for Limits {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(
            out,
            self.read_only,
            self.discard,
            self.write_zeroes,
            self.max_zeroing_sectors,
            self.max_zeroing_segments
        );
    }
}

impl Encode for ParseCase {
    fn encode(&self, out: &mut Vec<u8>) {
        all!(out, self.limits, self.queue);
    }
}

/// Feature bits of `BlkCase::features`.
pub mod feature {
    /// FLUSH.
    pub const FLUSH: u8 = 1;
    /// EVENT_IDX.
    pub const EVENT_IDX: u8 = 2;
    /// DISCARD.
    pub const DISCARD: u8 = 4;
    /// WRITE_ZEROES.
    pub const WRITE_ZEROES: u8 = 8;
}

fn header(kind: ReqType, sector: u8) -> Header {
    Header {
        kind,
        ioprio: 0,
        sector: Sector::Small(sector),
        addr: Addr::Alloc,
        len: None,
        writable: false,
    }
}

fn buf(len: Len, fill: u8) -> Buf {
    Buf {
        len,
        flip: false,
        addr: Addr::Alloc,
        fill,
        segment: None,
    }
}

fn status() -> Status {
    Status {
        addr: Addr::Alloc,
        len: None,
        readonly: false,
    }
}

/// A well-formed chain.
pub fn chain(kind: ReqType, sector: u8, data: Vec<Buf>) -> Chain {
    Chain {
        indirect: false,
        no_header: false,
        header: header(kind, sector),
        data,
        status: status(),
        reframe: None,
    }
}

/// `c` cut elsewhere: readable and writable bytes back to back, split at
/// `readable` and `writable` (QEMU's qtest layouts and others).
pub fn reframed(mut c: Chain, readable: &[u16], writable: &[u16]) -> Chain {
    c.reframe = Some(Reframe {
        readable: readable.to_vec(),
        writable: writable.to_vec(),
    });
    c
}

/// `sectors` sectors of data filled with `fill`.
pub fn sectors(sectors: u8, fill: u8) -> Buf {
    buf(Len::Sectors(sectors), fill)
}

/// A discard or write-zeroes chain of one segment.
pub fn zeroing(kind: ReqType, sector: u8, sectors: u8, flags: u8) -> Chain {
    let mut seg = buf(Len::Bytes(16), 0);
    seg.segment = Some(Segment {
        sector: Sector::Small(sector),
        sectors: Sector::Small(sectors),
        flags,
    });
    chain(kind, 0, vec![seg])
}

/// A 16-entry queue at the default place with these chains.
pub fn queue(chains: Vec<Chain>) -> Queue {
    Queue {
        size_log2: 4,
        rings: None,
        avail_idx: None,
        avail_flags: 0,
        used_event: 0,
        items: chains.into_iter().map(Item::Chain).collect(),
    }
}

fn blk(disk: u8, features: u8, chains: Vec<Chain>) -> BlkCase {
    BlkCase {
        disk,
        features,
        wce: 1,
        queue: queue(chains),
    }
}

/// The `virtio_blk_request` seeds: (file name, case).
pub fn blk_seeds() -> Vec<(&'static str, BlkCase)> {
    use feature::*;
    let all = FLUSH | EVENT_IDX | DISCARD | WRITE_ZEROES;
    let mut indirect = chain(ReqType::Out, 9, vec![sectors(2, 0x33)]);
    indirect.indirect = true;
    vec![
        (
            "read",
            blk(0, FLUSH, vec![chain(ReqType::In, 3, vec![sectors(2, 0)])]),
        ),
        (
            "write",
            blk(
                0,
                FLUSH,
                vec![chain(
                    ReqType::Out,
                    5,
                    vec![sectors(1, 0x11), sectors(2, 0x22)],
                )],
            ),
        ),
        (
            "flush",
            blk(1, FLUSH, vec![chain(ReqType::Flush, 0, vec![])]),
        ),
        (
            "get_id",
            blk(
                0,
                0,
                vec![chain(ReqType::GetId, 0, vec![buf(Len::Bytes(20), 0)])],
            ),
        ),
        (
            "discard_write_zeroes",
            blk(
                0,
                all,
                vec![
                    zeroing(ReqType::Discard, 4, 4, 0),
                    zeroing(ReqType::WriteZeroes, 20, 8, 1),
                ],
            ),
        ),
        (
            "mixed_event_idx",
            blk(
                2,
                all,
                vec![
                    indirect,
                    chain(ReqType::In, 9, vec![sectors(2, 0)]),
                    chain(ReqType::Out, 63, vec![sectors(2, 0x44)]),
                    chain(ReqType::Other(8), 0, vec![buf(Len::Bytes(16), 0)]),
                ],
            ),
        ),
        (
            "read_only_write",
            blk(
                3,
                FLUSH,
                vec![chain(ReqType::Out, 1, vec![sectors(1, 0x55)])],
            ),
        ),
        // Disk 4 bounces every buffer that is not page-aligned.
        (
            "bounce_read_write",
            blk(
                4,
                FLUSH,
                vec![
                    chain(ReqType::Out, 10, vec![sectors(1, 0x77), sectors(1, 0x78)]),
                    chain(ReqType::In, 10, vec![sectors(2, 0)]),
                ],
            ),
        ),
        // Disk 5 is on io_uring, disk 6 is directsync (O_DIRECT | O_DSYNC).
        (
            "io_uring_mixed",
            blk(
                5,
                all,
                vec![
                    chain(ReqType::Out, 30, vec![sectors(4, 0x88)]),
                    chain(ReqType::In, 28, vec![sectors(8, 0)]),
                    chain(ReqType::Flush, 0, vec![]),
                    zeroing(ReqType::WriteZeroes, 40, 2, 0),
                ],
            ),
        ),
        // §2.7.4.1: QEMU's qtest layouts (header+data 528 + status 1;
        // header 16 + data+status 513), a header split 8 + 8, and an
        // indirect table; then the same on disks with a 4096-byte block,
        // where they are widened and read-modify-written.
        ("qemu_layouts", blk(0, all, qemu_layouts())),
        ("sub_block_sync", blk(7, all, qemu_layouts())),
        ("sub_block_io_uring", blk(8, all, qemu_layouts())),
        (
            "directsync_write_flush",
            blk(
                6,
                FLUSH,
                vec![
                    chain(ReqType::Out, 50, vec![sectors(2, 0x99)]),
                    chain(ReqType::Flush, 0, vec![]),
                ],
            ),
        ),
    ]
}

/// Requests in the layouts QEMU's virtio-blk qtest sends, and more.
fn qemu_layouts() -> Vec<Chain> {
    let mut indirect = reframed(
        chain(ReqType::Out, 17, vec![sectors(1, 0x6b)]),
        &[8, 16],
        &[],
    );
    indirect.indirect = true;
    vec![
        reframed(chain(ReqType::Out, 1, vec![sectors(1, 0x5a)]), &[], &[]),
        reframed(chain(ReqType::In, 1, vec![sectors(1, 0)]), &[16], &[]),
        reframed(
            chain(ReqType::Out, 9, vec![sectors(2, 0x3c)]),
            &[8, 16],
            &[],
        ),
        reframed(chain(ReqType::In, 8, vec![sectors(3, 0)]), &[], &[512]),
        indirect,
        reframed(zeroing(ReqType::WriteZeroes, 3, 2, 0), &[20], &[]),
        reframed(
            chain(ReqType::GetId, 0, vec![buf(Len::Bytes(20), 0)]),
            &[],
            &[],
        ),
    ]
}

/// The `virtio_mmio_registers` seeds.
pub fn reg_seeds() -> Vec<(&'static str, RegCase)> {
    let bring_up = vec![
        Op::Read {
            width: Width::W4,
            offset: 0,
        },
        Op::Negotiate { drop: 0, add: 0 },
        Op::Start(queue(vec![
            chain(ReqType::Out, 2, vec![sectors(1, 0x66)]),
            chain(ReqType::In, 2, vec![sectors(1, 0)]),
        ])),
        Op::Notify(0),
        Op::Read {
            width: Width::W4,
            offset: 0x60,
        },
        Op::Ack(1),
        Op::Config {
            offset: 32,
            data: vec![0],
        },
        Op::Read {
            width: Width::W1,
            offset: 0x120,
        },
        Op::Read {
            width: Width::W4,
            offset: 0xfc,
        },
        Op::Reset,
    ];
    let widths = [Width::W1, Width::W2, Width::W4, Width::W8];
    let mut sweep = Vec::new();
    for (i, offset) in [0u16, 0x34, 0x44, 0x70, 0xb0, 0xfc, 0x100, 0x13c, 0xffc]
        .into_iter()
        .enumerate()
    {
        sweep.push(Op::Read {
            width: widths[i % 4],
            offset,
        });
        sweep.push(Op::Write {
            width: widths[(i + 1) % 4],
            offset,
            value: u64::MAX,
        });
    }
    let manual_queue = vec![
        Op::Status(1),
        Op::Status(3),
        Op::Reg {
            index: 0x24 / 4,
            value: 1,
        },
        Op::Reg {
            index: 0x20 / 4,
            value: 1,
        },
        Op::Status(11),
        Op::Queue {
            sel: 0,
            size: 8,
            rings: Rings {
                desc: Addr::At(0x4000),
                avail: Addr::At(0x5000),
                used: Addr::At(0x6000),
            },
            ready: 1,
        },
        Op::Status(15),
        Op::Notify(0),
        Op::Status(0),
    ];
    vec![
        (
            "bring_up",
            RegCase {
                disk: 0,
                ops: bring_up,
            },
        ),
        (
            "sweep",
            RegCase {
                disk: 1,
                ops: sweep,
            },
        ),
        (
            "manual_queue",
            RegCase {
                disk: 0,
                ops: manual_queue,
            },
        ),
    ]
}

/// The `block_parse` seeds.
pub fn parse_seeds() -> Vec<(&'static str, ParseCase)> {
    let limits = || Limits {
        read_only: false,
        discard: true,
        write_zeroes: true,
        max_zeroing_sectors: 64,
        max_zeroing_segments: 1,
    };
    vec![
        (
            "read_write",
            ParseCase {
                limits: limits(),
                queue: queue(vec![
                    chain(ReqType::In, 3, vec![sectors(2, 0)]),
                    chain(ReqType::Out, 7, vec![sectors(1, 1)]),
                    chain(ReqType::Flush, 0, vec![]),
                    chain(ReqType::GetId, 0, vec![buf(Len::Bytes(20), 0)]),
                ]),
            },
        ),
        (
            "layouts",
            ParseCase {
                limits: limits(),
                queue: queue(qemu_layouts()),
            },
        ),
        (
            "zeroing",
            ParseCase {
                limits: limits(),
                queue: queue(vec![
                    zeroing(ReqType::Discard, 4, 4, 0),
                    zeroing(ReqType::WriteZeroes, 8, 8, 1),
                ]),
            },
        ),
    ]
}

/// Every seed as (target, file name, bytes).
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    fn bytes(v: &impl Encode) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode(&mut out);
        out
    }
    let mut out = Vec::new();
    for (name, c) in blk_seeds() {
        out.push(("virtio_blk_request", name, bytes(&c)));
    }
    for (name, c) in reg_seeds() {
        out.push(("virtio_mmio_registers", name, bytes(&c)));
    }
    for (name, c) in parse_seeds() {
        out.push(("block_parse", name, bytes(&c)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbitrary::{Arbitrary, Unstructured};

    fn round_trip<'a, T: Arbitrary<'a> + Encode + std::fmt::Debug>(v: &T, buf: &'a mut Vec<u8>) {
        v.encode(buf);
        let back = T::arbitrary_take_rest(Unstructured::new(buf)).unwrap();
        assert_eq!(format!("{v:?}"), format!("{back:?}"));
    }

    #[test]
    fn encode_round_trips() {
        for (_, c) in blk_seeds() {
            round_trip(&c, &mut Vec::new());
        }
        for (_, c) in reg_seeds() {
            round_trip(&c, &mut Vec::new());
        }
        for (_, c) in parse_seeds() {
            round_trip(&c, &mut Vec::new());
        }
    }
}
