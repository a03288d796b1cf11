//! The SIGSYS handler: a trapped system call ends ferrite with one line
//! that names the thread and the call, and status 1.
//!
//! The handler runs on the offending thread, under that thread's filter,
//! so it makes only calls every filter allows (`write`, `exit_group`,
//! `ioctl(0, TCSETS)`) and nothing that allocates or locks.

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;

/// Longest thread name kept (Linux thread names are at most 15 bytes).
const NAME_LEN: usize = 16;

/// `si_code` of a SIGSYS raised by seccomp (`SYS_SECCOMP`).
const SYS_SECCOMP: libc::c_int = 1;

/// The terminal's settings before ferrite touched them (if stdin is one),
/// put back by the handler: the console may be in raw mode.
static COOKED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();

thread_local! {
    /// This thread's name for the SIGSYS line (fixed size: read in the handler).
    static NAME: Cell<([u8; NAME_LEN], usize)> = const { Cell::new(([0; NAME_LEN], 0)) };
}

/// Records the calling thread's name for the handler.
pub(super) fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_LEN];
    let len = name.len().min(NAME_LEN);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    NAME.with(|n| n.set((buf, len)));
}

/// Appends `bytes` to `out` at `*at`, as far as it fits.
fn push(out: &mut [u8], at: &mut usize, bytes: &[u8]) {
    for &b in bytes {
        if *at < out.len() {
            out[*at] = b;
            *at += 1;
        }
    }
}

/// Formats `v` in decimal without allocating.
fn push_dec(out: &mut [u8], at: &mut usize, v: i64) {
    if v < 0 {
        push(out, at, b"-");
    }
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push(out, at, &digits[i..]);
}

/// The line the handler prints for `syscall` on thread `name`.
fn message(name: &[u8], syscall: i64, out: &mut [u8]) -> usize {
    let mut at = 0;
    push(out, &mut at, b"ferrite: thread ");
    push(out, &mut at, if name.is_empty() { b"?" } else { name });
    push(out, &mut at, b" made forbidden system call ");
    push_dec(out, &mut at, syscall);
    push(
        out,
        &mut at,
        b" (seccomp); please report it; --no-seccomp runs without the filter\n",
    );
    at
}

/// The syscall number in a seccomp SIGSYS's siginfo (`si_syscall`: the
/// `_sigsys` member of the union, after `_call_addr`, at byte 24 on x86-64).
///
/// # Safety
/// `info` must point to the siginfo the kernel passed to the handler.
unsafe fn trapped_syscall(info: *const libc::siginfo_t) -> i64 {
    // SAFETY: the caller's contract; siginfo_t is 128 bytes, so offset 24
    // is inside it, and an i32 there is aligned.
    unsafe { i64::from(info.cast::<u8>().add(24).cast::<i32>().read()) }
}

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    let syscall = if code == SYS_SECCOMP {
        // SAFETY: as above; si_code says the `_sigsys` member is filled.
        unsafe { trapped_syscall(info) }
    } else {
        -1
    };
    let (name, len) = NAME.with(|n| n.get());
    let mut line = [0u8; 160];
    let n = message(&name[..len], syscall, &mut line);
    if let Some(cooked) = COOKED_TERMINAL.get() {
        // SAFETY: fd 0 and a termios read from it; ioctl is
        // async-signal-safe, and every filter allows TCSETS on fd 0.
        unsafe { libc::ioctl(0, libc::TCSETS, cooked as *const libc::termios) };
    }
    // SAFETY: writes `n` bytes of `line` to stderr, then ends the process;
    // both calls are async-signal-safe and allowed by every filter.
    unsafe {
        libc::write(2, line.as_ptr().cast(), n);
        libc::_exit(1);
    }
}

/// Installs the handler for the whole process, and remembers the
/// terminal's settings on stdin (call before raw mode).
pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails (not a
    // terminal), and only a filled one is kept.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 {
            let _ = COOKED_TERMINAL.set(t);
        }
    }
    // SAFETY: sigaction is plain data; zeroed is a valid empty value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handle_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset_t to empty; then a valid
    // action for SIGSYS whose handler only makes async-signal-safe calls.
    let rc = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_one_line_with_thread_and_number() {
        let mut out = [0u8; 160];
        let n = message(b"vcpu0", 110, &mut out);
        let text = std::str::from_utf8(&out[..n]).unwrap();
        assert!(text.starts_with("ferrite: thread vcpu0 made forbidden system call 110 "));
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with('\n'));
        let n = message(b"", -1, &mut out);
        assert!(std::str::from_utf8(&out[..n])
            .unwrap()
            .contains("thread ? made forbidden system call -1 "));
    }

    #[test]
    fn long_names_are_cut() {
        set_thread_name("a-very-long-thread-name");
        let (_, len) = NAME.with(|n| n.get());
        assert_eq!(len, NAME_LEN);
    }
}
