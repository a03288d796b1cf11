//! Tiny guests the tests assemble themselves, and a runner for `ferrite`.
//!
//! The guests are a few dozen bytes of hand-encoded x86 (the host's KVM
//! emulates ring-0 code slowly, so they stay tiny), wrapped in a minimal
//! ELF64 (with or without a PVH note) or a minimal bzImage.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where test kernels load (1 MiB, like Linux's default).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// A little x86 assembler: just the instructions the test guests use. The
/// encodings chosen mean the same in 16-, 32- and 64-bit mode unless noted.
#[derive(Default, Clone)]
pub struct Asm {
    pub bytes: Vec<u8>,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }

    /// `mov dx, 0x3f8` in 32/64-bit mode (operand-size prefix).
    pub fn com1(&mut self) -> &mut Self {
        self.emit(&[0x66, 0xba, 0xf8, 0x03])
    }

    /// `mov dx, 0x3f8` in 16-bit real mode.
    pub fn com1_real(&mut self) -> &mut Self {
        self.emit(&[0xba, 0xf8, 0x03])
    }

    /// `mov al, c; out dx, al` for each byte (dx must hold the port).
    pub fn puts(&mut self, s: &str) -> &mut Self {
        for b in s.bytes() {
            self.emit(&[0xb0, b, 0xee]);
        }
        self
    }

    /// `mov al, value; out port, al`.
    pub fn out8(&mut self, port: u8, value: u8) -> &mut Self {
        self.emit(&[0xb0, value, 0xe6, port])
    }

    /// Writes `value` to the debug-exit port.
    pub fn debug_exit(&mut self, value: u8) -> &mut Self {
        self.out8(0xf4, value)
    }

    /// `hlt; jmp back to hlt`, forever.
    pub fn halt(&mut self) -> &mut Self {
        self.emit(&[0xf4, 0xeb, 0xfd])
    }

    /// `ud2`: with the empty IDT ferrite installs, the exception cannot be
    /// delivered and the CPU triple-faults.
    pub fn ud2(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x0b])
    }

    /// `mov dword [addr], value` (32-bit mode, absolute address).
    pub fn store32(&mut self, addr: u32, value: u32) -> &mut Self {
        self.emit(&[0xc7, 0x05]);
        self.emit(&addr.to_le_bytes());
        self.emit(&value.to_le_bytes())
    }

    /// `cmp dword [ebx], value` (32-bit mode).
    pub fn cmp_at_ebx(&mut self, value: u32) -> &mut Self {
        self.emit(&[0x81, 0x3b]);
        self.emit(&value.to_le_bytes())
    }

    /// `cmp dword [rsi + disp], value` (64-bit mode).
    pub fn cmp_at_rsi(&mut self, disp: u32, value: u32) -> &mut Self {
        self.emit(&[0x81, 0xbe]);
        self.emit(&disp.to_le_bytes());
        self.emit(&value.to_le_bytes())
    }

    /// `mov eax, dword [addr]` (64-bit mode, `movabs` with a 64-bit
    /// address: a 32-bit displacement would be sign-extended).
    pub fn load_eax(&mut self, addr: u32) -> &mut Self {
        self.emit(&[0xa1]);
        self.emit(&u64::from(addr).to_le_bytes())
    }

    /// `cmp eax, value`.
    pub fn cmp_eax(&mut self, value: u32) -> &mut Self {
        self.emit(&[0x3d]);
        self.emit(&value.to_le_bytes())
    }

    /// `je` over `skipped` (which is emitted here), i.e. run `skipped` only
    /// when the last comparison was unequal.
    pub fn unless_equal(&mut self, skipped: &Asm) -> &mut Self {
        let len = u8::try_from(skipped.bytes.len()).expect("short block");
        self.emit(&[0x74, len]);
        self.emit(&skipped.bytes)
    }
}

/// A guest block that reports a failed check and exits with 0x7f.
pub fn fail_block(what: &str) -> Asm {
    let mut a = Asm::new();
    a.com1()
        .puts(&format!("BAD {what}\n"))
        .debug_exit(0x7f)
        .halt();
    a
}

