//! A pseudo-terminal standing in for the user's, for console tests.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

/// Opens a pseudo-terminal: (master, slave). None, with a SKIP line, where
/// the host has none.
pub fn open_pty() -> Option<(File, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: out-pointers to two ints; no name, default settings.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!(
            "SKIP: no pseudo-terminal: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: openpty returned two new descriptors that we now own.
    Some(unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// The terminal settings of `fd`.
pub fn termios(fd: libc::c_int) -> libc::termios {
    // SAFETY: plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and pointer.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}
