//! Which host CPUs a disk's I/O thread may run on (`iothread-cpus=`).
//!
//! A request at queue depth 1 sleeps in the kernel until the disk's
//! interrupt wakes it. Woken on the CPU that took the interrupt, the thread
//! runs at once; woken on another, idle one, it waits for that CPU to wake
//! up first, which on a virtual machine means the hypervisor running a
//! halted vCPU again. Measured with `perf` on this project's 2-core VM
//! (`ferrite bench --io-path --dir /var/tmp`, `none`, 4 KiB writes at QD1):
//! 22 µs from the interrupt to the wake-up on the other CPU, 2 µs on the
//! interrupt's own, so the same call took 79 µs or 60 µs depending on where
//! the scheduler had put the thread, and the run's ratio to fio was 0.72 or
//! 0.92. QEMU's iothreads are pinned the same way (libvirt's
//! `<iothreadpin>`), and Cloud Hypervisor's disks take `queue_affinity`.

use std::fmt;
use std::io;
use std::str::FromStr;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// A set of host CPUs: numbers and ranges, as `taskset -c` and QEMU's
/// `cpus=` write them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuList {
    /// Sorted, without duplicates.
    cpus: Vec<usize>,
}

/// Why a CPU list was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// Neither a number nor `first-last`.
    #[error("{0:?} is not a CPU number or range (for example 1 or 0-3)")]
    Syntax(String),
    /// `last` before `first`.
    #[error("CPU range {0:?} runs backwards")]
    Backwards(String),
    /// Beyond what an affinity mask can name.
    #[error("CPU {cpu} is beyond the {limit} CPUs an affinity mask can name")]
    TooLarge {
        /// The CPU asked for.
        cpu: usize,
        /// How many a mask holds.
        limit: usize,
    },
}

impl CpuList {
    /// Adds CPUs (`3`) and ranges (`0-3`) separated by commas or colons:
    /// `0-1,3` on a command line, `0-1:3` inside a `--drive` value, whose
    /// commas separate options. An empty item is an error, so an empty
    /// list is too.
    pub fn add(&mut self, list: &str) -> Result<(), CpuListError> {
        list.split([',', ':'])
            .try_for_each(|item| self.add_item(item))
    }

    /// The CPUs this thread may run on now.
    pub fn of_this_thread() -> io::Result<CpuList> {
        let mask = sched_getaffinity(Pid::from_raw(0))?;
        Ok(CpuList {
            cpus: (0..CpuSet::count())
                .filter(|&c| mask.is_set(c).unwrap_or(false))
                .collect(),
        })
    }

    /// Adds one CPU (`3`) or range (`0-3`).
    fn add_item(&mut self, item: &str) -> Result<(), CpuListError> {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| CpuListError::Syntax(item.to_string()))
        };
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(item)?;
                (n, n)
            }
        };
        if last < first {
            return Err(CpuListError::Backwards(item.to_string()));
        }
        let limit = CpuSet::count();
        if last >= limit {
            return Err(CpuListError::TooLarge { cpu: last, limit });
        }
        self.cpus.extend(first..=last);
        self.cpus.sort_unstable();
        self.cpus.dedup();
        Ok(())
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Confines the calling thread to these CPUs. Fails when none of them
    /// is online and allowed to this process (the kernel's EINVAL).
    pub(crate) fn pin_this_thread(&self) -> io::Result<()> {
        let mut set = CpuSet::new();
        for &cpu in &self.cpus {
            // `add` kept every CPU below `CpuSet::count()`.
            set.set(cpu)?;
        }
        Ok(sched_setaffinity(Pid::from_raw(0), &set)?)
    }
}

/// As [`CpuList::add`] takes them.
impl FromStr for CpuList {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut list = CpuList::default();
        list.add(s)?;
        Ok(list)
    }
}

/// Ranges joined by `:`, the form `--drive` takes back.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        let mut cpus = self.cpus.iter().copied().peekable();
        while let Some(first) = cpus.next() {
            let mut last = first;
            while cpus.peek() == Some(&(last + 1)) {
                last += 1;
                cpus.next();
            }
            items.push(if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            });
        }
        f.write_str(&items.join(":"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ranges_in_either_separator() {
        let l: CpuList = "3,0-1:1".parse().unwrap();
        assert_eq!(l.cpus(), [0, 1, 3]);
        assert_eq!(l.to_string(), "0-1:3");
        assert_eq!("5".parse::<CpuList>().unwrap().to_string(), "5");
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        let e = |s: &str| s.parse::<CpuList>().unwrap_err();
        assert_eq!(e("x"), CpuListError::Syntax("x".into()));
        assert_eq!(e("1-"), CpuListError::Syntax("1-".into()));
        assert_eq!(e("3-1"), CpuListError::Backwards("3-1".into()));
        assert_eq!(e(""), CpuListError::Syntax("".into()));
        assert!(matches!(
            e("99999"),
            CpuListError::TooLarge { cpu: 99999, .. }
        ));
        assert_eq!(e("3-1").to_string(), "CPU range \"3-1\" runs backwards");
    }

    #[test]
    fn a_pinned_thread_runs_only_there() {
        let here = CpuList::of_this_thread().expect("affinity");
        let Some(&cpu) = here.cpus().first() else {
            panic!("this thread may run on no CPU");
        };
        let list: CpuList = cpu.to_string().parse().unwrap();
        let allowed = std::thread::spawn(move || {
            list.pin_this_thread().expect("pin");
            CpuList::of_this_thread().expect("affinity")
        })
        .join()
        .unwrap();
        assert_eq!(allowed.cpus(), [cpu]);
    }
}
