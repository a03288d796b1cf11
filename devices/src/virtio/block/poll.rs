//! How long the I/O thread spins for new work before it sleeps.
//!
//! Waking a sleeping thread through an eventfd costs tens of microseconds
//! on a loaded or virtualised host, more than a cached 4 KiB read takes.
//! So after a batch the thread looks at the avail ring, the disk's
//! completions and its mailbox for a while before it re-enables driver
//! notifications and sleeps (QEMU's iothread `poll-max-ns`).
//!
//! The window is fixed, not adaptive as QEMU's and KVM's halt polling
//! are. Those grow the window only when the thread, having slept, was
//! woken sooner than the longest window; where a wake-up itself takes
//! longer than that (measured on this project's 2-core virtualised hosts:
//! 15-100 µs), the window never grows again once it has dropped, and a
//! driver that submits within microseconds of each completion is served
//! at the speed of wake-ups. A fixed window costs at most one window of
//! CPU per idle period.

use std::time::Duration;

/// The default window (QEMU's default `poll-max-ns`, rounded).
pub const DEFAULT_POLL_MAX: Duration = Duration::from_micros(32);
