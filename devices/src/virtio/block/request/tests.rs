//! Parse tests against a driver-side queue mock: no device, no file.

use super::*;
use proptest::prelude::*;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

const MEM_SIZE: u64 = 0x10_0000;
const HDR: u64 = 0x8000;
const DATA: u64 = 0x9000;
const STATUS: u64 = 0xff00;

const LIMITS: DiskLimits = DiskLimits {
    capacity_sectors: 64,
    read_only: false,
    discard: true,
    write_zeroes: true,
    max_zeroing_sectors: 32,
    max_zeroing_segments: 1,
};

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
}

fn segment(mem: &GuestMemoryMmap, sector: u64, sectors: u32, flags: u32) {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&sector.to_le_bytes());
    raw[8..12].copy_from_slice(&sectors.to_le_bytes());
    raw[12..].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(DATA)).unwrap();
}

fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
    let flags = if writable {
        VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn hdr() -> RawDescriptor {
    desc(HDR, 16, false)
}

fn st() -> RawDescriptor {
    desc(STATUS, 1, true)
}

fn parse_with(
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    limits: &DiskLimits,
) -> Result<Request, ParseError> {
    let q = MockSplitQueue::new(mem, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    Request::parse(chain, mem, limits)
}

fn parse(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, ParseError> {
    parse_with(mem, descs, &LIMITS)
}

/// Asserts a refusal with the given status, and returns the reason.
fn refused(result: Result<Request, ParseError>, status: u32) -> RequestError {
    match result {
        Err(ParseError::Refused { reason, .. }) => {
            assert_eq!(u32::from(reason.status()), status, "{reason}");
            reason
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn malformed(result: Result<Request, ParseError>) -> ChainError {
    match result {
        Err(ParseError::Malformed { reason, .. }) => reason,
        other => panic!("expected a malformed chain, got {other:?}"),
    }
}

#[test]
fn parses_each_request_type() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 8);
    let r = parse(
        &m,
        &[
            hdr(),
            desc(DATA, 512, true),
            desc(DATA + 512, 1024, true),
            st(),
        ],
    )
    .unwrap();
    assert_eq!(
        r.kind,
        RequestKind::Read {
            sector: 8,
            data: vec![
                GuestRange {
                    addr: GuestAddress(DATA),
                    len: 512
                },
                GuestRange {
                    addr: GuestAddress(DATA + 512),
                    len: 1024
                }
            ]
        }
    );
    header(&m, VIRTIO_BLK_T_OUT, 63);
    let r = parse(&m, &[hdr(), desc(DATA, 512, false), st()]).unwrap();
    assert!(matches!(r.kind, RequestKind::Write { sector: 63, .. }));
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(parse(&m, &[hdr(), st()]).unwrap().kind, RequestKind::Flush);
    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    let r = parse(&m, &[hdr(), desc(DATA, 20, true), st()]).unwrap();
    assert!(matches!(r.kind, RequestKind::GetId { .. }));
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    segment(&m, 4, 8, 0);
    let r = parse(&m, &[hdr(), desc(DATA, 16, false), st()]).unwrap();
    assert_eq!(
        r.kind,
        RequestKind::Discard {
            sector: 4,
            sectors: 8
        }
    );
    header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&m, 0, 32, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let r = parse(&m, &[hdr(), desc(DATA, 16, false), st()]).unwrap();
    assert_eq!(
        r.kind,
        RequestKind::WriteZeroes {
            sector: 0,
            sectors: 32,
            may_unmap: true
        }
    );
    // A segment split over two descriptors is still one segment.
    let r = parse(
        &m,
        &[hdr(), desc(DATA, 5, false), desc(DATA + 5, 11, false), st()],
    )
    .unwrap();
    assert!(matches!(
        r.kind,
        RequestKind::WriteZeroes { sectors: 32, .. }
    ));
}

#[test]
fn header_must_be_readable_and_16_bytes() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    // Fewer than 16 readable header bytes: nothing can be answered.
    let e = malformed(parse(
        &m,
        &[desc(HDR, 8, false), desc(DATA, 512, true), st()],
    ));
    assert!(matches!(e, ChainError::ShortHeader { len: 8 }));
    let e = malformed(parse(&m, &[desc(HDR, 16, true), st()]));
    assert!(matches!(e, ChainError::ShortHeader { len: 0 }));
    let e = malformed(parse(&m, &[st()]));
    assert!(matches!(e, ChainError::ShortHeader { len: 0 }));
    // Split 8 + 8 it is a header (§2.7.4.1); split 8 + (writable) 8 + 8
    // it is a header in the wrong order (§2.7.4.2): answerable, refused.
    let r = parse(&m, &[desc(HDR, 8, false), desc(HDR + 8, 8, false), st()]);
    assert!(matches!(
        r.unwrap().kind,
        RequestKind::Read { sector: 0, .. }
    ));
    let e = refused(
        parse(
            &m,
            &[
                desc(HDR, 8, false),
                desc(DATA, 512, true),
                desc(HDR + 8, 8, false),
                st(),
            ],
        ),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(e, RequestError::ReadableAfterWritable { addr } if addr == HDR + 8));
    // A read with readable bytes after its header: data the wrong way.
    let e = refused(parse(&m, &[desc(HDR, 17, false), st()]), VIRTIO_BLK_S_IOERR);
    assert!(matches!(e, RequestError::DataDirection { addr, .. } if addr == HDR + 16));
}

#[test]
fn status_must_be_writable_one_byte_and_last() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        malformed(parse(
            &m,
            &[hdr(), desc(DATA, 512, true), desc(STATUS, 1, false)]
        )),
        ChainError::StatusNotWritable
    );
    assert_eq!(
        malformed(parse(&m, &[hdr(), desc(STATUS, 0, true)])),
        ChainError::StatusEmpty
    );
    // A 2-byte status descriptor is one data byte and the status: a read
    // of one byte, refused, the status in its last byte.
    let e = refused(
        parse(&m, &[hdr(), desc(STATUS, 2, true)]),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(e, RequestError::DataNotSectorMultiple { len: 1 }));
    let Err(ParseError::Refused { slot, reason }) = parse(&m, &[hdr(), desc(STATUS, 2, true)])
    else {
        unreachable!()
    };
    m.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    slot.finish(&m, Err(&reason));
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xaa);
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS + 1)).unwrap(), 1);
}

