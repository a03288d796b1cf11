//! An outside check of the flush rules: the sync engine's fdatasync calls,
//! counted by strace, equal the disk's own `fdatasyncs` counter. (io_uring
//! syncs are not system calls; crashfs counts those in host_errors.rs.)

mod common;

use std::process::Command;

use block::{CacheMode, EngineKind, Op};
use common::*;

const CHILD: &str = "BLOCK_STRACE_CHILD";

/// Every mode: flushes clean and dirty, a write-cache switch each way.
/// Returns the disk's count of fdatasyncs.
fn scenario() -> u64 {
    let dir = scratch();
    let img = image(dir.path(), 1 << 20);
    let mut total = 0;
    for mode in CacheMode::ALL {
        let mut d = open(&img, mode, EngineKind::Sync);
        op(&mut d, Op::Flush).result.expect("flush");
        write_at(&mut d, 0, &pattern(4096, 1), 0, &[])
            .result
            .expect("write");
        op(&mut d, Op::Flush).result.expect("flush");
        op(&mut d, Op::Flush).result.expect("flush");
        let wce = d.write_cache();
        d.set_write_cache(!wce).expect("switch");
        write_at(&mut d, 0, &pattern(4096, 2), 0, &[])
            .result
            .expect("write");
        op(&mut d, Op::Flush).result.expect("flush");
        d.set_write_cache(wce).expect("switch back");
        op(&mut d, Op::Flush).result.expect("flush");
        total += d.stats().fdatasyncs;
    }
    total
}

#[test]
fn strace_counts_match_the_disk() {
    if std::env::var_os(CHILD).is_some() {
        println!("FDATASYNCS={}", scenario());
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let log = scratch();
    let trace = log.path().join("trace");
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=fdatasync", "-o"])
        .arg(&trace)
        .arg(&exe)
        .args([
            "--exact",
            "strace_counts_match_the_disk",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("PTRACE") || err.contains("Operation not permitted") {
                eprintln!("SKIP: strace cannot trace here: {}", err.trim());
                return;
            }
            panic!(
                "child failed: {err}\n{}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        Err(e) => {
            eprintln!("SKIP: cannot run strace: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let counted: u64 = stdout
        .lines()
        .find_map(|l| l.split("FDATASYNCS=").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count from the child: {stdout}"));
    let text = std::fs::read_to_string(&trace).expect("strace log");
    let traced = text
        .lines()
        .filter(|l| l.contains("fdatasync(") && !l.contains("resumed"))
        .count() as u64;
    // writeback and none: 3 flushes before the switch, 1 at it, 1 flush
    // of the RWF_DSYNC write, 1 after switching back = 6. writethrough and
    // directsync: clean flush 0, dirty 1, repeated 0, WCE=1 flush 1, the
    // switch back 1, clean 0 = 3. unsafe: 0.
    assert_eq!(counted, 6 + 6 + 3 + 3);
    assert_eq!(
        traced, counted,
        "strace saw {traced} fdatasync calls, the disk counted {counted}"
    );
}
