//! What the host does in each cache mode, as an outside tool sees it:
//! `strace -f` on `ferrite` booting the probe, with `aio=threads` so every
//! write is a visible `pwritev2`. Checked against DESIGN.md's table: the
//! image's open flags (O_DIRECT and O_DSYNC exactly), the fdatasync a guest
//! FLUSH costs (none in unsafe), per-write durability (RWF_DSYNC) once the
//! guest turns its write cache off, the reopen without O_DSYNC when it
//! turns it on in writethrough/directsync, and durable writes for a driver
//! that negotiates neither FLUSH nor CONFIG_WCE.

#[path = "common/probe.rs"]
mod probe_util;

use std::collections::HashMap;
use std::path::Path;

use block::CacheMode;
use probe_util::*;

/// One traced system call on the image.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Open {
        flags: String,
        fd: i64,
    },
    Write {
        fd: i64,
        dsync: bool,
    },
    Fdatasync {
        fd: i64,
    },
    Fsync {
        fd: i64,
    },
    UringEnter,
    /// A ring was set up (the io_uring engine is in use, whether or not
    /// any request went through the ring).
    UringSetup,
}

impl Call {
    fn is_sync(&self) -> bool {
        matches!(self, Call::Fdatasync { .. } | Call::Fsync { .. })
    }
}

/// The syscalls of `trace` (strace -f output) that concern `image`, in
/// order; split calls (`<unfinished ...>` / `resumed>`) are joined.
fn parse_trace(trace: &str, image: &Path) -> Vec<Call> {
    let image = format!("\"{}\"", image.display());
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut image_fds: Vec<i64> = Vec::new();
    let mut calls = Vec::new();
    for raw in trace.lines() {
        // strace pads the pid column: "123 call(" or "4567  call(".
        let Some((pid, rest)) = raw.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let line = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if let Some(pos) = rest.find("resumed>") {
            let head = pending.remove(pid).unwrap_or_default();
            format!("{head}{}", &rest[pos + "resumed>".len()..])
        } else {
            rest.to_string()
        };
        let ret = line
            .rsplit_once(" = ")
            .and_then(|(_, r)| r.split_whitespace().next()?.parse::<i64>().ok());
        let first_arg = |l: &str| {
            l.split_once('(')
                .and_then(|(_, a)| a.split([',', ')']).next()?.trim().parse::<i64>().ok())
        };
        if line.starts_with("openat(") && line.contains(&image) {
            // openat(dirfd, "path", FLAGS[, mode]) = fd
            let flags = line
                .split(", ")
                .nth(2)
                .and_then(|f| f.split([')', ' ']).next())
                .unwrap_or("")
                .to_string();
            if let Some(fd) = ret.filter(|fd| *fd >= 0) {
                image_fds.push(fd);
                calls.push(Call::Open { flags, fd });
            }
        } else if line.starts_with("pwritev2(") {
            let fd = first_arg(&line).unwrap_or(-1);
            if image_fds.contains(&fd) {
                let dsync = line
                    .rsplit_once(')')
                    .is_some_and(|(args, _)| args.ends_with("RWF_DSYNC"));
                calls.push(Call::Write { fd, dsync });
            }
        } else if line.starts_with("fdatasync(") {
            let fd = first_arg(&line).unwrap_or(-1);
            if image_fds.contains(&fd) {
                calls.push(Call::Fdatasync { fd });
            }
        } else if line.starts_with("fsync(") {
            let fd = first_arg(&line).unwrap_or(-1);
            if image_fds.contains(&fd) {
                calls.push(Call::Fsync { fd });
            }
        } else if line.starts_with("io_uring_enter(") {
            calls.push(Call::UringEnter);
        } else if line.starts_with("io_uring_setup(") && ret.is_some_and(|r| r >= 0) {
            calls.push(Call::UringSetup);
        }
    }
    calls
}

fn has_flag(flags: &str, flag: &str) -> bool {
    flags.split('|').any(|f| f == flag)
}