#[test]
fn data_rules() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let e = refused(
        parse(&m, &[hdr(), desc(DATA, 513, true), st()]),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(
        e,
        RequestError::DataNotSectorMultiple { len: 513 }
    ));
    let e = refused(
        parse(&m, &[hdr(), desc(DATA, 512, false), st()]),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(e, RequestError::DataDirection { .. }));
    header(&m, VIRTIO_BLK_T_OUT, 0);
    let e = refused(
        parse(&m, &[hdr(), desc(DATA, 512, true), st()]),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(e, RequestError::DataDirection { .. }));
    // Range: the last sector is fine, one past is not, and no overflow.
    header(&m, VIRTIO_BLK_T_IN, 63);
    assert!(parse(&m, &[hdr(), desc(DATA, 512, true), st()]).is_ok());
    let e = refused(
        parse(&m, &[hdr(), desc(DATA, 1024, true), st()]),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(
        e,
        RequestError::OutOfRange {
            sector: 63,
            sectors: 2,
            capacity: 64
        }
    ));
    header(&m, VIRTIO_BLK_T_OUT, u64::MAX);
    let e = refused(
        parse(&m, &[hdr(), desc(DATA, 512, false), st()]),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(e, RequestError::OutOfRange { .. }));
    header(&m, VIRTIO_BLK_T_IN, 64);
    assert!(parse(&m, &[hdr(), st()]).is_ok(), "empty read at the end");
    header(&m, VIRTIO_BLK_T_IN, 65);
    let e = refused(parse(&m, &[hdr(), st()]), VIRTIO_BLK_S_IOERR);
    assert!(
        matches!(e, RequestError::OutOfRange { .. }),
        "empty read past the end"
    );
}

#[test]
fn descriptors_outside_memory_are_malformed() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    for bad in [
        desc(MEM_SIZE - 256, 512, true),
        desc(u64::MAX - 10, 512, true),
    ] {
        assert!(matches!(
            malformed(parse(&m, &[hdr(), bad, st()])),
            ChainError::OutsideMemory { .. }
        ));
    }
    assert!(matches!(
        malformed(parse(&m, &[hdr(), desc(MEM_SIZE, 1, true)])),
        ChainError::OutsideMemory { .. }
    ));
    // Found by the block_parse fuzz target: an empty buffer far outside
    // memory passed the range check (zero bytes to check).
    for addr in [MEM_SIZE, 0x0092_4924_9249_24fc] {
        assert!(matches!(
            malformed(parse(&m, &[hdr(), desc(addr, 0, true), st()])),
            ChainError::OutsideMemory { len: 0, .. }
        ));
    }
    // An empty buffer inside memory is fine (nothing is transferred).
    assert!(parse(&m, &[hdr(), desc(DATA, 0, true), st()]).is_ok());
}

