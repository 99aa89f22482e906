//! The gateway's side of cluster mode: a validated request's messages -> acknowledged appends.
//!
//! A request is acknowledged only when every one of its messages is: each append waits for the
//! engine's ack (a quorum of replicas, synced). If any fails, the request fails and the client
//! retries; the messages that did make it are recognised by their idempotency keys on the
//! retry, so nothing is doubled.
//!
//! Counts: `accepted` is the events of messages stored by this request; `duplicates` the events
//! of messages the log already had (the same request, sent before to any gateway). An event
//! re-sent inside a *different* request is counted as accepted here and dropped by the
//! partition's writer, which is where fleet-wide dedup happens.

use std::time::Instant;

use super::message::Outgoing;
use super::{LogError, PartitionedLog};

/// Appends requests' messages to the log.
#[derive(Debug)]
pub struct Appender<L> {
    log: L,
}

/// What the log said about one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub accepted: usize,
    pub duplicates: usize,
}

impl<L: PartitionedLog> Appender<L> {
    pub fn new(log: L) -> Self {
        Self { log }
    }

    pub fn partitions(&self) -> u32 {
        self.log.partitions()
    }

    /// Append every message at once and wait for all the acks.
    pub async fn append(&self, messages: Vec<Outgoing>) -> Result<Appended, LogError> {
        let started = Instant::now();
        let results = futures::future::join_all(messages.into_iter().map(|m| async move {
            let result = self.log.append(m.partition, &m.id, m.payload).await;
            (m.events, result)
        }))
        .await;
        let mut counts = Appended::default();
        let mut first_error = None;
        for (events, result) in results {
            match result {
                Ok(a) if a.duplicate => {
                    metrics::counter!(crate::metrics::CLUSTER_APPENDS, "outcome" => "duplicate")
                        .increment(1);
                    counts.duplicates += events;
                }
                Ok(_) => {
                    metrics::counter!(crate::metrics::CLUSTER_APPENDS, "outcome" => "stored")
                        .increment(1);
                    counts.accepted += events;
                }
                Err(e) => {
                    let class = if e.is_retryable() {
                        "retryable"
                    } else {
                        "permanent"
                    };
                    metrics::counter!(crate::metrics::CLUSTER_APPENDS, "outcome" => class)
                        .increment(1);
                    first_error.get_or_insert(e);
                }
            }
        }
        metrics::histogram!(crate::metrics::CLUSTER_APPEND_SECONDS)
            .record(started.elapsed().as_secs_f64());
        match first_error {
            Some(e) => Err(e),
            None => Ok(counts),
        }
    }
}
