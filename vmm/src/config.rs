//! Parsing of option values the way QEMU spells them: `--drive` key=value
//! lists and `--memory` sizes. Pure functions, so every rule is tested here.

use std::path::PathBuf;
use std::time::Duration;

use block::{CacheMode, CacheSwitches, DiskConfig, EngineKind, ErrorPolicy};
use devices::virtio::block::{CpuList, CpuListError, DEFAULT_POLL_MAX};

/// Longest drive serial: virtio-blk's GET_ID returns 20 bytes.
pub const MAX_SERIAL_LEN: usize = 20;

/// The longest `iothread-poll-us=` (one second).
pub const MAX_IOTHREAD_POLL_US: u64 = 1_000_000;

/// One `--drive`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    /// The image file.
    pub path: PathBuf,
    /// The cache mode after applying any `cache.*` switches.
    pub cache: CacheMode,
    /// `readonly=on`.
    pub read_only: bool,
    /// `serial=`, at most 20 bytes.
    pub serial: Option<String>,
    /// `aio=`; `None` lets the block crate pick.
    pub engine: Option<EngineKind>,
    /// `snapshot=on`: boot a throwaway copy; the image never changes.
    pub snapshot: bool,
    /// Record the disk's writes into this directory (`ferrite crashtest`
    /// sets it; not a `--drive` option).
    pub record: Option<PathBuf>,
    /// `werror=` and `rerror=` (QEMU's defaults: enospc, report).
    pub errors: ErrorPolicy,
    /// `iothread-cpus=`: the host CPUs the disk's I/O thread may run on.
    pub iothread_cpus: Option<CpuList>,
    /// `iothread-poll-us=`: the longest the disk's I/O thread spins for
    /// work before it sleeps.
    pub iothread_poll: Duration,
}

impl DriveConfig {
    /// `file=path,cache=cache` and every other option at its default, as
    /// `parse_drive` gives it: for drives ferrite makes itself.
    pub fn new(path: PathBuf, cache: CacheMode) -> DriveConfig {
        DriveConfig {
            path,
            cache,
            read_only: false,
            serial: None,
            engine: None,
            snapshot: false,
            record: None,
            errors: ErrorPolicy::QEMU,
            iothread_cpus: None,
            iothread_poll: DEFAULT_POLL_MAX,
        }
    }

    /// What the block crate needs to open the image.
    pub fn disk_config(&self) -> DiskConfig {
        DiskConfig {
            path: self.path.clone(),
            cache: self.cache,
            read_only: self.read_only,
            engine: self.engine,
        }
    }
}

/// Why a `--drive` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveError {
    /// No `file=`.
    #[error("drive needs file=PATH")]
    MissingFile,
    /// An item without `=`.
    #[error("drive option {0:?} is not key=value")]
    NotKeyValue(String),
    /// A key this VMM does not know.
    #[error("unknown drive option {0:?} (known: file, cache, cache.writeback, cache.direct, cache.no-flush, readonly, snapshot, serial, aio, werror, rerror, iothread-cpus, iothread-poll-us, format, if)")]
    UnknownKey(String),
    /// A bad `cache=`.
    #[error(transparent)]
    Cache(#[from] block::ParseCacheModeError),
    /// A bad `werror=` or `rerror=`.
    #[error("{key}: {source}")]
    ErrorAction {
        /// The option.
        key: String,
        /// What was wrong with its value.
        source: block::ParseErrorActionError,
    },
    /// `rerror=enospc`: a read never runs out of space (QEMU refuses it too).
    #[error("rerror=enospc is not supported; use report, ignore or stop")]
    ReadEnospc,
    /// A bad `aio=`.
    #[error("aio={0} is not supported; use aio=io_uring or aio=threads")]
    Aio(String),
    /// A non-raw format.
    #[error("format={0} is not supported; only raw images are")]
    Format(String),
    /// An interface other than virtio.
    #[error("if={0} is not supported; drives are virtio-blk (if=virtio)")]
    Interface(String),
    /// A switch that is not on/off.
    #[error("{key}={value} is not a boolean; use on or off")]
    NotBool {
        /// The option.
        key: String,
        /// Its value.
        value: String,
    },
    /// A serial longer than GET_ID can return.
    #[error("serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
    /// `file=` with nothing after it.
    #[error("drive file name is empty")]
    EmptyFile,
    /// A bad `iothread-cpus=`.
    #[error("iothread-cpus: {0}")]
    IothreadCpus(#[from] CpuListError),
    /// A bad `iothread-poll-us=`.
    #[error("iothread-poll-us={0} is not a whole number of microseconds from 0 to {MAX_IOTHREAD_POLL_US}")]
    IothreadPoll(String),
}

/// Splits a QEMU option string at single commas; `,,` stands for a comma
/// inside a value (so `file=a,,b.img` names `a,b.img`).
fn split_options(s: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(item) = items.last_mut() {
                    item.push(',');
                }
            } else {
                items.push(String::new());
            }
        } else {
            if let Some(item) = items.last_mut() {
                item.push(c);
            }
        }
    }
    items
}

