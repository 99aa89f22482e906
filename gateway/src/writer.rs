//! `LoggedBatch -> Cut`: encode rows into Parquet as they arrive, and cut files by the flush policy.
//!
//! Runs on its own thread, so Parquet encoding and compression never block the async workers and
//! overlap with request parsing. Holds one open Parquet writer per partition touched since the
//! last cut.
//!
//! Invariants:
//! - A cut at sequence `H` contains every row of records `prev+1..=H` and nothing else, whatever the
//!   timing: the flush policy only decides *where* to cut, and the journal records it, so a replay
//!   that cuts at the same `H` rebuilds the same files.
//! - Memory is bounded by the flush policy (`max_bytes` of encoded data plus one row group in
//!   progress per partition).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::batch::{PartitionKey, PartitionRows};
use crate::wal::LoggedBatch;

/// When buffered rows become files. The first limit reached cuts.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    pub max_rows: usize,
    /// Memory held by all open files: the Parquet bytes written so far (buffer capacity) plus
    /// the row groups in progress (buffered pages and dictionaries).
    pub max_bytes: usize,
    /// Age of the oldest buffered row.
    pub max_age: Duration,
}

/// One finished Parquet file.
#[derive(Debug, Clone)]
pub struct SealedFile {
    pub key: PartitionKey,
    pub rows: usize,
    pub bytes: Bytes,
}

/// Every file of one cut: the rows of records `after+1..=seq`; `seq` names the files.
///
/// `files` is `None` when the cut was *dehydrated*: the uploader was behind (storage slow or
/// down), so the encoded bytes were dropped rather than held in memory, and the uploader rebuilds
/// them from the write-ahead log when it gets to this cut. Memory stays bounded; the log, bounded
/// by its disk budget, absorbs the outage.
#[derive(Debug, Clone)]
pub struct Cut {
    pub after: u64,
    pub seq: u64,
    pub files: Option<Vec<SealedFile>>,
}

/// Cuts held with their bytes while waiting for upload; later ones are dehydrated.
pub const HYDRATED_CUTS: usize = 1;

#[derive(Debug, thiserror::Error)]
#[error("parquet encoding failed: {0}")]
pub struct EncodeError(#[from] parquet::errors::ParquetError);

/// Encode one small batch as a whole Parquet file, with the event tables' properties.
pub fn encode_file(batch: &arrow_array::RecordBatch) -> Result<Bytes, EncodeError> {
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties(1 << 20)))?;
    writer.write(batch)?;
    Ok(Bytes::from(writer.into_inner()?))
}

fn properties(max_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid zstd level"),
        ))
        .set_dictionary_enabled(true)
        .set_max_row_group_row_count(Some(max_rows.clamp(1, 1 << 20)))
        .set_created_by(format!("experiment-gateway {}", env!("CARGO_PKG_VERSION")))
        .build()
}

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    rows: usize,
}

pub struct FileWriter {
    policy: FlushPolicy,
    props: WriterProperties,
    open: BTreeMap<PartitionKey, OpenFile>,
    rows: usize,
    oldest: Option<Instant>,
    /// Highest sequence added since the last cut; 0 when none.
    last_seq: u64,
    /// Sequence of the last cut (or the durable point at start).
    prev_cut: u64,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("rows", &self.rows)
            .field("partitions", &self.open.len())
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

impl FileWriter {
    /// `durable`: every record up to here is already in storage.
    pub fn new(policy: FlushPolicy, durable: u64) -> Self {
        Self {
            policy,
            props: properties(policy.max_rows),
            open: BTreeMap::new(),
            rows: 0,
            oldest: None,
            last_seq: 0,
            prev_cut: durable,
        }
    }

    /// Encode the rows of one logged record.
    /// Encode the rows of one logged record; their memory reservation ends with them.
    pub fn add(&mut self, batch: LoggedBatch) -> Result<(), EncodeError> {
        for part in batch.rows {
            self.write(part)?;
        }
        self.last_seq = self.last_seq.max(batch.seq);
        Ok(())
    }

