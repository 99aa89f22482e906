//! The gateway's side of cluster mode: validated requests' segments -> acknowledged appends.
//!
//! A request is acknowledged only when every one of its segments is: each is appended in a
//! message, and the message waits for the engine's ack (a quorum of replicas, synced). If any
//! fails, the request fails and the client retries.
//!
//! Each partition has a queue per gateway. At most [`IN_FLIGHT`] of its messages are appended at
//! once; segments that arrive meanwhile go out together in the next message, up to the engine's
//! largest message. An idle gateway sends a request's segment alone, as soon as it comes; a busy
//! one sends a few large messages instead of many small ones. The engine's cost is mostly per
//! message (a replicated, synced write), so this is what lets it keep up.
//!
//! Counts: `accepted` is the events of this request in messages the log stored; `duplicates` the
//! events of messages the log already had, which happens when a message is sent again exactly as
//! it was (the same request re-sent while it had its partition's queue to itself both times).
//! Every other repeat of an event, in a re-sent request or another one, at any gateway, is
//! counted as accepted here and dropped by the partition's writer, which is where fleet-wide
//! dedup happens.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, oneshot};

use super::message::{self, GROUP_OVERHEAD, Outgoing, SEGMENT_OVERHEAD};
use super::{LogError, PartitionedLog};

/// Messages one gateway may have in flight to one partition.
pub const IN_FLIGHT: usize = 2;

/// Room left in a message for the engine's own headers (the idempotency key, the subject).
const HEADROOM: usize = 1024;

/// Appends requests' segments to the log.
#[derive(Debug)]
pub struct Appender<L> {
    log: L,
    queues: Vec<flume::Sender<Pending>>,
}

/// A segment waiting for its message's ack; the answer is whether the log had it already.
#[derive(Debug)]
struct Pending {
    segment: Outgoing,
    reply: oneshot::Sender<Result<bool, LogError>>,
}

/// What the log said about one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub accepted: usize,
    pub duplicates: usize,
}

impl<L: PartitionedLog> Appender<L> {
    /// Start a queue per partition (on the current tokio runtime).
    pub fn new(log: L) -> Self {
        let queues = (0..log.partitions())
            .map(|p| {
                let (tx, rx) = flume::unbounded();
                tokio::spawn(send_messages(log.clone(), p, rx));
                tx
            })
            .collect();
        Self { log, queues }
    }

    pub fn partitions(&self) -> u32 {
        self.log.partitions()
    }

    /// Queue every segment at once and wait for all the acks.
    pub async fn append(&self, segments: Vec<Outgoing>) -> Result<Appended, LogError> {
        let started = Instant::now();
        let mut waiting = Vec::with_capacity(segments.len());
        for segment in segments {
            let (reply, answer) = oneshot::channel();
            let events = segment.events;
            let queue = &self.queues[segment.partition as usize];
            let queued = queue.send(Pending { segment, reply }).is_ok();
            waiting.push((events, queued, answer));
        }
        let mut counts = Appended::default();
        let mut first_error = None;
        for (events, queued, answer) in waiting {
            let stopped = || LogError::Other("the partition's append queue stopped".into());
            let result = match queued {
                true => answer.await.unwrap_or_else(|_| Err(stopped())),
                false => Err(stopped()),
            };
            match result {
                Ok(true) => counts.duplicates += events,
                Ok(false) => counts.accepted += events,
                Err(e) => {
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

/// One partition's queue: group what waits into messages, at most [`IN_FLIGHT`] at a time.
async fn send_messages<L: PartitionedLog>(log: L, partition: u32, queue: flume::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv_async().await {
                Ok(p) => p,
                Err(_) => return, // the appender is gone
            },
        };
        // Segments queue up while every slot is busy: that wait is what makes messages large.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let limit = log.max_message_bytes().saturating_sub(HEADROOM);
        let mut bytes = GROUP_OVERHEAD + SEGMENT_OVERHEAD + first.segment.payload.len();
        let mut group = vec![first];
        while let Ok(next) = queue.try_recv() {
            let more = SEGMENT_OVERHEAD + next.segment.payload.len();
            if bytes + more > limit {
                carried = Some(next);
                break;
            }
            bytes += more;
            group.push(next);
        }
        let log = log.clone();
        tokio::spawn(async move {
            let (id, payload) = {
                let segments: Vec<&Outgoing> = group.iter().map(|p| &p.segment).collect();
                message::group(partition, &segments)
            };
            let result = log.append(partition, &id, payload).await;
            drop(slot);
            let outcome = match &result {
                Ok(a) if a.duplicate => "duplicate",
                Ok(_) => "stored",
                Err(e) if e.is_retryable() => "retryable",
                Err(_) => "permanent",
            };
            metrics::counter!(crate::metrics::CLUSTER_APPENDS, "outcome" => outcome).increment(1);
            metrics::counter!(crate::metrics::CLUSTER_SEGMENTS).increment(group.len() as u64);
            let answer = result.map(|a| a.duplicate);
            for p in group {
                let _ = p.reply.send(answer.clone());
            }
        });
    }
}
