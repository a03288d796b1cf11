//! Per-disk counters, the body of `--stats-json` for one disk:
//!
//! ```json
//! {"reads":12,"writes":40,"flushes":3,"discards":0,"write_zeroes":1,
//!  "bytes_read":49152,"bytes_written":163840,"host_syncs":43,
//!  "fdatasyncs":3,"dsync_writes":40,"bounced":2,"widened_reads":0,
//!  "read_modify_writes":0,"bounce_bytes_peak":131072,"errors":0,
//!  "stops":0,"stop_retries":0,"errors_ignored":0}
//! ```
//!
//! Requests are counted when they complete (successfully or not); bytes only
//! for successful transfers.

/// Counters of one disk since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskStats {
    /// Read requests completed.
    pub reads: u64,
    /// Write requests completed.
    pub writes: u64,
    /// Flush requests completed (including those that needed no host sync).
    pub flushes: u64,
    /// Discard requests completed.
    pub discards: u64,
    /// Write-zeroes requests completed.
    pub write_zeroes: u64,
    /// Bytes read by successful reads.
    pub bytes_read: u64,
    /// Bytes written by successful writes.
    pub bytes_written: u64,
    /// Host durability points: `fdatasyncs + dsync_writes`.
    pub host_syncs: u64,
    /// fdatasync calls made (guest flushes, the flush at a write-cache
    /// change, durable write-zeroes).
    pub fdatasyncs: u64,
    /// Successful write requests made durable by O_DSYNC or RWF_DSYNC.
    pub dsync_writes: u64,
    /// Requests that went through an aligned bounce buffer.
    pub bounced: u64,
    /// Reads aligned to 512 bytes but not to the host's logical block
    /// (virtio's unit is 512 on every host, §5.2.5): the whole host blocks
    /// were read into a bounce buffer. A guest that honours BLK_SIZE makes
    /// none.
    pub widened_reads: u64,
    /// Writes aligned to 512 bytes but not to the host's logical block,
    /// served by reading the whole host blocks, changing the guest's bytes
    /// and writing them back (serialized against overlapping writes).
    pub read_modify_writes: u64,
    /// Most bytes of bounce buffers held at once. Bounded by
    /// `Disk::bounce_budget` (8 MiB) whatever the guest submits: a larger
    /// misaligned request goes through its buffer a chunk at a time.
    pub bounce_bytes_peak: u64,
    /// Requests that ended in an error (host errors and refused requests).
    pub errors: u64,
    /// Times the disk stopped: a request failed under `werror=`/`rerror=`
    /// `stop` (or `enospc` on ENOSPC) and was held, none being held before.
    pub stops: u64,
    /// Held requests pushed again (on the timer or the user's signal).
    pub stop_retries: u64,
    /// Failed requests answered as successful under `ignore`.
    pub errors_ignored: u64,
}

impl DiskStats {
    /// Records one fdatasync call.
    pub(crate) fn count_fdatasync(&mut self) {
        self.fdatasyncs += 1;
        self.host_syncs += 1;
    }

    /// Records one write made durable by O_DSYNC / RWF_DSYNC.
    pub(crate) fn count_dsync_write(&mut self) {
        self.dsync_writes += 1;
        self.host_syncs += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_syncs_is_the_sum() {
        let mut s = DiskStats::default();
        s.count_fdatasync();
        s.count_dsync_write();
        s.count_dsync_write();
        assert_eq!((s.fdatasyncs, s.dsync_writes, s.host_syncs), (1, 2, 3));
    }

    #[test]
    fn json_field_names() {
        let j = serde_json::to_value(DiskStats::default()).unwrap_or_default();
        for k in [
            "reads",
            "writes",
            "flushes",
            "host_syncs",
            "fdatasyncs",
            "dsync_writes",
            "bounced",
            "widened_reads",
            "read_modify_writes",
            "bounce_bytes_peak",
            "errors",
            "stops",
            "stop_retries",
            "errors_ignored",
        ] {
            assert!(j.get(k).is_some(), "missing {k} in {j}");
        }
    }
}
