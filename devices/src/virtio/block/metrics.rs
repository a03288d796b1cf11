//! What one virtio-blk device reports: [`BlockReport`], the per-disk object
//! of `--stats-json`.
//!
//! ```json
//! {
//!   "path": "/var/lib/images/root.img",
//!   "cache": "writethrough",
//!   "read_only": false,
//!   "engine": "io_uring",
//!   "features": "0x130006a44",
//!   "write_cache": false,
//!   "block_size": 512,
//!   "disk": {"reads":12,"writes":40,"flushes":3,"discards":0,"write_zeroes":1,
//!            "bytes_read":49152,"bytes_written":163840,"host_syncs":43,
//!            "fdatasyncs":3,"dsync_writes":40,"bounced":2,"widened_reads":0,
//!            "read_modify_writes":0,"errors":0},
//!   "device": {"requests":59,"bad_requests":0,"unsupported":1,"needs_reset":0,
//!              "io_errors":0,"interrupts":50,"interrupts_suppressed":2,
//!              "throttled":0,"resets":1,"write_cache_changes":0,
//!              "activation_failures":0}
//! }
//! ```
//!
//! `features` are the ones negotiated by the last driver (hex, "0x0" if none
//! ever got to DRIVER_OK); `write_cache` is the guest-visible WCE at the time
//! of the report (the final one after shutdown); `disk` is
//! [`block::DiskStats`] (see there for each counter); `device` is
//! [`DeviceCounters`].

use std::path::PathBuf;

use block::{CacheMode, DiskStats};

/// Counters of the device side (the disk counts the host side).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCounters {
    /// Descriptor chains taken from the queue, well-formed or not.
    pub requests: u64,
    /// Requests refused by parsing with IOERR (bad header, direction,
    /// length, range, read-only...).
    pub bad_requests: u64,
    /// Requests answered UNSUPP (unknown type, unsupported flags).
    pub unsupported: u64,
    /// Malformed chains that put the device in DEVICE_NEEDS_RESET.
    pub needs_reset: u64,
    /// Requests answered IOERR because the host I/O failed or the disk
    /// refused the operation.
    pub io_errors: u64,
    /// Used-buffer interrupts raised.
    pub interrupts: u64,
    /// Batches of used buffers the driver asked not to be interrupted for
    /// (EVENT_IDX).
    pub interrupts_suppressed: u64,
    /// Times the device stopped taking requests from the queue because
    /// `queue_depth()` operations were in flight (back-pressure).
    pub throttled: u64,
    /// Device resets by the driver.
    pub resets: u64,
    /// Changes of the `writeback` config byte by the driver.
    pub write_cache_changes: u64,
    /// DRIVER_OKs that failed (queue setup refused, or the disk could not
    /// apply the negotiated features): each left the device in
    /// DEVICE_NEEDS_RESET and was logged on stderr.
    pub activation_failures: u64,
}

/// Everything known about one virtio-blk device (see the module doc for
/// the JSON).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BlockReport {
    /// The image path.
    pub path: PathBuf,
    /// The cache mode.
    pub cache: CacheMode,
    /// Whether the drive is read-only.
    pub read_only: bool,
    /// The I/O engine ("io_uring" or "threads").
    pub engine: String,
    /// Negotiated features, hex.
    pub features: String,
    /// The guest-visible write cache (WCE).
    pub write_cache: bool,
    /// The logical block size announced to the guest (`blk_size`, bytes).
    pub block_size: u32,
    /// Host-side counters.
    pub disk: DiskStats,
    /// Device-side counters.
    pub device: DeviceCounters,
}

/// The part of a report that changes while the device runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Live {
    pub features: u64,
    pub write_cache: bool,
    pub disk: DiskStats,
    pub device: DeviceCounters,
}

/// The part fixed at open.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Identity {
    /// How stderr lines name the disk ("disk 0").
    pub name: String,
    pub path: PathBuf,
    pub cache: CacheMode,
    pub read_only: bool,
    pub engine: String,
    pub block_size: u32,
}

impl Identity {
    pub(crate) fn report(&self, live: &Live) -> BlockReport {
        BlockReport {
            path: self.path.clone(),
            cache: self.cache,
            read_only: self.read_only,
            engine: self.engine.clone(),
            features: format!("{:#x}", live.features),
            write_cache: live.write_cache,
            block_size: self.block_size,
            disk: live.disk,
            device: live.device,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_serializes_with_hex_features_and_mode_names() {
        let id = Identity {
            name: "disk 0".into(),
            path: "/img".into(),
            cache: CacheMode::Writethrough,
            read_only: false,
            engine: "threads".into(),
            block_size: 4096,
        };
        let live = Live {
            features: 0x1_0000_0a46,
            write_cache: true,
            ..Live::default()
        };
        let json = serde_json::to_value(id.report(&live)).unwrap();
        assert_eq!(json["cache"], "writethrough");
        assert_eq!(json["features"], "0x100000a46");
        assert_eq!(json["write_cache"], true);
        assert_eq!(json["block_size"], 4096);
        assert_eq!(json["device"]["needs_reset"], 0);
        assert_eq!(json["disk"]["dsync_writes"], 0);
        // The keys are the ones the module doc shows.
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let mut top = keys(&json);
        top.sort();
        assert_eq!(
            top,
            [
                "block_size",
                "cache",
                "device",
                "disk",
                "engine",
                "features",
                "path",
                "read_only",
                "write_cache"
            ]
        );
        let mut device = keys(&json["device"]);
        device.sort();
        assert_eq!(
            device,
            [
                "activation_failures",
                "bad_requests",
                "interrupts",
                "interrupts_suppressed",
                "io_errors",
                "needs_reset",
                "requests",
                "resets",
                "throttled",
                "unsupported",
                "write_cache_changes"
            ]
        );
    }
}
