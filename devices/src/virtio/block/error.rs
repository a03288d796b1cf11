//! The errors a block device reports to the VMM, in a module of their own
//! so that the vCPU-side device and its I/O thread both use them without
//! importing each other.

/// What the I/O thread's start hook may fail with: any error of the
/// VMM's (a seccomp filter that would not install, for one), kept whole.
pub type StartHookError = Box<dyn std::error::Error + Send + Sync>;

/// Runs first on the device's I/O thread, before it serves anything (the
/// VMM installs the thread's seccomp filter here). An error stops the
/// thread and fails [`super::BlockDevice::with_options`].
pub type ThreadStart = Box<dyn FnOnce() -> Result<(), StartHookError> + Send>;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    /// An eventfd or the epoll instance could not be created.
    #[error("cannot create the virtio-blk event plumbing: {0}")]
    Events(#[source] std::io::Error),
    /// The I/O thread could not be started.
    #[error("cannot start the virtio-blk I/O thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The I/O thread's start hook failed (e.g. its seccomp filter).
    #[error("the virtio-blk I/O thread's start hook failed: {0}")]
    ThreadStart(#[source] StartHookError),
    /// The I/O thread ended before it said whether it started.
    #[error("the virtio-blk I/O thread died while starting")]
    ThreadDied,
}
