//! The single log writer: a dedicated thread that appends records with group commit.
//!
//! Requests hand it a record through a bounded channel ([`WalHandle::try_append`]); it writes every
//! record waiting in the channel, syncs once, passes the rows downstream in sequence order, and only
//! then answers each request. A full channel or a log over its disk budget is refused at once, so the
//! HTTP layer answers 503 instead of queueing without bound.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::ids::IdsWriter;
use super::record::BatchRecord;
use super::segment::{SegmentSet, segment_path};
use crate::batch::PartitionRows;
use crate::budget::Reservation;
use crate::dedup::EventKey;
use crate::health::{Health, Stage, StageGuard};

/// Rows of one logged record, passed downstream after the sync.
#[derive(Debug)]
pub struct LoggedBatch {
    pub seq: u64,
    pub rows: Vec<PartitionRows>,
    /// The rows' share of the memory budget, given back once they are encoded (none on replay).
    pub hold: Option<Reservation>,
}

/// Why a record was not logged. None of these acknowledged anything.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AppendError {
    #[error("the write-ahead log queue is full")]
    Busy,
    #[error("the write-ahead log is over its disk budget of {budget_bytes} bytes")]
    OverBudget { budget_bytes: u64 },
    #[error("the write-ahead log could not be written: {0}")]
    Io(String),
    #[error("the gateway is shutting down")]
    Closed,
}

struct Append {
    record: BatchRecord,
    rows: Vec<PartitionRows>,
    hold: Option<Reservation>,
    /// Dedup keys of the fresh events, for the id sidecar.
    keys: Vec<EventKey>,
    ack: oneshot::Sender<Result<u64, AppendError>>,
}

enum Msg {
    Append(Append),
    /// Finish the records already queued, then stop.
    Close,
}

/// Cheap handle used by request handlers.
#[derive(Debug, Clone)]
pub struct WalHandle {
    tx: flume::Sender<Msg>,
    bytes: Arc<AtomicU64>,
    budget_bytes: u64,
}

impl WalHandle {
    /// Queue `record` (its `seq` is assigned by the writer) and get a receiver for the ack.
    /// `hold` is the memory the record and rows take; it travels with the rows downstream.
    pub fn try_append(
        &self,
        record: BatchRecord,
        rows: Vec<PartitionRows>,
        keys: Vec<EventKey>,
        hold: Option<Reservation>,
    ) -> Result<oneshot::Receiver<Result<u64, AppendError>>, AppendError> {
        if self.bytes.load(Ordering::Relaxed) >= self.budget_bytes {
            return Err(AppendError::OverBudget {
                budget_bytes: self.budget_bytes,
            });
        }
        let (ack, rx) = oneshot::channel();
        self.tx
            .try_send(Msg::Append(Append {
                record,
                rows,
                hold,
                keys,
                ack,
            }))
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => AppendError::Busy,
                flume::TrySendError::Disconnected(_) => AppendError::Closed,
            })?;
        Ok(rx)
    }

    /// Bytes of log on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Ask the writer to stop once the records queued so far are logged. Later appends fail
    /// with [`AppendError::Closed`].
    pub async fn close(&self) {
        let _ = self.tx.send_async(Msg::Close).await;
    }
}

/// Settings of the writer thread.
#[derive(Debug, Clone)]
pub struct WalWriter {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub budget_bytes: u64,
    pub queue_len: usize,
}

impl WalWriter {
    /// Start the writer thread after `set` (already opened and replayed). Rows go to `downstream`.
    /// `bytes` counts the log on disk; whoever deletes segments subtracts from it.
    pub fn spawn(
        self,
        set: &SegmentSet,
        bytes: Arc<AtomicU64>,
        downstream: flume::Sender<LoggedBatch>,
        health: Arc<Health>,
    ) -> std::io::Result<(WalHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = flume::bounded(self.queue_len);
        let next_seq = set.last_seq + 1;
        let mut state = State {
            file: open_segment(&self.dir, next_seq)?,
            ids: IdsWriter::open(&self.dir, next_seq)?,
            file_len: 0,
            next_seq,
            config: self.clone(),
            bytes: bytes.clone(),
            health,
        };
        let handle = WalHandle {
            tx,
            bytes,
            budget_bytes: self.budget_bytes,
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || {
                let health = state.health.clone();
                let guard = StageGuard::new(&health, Stage::LogWriter);
                state.run(rx, downstream);
                guard.finish();
            })?;
        Ok((handle, thread))
    }
}

