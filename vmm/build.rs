//! Builds ferrite's guest init for `ferrite run` (`resources/run/init.c`)
//! as a static executable into `$OUT_DIR/ferrite-init`, which the binary
//! embeds: `ferrite run` then needs no compiler on the machine it runs on.
//!
//! `FERRITE_INIT_CC` overrides the compiler (default `gcc`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let source = manifest.join("../resources/run/init.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("ferrite-init");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=FERRITE_INIT_CC");
    let cc = env::var("FERRITE_INIT_CC").unwrap_or_else(|_| "gcc".to_string());
    let status = Command::new(&cc)
        .args([
            "-static",
            "-Os",
            "-s",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
        ])
        .arg(&out)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("ferrite-init: cannot run {cc}: {e} (install gcc)"));
    assert!(
        status.success(),
        "ferrite-init: {cc} failed to build {} ({status}); static glibc (libc6-dev) is needed",
        source.display()
    );
}
