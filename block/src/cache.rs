//! QEMU's cache modes and the three switches they are made of.
//!
//! A mode decides two things here: the flags the image is opened with and
//! what a guest flush costs. The guest-visible write cache (WCE) it starts
//! with is `default_write_cache`; switching it at run time is `Disk`'s job.

use std::fmt;
use std::str::FromStr;

/// QEMU's five `-drive cache=` modes, with QEMU's names and meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Host page cache, guest sees a volatile write cache; flush = fdatasync.
    #[default]
    Writeback,
    /// O_DIRECT; guest sees a volatile write cache (the disk's); flush = fdatasync.
    None,
    /// O_DSYNC: every write durable at completion; guest sees no write cache.
    Writethrough,
    /// O_DIRECT + O_DSYNC: durable and never through the page cache.
    DirectSync,
    /// Host page cache and flushes ignored: nothing is ever promised durable.
    Unsafe,
}

/// QEMU's underlying switches (`cache.writeback`, `cache.direct`,
/// `cache.no-flush`), of which the named modes are five combinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSwitches {
    /// The guest is told it has a volatile write cache (WCE=1 at reset).
    pub writeback: bool,
    /// The image is opened with O_DIRECT (bypasses the host page cache).
    pub direct: bool,
    /// Guest flushes are ignored.
    pub no_flush: bool,
}

impl CacheMode {
    /// Every mode, in QEMU's documentation order.
    pub const ALL: [CacheMode; 5] = [
        CacheMode::Writeback,
        CacheMode::None,
        CacheMode::Writethrough,
        CacheMode::DirectSync,
        CacheMode::Unsafe,
    ];

    /// QEMU's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Writeback => "writeback",
            CacheMode::None => "none",
            CacheMode::Writethrough => "writethrough",
            CacheMode::DirectSync => "directsync",
            CacheMode::Unsafe => "unsafe",
        }
    }

    /// The switches this mode stands for.
    pub fn switches(self) -> CacheSwitches {
        let (writeback, direct, no_flush) = match self {
            CacheMode::Writeback => (true, false, false),
            CacheMode::None => (true, true, false),
            CacheMode::Writethrough => (false, false, false),
            CacheMode::DirectSync => (false, true, false),
            CacheMode::Unsafe => (true, false, true),
        };
        CacheSwitches {
            writeback,
            direct,
            no_flush,
        }
    }

    /// The mode made of these switches. QEMU also accepts `no-flush` combined
    /// with `direct` or without `writeback`, which have no name; since
    /// ignoring flushes already gives up every durability promise, any
    /// `no_flush` combination maps to `Unsafe`.
    pub fn from_switches(s: CacheSwitches) -> CacheMode {
        match (s.no_flush, s.writeback, s.direct) {
            (true, _, _) => CacheMode::Unsafe,
            (false, true, false) => CacheMode::Writeback,
            (false, true, true) => CacheMode::None,
            (false, false, false) => CacheMode::Writethrough,
            (false, false, true) => CacheMode::DirectSync,
        }
    }

    /// The `writeback` config byte at reset (1 for writeback/none/unsafe).
    pub fn default_write_cache(self) -> bool {
        self.switches().writeback
    }

    /// True when the image is opened with O_DIRECT.
    pub fn direct(self) -> bool {
        self.switches().direct
    }

    /// Host open flags this mode uses at reset, e.g. "O_RDWR|O_DIRECT|O_DSYNC".
    pub fn open_flags_description(self, read_only: bool) -> String {
        let mut s = String::from(if read_only { "O_RDONLY" } else { "O_RDWR" });
        let sw = self.switches();
        if sw.direct {
            s.push_str("|O_DIRECT");
        }
        if !sw.writeback {
            s.push_str("|O_DSYNC");
        }
        s
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A cache mode name that is not one of QEMU's five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown cache mode {0:?}; expected one of writeback, none, writethrough, directsync, unsafe"
)]
pub struct ParseCacheModeError(pub String);

impl FromStr for CacheMode {
    type Err = ParseCacheModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CacheMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ParseCacheModeError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_exactly() {
        let names = ["writeback", "none", "writethrough", "directsync", "unsafe"];
        for (m, n) in CacheMode::ALL.into_iter().zip(names) {
            assert_eq!(m.to_string(), n);
            assert_eq!(n.parse::<CacheMode>(), Ok(m));
        }
        for bad in ["", "WriteBack", "direct", "off", "none "] {
            assert!(bad.parse::<CacheMode>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(CacheMode::default(), CacheMode::Writeback);
    }

    #[test]
    fn switches_round_trip() {
        for m in CacheMode::ALL {
            assert_eq!(CacheMode::from_switches(m.switches()), m);
        }
        let nameless = CacheSwitches {
            writeback: false,
            direct: true,
            no_flush: true,
        };
        assert_eq!(CacheMode::from_switches(nameless), CacheMode::Unsafe);
    }

    #[test]
    fn switches_match_qemu() {
        let s = CacheMode::None.switches();
        assert!(s.writeback && s.direct && !s.no_flush);
        let s = CacheMode::DirectSync.switches();
        assert!(!s.writeback && s.direct && !s.no_flush);
        let s = CacheMode::Unsafe.switches();
        assert!(s.writeback && !s.direct && s.no_flush);
        assert!(!CacheMode::Writethrough.default_write_cache());
        assert!(CacheMode::Unsafe.default_write_cache());
    }

    #[test]
    fn flag_descriptions() {
        assert_eq!(CacheMode::Writeback.open_flags_description(false), "O_RDWR");
        assert_eq!(
            CacheMode::None.open_flags_description(false),
            "O_RDWR|O_DIRECT"
        );
        assert_eq!(
            CacheMode::Writethrough.open_flags_description(false),
            "O_RDWR|O_DSYNC"
        );
        assert_eq!(
            CacheMode::DirectSync.open_flags_description(true),
            "O_RDONLY|O_DIRECT|O_DSYNC"
        );
        assert_eq!(CacheMode::Unsafe.open_flags_description(false), "O_RDWR");
    }

    #[test]
    fn serializes_as_qemu_name() {
        for m in CacheMode::ALL {
            assert_eq!(serde_json::to_string(&m).ok(), Some(format!("\"{m}\"")));
        }
    }
}
