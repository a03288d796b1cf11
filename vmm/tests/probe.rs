//! The probe guest (`probe::PROBE_ELF`) driven through the real disk path:
//! virtio-mmio windows, QueueNotify through KVM ioeventfds, interrupts
//! through irqfds, the devices' I/O threads and the block crate.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn probe_reads_and_writes_two_disks_through_ferrite() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "probe.elf", probe::PROBE_ELF);
    let a = write_file(dir.path(), "a.img", &vec![0u8; 8 << 20]);
    let b = write_file(dir.path(), "b.img", &vec![0u8; 8 << 20]);
    let stats = dir.path().join("stats.json");
    let drive_a = format!("file={},cache=writethrough,serial=disk-a", a.display());
    let drive_b = format!("file={},cache=unsafe,aio=threads", b.display());
    let out = ferrite(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            "2",
            "--cmdline",
            "probe=info,rw,flush,getid",
            "--drive",
            &drive_a,
            "--drive",
            &drive_b,
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PROBE verdict=pass"), "{}", describe(&out));
    assert!(
        text.contains("PROBE getid disk=0 status=0 id=disk-a"),
        "{}",
        describe(&out)
    );
    // Verdict pass: the probe writes 0 to the debug-exit port.
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let disks = v["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(
        disks[0]["write_cache"], false,
        "writethrough: no guest cache"
    );
    assert!(disks[0]["disk"]["writes"].as_u64().unwrap() > 0, "{v}");
    assert!(disks[1]["disk"]["reads"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(disks[0]["disk"]["errors"], 0);
}
