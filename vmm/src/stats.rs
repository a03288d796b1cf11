//! The `--stats-json` file, written at every exit:
//!
//! ```json
//! { "exit_status": 0,
//!   "disks": [ { "index": 0, "path": "disk.img", ...the device's report... } ] }
//! ```
//!
//! One object per `--drive`, in command-line order; each carries the
//! device's report (path, cache mode, negotiated features, final WCE and
//! the counters) and the drive's index.

use std::path::{Path, PathBuf};

use devices::virtio::block::BlockReport;
use serde::Serialize;

/// One disk's entry.
#[derive(Debug, Serialize)]
pub struct DiskEntry {
    /// Position on the command line (0 is /dev/vda).
    pub index: usize,
    /// The device's report (its fields are flattened into this object).
    #[serde(flatten)]
    pub report: BlockReport,
}

/// The whole file.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    /// The status ferrite exits with.
    pub exit_status: i32,
    /// One entry per disk.
    pub disks: Vec<DiskEntry>,
}

/// Why the file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write statistics to {path}: {source}")]
pub struct StatsError {
    /// The file.
    pub path: PathBuf,
    /// The host error.
    pub source: std::io::Error,
}

/// Creates `path` if it does not exist, leaving an existing file as it is
/// until [`write`] replaces it.
pub fn create(path: &Path) -> Result<(), StatsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(|source| StatsError {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `report` to `path` (replacing it).
pub fn write(path: &Path, report: &StatsReport) -> Result<(), StatsError> {
    let err = |source| StatsError {
        path: path.to_path_buf(),
        source,
    };
    let mut text = serde_json::to_string_pretty(report).map_err(|e| err(e.into()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_one_flattened_object_per_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let report = StatsReport {
            exit_status: 3,
            disks: vec![DiskEntry {
                index: 0,
                report: BlockReport {
                    path: "a.img".into(),
                    cache: block::CacheMode::None,
                    read_only: false,
                    engine: "threads".into(),
                    features: "0x0".into(),
                    write_cache: true,
                    block_size: 512,
                    disk: block::DiskStats {
                        writes: 2,
                        ..Default::default()
                    },
                    device: Default::default(),
                },
            }],
        };
        write(&path, &report).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["exit_status"], 3);
        assert_eq!(v["disks"][0]["path"], "a.img");
        assert_eq!(v["disks"][0]["cache"], "none");
        assert_eq!(v["disks"][0]["index"], 0);
        assert_eq!(v["disks"][0]["disk"]["writes"], 2);
        let bad = write(Path::new("/nonexistent/dir/s.json"), &report).unwrap_err();
        assert!(bad.to_string().contains("/nonexistent/dir/s.json"));
    }
}