/// One loadable segment.
pub struct Segment {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// A 64-bit ELF of one segment, `code` loaded and entered at [`LOAD_ADDR`].
pub fn elf64(code: Vec<u8>) -> Vec<u8> {
    elf(
        LOAD_ADDR,
        &[Segment {
            addr: LOAD_ADDR,
            bytes: code,
        }],
        None,
    )
}

/// A minimal ELF64 executable: one PT_LOAD per segment (physical = virtual
/// address), `entry` as e_entry, and optionally a PT_NOTE with the Xen PVH
/// entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18).
pub fn elf(entry: u64, segments: &[Segment], pvh_entry: Option<u32>) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum = segments.len() + usize::from(pvh_entry.is_some());
    let mut data_off = EHDR + PHDR * phnum;
    let mut phdrs = Vec::new();
    let mut data = Vec::new();
    let mut note = Vec::new();
    if let Some(pvh) = pvh_entry {
        note.extend(4u32.to_le_bytes()); // namesz
        note.extend(4u32.to_le_bytes()); // descsz
        note.extend(18u32.to_le_bytes()); // type
        note.extend(b"Xen\0");
        note.extend(pvh.to_le_bytes());
    }
    let mut push_phdr = |p_type: u32, flags: u32, off: usize, addr: u64, len: usize| {
        phdrs.extend(p_type.to_le_bytes());
        phdrs.extend(flags.to_le_bytes());
        phdrs.extend((off as u64).to_le_bytes());
        phdrs.extend(addr.to_le_bytes()); // vaddr
        phdrs.extend(addr.to_le_bytes()); // paddr
        phdrs.extend((len as u64).to_le_bytes()); // filesz
        phdrs.extend((len as u64).to_le_bytes()); // memsz
        phdrs.extend(0x1000u64.to_le_bytes()); // align
    };
    for seg in segments {
        push_phdr(1, 7, data_off, seg.addr, seg.bytes.len());
        data.extend(&seg.bytes);
        data_off += seg.bytes.len();
    }
    if !note.is_empty() {
        // Notes are 4-byte aligned.
        while !data_off.is_multiple_of(4) {
            data.push(0);
            data_off += 1;
        }
        push_phdr(4, 4, data_off, 0, note.len());
        data.extend(&note);
    }
    let mut out = Vec::new();
    out.extend(b"\x7fELF");
    out.extend([2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    out.extend([0u8; 8]);
    out.extend(2u16.to_le_bytes()); // ET_EXEC
    out.extend(62u16.to_le_bytes()); // EM_X86_64
    out.extend(1u32.to_le_bytes());
    out.extend(entry.to_le_bytes());
    out.extend((EHDR as u64).to_le_bytes()); // phoff
    out.extend(0u64.to_le_bytes()); // shoff
    out.extend(0u32.to_le_bytes()); // flags
    out.extend((EHDR as u16).to_le_bytes());
    out.extend((PHDR as u16).to_le_bytes());
    out.extend((phnum as u16).to_le_bytes());
    out.extend(64u16.to_le_bytes()); // shentsize
    out.extend(0u16.to_le_bytes()); // shnum
    out.extend(0u16.to_le_bytes()); // shstrndx
    assert_eq!(out.len(), EHDR);
    out.extend(phdrs);
    out.extend(data);
    out
}

/// A minimal bzImage (boot protocol 2.15, XLF_KERNEL_64): one setup sector
/// after the boot sector, then the protected-mode part whose offset 0x200
/// is the 64-bit entry, holding `code64`.
pub fn bzimage(code64: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut img = vec![0u8; (setup_sects as usize + 1) * 512];
    let put = |img: &mut Vec<u8>, at: usize, b: &[u8]| img[at..at + b.len()].copy_from_slice(b);
    put(&mut img, 0x1f1, &[setup_sects]);
    put(&mut img, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut img, 0x202, b"HdrS");
    put(&mut img, 0x206, &0x020fu16.to_le_bytes());
    put(&mut img, 0x211, &[1]); // loadflags: LOADED_HIGH
    put(&mut img, 0x214, &(LOAD_ADDR as u32).to_le_bytes()); // code32_start
    put(&mut img, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut img, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut img, 0x236, &1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(&mut img, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut img, 0x260, &0x10000u32.to_le_bytes()); // init_size
                                                     // The 32-bit entry (unused by a 64-bit boot) halts.
    let mut pm = vec![0xf4u8; 0x200];
    pm.extend_from_slice(code64);
    img.extend(pm);
    img
}

/// Writes `bytes` to a new file in `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Whether KVM can be used here; prints SKIP otherwise.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm is not usable: {e}");
            false
        }
    }
}

/// Runs `ferrite` with `args`, no stdin, and a time limit; kills it if it
/// runs over (the test then fails on the status).
pub fn ferrite(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferrite");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.wait().unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// stdout and stderr as text, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the guest of `child` (stdout piped) has printed "ready\n",
/// draining its stdout in the background; kills it and fails after 30 s.
pub fn wait_for_ready(child: &mut std::process::Child) {
    let mut stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.ends_with(b"ready\n") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        panic!("guest never printed ready");
    }
}