#[test]
fn loops_and_bad_next_indices_are_malformed() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let q = MockSplitQueue::new(&m, 16);
    let next = VRING_DESC_F_NEXT as u16;
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 1)),
        RawDescriptor::from(SplitDescriptor::new(
            DATA,
            512,
            next | VRING_DESC_F_WRITE as u16,
            0,
        )),
    ];
    let chain = q.build_multiple_desc_chains(&looped).unwrap();
    assert_eq!(
        malformed(Request::parse(chain, &m, &LIMITS)),
        ChainError::Truncated { descriptors: 16 }
    );
    let q = MockSplitQueue::new(&m, 16);
    let past = [RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 99))];
    let chain = q.build_multiple_desc_chains(&past).unwrap();
    assert_eq!(
        malformed(Request::parse(chain, &m, &LIMITS)),
        ChainError::Truncated { descriptors: 1 }
    );
}

#[test]
fn chains_longer_than_the_queue_are_malformed() {
    assert_eq!(
        MAX_CHAIN,
        usize::from(crate::virtio::block::device::QUEUE_SIZE)
    );
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let q = MockSplitQueue::new(&m, 512);
    let mut descs = vec![hdr()];
    descs.extend((0..MAX_CHAIN - 1).map(|_| desc(DATA, 512, true)));
    descs.push(st());
    let chain = q.build_desc_chain(&descs).unwrap();
    assert_eq!(
        malformed(Request::parse(chain, &m, &LIMITS)),
        ChainError::TooLong { max: MAX_CHAIN }
    );
    // One fewer data buffer: the longest chain allowed (answerable).
    descs.remove(1);
    let q = MockSplitQueue::new(&m, 512);
    let chain = q.build_desc_chain(&descs).unwrap();
    let r = Request::parse(chain, &m, &LIMITS);
    assert!(!matches!(r, Err(ParseError::Malformed { .. })), "{r:?}");
}

#[test]
fn unknown_types_and_unoffered_commands_are_unsupported() {
    let m = mem();
    for t in [2, 3, 14, 16, 0xdead] {
        header(&m, t, 0);
        refused(parse(&m, &[hdr(), st()]), VIRTIO_BLK_S_UNSUPP);
    }
    let none = DiskLimits {
        discard: false,
        write_zeroes: false,
        ..LIMITS
    };
    segment(&m, 0, 1, 0);
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&m, t, 0);
        refused(
            parse_with(&m, &[hdr(), desc(DATA, 16, false), st()], &none),
            VIRTIO_BLK_S_UNSUPP,
        );
    }
}

#[test]
fn read_only_refuses_writes_but_not_reads_or_flush() {
    let m = mem();
    let ro = DiskLimits {
        read_only: true,
        ..LIMITS
    };
    segment(&m, 0, 1, 0);
    for t in [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
    ] {
        header(&m, t, 0);
        let e = refused(
            parse_with(&m, &[hdr(), desc(DATA, 16, false), st()], &ro),
            VIRTIO_BLK_S_IOERR,
        );
        assert!(matches!(e, RequestError::ReadOnly));
    }
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    assert!(parse_with(&m, &[hdr(), st()], &ro).is_ok());
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert!(parse_with(&m, &[hdr(), desc(DATA, 512, true), st()], &ro).is_ok());
}

#[test]
fn segment_rules() {
    let m = mem();
    let seg = |m: &GuestMemoryMmap, t, sector, sectors, flags, len| {
        header(m, t, 0);
        segment(m, sector, sectors, flags);
        parse(m, &[hdr(), desc(DATA, len, false), st()])
    };
    let e = refused(
        seg(
            &m,
            VIRTIO_BLK_T_DISCARD,
            0,
            1,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            16,
        ),
        VIRTIO_BLK_S_UNSUPP,
    );
    assert!(
        matches!(e, RequestError::UnsupportedFlags(1)),
        "unmap on discard"
    );
    refused(
        seg(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 2, 16),
        VIRTIO_BLK_S_UNSUPP,
    );
    let e = refused(
        seg(&m, VIRTIO_BLK_T_DISCARD, 0, 33, 0, 16),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(
        e,
        RequestError::SegmentTooLarge {
            sectors: 33,
            max: 32
        }
    ));
    let e = refused(
        seg(&m, VIRTIO_BLK_T_DISCARD, 60, 8, 0, 16),
        VIRTIO_BLK_S_IOERR,
    );
    assert!(matches!(e, RequestError::OutOfRange { .. }));
    for len in [0, 15, 32] {
        let e = refused(
            seg(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 0, len),
            VIRTIO_BLK_S_IOERR,
        );
        assert!(matches!(e, RequestError::SegmentCount { .. }), "len {len}");
    }
}

