//! `iothread-cpus=`: the I/O thread runs where it is told, or the device
//! is not created.

use block::{BlockError, CacheMode, Disk, DiskConfig};
use devices::virtio::block::{BlockDevice, BlockDeviceError, BlockOptions, CpuList};
use nix::sched::CpuSet;

use crate::common::*;

/// The CPUs this process may run on.
fn allowed() -> Vec<usize> {
    CpuList::of_this_thread()
        .expect("sched_getaffinity")
        .cpus()
        .to_vec()
}

/// `Cpus_allowed_list` of every thread of this process named `name`.
fn masks_of(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            out.push(list.trim().to_string());
        }
    }
    out
}

#[test]
fn the_io_thread_runs_only_on_its_cpus_and_serves() {
    let cpus = allowed();
    let Some(&last) = cpus.last() else {
        panic!("this process may run on no CPU");
    };
    if cpus.len() < 2 {
        eprintln!("SKIP: one CPU allowed here, so a pinned thread looks like any other");
        return;
    }
    let list: CpuList = last.to_string().parse().unwrap();
    let Some(mut rig) = rig(Opts {
        iothread_cpus: Some(list),
        ..Opts::default()
    }) else {
        return;
    };
    // Other tests' I/O threads run here too, none of them pinned.
    assert!(
        masks_of("ferrite-blk").contains(&last.to_string()),
        "no ferrite-blk thread confined to CPU {last}: {:?}",
        masks_of("ferrite-blk")
    );
    rig.init_all();
    rig.write(8, &[0xa5; 512]);
    assert_eq!(rig.read(8, 512), vec![0xa5; 512]);
}

#[test]
fn cpus_it_cannot_run_on_fail_the_device_with_one_line() {
    let cpus = allowed();
    let Some(outside) = (0..CpuSet::count()).rev().find(|c| !cpus.contains(c)) else {
        eprintln!("SKIP: every CPU an affinity mask can name is allowed here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let cfg = DiskConfig {
        path,
        cache: CacheMode::Writeback,
        read_only: false,
        engine: None,
    };
    let disk = match Disk::open(&cfg) {
        Ok(d) => d,
        Err(e @ BlockError::Engine(_)) => {
            eprintln!("SKIP: {e}");
            return;
        }
        Err(e) => panic!("cannot open the test image: {e}"),
    };
    let opts = BlockOptions {
        iothread_cpus: Some(outside.to_string().parse().unwrap()),
        ..BlockOptions::default()
    };
    let Err(e) = BlockDevice::with_options(disk, opts) else {
        panic!("a device whose I/O thread may run on no CPU was created");
    };
    assert!(matches!(e, BlockDeviceError::Affinity { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("cannot run the virtio-blk I/O thread on CPUs {outside}: Invalid argument (os error 22)")
    );
}
