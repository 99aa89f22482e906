//! The write-ahead log: accepted requests are made durable here before they are acknowledged.
//!
//! Owns everything under `{state_dir}/wal/`. The full format is in `docs/wal-format.md`; in short:
//!
//! ```text
//! segment file  {first_seq:020}.wal   a sequence of records, appended by one writer thread
//! record        len: u32 LE | crc32c(payload): u32 LE | payload (len bytes)
//! payload       version u8 = 1 | seq u64 | received_micros i64 | max_past_micros i64
//!               | max_future_micros i64 | format u8 | encoding u8
//!               | fresh_len u32 | fresh bitmap (ceil(fresh_len/8) bytes) | body (rest)
//! cuts.log      text lines "cut <seq>" and "done <seq>", appended by the uploader
//! ```
//!
//! Invariants:
//! - A request is acknowledged only after the `fdatasync` that covers its record (group commit:
//!   one sync for every record written since the last one).
//! - Sequence numbers increase by one per record, across segments and restarts.
//! - A record that fails its length or checksum check at the end of the last segment is a torn
//!   write: it was never acknowledged and is cut off on open. Anywhere else it is corruption and
//!   opening fails rather than skipping acknowledged data.
//! - A segment is deleted only when every record in it is at or below the durable sequence recorded
//!   in `cuts.log` (see [`cuts`]), i.e. all its rows are in object storage.
//! - Records carry everything the rows depend on (body, freshness, receive time, partition bounds),
//!   so replaying a record rebuilds exactly the rows it produced the first time.

pub mod cuts;
pub mod ids;
pub mod record;
pub(crate) mod segment;
mod writer;

pub use record::{BatchRecord, RecordError};
pub use segment::{Replay, SegmentSet, list_segments, open_segments, retire};
pub use writer::{AppendError, LoggedBatch, MAX_GROUP_BYTES, WalHandle, WalWriter};

/// Errors of the log that fail a request or the start-up.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("write-ahead log is corrupt in {segment} at byte {offset}: {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
}

#[cfg(test)]
mod tests;
