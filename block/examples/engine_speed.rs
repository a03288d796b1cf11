//! Rough speed of each engine and cache mode: 4 KiB random writes at queue
//! depth 32 (then a flush) on a scratch image in the current directory.
//! `cargo run --release -p block --example engine_speed [ops] [record]`:
//! with `record`, each mode and engine runs twice, the second time with
//! `ferrite crashtest`'s recorder on (its log in the scratch directory).

use std::time::Instant;

use block::{CacheMode, Disk, DiskConfig, EngineKind, Op, Segment};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ops: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let record = std::env::args().nth(2).as_deref() == Some("record");
    let dir = tempfile::tempdir_in(".")?;
    let path = dir.path().join("speed.img");
    std::fs::File::create(&path)?.set_len(256 << 20)?;
    let mut bufs: Vec<Vec<u8>> = (0..32).map(|i| vec![i as u8; 8192]).collect();
    println!(
        "{:<12} {:<9} {:<9} {:>10} {:>12}",
        "mode", "engine", "recorded", "writes/s", "host_syncs"
    );
    let recording = if record { &[false, true][..] } else { &[false] };
    for mode in CacheMode::ALL {
        for (engine, &recorded) in [EngineKind::Sync, EngineKind::IoUring]
            .into_iter()
            .flat_map(|e| recording.iter().map(move |r| (e, r)))
        {
            let cfg = DiskConfig {
                path: path.clone(),
                cache: mode,
                read_only: false,
                engine: Some(engine),
            };
            let mut disk = Disk::open(&cfg)?;
            if recorded {
                disk.record_to(&dir.path().join("recording"))?;
            }
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut done = Vec::new();
            let start = Instant::now();
            let mut submitted = 0;
            let mut finished = 0;
            while finished < ops {
                while submitted < ops && disk.in_flight() < 32 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let offset = (seed % (65536 - 1)) * 4096;
                    let b = &mut bufs[submitted % 32];
                    // Aligned 4 KiB inside an 8 KiB buffer, so O_DIRECT needs no bounce.
                    let skip = (4096 - b.as_ptr() as usize % 4096) % 4096;
                    let seg = Segment {
                        addr: b[skip..].as_mut_ptr(),
                        len: 4096,
                    };
                    // SAFETY: at most 32 ops are submitted between two
                    // wait_idle calls, one per buffer, so a buffer is reused
                    // only after its op completed; bufs outlive the disk.
                    unsafe {
                        disk.submit(
                            Op::Write {
                                offset,
                                segments: vec![seg],
                            },
                            submitted as u64,
                        )
                    }?;
                    submitted += 1;
                }
                disk.kick()?;
                done.clear();
                disk.wait_idle(&mut done);
                finished += done.len();
            }
            // SAFETY: a flush has no segments.
            unsafe { disk.submit(Op::Flush, 0) }?;
            disk.kick()?;
            disk.wait_idle(&mut done);
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{:<12} {:<9} {:<9} {:>10.0} {:>12}",
                mode.to_string(),
                engine.to_string(),
                if recorded { "yes" } else { "no" },
                ops as f64 / secs,
                disk.stats().host_syncs
            );
        }
    }
    Ok(())
}
