//! The system calls each of ferrite's threads may make once its filter is
//! on, as lists of syscall numbers (with argument checks for `ioctl`).
//!
//! The lists come from tracing every thread (`strace -f`) through the
//! probe's scenarios with both engines and all cache modes (write-cache
//! toggles reopen the image), read-only disks, signals, `--stats-json` and
//! a console on a pseudo-terminal; then cut to what the code can reach
//! after the filter is installed. A call not listed here ends the process
//! with a one-line message (see `super::sigsys`).

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// The calls every thread needs: memory (the allocator), locks, thread
/// exit, clocks, the signals ferrite uses, and the few calls the SIGSYS
/// handler itself makes (`write`, `exit_group`).
/// (`mmap` and `mprotect` are allowed too, but never with `PROT_EXEC`.)
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The vCPU thread: `KVM_RUN` (and `KVM_GET_REGS` for the failure line),
/// console output, eventfd writes (irqfd, exit, the disk's mailbox).
const VCPU: &[i64] = &[];

/// The disk's I/O thread: epoll, eventfds, the image (reads, writes,
/// syncs, discard, and the reopen a write-cache change may need), io_uring.
const IO: &[i64] = &[
    libc::SYS_read,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_openat,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // The retry timer of a disk stopped by werror=/rerror= (read above).
    libc::SYS_timerfd_settime,
];

/// The main thread once the guest runs: the event loop (poll, signalfd,
/// stdin), kicking vCPUs, joining threads, tearing the VM down, writing
/// `--stats-json` (`openat` only to create or truncate a file for writing,
/// see [`MAIN_OPEN_FLAGS`]) and restoring the terminal.
const MAIN: &[i64] = &[
    libc::SYS_read,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_tgkill,
];

/// The only `openat` flags the main thread may use: `std::fs::write`'s.
const MAIN_OPEN_FLAGS: u64 =
    (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u64;

/// The `openat` flags an image reopen may add to `O_CLOEXEC` (the access
/// mode and the cache mode's flags); anything else (creating, truncating,
/// `O_PATH`...) is refused on the I/O thread.
const IO_OPEN_FLAGS_FREE: u64 = (libc::O_RDWR | libc::O_DIRECT | libc::O_DSYNC) as u64;

// ioctl numbers (include/uapi/linux/kvm.h, asm-generic/ioctls.h, linux/fs.h).
const KVMIO: u32 = 0xAE;
vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// The thread kinds that get a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// A disk's I/O thread.
    Io,
    /// The main thread (event loop, console, signals).
    Main,
}

#[cfg(test)]
impl ThreadKind {
    /// Every kind, for tests.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Io, ThreadKind::Main];
}

/// The `ioctl` requests `kind` may make (argument 1).
pub fn ioctls(kind: ThreadKind) -> Vec<u64> {
    let terminal = [libc::TCGETS, libc::TCSETS, libc::TCSETSW, libc::TCSETSF];
    match kind {
        ThreadKind::Vcpu => vec![KVM_RUN(), KVM_GET_REGS()],
        ThreadKind::Io => vec![libc::BLKSSZGET, BLKGETSIZE64()],
        ThreadKind::Main => terminal.to_vec(),
    }
}

/// The `fcntl` commands `kind` may use (argument 1), when it may not use
/// every one: Rust's debug builds check with `F_GETFD` that an fd is open
/// before closing it. The I/O thread reopens and locks images.
fn fcntls(kind: ThreadKind) -> Option<Vec<u64>> {
    match kind {
        ThreadKind::Vcpu | ThreadKind::Main => Some(vec![libc::F_GETFD as u64]),
        ThreadKind::Io => None,
    }
}

/// The syscalls `kind` may make without conditions.
pub fn plain_syscalls(kind: ThreadKind) -> Vec<i64> {
    let own = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Io => IO,
        ThreadKind::Main => MAIN,
    };
    let mut all: Vec<i64> = COMMON.iter().chain(own).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The rules for seccompiler: plain calls with no condition, `ioctl` only
/// with one of the listed requests.
pub fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::Error> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = plain_syscalls(kind)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let mut ioctl = arg1_in(&ioctls(kind))?;
    // Every thread may put the terminal back (the SIGSYS handler does).
    ioctl.push(SeccompRule::new(vec![
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)?,
        SeccompCondition::new(1, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, libc::TCSETS)?,
    ])?);
    map.insert(libc::SYS_ioctl, ioctl);
    // No new executable memory: argument 2 (prot) without PROT_EXEC.
    for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
        let no_exec = SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?;
        map.insert(nr, vec![SeccompRule::new(vec![no_exec])?]);
    }
    if let Some(commands) = fcntls(kind) {
        map.insert(libc::SYS_fcntl, arg1_in(&commands)?);
    }
    if kind == ThreadKind::Main {
        let flags = SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            MAIN_OPEN_FLAGS,
        )?;
        map.insert(libc::SYS_openat, vec![SeccompRule::new(vec![flags])?]);
    }
    if kind == ThreadKind::Io {
        let flags = SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(!IO_OPEN_FLAGS_FREE & u64::from(u32::MAX)),
            libc::O_CLOEXEC as u64,
        )?;
        map.insert(libc::SYS_openat, vec![SeccompRule::new(vec![flags])?]);
    }
    Ok(map)
}

/// One rule per value: argument 1 equals it.
fn arg1_in(values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::Error> {
    values
        .iter()
        .map(|&v| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::Eq,
                v,
            )?])
            .map_err(Into::into)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_uapi() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(BLKGETSIZE64(), 0x8008_1272);
    }

    #[test]
    fn only_the_io_thread_opens_images_and_only_vcpus_run() {
        assert!(plain_syscalls(ThreadKind::Io).contains(&libc::SYS_openat));
        assert!(plain_syscalls(ThreadKind::Io).contains(&libc::SYS_timerfd_settime));
        assert!(!plain_syscalls(ThreadKind::Main).contains(&libc::SYS_openat));
        assert_eq!(rules(ThreadKind::Main).unwrap()[&libc::SYS_openat].len(), 1);
        assert_eq!(MAIN_OPEN_FLAGS, 0o2001101);
        assert!(!plain_syscalls(ThreadKind::Vcpu).contains(&libc::SYS_openat));
        assert!(!plain_syscalls(ThreadKind::Vcpu).contains(&libc::SYS_ioctl));
        // mmap/mprotect only through their no-PROT_EXEC rule.
        for kind in ThreadKind::ALL {
            assert!(!plain_syscalls(kind).contains(&libc::SYS_mmap));
            assert_eq!(rules(kind).unwrap()[&libc::SYS_mprotect].len(), 1);
        }
        assert!(ioctls(ThreadKind::Vcpu).contains(&0xae80));
        assert!(!ioctls(ThreadKind::Main).contains(&0xae80));
    }

    #[test]
    fn no_thread_may_exec_fork_or_open_sockets() {
        for kind in ThreadKind::ALL {
            let calls = plain_syscalls(kind);
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_getppid,
            ] {
                assert!(!calls.contains(&nr), "{kind:?} allows {nr}");
            }
            rules(kind).unwrap();
        }
    }
}