#[test]
fn lifecycle_writes_status_and_used_length() {
    let m = mem();
    header(&m, VIRTIO_BLK_T_IN, 0);
    let r = parse(&m, &[hdr(), desc(DATA, 1024, true), st()]).unwrap();
    let head = r.head();
    let (_, in_flight) = r.begin();
    let done = in_flight.finish(&m, Ok(()));
    assert_eq!(
        done,
        Finished {
            head,
            used_len: 1025,
            status: 0
        }
    );
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);

    let r = parse(&m, &[hdr(), desc(DATA, 1024, true), st()]).unwrap();
    let (_, in_flight) = r.begin();
    let done = in_flight.finish(&m, Err(&RequestError::Io(block::BlockError::ReadOnly)));
    assert_eq!((done.used_len, done.status), (1, 1));
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 1);

    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    let r = parse(&m, &[hdr(), desc(DATA, 64, true), st()]).unwrap();
    let (_, in_flight) = r.begin();
    assert_eq!(in_flight.finish(&m, Ok(())).used_len, 21);
}

#[test]
fn serial_is_truncated_or_padded_to_20_bytes() {
    assert_eq!(&id_bytes("abc")[..4], b"abc\0");
    assert!(id_bytes("abc")[3..].iter().all(|&b| b == 0));
    assert_eq!(
        &id_bytes("0123456789abcdefghijKLMN"),
        b"0123456789abcdefghij"
    );
    let m = mem();
    m.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    let short = [
        GuestRange {
            addr: GuestAddress(DATA),
            len: 5,
        },
        GuestRange {
            addr: GuestAddress(DATA + 16),
            len: 3,
        },
    ];
    assert_eq!(write_id(&m, &short, &id_bytes("serial-number")).unwrap(), 8);
    let mut got = [0u8; 32];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..6], b"seria\xee");
    assert_eq!(&got[16..20], b"l-n\xee");
}

/// One random descriptor: anywhere (often inside memory), any length,
/// random WRITE/NEXT flags and next index.
fn any_desc() -> impl Strategy<Value = RawDescriptor> {
    (
        prop_oneof![
            0..MEM_SIZE,
            Just(HDR),
            Just(DATA),
            Just(STATUS),
            any::<u64>()
        ],
        prop_oneof![Just(16u32), Just(1), Just(512), 0..2048u32, any::<u32>()],
        0..8u16,
        0..20u16,
    )
        .prop_map(|(addr, len, flags, next)| {
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Whatever the chain, parse never panics, and what it accepts stays in
    /// guest memory and in the disk.
    #[test]
    fn random_chains_never_panic_and_stay_in_bounds(
        descs in proptest::collection::vec(any_desc(), 1..12),
        request_type in prop_oneof![0..16u32, any::<u32>()],
        sector in prop_oneof![0..80u64, any::<u64>()],
        seg in (0..80u64, 0..40u32, 0..3u32),
    ) {
        let m = mem();
        header(&m, request_type, sector);
        segment(&m, seg.0, seg.1, seg.2);
        let q = MockSplitQueue::new(&m, 16);
        let Ok(chain) = q.build_multiple_desc_chains(&descs) else { return Ok(()) };
        let in_mem = |r: &GuestRange| GuestMemoryBackend::check_range(&m, r.addr, r.len as usize);
        match Request::parse(chain, &m, &LIMITS) {
            Ok(req) => match &req.kind {
                RequestKind::Read { sector, data } | RequestKind::Write { sector, data } => {
                    prop_assert!(data.iter().all(in_mem));
                    prop_assert!(sector + total_len(data) / 512 <= LIMITS.capacity_sectors);
                }
                RequestKind::Discard { sector, sectors }
                | RequestKind::WriteZeroes { sector, sectors, .. } => {
                    prop_assert!(sector + u64::from(*sectors) <= LIMITS.capacity_sectors);
                }
                RequestKind::GetId { data } => prop_assert!(data.iter().all(in_mem)),
                RequestKind::Flush => {}
            },
            Err(ParseError::Refused { slot, .. }) => {
                prop_assert!(GuestMemoryBackend::check_range(&m, slot.addr, 1));
            }
            Err(ParseError::Malformed { .. }) => {}
        }
    }
}

#[test]
fn sub_ranges_skip_the_header_and_trim_the_status() {
    let r = |addr: u64, len: u32| GuestRange {
        addr: GuestAddress(addr),
        len,
    };
    let cut =
        |ranges: &[GuestRange], skip, trim| sub_ranges(ranges, skip, trim).collect::<Vec<_>>();
    // 8 + 0 + 520 + 1 readable bytes: the header is 8 + 8, data 513.
    let ranges = [r(0x100, 8), r(0x200, 0), r(0x300, 520), r(0x400, 1)];
    assert_eq!(cut(&ranges, 16, 0), [r(0x308, 512), r(0x400, 1)]);
    // 512 data bytes and the status in one 513-byte descriptor.
    assert_eq!(cut(&[r(0x500, 513)], 0, 1), [r(0x500, 512)]);
    assert_eq!(cut(&[r(0x500, 1)], 0, 1), []);
    assert_eq!(cut(&ranges, 600, 0), []);
}
