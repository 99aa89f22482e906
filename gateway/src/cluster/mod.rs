//! Cluster mode's replicated log: the narrow interface the pipeline needs from the engine, so the
//! HTTP and Parquet code never name it, and its NATS JetStream implementation ([`nats`]).
//!
//! The log is partitioned: partition `p` is one stream. Gateways append batches (one message
//! per request and partition) with an idempotency key and answer only once the engine has
//! acknowledged them; writers read a partition in order from a sequence. Another engine (Kafka:
//! a topic partition, the producer's idempotence, an offset) fits the same three calls.
//!
//! Besides the messages, the engine keeps two small things for the writers: each partition's
//! progress (the last cut whose files are all in storage) and leases that spread partitions
//! over the live writers. Leases are an economy, not a guarantee: two writers on one partition
//! still write each row once ([`writer`]).
//!
//! - [`message`]: what a message holds, partitioning and idempotency keys
//! - [`ingest`]: the gateway's side, a validated request -> acknowledged appends
//! - [`writer`]: the writer role, partitions -> deduplicated Parquet, exactly once
//! - [`nats`]: the engine

pub mod ingest;
pub mod message;
pub mod nats;
pub mod writer;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the engine said about one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's sequence in its partition (the original one for a duplicate).
    pub seq: u64,
    /// The idempotency key was seen before: nothing new was stored.
    pub duplicate: bool,
}

/// One message read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LogMessage {
    pub seq: u64,
    /// When the engine stored it (its clock, not the gateway's).
    pub stored_at: DateTime<Utc>,
    pub payload: Bytes,
}

/// Why an engine call failed, classified: retryable errors may succeed if the same call is made
/// again (with the same idempotency key, so a retry never doubles a message).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// No answer in time, no server reachable, no leader (an election), the engine overloaded.
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    /// The message is larger than the engine takes.
    #[error("the message is too large for the log: {0}")]
    TooLarge(String),
    /// A configuration the engine refuses (a stream exists with other settings, no room).
    #[error("the log refused its configuration: {0}")]
    Config(String),
    #[error("log error: {0}")]
    Other(String),
}

impl LogError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }
}

/// The settings of the partitioned log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub urls: Vec<String>,
    /// Streams are `{prefix}-{p}`, subjects `{prefix}.{p}`.
    pub prefix: String,
    pub partitions: u32,
    pub replicas: usize,
    /// How long the engine remembers idempotency keys; at least the dedup window.
    pub dedup_window: Duration,
    /// How long messages are kept: longer than the dedup window, so a writer taking over can
    /// rebuild its dedup state from the log (JetStream forgets the ids of deleted messages).
    pub retention: Duration,
    /// Bound on each call, the ack wait of an append included.
    pub timeout: Duration,
    /// Bytes a partition may hold before appends are refused (`None`: no limit besides the
    /// servers' disks). Messages are never dropped to make room.
    pub max_bytes: Option<u64>,
    /// A writer's lease on a partition lapses this long after its last renewal.
    pub lease: Duration,
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// At this sequence (1 is the first message).
    Seq(u64),
    /// At the first message stored at or after this time.
    Time(DateTime<Utc>),
}

/// How far a partition is in storage: every message up to `seq`, a cut marker, is in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub seq: u64,
    /// When the marker at `seq` was stored, in Unix microseconds.
    pub stored_at_micros: i64,
}

/// The engine, as the gateways and writers use it.
pub trait PartitionedLog: Clone + Send + Sync + 'static {
    type Reader: PartitionReader;

    fn partitions(&self) -> u32;

    /// The largest message the engine takes.
    fn max_message_bytes(&self) -> usize;

    /// Append `payload` to `partition` under the idempotency key `id`, and wait for the ack.
    fn append(
        &self,
        partition: u32,
        id: &str,
        payload: Bytes,
    ) -> impl Future<Output = Result<Appended, LogError>> + Send;

    /// Read `partition` in order.
    fn read(
        &self,
        partition: u32,
        from: ReadFrom,
    ) -> impl Future<Output = Result<Self::Reader, LogError>> + Send;

    /// The partition's recorded progress, if any.
    fn progress(
        &self,
        partition: u32,
    ) -> impl Future<Output = Result<Option<Progress>, LogError>> + Send;

    /// Record progress; a record further than `progress` is kept (progress never goes back).
    fn advance(
        &self,
        partition: u32,
        progress: Progress,
    ) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Take or renew `owner`'s lease on `partition`; false if another writer holds it.
    fn claim(
        &self,
        partition: u32,
        owner: &str,
    ) -> impl Future<Output = Result<bool, LogError>> + Send;

    /// Give the lease up, if `owner` holds it.
    fn release(
        &self,
        partition: u32,
        owner: &str,
    ) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Say `owner` is alive; returns how many writers are.
    fn heartbeat(&self, owner: &str) -> impl Future<Output = Result<usize, LogError>> + Send;
}

/// One partition being read in order.
pub trait PartitionReader: Send {
    /// The next message, or `None` if none arrived within `wait`.
    fn next(
        &mut self,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<LogMessage>, LogError>> + Send;
}