fn open_segment(dir: &std::path::Path, first_seq: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, first_seq))?;
    // Make the new name durable before records in it are acknowledged.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

struct State {
    file: File,
    ids: IdsWriter,
    file_len: u64,
    next_seq: u64,
    config: WalWriter,
    bytes: Arc<AtomicU64>,
    health: Arc<Health>,
}

/// Most records committed by one sync.
const MAX_GROUP: usize = 1024;
/// Most record bytes gathered for one sync (the last record may pass it): bounds the group
/// buffer, which the memory budget reserves.
pub const MAX_GROUP_BYTES: usize = 8 << 20;

impl State {
    fn run(&mut self, rx: flume::Receiver<Msg>, downstream: flume::Sender<LoggedBatch>) {
        let mut buf = BytesMut::with_capacity(1 << 20);
        let mut group: Vec<Append> = Vec::with_capacity(MAX_GROUP);
        let mut closing = false;
        while !closing {
            let mut group_bytes = 0;
            match rx.recv() {
                Ok(Msg::Append(a)) => {
                    group_bytes += a.record.body.len();
                    group.push(a);
                }
                Ok(Msg::Close) | Err(_) => break,
            }
            while group.len() < MAX_GROUP && group_bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(Msg::Append(a)) => {
                        group_bytes += a.record.body.len();
                        group.push(a);
                    }
                    Ok(Msg::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            for (i, a) in group.iter_mut().enumerate() {
                a.record.seq = self.next_seq + i as u64;
                a.record.encode_framed(&mut buf);
            }
            let started = std::time::Instant::now();
            match self.commit(&buf) {
                Ok(()) => {
                    self.health.log_appended();
                    metrics::histogram!(crate::metrics::WAL_SYNC_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!(crate::metrics::WAL_RECORDS).increment(group.len() as u64);
                    self.next_seq += group.len() as u64;
                    let ids = group.iter().try_for_each(|a| {
                        self.ids.append(a.record.received_micros / 1000, &a.keys)
                    });
                    if let Err(e) = ids.and_then(|()| self.ids.flush()) {
                        // The records are safe; only dedup memory across a restart is weakened.
                        tracing::warn!(error = %e, "cannot write dedup id sidecar");
                    }
                    for a in group.drain(..) {
                        let seq = a.record.seq;
                        // Downstream first: an acknowledged batch is always in the pipeline, so a
                        // graceful shutdown flushes it. If the file writer has stopped (reported
                        // by the health state), the record is still durable and replayed at the
                        // next start: the answer is still a success.
                        let _ = downstream.send(LoggedBatch {
                            seq,
                            rows: a.rows,
                            hold: a.hold,
                        });
                        let _ = a.ack.send(Ok(seq));
                    }
                    if buf.capacity() > 2 * MAX_GROUP_BYTES {
                        buf = BytesMut::with_capacity(1 << 20);
                    }
                    if let Err(e) = self.maybe_roll() {
                        tracing::error!(error = %e, "could not start a new write-ahead log segment");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "write-ahead log append failed; requests answered 503");
                    metrics::counter!(crate::metrics::WAL_ERRORS).increment(1);
                    self.health.log_failed(e.to_string());
                    let err = AppendError::Io(e.to_string());
                    for a in group.drain(..) {
                        let _ = a.ack.send(Err(err.clone()));
                    }
                }
            }
        }
        // Anything queued after the close is refused, not silently dropped.
        for msg in rx.try_iter() {
            if let Msg::Append(a) = msg {
                let _ = a.ack.send(Err(AppendError::Closed));
            }
        }
    }

    /// Write and sync; on failure, cut the file back so no partial record stays behind.
    fn commit(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let result = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.file_len += buf.len() as u64;
                self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::WAL_BYTES)
                    .set(self.bytes.load(Ordering::Relaxed) as f64);
                Ok(())
            }
            Err(e) => {
                // If even this fails, the torn tail is dropped by the checksum check on restart.
                let _ = self.file.set_len(self.file_len);
                Err(e)
            }
        }
    }

    fn maybe_roll(&mut self) -> std::io::Result<()> {
        if self.file_len >= self.config.segment_bytes {
            // The sidecar must be durable before its segment can ever be retired.
            self.ids.sync()?;
            self.ids = IdsWriter::open(&self.config.dir, self.next_seq)?;
            self.file = open_segment(&self.config.dir, self.next_seq)?;
            self.file_len = 0;
        }
        Ok(())
    }
}
