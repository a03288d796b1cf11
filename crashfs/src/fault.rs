//! Fault injection: make writes or fsyncs fail on demand.

/// The error an injected fault returns to the caller of `write`/`fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// `EIO`: the medium failed.
    Eio,
    /// `ENOSPC`: the medium is full.
    Enospc,
}

impl FaultError {
    /// The errno value.
    pub fn errno(self) -> i32 {
        match self {
            FaultError::Eio => libc::EIO,
            FaultError::Enospc => libc::ENOSPC,
        }
    }
}

/// When a fault fires: after `skip` matching operations succeeded, the next
/// `count` ones fail (`None`: every one until the fault is cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What the failing operations return.
    pub error: FaultError,
    /// Operations let through before the first failure.
    pub skip: u64,
    /// Failures before the fault disarms itself; `None` for no limit.
    pub count: Option<u64>,
}

impl Fault {
    /// Every operation fails from now on.
    pub fn always(error: FaultError) -> Fault {
        Fault {
            error,
            skip: 0,
            count: None,
        }
    }

    /// The next operation fails, later ones succeed.
    pub fn once(error: FaultError) -> Fault {
        Fault {
            error,
            skip: 0,
            count: Some(1),
        }
    }

    /// Lets `skip` operations through before failing.
    pub fn after(self, skip: u64) -> Fault {
        Fault { skip, ..self }
    }

    /// Fails `count` operations, then disarms.
    pub fn times(self, count: u64) -> Fault {
        Fault {
            count: Some(count),
            ..self
        }
    }
}

/// An armed fault and how far it got.
#[derive(Debug, Default)]
pub(crate) struct FaultSlot {
    armed: Option<Fault>,
    seen: u64,
    fired: u64,
}

impl FaultSlot {
    /// Arms (or with `None` clears) the fault and restarts its counters.
    pub(crate) fn set(&mut self, fault: Option<Fault>) {
        *self = FaultSlot {
            armed: fault,
            seen: 0,
            fired: 0,
        };
    }

    /// Called once per matching operation: the error it must fail with, if any.
    pub(crate) fn check(&mut self) -> Option<FaultError> {
        let fault = self.armed?;
        self.seen += 1;
        if self.seen <= fault.skip {
            return None;
        }
        if fault.count.is_some_and(|c| self.fired >= c) {
            return None;
        }
        self.fired += 1;
        Some(fault.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unarmed_never_fires() {
        let mut slot = FaultSlot::default();
        assert!((0..10).all(|_| slot.check().is_none()));
    }

    #[test]
    fn skip_then_count() {
        let mut slot = FaultSlot::default();
        slot.set(Some(Fault::always(FaultError::Enospc).after(2).times(2)));
        let got: Vec<_> = (0..6).map(|_| slot.check()).collect();
        let e = Some(FaultError::Enospc);
        assert_eq!(got, vec![None, None, e, e, None, None]);
    }

    #[test]
    fn always_until_cleared() {
        let mut slot = FaultSlot::default();
        slot.set(Some(Fault::always(FaultError::Eio)));
        assert!((0..5).all(|_| slot.check() == Some(FaultError::Eio)));
        slot.set(None);
        assert_eq!(slot.check(), None);
    }

    #[test]
    fn once_fires_once() {
        let mut slot = FaultSlot::default();
        slot.set(Some(Fault::once(FaultError::Eio)));
        assert_eq!(slot.check(), Some(FaultError::Eio));
        assert_eq!(slot.check(), None);
        assert_eq!(FaultError::Eio.errno(), libc::EIO);
    }
}
