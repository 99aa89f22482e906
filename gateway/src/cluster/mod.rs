//! Cluster mode's replicated log: the narrow interface the pipeline needs from the engine, so the
//! HTTP and Parquet code never name it, and its NATS JetStream implementation ([`nats`]).
//!
//! The log is partitioned: partition `p` is one stream. Gateways append batches (one message
//! per request and partition) with an idempotency key and answer only once the engine has
//! acknowledged them; writers read a partition in order from a sequence. Another engine (Kafka:
//! a topic partition, the producer's idempotence, an offset) fits the same three calls.
//!
//! Status: the engine layer. Gateways and writers in cluster mode build on it (see
//! `docs/cluster.md` once they land); the single-node mode does not use it.

pub mod nats;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

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
#[derive(Debug, thiserror::Error)]
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
}