    fn write(&mut self, part: PartitionRows) -> Result<(), EncodeError> {
        let file = match self.open.get_mut(&part.key) {
            Some(f) => f,
            None => {
                let writer = ArrowWriter::try_new(
                    Vec::with_capacity(1 << 20),
                    part.key.table.schema(),
                    Some(self.props.clone()),
                )?;
                self.open
                    .entry(part.key)
                    .or_insert(OpenFile { writer, rows: 0 })
            }
        };
        let n = part.batch.num_rows();
        file.writer.write(&part.batch)?;
        file.rows += n;
        self.rows += n;
        self.oldest.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Whether the policy says to cut now.
    pub fn due(&self, now: Instant) -> bool {
        if self.rows >= self.policy.max_rows {
            return true;
        }
        if self
            .oldest
            .is_some_and(|t| now.duration_since(t) >= self.policy.max_age)
        {
            return true;
        }
        self.held_bytes() >= self.policy.max_bytes
    }

    /// How long until the age limit cuts, if anything is buffered.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.oldest
            .map(|t| self.policy.max_age.saturating_sub(now.duration_since(t)))
    }

    /// Memory held by the open files, which the flush policy bounds.
    pub fn held_bytes(&self) -> usize {
        self.open
            .values()
            .map(|f| f.writer.inner().capacity() + f.writer.memory_size())
            .sum()
    }

    /// Highest sequence added since the last cut (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Close every open file. Returns `None` when nothing was added since the last cut.
    pub fn cut(&mut self) -> Result<Option<Cut>, EncodeError> {
        if self.last_seq == 0 {
            return Ok(None);
        }
        let mut files = Vec::with_capacity(self.open.len());
        for (key, f) in std::mem::take(&mut self.open) {
            let mut bytes = f.writer.into_inner()?;
            // The buffer grew by doubling: give the slack back before the file waits for upload.
            bytes.shrink_to_fit();
            files.push(SealedFile {
                key,
                rows: f.rows,
                bytes: Bytes::from(bytes),
            });
        }
        let cut = Cut {
            after: self.prev_cut,
            seq: self.last_seq,
            files: Some(files),
        };
        self.prev_cut = self.last_seq;
        self.rows = 0;
        self.oldest = None;
        self.last_seq = 0;
        Ok(Some(cut))
    }

    /// Thread body: add batches until the log writer hangs up, cutting by policy; a final cut
    /// flushes everything at shutdown. Returns why it stopped early, if it did.
    pub fn run(
        mut self,
        input: flume::Receiver<LoggedBatch>,
        cuts: flume::Sender<Cut>,
    ) -> Result<(), WriterStopped> {
        loop {
            let now = Instant::now();
            let next = match self.time_left(now) {
                Some(left) => input.recv_timeout(left),
                None => input
                    .recv()
                    .map_err(|_| flume::RecvTimeoutError::Disconnected),
            };
            let stop = match next {
                Ok(batch) => {
                    self.add(batch)?;
                    false
                }
                Err(flume::RecvTimeoutError::Timeout) => false,
                Err(flume::RecvTimeoutError::Disconnected) => true,
            };
            if (stop || self.due(Instant::now()))
                && let Some(mut cut) = self.cut()?
            {
                metrics::counter!(crate::metrics::CUTS).increment(1);
                if cuts.len() >= HYDRATED_CUTS {
                    metrics::counter!(crate::metrics::CUTS_DEHYDRATED).increment(1);
                    cut.files = None;
                }
                cuts.send(cut).map_err(|_| WriterStopped::UploaderGone)?;
            }
            if stop {
                return Ok(());
            }
        }
    }
}

/// Why the file writer stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum WriterStopped {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the uploader stopped")]
    UploaderGone,
}
