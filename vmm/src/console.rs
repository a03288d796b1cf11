//! The serial console on the VMM's own stdin and stdout.
//!
//! On a terminal, stdin goes to raw mode so every key reaches the guest
//! (Ctrl-C included), and Ctrl-A X quits as in QEMU. The saved terminal
//! state is global so that every way out (normal exit, error, signal,
//! panic) can restore it through [`restore_terminal`]. Without a terminal,
//! bytes pass through untouched; without a stdin at all (closed fd 0, as
//! some CI runners start processes) the console is output only.

use std::sync::Mutex;

/// Ctrl-A, QEMU's escape key.
const CTRL_A: u8 = 0x01;

/// The terminal settings to put back, when raw mode is on.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// What the VMM's stdin is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdin {
    /// fd 0 is not open.
    Closed,
    /// A terminal: raw mode and the escape key apply.
    Terminal,
    /// A pipe, file or socket: bytes pass through.
    Other,
}

/// Finds out what fd 0 is. Call before opening any file: a closed fd 0, 1
/// or 2 would be taken by the next open, and a disk image that landed on
/// fd 1 would receive the guest's console output. Closed standard fds are
/// therefore pointed at /dev/null, which keeps them reserved.
pub fn probe_stdin() -> Stdin {
    let stdin_open = fd_is_open(0);
    for fd in 0..=2 {
        if !fd_is_open(fd) {
            reserve_with_dev_null(fd);
        }
    }
    if !stdin_open {
        return Stdin::Closed;
    }
    // SAFETY: isatty only queries fd 0.
    if unsafe { libc::isatty(0) } == 1 {
        Stdin::Terminal
    } else {
        Stdin::Other
    }
}

fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD on any fd number only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Opens /dev/null onto the closed descriptor `fd`.
fn reserve_with_dev_null(fd: libc::c_int) {
    // SAFETY: a static NUL-terminated path; the new descriptor is moved to
    // `fd` (closed, so nothing is replaced) and the temporary one closed.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 && null != fd {
            libc::dup2(null, fd);
            libc::close(null);
        }
    }
}

/// Puts the terminal on fd 0 in raw mode, remembering how it was.
pub fn enter_raw_mode() -> std::io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 and a valid pointer to a termios.
    if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut raw = saved;
    // SAFETY: cfmakeraw edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    *SAVED_TERMIOS.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
    // SAFETY: fd 0 and a valid termios.
    if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the terminal back as [`enter_raw_mode`] found it; does nothing if
/// raw mode was never entered. Safe to call more than once.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(saved) = saved {
        // SAFETY: fd 0 and the termios saved from it.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
    }
}

/// Restores the terminal before a panic message is printed, so that even
/// a bug leaves the user's shell usable.
pub fn restore_terminal_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default(info);
    }));
}

/// Interprets QEMU's console escapes: Ctrl-A X quits, Ctrl-A Ctrl-A sends
/// one Ctrl-A; Ctrl-A followed by anything else sends both bytes.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    /// Appends the bytes meant for the guest to `out`; returns true when
    /// the user asked to quit (bytes after the quit key are dropped).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => return true,
                    CTRL_A => out.push(CTRL_A),
                    other => out.extend([CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(filter: &mut EscapeFilter, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let quit = filter.feed(input, &mut out);
        (out, quit)
    }

    #[test]
    fn plain_bytes_pass() {
        let mut f = EscapeFilter::default();
        assert_eq!(run(&mut f, b"ls\r"), (b"ls\r".to_vec(), false));
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(run(&mut f, b"a\x01"), (b"a".to_vec(), false));
        assert_eq!(run(&mut f, b"xyz"), (Vec::new(), true));
        let mut f = EscapeFilter::default();
        assert!(run(&mut f, b"\x01X").1);
    }

    #[test]
    fn double_ctrl_a_sends_one_and_others_pass_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(run(&mut f, b"\x01\x01b"), (b"\x01b".to_vec(), false));
        assert_eq!(run(&mut f, b"\x01c"), (b"\x01c".to_vec(), false));
    }

    #[test]
    fn restore_without_raw_mode_is_a_no_op() {
        restore_terminal();
        restore_terminal();
    }
}