/// Boots the probe under strace on one `mode` disk; returns the run and
/// the image's calls.
fn traced(dir: &Path, mode: CacheMode, cmdline: &str, aio: &str) -> (Run, Vec<Call>) {
    let kernel = probe_kernel(dir);
    let name = format!("{mode}-{}.img", cmdline.len() + aio.len());
    let img = image(dir, &name, IMAGE_SIZE);
    let trace = dir.join(format!("{name}.trace"));
    let opts = if aio.is_empty() {
        format!("cache={mode}")
    } else {
        format!("cache={mode},aio={aio}")
    };
    let mut args: Vec<String> = [
        "-f",
        "-qq",
        "-s",
        "0",
        "-o",
        trace.to_str().unwrap(),
        "-e",
        "trace=openat,fdatasync,fsync,pwritev2,io_uring_enter,io_uring_setup",
        env!("CARGO_BIN_EXE_ferrite"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(probe_args(&kernel, cmdline, &[drive(&img, &opts)], &[]));
    let run = run_command("strace", &args, LIMIT);
    let text = std::fs::read_to_string(&trace).unwrap();
    let calls = parse_trace(&text, &img.canonicalize().unwrap());
    (run, calls)
}

/// The open of the data descriptor: the one the first write goes to.
fn data_open(calls: &[Call]) -> (String, i64) {
    let fd = calls
        .iter()
        .find_map(|c| match c {
            Call::Write { fd, .. } => Some(*fd),
            _ => None,
        })
        .expect("a write");
    calls
        .iter()
        .find_map(|c| match c {
            Call::Open { flags, fd: f } if *f == fd => Some((flags.clone(), fd)),
            _ => None,
        })
        .expect("its open")
}

/// Index of the `n`th write.
fn nth_write(calls: &[Call], n: usize) -> usize {
    calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Call::Write { .. }))
        .nth(n)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("write {n} in {calls:?}"))
}

#[test]
fn host_calls_follow_each_cache_mode() {
    if !kvm_usable() || !strace_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for mode in MODES {
        // Writes in order: W0 (flush: then a FLUSH), W1 (wce: with the write
        // cache set to 0), W2 (with it set to 1); then the probe restores
        // the reset value.
        let (run, calls) = traced(dir.path(), mode, "probe=flush,wce", "threads");
        run.assert_pass();
        let ctx = format!("{mode}: {calls:#?}\n{}", run.describe());
        let writes: Vec<bool> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Write { dsync, .. } => Some(*dsync),
                _ => None,
            })
            .collect();
        assert_eq!(writes.len(), 3, "{ctx}");

        // Open flags of the data descriptor, exactly.
        let (flags, _) = data_open(&calls);
        assert_eq!(has_flag(&flags, "O_DIRECT"), mode.direct(), "{ctx}");
        assert_eq!(
            has_flag(&flags, "O_DSYNC"),
            !mode.default_write_cache(),
            "{ctx}"
        );
        for c in &calls {
            // O_PATH descriptors name the image in the Landlock ruleset;
            // they cannot read or write.
            if let Call::Open { flags, .. } = c {
                if has_flag(flags, "O_PATH") {
                    continue;
                }
                assert!(has_flag(flags, "O_RDWR"), "{ctx}");
                if has_flag(flags, "O_DIRECT") || has_flag(flags, "O_DSYNC") {
                    assert_eq!(has_flag(flags, "O_DIRECT"), mode.direct(), "{ctx}");
                }
            }
        }

        let (w0, w1, w2) = (
            nth_write(&calls, 0),
            nth_write(&calls, 1),
            nth_write(&calls, 2),
        );
        let syncs_between =
            |a: usize, b: usize| calls[a + 1..b].iter().filter(|c| c.is_sync()).count();
        let fd_of = |i: usize| match calls[i] {
            Call::Write { fd, .. } => fd,
            _ => unreachable!(),
        };
        let open_flags_of = |fd: i64, before: usize| {
            calls[..before]
                .iter()
                .rev()
                .find_map(|c| match c {
                    Call::Open { flags, fd: f } if *f == fd => Some(flags.clone()),
                    _ => None,
                })
                .unwrap()
        };
        match mode {
            CacheMode::Writeback | CacheMode::None => {
                // The guest FLUSH and the switch to WCE=0: one fdatasync each.
                assert_eq!(syncs_between(w0, w1), 2, "{ctx}");
                assert_eq!(
                    writes,
                    [false, true, false],
                    "RWF_DSYNC only with WCE=0: {ctx}"
                );
                assert!(
                    !calls.iter().any(
                        |c| matches!(c, Call::Open { flags, .. } if has_flag(flags, "O_DSYNC"))
                    ),
                    "{ctx}"
                );
            }
            CacheMode::Writethrough | CacheMode::DirectSync => {
                // W0 and W1 on the O_DSYNC descriptor, W2 (WCE=1) on one
                // reopened without it; the restore reopens with O_DSYNC.
                assert_eq!(writes, [false, false, false], "{ctx}");
                // The guest FLUSH after W0: one fdatasync (DESIGN.md: skipped
                // only when nothing was written since the last one); WCE=0
                // is already the state, so no other.
                assert_eq!(syncs_between(w0, w1), 1, "{ctx}");
                assert!(has_flag(&open_flags_of(fd_of(w0), w0), "O_DSYNC"), "{ctx}");
                assert!(has_flag(&open_flags_of(fd_of(w1), w1), "O_DSYNC"), "{ctx}");
                let w2_flags = open_flags_of(fd_of(w2), w2);
                assert!(!has_flag(&w2_flags, "O_DSYNC"), "{ctx}");
                assert_eq!(has_flag(&w2_flags, "O_DIRECT"), mode.direct(), "{ctx}");
                let reopened = calls[w2 + 1..]
                    .iter()
                    .any(|c| matches!(c, Call::Open { flags, .. } if has_flag(flags, "O_DSYNC")));
                assert!(reopened, "WCE back to 0 reopens with O_DSYNC: {ctx}");
                // What W2 left in the page cache is made durable at the switch.
                assert!(calls[w2 + 1..].iter().any(Call::is_sync), "{ctx}");
            }
            CacheMode::Unsafe => {
                assert_eq!(writes, [false, false, false], "{ctx}");
                assert!(
                    !calls.iter().any(Call::is_sync),
                    "unsafe never syncs: {ctx}"
                );
                assert!(
                    !calls.iter().any(
                        |c| matches!(c, Call::Open { flags, .. } if has_flag(flags, "O_DSYNC"))
                    ),
                    "{ctx}"
                );
            }
        }
    }
}

