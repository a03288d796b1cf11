//! The initramfs of a `ferrite run` guest: ferrite's init
//! (`resources/run/init.c`, built by `build.rs` and embedded in the
//! binary), the command as `/ferrite/argv`, and init's settings as
//! `/ferrite/conf`, in the `newc` cpio format the kernel unpacks.
//!
//! Why an initramfs and not files on the root disk: it works the same for
//! every root (the cached busybox disk, a `--rootfs` disk, the user's
//! `--image`, which may have no room or no init of ours), the cached root
//! disk stays untouched, and nothing on the host needs root privileges or
//! a tool that can write into ext4. The command never goes on the kernel
//! command line, so no argument is limited in length or quoting.

use std::io::{self, Write};

/// ferrite's guest init, a static executable.
pub const INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ferrite-init"));

/// What init needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConf {
    /// The root disk's device (`/dev/vda`).
    pub root: String,
    /// Its file system type.
    pub rootfstype: String,
    /// The `--out` disk's device, if any.
    pub out: Option<String>,
    /// Lower the console log level while the command runs (not `--verbose`).
    pub quiet: bool,
}

impl InitConf {
    fn text(&self) -> String {
        format!(
            "root={}\nrootfstype={}\nout={}\nquiet={}\n",
            self.root,
            self.rootfstype,
            self.out.as_deref().unwrap_or(""),
            u8::from(self.quiet)
        )
    }
}

/// The argv file: every argument followed by a NUL, so that any byte but
/// NUL (which no Unix argument can hold) reaches the guest unchanged.
pub fn argv_file(command: &[std::ffi::OsString]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for arg in command {
        out.extend_from_slice(arg.as_bytes());
        out.push(0);
    }
    out
}

/// Writes the whole initramfs to `out`.
pub fn write(
    out: &mut impl Write,
    command: &[std::ffi::OsString],
    conf: &InitConf,
) -> io::Result<()> {
    let mut cpio = Cpio { out, ino: 1 };
    for dir in ["dev", "proc", "sys", "newroot", "ferrite"] {
        cpio.entry(dir, 0o040755, &[], (0, 0))?;
    }
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.entry("dev/console", 0o020600, &[], (5, 1))?;
    cpio.entry("init", 0o100755, INIT, (0, 0))?;
    cpio.entry("ferrite/argv", 0o100644, &argv_file(command), (0, 0))?;
    cpio.entry("ferrite/conf", 0o100644, conf.text().as_bytes(), (0, 0))?;
    cpio.entry("TRAILER!!!", 0, &[], (0, 0))?;
    Ok(())
}

/// A `newc` cpio writer (Documentation/driver-api/early-userspace/buffer-format.rst).
struct Cpio<'a, W: Write> {
    out: &'a mut W,
    ino: u32,
}

impl<W: Write> Cpio<'_, W> {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> io::Result<()> {
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0, // mtime: fixed, so the same command gives the same bytes
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    /// Pads to the format's 4-byte alignment after `len` bytes.
    fn pad(&mut self, len: usize) -> io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn argv_keeps_every_byte_but_nul() {
        let argv = [
            OsString::from("sh"),
            OsString::from("a b"),
            OsString::from("q'\"\n$x"),
            OsString::from(""),
        ];
        assert_eq!(argv_file(&argv), b"sh\0a b\0q'\"\n$x\0\0");
    }

    #[test]
    fn the_archive_is_newc_aligned_and_ends_with_the_trailer() {
        let conf = InitConf {
            root: "/dev/vda".into(),
            rootfstype: "ext4".into(),
            out: Some("/dev/vdb".into()),
            quiet: true,
        };
        let mut bytes = Vec::new();
        write(&mut bytes, &[OsString::from("true")], &conf).unwrap();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("root=/dev/vda\nrootfstype=ext4\nout=/dev/vdb\nquiet=1\n"));
        // The init is the static ELF build.rs made.
        assert!(INIT.starts_with(b"\x7fELF"));
        let init = bytes
            .windows(INIT.len().min(64))
            .position(|w| w == &INIT[..64]);
        assert!(init.is_some_and(|at| at % 4 == 0));
    }
}