fn parse_bool(key: &str, value: &str) -> Result<bool, DriveError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(DriveError::NotBool {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Parses one `--drive` value. As in QEMU, `cache=` sets the three
/// switches and explicit `cache.writeback`/`cache.direct`/`cache.no-flush`
/// override them whatever their order; a later duplicate key wins, except
/// `iothread-cpus=`, which adds to the list as QEMU's `cpus=` does.
pub fn parse_drive(s: &str) -> Result<DriveConfig, DriveError> {
    let mut path = None;
    let mut mode = CacheMode::default();
    let (mut writeback, mut direct, mut no_flush) = (None, None, None);
    let mut read_only = false;
    let mut serial = None;
    let mut engine = None;
    let mut snapshot = false;
    let mut errors = ErrorPolicy::QEMU;
    let mut iothread_cpus: Option<CpuList> = None;
    let mut iothread_poll = DEFAULT_POLL_MAX;
    for item in split_options(s) {
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| DriveError::NotKeyValue(item.clone()))?;
        match key {
            "file" => path = Some(value.to_string()),
            "cache" => mode = value.parse()?,
            "cache.writeback" => writeback = Some(parse_bool(key, value)?),
            "cache.direct" => direct = Some(parse_bool(key, value)?),
            "cache.no-flush" => no_flush = Some(parse_bool(key, value)?),
            "readonly" => read_only = parse_bool(key, value)?,
            "snapshot" => snapshot = parse_bool(key, value)?,
            "werror" | "rerror" => {
                let action = value.parse().map_err(|source| DriveError::ErrorAction {
                    key: key.to_string(),
                    source,
                })?;
                if key == "werror" {
                    errors.write = action;
                } else if action == block::ErrorAction::Enospc {
                    return Err(DriveError::ReadEnospc);
                } else {
                    errors.read = action;
                }
            }
            "serial" => {
                if value.len() > MAX_SERIAL_LEN {
                    return Err(DriveError::SerialTooLong(value.to_string()));
                }
                serial = Some(value.to_string());
            }
            "aio" => {
                engine = Some(match value {
                    "io_uring" => EngineKind::IoUring,
                    "threads" => EngineKind::Sync,
                    other => return Err(DriveError::Aio(other.to_string())),
                })
            }
            "iothread-cpus" => iothread_cpus
                .get_or_insert_with(CpuList::default)
                .add(value)?,
            "iothread-poll-us" => iothread_poll = parse_poll_us(value)?,
            "format" if value == "raw" => {}
            "format" => return Err(DriveError::Format(value.to_string())),
            "if" if value == "virtio" => {}
            "if" => return Err(DriveError::Interface(value.to_string())),
            other => return Err(DriveError::UnknownKey(other.to_string())),
        }
    }
    let path = path.ok_or(DriveError::MissingFile)?;
    if path.is_empty() {
        return Err(DriveError::EmptyFile);
    }
    let base = mode.switches();
    let cache = CacheMode::from_switches(CacheSwitches {
        writeback: writeback.unwrap_or(base.writeback),
        direct: direct.unwrap_or(base.direct),
        no_flush: no_flush.unwrap_or(base.no_flush),
    });
    Ok(DriveConfig {
        path: PathBuf::from(path),
        cache,
        read_only,
        serial,
        engine,
        snapshot,
        record: None,
        errors,
        iothread_cpus,
        iothread_poll,
    })
}

/// `iothread-poll-us=`: whole microseconds, at most a second.
fn parse_poll_us(value: &str) -> Result<Duration, DriveError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&us| us <= MAX_IOTHREAD_POLL_US)
        .map(Duration::from_micros)
        .ok_or_else(|| DriveError::IothreadPoll(value.to_string()))
}

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {0:?}: expected a number with an optional K, M, G or T suffix (no suffix means MiB)")]
pub struct SizeError(pub String);

