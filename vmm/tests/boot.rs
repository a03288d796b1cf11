//! Boots tiny self-assembled guests through each entry path and checks what
//! they print on COM1 and the status `ferrite` exits with.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
/// "HdrS" in the zero page at 0x202: proves rsi points at boot_params.
const HDRS: u32 = 0x5372_6448;
/// PVH start info magic: proves ebx points at hvm_start_info.
const PVH_MAGIC: u32 = 0x336e_c578;

/// 64-bit code: check the zero page, print `msg`, then `tail`.
fn code64(msg: &str, tail: impl Fn(&mut Asm)) -> Vec<u8> {
    let mut a = Asm::new();
    a.cmp_at_rsi(0x202, HDRS)
        .unless_equal(&fail_block("zero page"))
        .com1()
        .puts(msg);
    tail(&mut a);
    a.halt();
    a.bytes
}

/// 32-bit PVH code: check the start info, print `msg`, then `tail`.
fn code_pvh(msg: &str, tail: impl Fn(&mut Asm)) -> Vec<u8> {
    let mut a = Asm::new();
    a.cmp_at_ebx(PVH_MAGIC)
        .unless_equal(&fail_block("start info"))
        .com1()
        .puts(msg);
    tail(&mut a);
    a.halt();
    a.bytes
}

/// A PVH kernel whose e_entry prints a different message, so the test sees
/// which entry ferrite took.
fn elf_pvh(code32: Vec<u8>) -> Vec<u8> {
    let pvh_at = LOAD_ADDR + 0x1000;
    let mut wrong = Asm::new();
    wrong.com1().puts("WRONG ENTRY\n").debug_exit(0x7e).halt();
    elf(
        LOAD_ADDR,
        &[
            Segment {
                addr: LOAD_ADDR,
                bytes: wrong.bytes,
            },
            Segment {
                addr: pvh_at,
                bytes: code32,
            },
        ],
        Some(pvh_at as u32),
    )
}

fn run_kernel(image: &[u8], name: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), name, image);
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--memory", "32M"];
    args.extend_from_slice(extra);
    ferrite(&args, LIMIT)
}

fn assert_run(out: &std::process::Output, stdout: &str, status: i32) {
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        stdout,
        "{}",
        describe(out)
    );
    assert_eq!(out.status.code(), Some(status), "{}", describe(out));
}

#[test]
fn elf_64bit_entry_prints_and_debug_exits() {
    if !kvm_available() {
        return;
    }
    let code = code64("hello from long mode\n", |a| {
        a.debug_exit(0x21);
    });
    let out = run_kernel(&elf64(code), "vmlinux", &[]);
    assert_run(&out, "hello from long mode\n", 0x43);
    assert!(out.stderr.is_empty(), "{}", describe(&out));
}

#[test]
fn elf_pvh_entry_prints_and_debug_exits() {
    if !kvm_available() {
        return;
    }
    let code = code_pvh("hello from PVH\n", |a| {
        a.debug_exit(0x05);
    });
    let out = run_kernel(&elf_pvh(code), "vmlinux-pvh", &[]);
    assert_run(&out, "hello from PVH\n", 0x0b);
}

#[test]
fn bzimage_64bit_entry_prints_and_debug_exits() {
    if !kvm_available() {
        return;
    }
    let code = code64("hello from bzImage\n", |a| {
        a.debug_exit(0x10);
    });
    let out = run_kernel(&bzimage(&code), "bzImage", &[]);
    assert_run(&out, "hello from bzImage\n", 0x21);
}

#[test]
fn i8042_reset_exits_zero() {
    if !kvm_available() {
        return;
    }
    let code = code64("rebooting\n", |a| {
        a.out8(0x64, 0xfe);
    });
    let out = run_kernel(&elf64(code), "vmlinux", &[]);
    assert_run(&out, "rebooting\n", 0);
    assert!(out.stderr.is_empty(), "{}", describe(&out));
}

#[test]
fn triple_fault_exits_zero() {
    if !kvm_available() {
        return;
    }
    let code = code64("faulting\n", |a| {
        a.ud2();
    });
    let out = run_kernel(&elf64(code), "vmlinux", &[]);
    assert_run(&out, "faulting\n", 0);
}

#[test]
fn first_exit_request_wins() {
    if !kvm_available() {
        return;
    }
    // Debug exit, then a reset request: the debug status stands.
    let code = code64("", |a| {
        a.debug_exit(0x02).out8(0x64, 0xfe);
    });
    let out = run_kernel(&elf64(code), "vmlinux", &[]);
    assert_run(&out, "", 0x05);
}