#[test]
fn a_driver_without_flush_or_wce_gets_durable_writes() {
    if !kvm_usable() || !strace_usable() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for mode in MODES {
        let (run, calls) = traced(
            dir.path(),
            mode,
            "probe=info,rw probe.nofeatures=flush,wce",
            "threads",
        );
        run.assert_pass();
        assert_eq!(run.info(0).num("writeback"), Some(0), "{}", run.describe());
        let ctx = format!("{mode}: {calls:#?}");
        let (flags, _) = data_open(&calls);
        let writes = calls
            .iter()
            .filter(|c| matches!(c, Call::Write { .. }))
            .count();
        assert_eq!(writes, 3, "rw writes three times: {ctx}");
        for (i, c) in calls.iter().enumerate() {
            let Call::Write { dsync, .. } = c else {
                continue;
            };
            let durable = *dsync || has_flag(&flags, "O_DSYNC");
            // unsafe promises nothing; every other mode makes each write
            // durable before it completes.
            assert_eq!(durable, mode != CacheMode::Unsafe, "write {i}: {ctx}");
        }
    }
}

#[test]
fn io_uring_engine_opens_with_the_same_flags() {
    if !kvm_usable() || !strace_usable() {
        return;
    }
    if !block::io_uring_supported() {
        eprintln!("SKIP: io_uring is not available here");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for mode in [CacheMode::None, CacheMode::DirectSync] {
        let (run, calls) = traced(dir.path(), mode, "probe=rw,flush", "io_uring");
        run.assert_pass();
        let ctx = format!("{mode}: {calls:#?}");
        // The engine is io_uring; whether a request reaches the ring
        // depends on timing (one alone in its batch is made on the disk's
        // thread), so the setup is what is checked.
        assert!(calls.contains(&Call::UringSetup), "{ctx}");
        // An operation alone in its batch runs on the disk's thread (the
        // ring would at best make the same call), with the same flags:
        // under `none` no write is made durable by itself.
        if mode == CacheMode::None {
            assert!(
                !calls
                    .iter()
                    .any(|c| matches!(c, Call::Write { dsync: true, .. })),
                "{ctx}"
            );
        }
        let direct_dsync = calls.iter().any(|c| {
            matches!(c, Call::Open { flags, .. }
                if has_flag(flags, "O_DIRECT")
                    && has_flag(flags, "O_DSYNC") == (mode == CacheMode::DirectSync))
        });
        assert!(direct_dsync, "{ctx}");
    }
}

#[test]
fn trace_parser_joins_split_calls() {
    let img = Path::new("/d/a.img");
    let trace = "\
1000  openat(AT_FDCWD, \"/d/a.img\", O_RDWR|O_CLOEXEC) = 7
10 openat(AT_FDCWD, \"/d/a.img\", O_RDWR|O_DIRECT|O_CLOEXEC <unfinished ...>
11 pwritev2(3, [...], 1, 0, 0) = 4096
10 <... openat resumed>) = 8
12 pwritev2(8, [...], 1, 8192, RWF_DSYNC <unfinished ...>
13 fdatasync(8) = 0
12 <... pwritev2 resumed>) = 4096
13 fsync(9) = 0
";
    assert_eq!(
        parse_trace(trace, img),
        [
            Call::Open {
                flags: "O_RDWR|O_CLOEXEC".into(),
                fd: 7
            },
            Call::Open {
                flags: "O_RDWR|O_DIRECT|O_CLOEXEC".into(),
                fd: 8
            },
            Call::Fdatasync { fd: 8 },
            Call::Write { fd: 8, dsync: true },
        ]
    );
}
