//! §2.7.4.1: the device makes no assumption about how a request is cut
//! into descriptors. Each layout QEMU's virtio-blk qtest sends (header and
//! data in one descriptor, data and status in one, the header split 8 + 8,
//! the status at the end of a longer writable descriptor, indirect tables)
//! and random re-framings must leave the same image bytes, status byte,
//! used length and read data as Linux's framing of the same request.

use crate::common::*;
use devices::virtio::test_utils::{BlkHeader, BlkRequest, Framing};
use proptest::prelude::*;
use vm_memory::Bytes;

/// One request, described independently of its framing.
#[derive(Clone, Debug)]
struct Req {
    header: BlkHeader,
    /// Device-readable bytes after the header (OUT data, segments).
    payload: Vec<u8>,
    /// Device-writable bytes before the status (IN data, GET_ID answer).
    in_len: u32,
}

/// What a request left behind.
#[derive(PartialEq, Eq)]
struct Outcome {
    status: u8,
    used_len: u32,
    read: Vec<u8>,
    image: Vec<u8>,
    needs_reset: bool,
}

/// The image and read data as digests: a failure names what differs, not
/// 256 KiB of bytes.
impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digest = |b: &[u8]| {
            b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
            })
        };
        f.debug_struct("Outcome")
            .field("status", &self.status)
            .field("used_len", &self.used_len)
            .field(
                "read",
                &format_args!("{} bytes, fnv {:#x}", self.read.len(), digest(&self.read)),
            )
            .field("image", &format_args!("fnv {:#x}", digest(&self.image)))
            .field("needs_reset", &self.needs_reset)
            .finish()
    }
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed ^ (i >> 9) as u8)
        .collect()
}

fn write(sector: u64, sectors: usize) -> Req {
    Req {
        header: BlkHeader {
            request_type: VIRTIO_BLK_T_OUT,
            sector,
        },
        payload: payload(sectors * 512, sector as u8),
        in_len: 0,
    }
}

fn read(sector: u64, sectors: u32) -> Req {
    Req {
        header: BlkHeader {
            request_type: VIRTIO_BLK_T_IN,
            sector,
        },
        payload: Vec::new(),
        in_len: sectors * 512,
    }
}

fn zeroing(request_type: u32, sector: u64, sectors: u32) -> Req {
    let mut seg = Vec::with_capacity(16);
    seg.extend(sector.to_le_bytes());
    seg.extend(sectors.to_le_bytes());
    seg.extend(0u32.to_le_bytes());
    Req {
        header: BlkHeader {
            request_type,
            sector: 0,
        },
        payload: seg,
        in_len: 0,
    }
}

/// Runs `req` framed as `framing` on a fresh rig.
fn run(req: &Req, framing: &Framing) -> Outcome {
    let mut rig = rig(Opts::default()).expect("a writeback rig on a regular file");
    rig.init_all();
    let r: BlkRequest = rig
        .driver
        .blk_framed(req.header, &req.payload, req.in_len, framing);
    rig.driver.notify();
    // A chain the device calls malformed is never used: stop at
    // NEEDS_RESET instead of waiting for it.
    let done = wait_for(|| rig.driver.used_idx() != 0 || rig.driver.status() & NEEDS_RESET != 0);
    assert!(done, "neither used nor NEEDS_RESET");
    let used_len = rig.driver.pop_used().map_or(0, |(_, len)| len);
    let mut read = vec![0u8; req.in_len as usize];
    if let Some(b) = r.data.iter().find(|b| b.writable) {
        rig.driver.mem().read_slice(&mut read, b.addr).unwrap();
    }
    Outcome {
        status: rig.driver.status_of(&r),
        used_len,
        read,
        image: rig.file(),
        needs_reset: rig.driver.status() & NEEDS_RESET != 0,
    }
}

/// Runs `req` in Linux's framing and in `framing`, and compares.
fn same_as_linux(what: &str, req: &Req, framing: &Framing) -> Outcome {
    let linux = run(req, &Framing::linux(req.in_len));
    let other = run(req, framing);
    assert_eq!(other, linux, "{what}: {framing:?}");
    linux
}

fn framing(readable: &[u32], writable: &[u32]) -> Framing {
    Framing {
        readable: readable.to_vec(),
        writable: writable.to_vec(),
        indirect: false,
    }
}

#[test]
fn qemu_qtest_layouts_match_linux_framing() {
    let cases: Vec<(&str, Req, Framing)> = vec![
        // virtio-blk-test.c: a write as header+data (528) and status (1).
        ("header+data in one", write(4, 1), framing(&[], &[])),
        // ... and a read as header (16) and data+status (513).
        ("data+status in one", read(4, 1), framing(&[16], &[])),
        ("header split 8+8", write(6, 2), framing(&[8, 16], &[])),
        ("header split 8+8, read", read(6, 2), framing(&[8], &[0])),
        (
            "status at the end of a longer writable descriptor",
            read(2, 3),
            framing(&[16], &[512]),
        ),
        (
            "GET_ID answer and status in one",
            Req {
                header: BlkHeader {
                    request_type: VIRTIO_BLK_T_GET_ID,
                    sector: 0,
                },
                payload: Vec::new(),
                in_len: 20,
            },
            framing(&[16], &[]),
        ),
        (
            "discard segment with its header",
            zeroing(VIRTIO_BLK_T_DISCARD, 8, 8),
            framing(&[], &[]),
        ),
        (
            "write-zeroes segment split 4+12",
            zeroing(VIRTIO_BLK_T_WRITE_ZEROES, 16, 8),
            framing(&[16, 20], &[]),
        ),
        ("flush header split 1+15", write(0, 0), framing(&[1], &[])),
    ];
    for (what, req, f) in cases {
        for indirect in [false, true] {
            let f = Framing {
                indirect,
                ..f.clone()
            };
            let out = same_as_linux(what, &req, &f);
            assert_eq!(out.status, OK, "{what}: {f:?}");
            assert!(!out.needs_reset, "{what}");
        }
    }
    // Linux framing itself in an indirect table.
    let w = write(9, 4);
    let out = same_as_linux(
        "indirect",
        &w,
        &Framing {
            indirect: true,
            ..Framing::linux(0)
        },
    );
    assert_eq!(&out.image[9 * 512..13 * 512], &w.payload[..]);
}

/// A request of one of the data-carrying types, in or out of range.
fn any_req() -> impl Strategy<Value = Req> {
    let sector = prop_oneof![0..SECTORS, SECTORS - 4..SECTORS + 4];
    (0..3u8, sector, 0..6u32).prop_map(|(kind, sector, sectors)| match kind {
        0 => write(sector, sectors as usize),
        1 => read(sector, sectors),
        _ => zeroing(VIRTIO_BLK_T_WRITE_ZEROES, sector, sectors),
    })
}

/// A cut point: often inside the header or the status end, often
/// anywhere in the data.
fn cut() -> impl Strategy<Value = u32> {
    prop_oneof![0..24u32, 0..3100u32]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random requests cut at random points, directly or through an
    /// indirect table, end exactly as their Linux framing does.
    #[test]
    fn random_reframings_match_linux_framing(
        req in any_req(),
        readable in proptest::collection::vec(cut(), 0..5),
        writable in proptest::collection::vec(cut(), 0..5),
        indirect in any::<bool>(),
    ) {
        let f = Framing { readable, writable, indirect };
        let linux = run(&req, &Framing::linux(req.in_len));
        let other = run(&req, &f);
        prop_assert_eq!(other, linux);
    }
}