#[test]
fn stats_json_is_written_without_disks() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let code = code64("", |a| {
        a.debug_exit(0x03);
    });
    let out = run_kernel(
        &elf64(code),
        "vmlinux",
        &["--stats-json", stats.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(v["exit_status"], 7);
    assert_eq!(v["disks"], serde_json::json!([]));
}

#[test]
fn two_vcpus_the_bsp_wakes_the_ap() {
    if !kvm_available() {
        return;
    }
    // The AP starts in real mode at 0x10000 (SIPI vector 0x10).
    const TRAMPOLINE: u64 = 0x10000;
    let mut ap = Asm::new();
    ap.com1_real().puts("AP up\n").debug_exit(0x42).halt();
    // The BSP (PVH, paging off) sends INIT then SIPI to APIC ID 1 through
    // its local APIC's ICR, then waits.
    const ICR_LOW: u32 = 0xfee0_0300;
    const ICR_HIGH: u32 = 0xfee0_0310;
    let bsp = code_pvh("BSP up\n", |a| {
        a.store32(ICR_HIGH, 1 << 24)
            .store32(ICR_LOW, 0x0000_4500)
            .store32(ICR_HIGH, 1 << 24)
            .store32(ICR_LOW, 0x0000_4600 | (TRAMPOLINE >> 12) as u32);
    });
    let pvh_at = LOAD_ADDR;
    let image = elf(
        pvh_at,
        &[
            Segment {
                addr: pvh_at,
                bytes: bsp,
            },
            Segment {
                addr: TRAMPOLINE,
                bytes: ap.bytes,
            },
        ],
        Some(pvh_at as u32),
    );
    let out = run_kernel(&image, "vmlinux-smp", &["--cpus", "2"]);
    assert_run(&out, "BSP up\nAP up\n", 0x85);
}

#[test]
fn disks_appear_as_virtio_mmio_windows_and_in_stats() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.img", &vec![0u8; 1 << 20]);
    let b = write_file(dir.path(), "b.img", &vec![0u8; 1 << 20]);
    let stats = dir.path().join("stats.json");
    // Each window answers with the virtio-mmio magic, version 2 and the
    // block device ID.
    let mut code = Asm::new();
    for (i, base) in [0xd000_0000u32, 0xd000_1000].into_iter().enumerate() {
        let what = format!("disk {i}");
        code.load_eax(base)
            .cmp_eax(0x7472_6976)
            .unless_equal(&fail_block(&what))
            .load_eax(base + 4)
            .cmp_eax(2)
            .unless_equal(&fail_block(&what))
            .load_eax(base + 8)
            .cmp_eax(2)
            .unless_equal(&fail_block(&what));
    }
    code.com1().puts("two disks\n").debug_exit(0x01).halt();
    let kernel = write_file(dir.path(), "vmlinux", &elf64(code.bytes));
    let drive_a = format!("file={},cache=none,serial=first", a.display());
    let drive_b = format!("file={},cache=unsafe,readonly=on,aio=threads", b.display());
    let out = ferrite(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "32M",
            "--drive",
            &drive_a,
            "--drive",
            &drive_b,
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_run(&out, "two disks\n", 3);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let disks = v["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{v}");
    assert_eq!(disks[0]["index"], 0);
    assert_eq!(disks[0]["cache"], "none");
    assert_eq!(disks[0]["path"], a.to_str().unwrap());
    assert_eq!(disks[1]["cache"], "unsafe");
    assert_eq!(disks[1]["read_only"], true);
    assert_eq!(disks[1]["engine"], "threads");
    assert_eq!(v["exit_status"], 3);
}

#[test]
fn initrd_and_cmdline_reach_the_guest() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut initrd = vec![0u8; 4096];
    initrd[..4].copy_from_slice(b"INRD");
    let initrd_path = write_file(dir.path(), "initrd", &initrd);
    // 32 MiB of RAM, a 4 KiB initrd: placed in the last page below 32 MiB.
    const INITRD_AT: u32 = 0x1fff000;
    let mut code = Asm::new();
    code.cmp_at_rsi(0x218, INITRD_AT)
        .unless_equal(&fail_block("ramdisk_image"))
        .cmp_at_rsi(0x21c, 4096)
        .unless_equal(&fail_block("ramdisk_size"))
        .load_eax(INITRD_AT)
        .cmp_eax(u32::from_le_bytes(*b"INRD"))
        .unless_equal(&fail_block("initrd bytes"))
        .cmp_at_rsi(0x228, 0x20000)
        .unless_equal(&fail_block("cmd_line_ptr"))
        .load_eax(0x20000)
        .cmp_eax(u32::from_le_bytes(*b"quie"))
        .unless_equal(&fail_block("cmdline bytes"))
        .com1()
        .puts("initrd ok\n")
        .debug_exit(0x11)
        .halt();
    for (name, image) in [
        ("vmlinux", elf64(code.bytes.clone())),
        ("bzImage", bzimage(&code.bytes)),
    ] {
        let out = run_kernel(
            &image,
            name,
            &[
                "--initrd",
                initrd_path.to_str().unwrap(),
                "--cmdline",
                "quiet",
            ],
        );
        assert_run(&out, "initrd ok\n", 0x23);
    }
}

#[test]
fn an_initrd_too_big_for_memory_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = write_file(dir.path(), "initrd", &vec![0u8; 40 << 20]);
    let mut code = Asm::new();
    code.halt();
    let out = run_kernel(
        &elf64(code.bytes),
        "vmlinux",
        &["--initrd", initrd.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not fit"), "{stderr}");
}

#[test]
fn a_guest_kvm_cannot_run_is_a_one_line_vmm_error() {
    if !kvm_available() {
        return;
    }
    // Jump into the device hole where nothing is mapped: KVM cannot fetch
    // instructions from MMIO and gives up on the vCPU.
    let mut code = Asm::new();
    code.com1().puts("jumping\n");
    code.bytes.extend([0xb8, 0x00, 0x00, 0x00, 0xc0]); // mov eax, 0xc0000000
    code.bytes.extend([0xff, 0xe0]); // jmp rax
    let out = run_kernel(&elf64(code.bytes), "vmlinux", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "jumping\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ferrite: vCPU 0: "), "{stderr}");
    assert!(stderr.contains(" at RIP 0x"), "{stderr}");
}