/// Parses a memory size as QEMU's `-m` does: a whole number with an
/// optional K/M/G/T suffix (either case, binary units); no suffix means MiB.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let err = || SizeError(s.to_string());
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let number: u64 = digits.parse().map_err(|_| err())?;
    let shift = match suffix {
        "" | "M" | "m" | "MiB" | "MB" => 20,
        "K" | "k" | "KiB" | "KB" => 10,
        "G" | "g" | "GiB" | "GB" => 30,
        "T" | "t" | "TiB" | "TB" => 40,
        _ => return Err(err()),
    };
    number
        .checked_mul(1u64 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_drive_takes_qemu_defaults() {
        let d = parse_drive("file=disk.img").unwrap();
        assert_eq!(d.path, PathBuf::from("disk.img"));
        assert_eq!(d.cache, CacheMode::Writeback);
        assert!(!d.read_only);
        assert_eq!((d.serial, d.engine), (None, None));
        assert!(!d.snapshot);
        assert!(parse_drive("file=a,snapshot=on").unwrap().snapshot);
        assert_eq!(d.errors, ErrorPolicy::QEMU);
    }

    #[test]
    fn every_option_is_read() {
        let d = parse_drive(
            "file=/tmp/a.img,cache=directsync,readonly=on,serial=abc,aio=threads,format=raw,if=virtio",
        )
        .unwrap();
        assert_eq!(d.cache, CacheMode::DirectSync);
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("abc"));
        assert_eq!(d.engine, Some(EngineKind::Sync));
        assert_eq!(
            parse_drive("file=a,aio=io_uring").unwrap().engine,
            Some(EngineKind::IoUring)
        );
    }

    #[test]
    fn a_drive_made_in_code_has_the_parsed_defaults() {
        for mode in [CacheMode::Unsafe, CacheMode::DirectSync] {
            let parsed = parse_drive(&format!("file=a.img,cache={}", mode.name())).unwrap();
            assert_eq!(DriveConfig::new("a.img".into(), mode), parsed);
        }
    }

    #[test]
    fn iothread_poll_us_takes_whole_microseconds_up_to_a_second() {
        assert_eq!(
            parse_drive("file=a").unwrap().iothread_poll,
            DEFAULT_POLL_MAX
        );
        let d = parse_drive("file=a,iothread-poll-us=300").unwrap();
        assert_eq!(d.iothread_poll, Duration::from_micros(300));
        assert_eq!(
            parse_drive("file=a,iothread-poll-us=0")
                .unwrap()
                .iothread_poll,
            Duration::ZERO
        );
        for bad in ["", "-1", "1.5", "300us", "1000001"] {
            let e = parse_drive(&format!("file=a,iothread-poll-us={bad}")).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("iothread-poll-us={bad} is not a whole number of microseconds from 0 to 1000000")
            );
        }
    }

    #[test]
    fn iothread_cpus_add_up_as_qemu_cpus_do() {
        let d = parse_drive("file=a,iothread-cpus=3,iothread-cpus=0-1:5").unwrap();
        let cpus = d.iothread_cpus.expect("iothread-cpus");
        assert_eq!(cpus.cpus(), [0, 1, 3, 5]);
        assert_eq!(parse_drive("file=a").unwrap().iothread_cpus, None);
        let e = parse_drive("file=a,iothread-cpus=2-1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "iothread-cpus: CPU range \"2-1\" runs backwards"
        );
        let e = parse_drive("file=a,iothread-cpus=").unwrap_err();
        assert!(matches!(e, DriveError::IothreadCpus(_)), "{e:?}");
    }

    #[test]
    fn error_actions_parse_as_qemu_names_them() {
        use block::ErrorAction::*;
        let d = parse_drive("file=a,werror=stop,rerror=ignore").unwrap();
        assert_eq!((d.errors.write, d.errors.read), (Stop, Ignore));
        for (name, action) in [("report", Report), ("ignore", Ignore), ("enospc", Enospc)] {
            let d = parse_drive(&format!("file=a,werror={name}")).unwrap();
            assert_eq!(d.errors.write, action);
        }
        assert_eq!(parse_drive("file=a,rerror=stop").unwrap().errors.read, Stop);
        assert_eq!(
            parse_drive("file=a,rerror=enospc").unwrap_err(),
            DriveError::ReadEnospc
        );
        let e = parse_drive("file=a,werror=pause").unwrap_err();
        assert!(matches!(&e, DriveError::ErrorAction { key, .. } if key == "werror"));
        assert_eq!(
            e.to_string(),
            "werror: unknown error action \"pause\" (known: report, ignore, enospc, stop)"
        );
    }

    #[test]
    fn each_cache_mode_parses() {
        for mode in CacheMode::ALL {
            let d = parse_drive(&format!("file=x,cache={mode}")).unwrap();
            assert_eq!(d.cache, mode);
        }
    }

    #[test]
    fn switches_override_the_mode_in_any_order() {
        let d = parse_drive("cache.direct=on,file=x,cache=writeback").unwrap();
        assert_eq!(d.cache, CacheMode::None);
        let d = parse_drive("file=x,cache=none,cache.writeback=off").unwrap();
        assert_eq!(d.cache, CacheMode::DirectSync);
        let d = parse_drive("file=x,cache.writeback=off").unwrap();
        assert_eq!(d.cache, CacheMode::Writethrough);
        let d = parse_drive("file=x,cache=writethrough,cache.no-flush=on").unwrap();
        assert_eq!(d.cache, CacheMode::Unsafe);
    }

    #[test]
    fn double_commas_escape_a_comma() {
        let d = parse_drive("file=a,,b.img,readonly=on").unwrap();
        assert_eq!(d.path, PathBuf::from("a,b.img"));
        assert!(d.read_only);
    }

    #[test]
    fn bad_drives_are_refused_with_a_reason() {
        let cases: &[(&str, DriveError)] = &[
            ("cache=none", DriveError::MissingFile),
            ("file=", DriveError::EmptyFile),
            ("disk.img", DriveError::NotKeyValue("disk.img".into())),
            ("file=x,bogus=1", DriveError::UnknownKey("bogus".into())),
            ("file=x,format=qcow2", DriveError::Format("qcow2".into())),
            ("file=x,aio=native", DriveError::Aio("native".into())),
            ("file=x,if=ide", DriveError::Interface("ide".into())),
            (
                "file=x,readonly=maybe",
                DriveError::NotBool {
                    key: "readonly".into(),
                    value: "maybe".into(),
                },
            ),
            (
                "file=x,serial=123456789012345678901",
                DriveError::SerialTooLong("123456789012345678901".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_drive(input).unwrap_err(), want, "{input}");
        }
        let err = parse_drive("file=x,cache=fast").unwrap_err();
        assert!(matches!(err, DriveError::Cache(_)));
        assert!(err.to_string().contains("fast"));
    }

    #[test]
    fn sizes_follow_qemu() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("65536K").unwrap(), 64 << 20);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for bad in [
            "",
            "M",
            "12Q",
            "1.5G",
            "-1M",
            "0",
            "99999999999999999999G",
            "3 G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
