//! Builds the probe guest (freestanding C and a little assembly in `guest/`)
//! with gcc into `$OUT_DIR/probe.elf`, then disassembles it and fails the
//! build if it contains an instruction a software-emulated KVM cannot run.
//!
//! `PROBE_CC` overrides the compiler (default `gcc`); `PROBE_OBJDUMP` the
//! disassembler (default `objdump`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/forbidden.rs"]
mod forbidden;

const SOURCES: &[&str] = &[
    "entry.S",
    "main.c",
    "util.c",
    "cmdline.c",
    "virtio.c",
    "scenarios.c",
    "stream.c",
    "bounce.c",
    "soak.c",
];
const OTHER_INPUTS: &[&str] = &["probe.h", "link.ld"];

/// Integer-only, freestanding, statically linked at 1 MiB by `link.ld`.
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffreestanding",
    "-nostdlib",
    "-fno-builtin",
    "-mgeneral-regs-only",
    "-mno-sse",
    "-mno-mmx",
    "-mno-red-zone",
    "-fno-tree-vectorize",
    "-fno-tree-loop-distribute-patterns",
    "-fno-pic",
    "-fno-pie",
    "-no-pie",
    "-static",
    "-mcmodel=small",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=4096",
];

fn run(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("probe guest: cannot run {what} ({cmd:?}): {e}"));
    if !out.status.success() {
        panic!(
            "probe guest: {what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

/// Disassembles one section in the given mode (`i386` or `x86-64`).
fn disassemble(objdump: &str, elf: &Path, section: &str, mode: &str) -> String {
    let out = run(
        Command::new(objdump)
            .args(["-d", "-M", mode, "-j", section])
            .arg(elf),
        "objdump",
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guest = dir.join("guest");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("probe.elf");
    let cc = env::var("PROBE_CC").unwrap_or_else(|_| "gcc".to_owned());
    let objdump = env::var("PROBE_OBJDUMP").unwrap_or_else(|_| "objdump".to_owned());
    println!("cargo:rerun-if-changed=build/forbidden.rs");
    println!("cargo:rerun-if-env-changed=PROBE_CC");
    println!("cargo:rerun-if-env-changed=PROBE_OBJDUMP");
    for f in SOURCES.iter().chain(OTHER_INPUTS) {
        println!("cargo:rerun-if-changed=guest/{f}");
    }

    let mut gcc = Command::new(&cc);
    gcc.args(CFLAGS)
        .arg("-T")
        .arg(guest.join("link.ld"))
        .arg("-o")
        .arg(&out)
        .args(SOURCES.iter().map(|s| guest.join(s)));
    run(&mut gcc, "the C compiler");

    // The PVH entry is 32-bit code in its own section; the rest is 64-bit.
    let mut bad = forbidden::forbidden_lines(&disassemble(&objdump, &out, ".text32", "i386"));
    bad.extend(forbidden::forbidden_lines(&disassemble(
        &objdump, &out, ".text", "x86-64",
    )));
    if !bad.is_empty() {
        panic!(
            "probe guest: forbidden instructions (emulated KVM cannot run them):\n{}",
            bad.join("\n")
        );
    }
}
