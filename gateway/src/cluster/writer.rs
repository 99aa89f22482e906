//! The writer role: each partition of the log -> deduplicated Parquet, every row exactly once,
//! whoever writes it and however often.
//!
//! Everything a writer decides is a function of the partition's messages, so every writer that
//! reads a range decides the same:
//! - **Dedup**: an event is dropped if its key ([`super::message::event_key`]) occurs in an
//!   earlier message of the partition stored at most `window` before it (by the log's clock).
//!   Occurrences count whether or not they were kept, so the rule looks back exactly `window`
//!   and a writer taking over rebuilds its state by re-reading that much of the partition
//!   before its starting point.
//! - **Cuts**: the writer that holds a partition's lease appends a cut marker when its flush
//!   policy says so, with an idempotency key naming the previous cut (two writers racing append
//!   one marker). A range ends at a marker; its files are named after the marker's sequence
//!   (`part-p{partition:03}-{marker seq:020}.parquet`) and put create-only, so a writer that
//!   rebuilds a range after a crash, or a stale writer racing the owner, puts the same objects
//!   and `AlreadyExists` is success.
//! - **Progress**: once a range's files are all stored, the marker's sequence and time are
//!   recorded in the log's progress (it only moves forward). A writer starts after it.
//!
//! The clock caveat: "stored within `window`" uses the timestamps of the log's leaders, so a
//! takeover decides like its predecessor if those clocks agree within [`CLOCK_SLACK`] (one
//! machine's in the tests; NTP keeps real hosts within milliseconds).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::message::{self, Decoded, event_key};
use super::{LogError, LogMessage, PartitionReader, PartitionedLog, Progress, ReadFrom};
use crate::batch::{self, PartitionRows};
use crate::dedup::{FreshBatch, KeyHasher};
use crate::health::Health;
use crate::sink::{Sink, SinkError};
use crate::validate::{self, BodyFormat, ValidBatch};
use crate::writer::{FileWriter, FlushPolicy, Lane};

/// How far the log leaders' clocks may disagree without changing a dedup decision.
pub const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// How long a read waits for a message before the writer looks at its flush policy again.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Names this writer in the leases.
    pub owner: String,
    pub flush: FlushPolicy,
    /// The dedup window.
    pub window: Duration,
    /// Lease length; renewed every third of it.
    pub lease: Duration,
}

/// Why a partition's task stopped.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Storage(#[from] SinkError),
    #[error("encoding Parquet: {0}")]
    Encode(#[from] crate::writer::EncodeError),
}

impl PartitionError {
    /// Worth starting the partition again (with backoff) rather than giving up.
    pub fn is_retryable(&self) -> bool {
        match self {
            PartitionError::Log(e) => e.is_retryable(),
            PartitionError::Storage(e) => e.is_retryable(),
            PartitionError::Encode(_) => false,
        }
    }
}

/// Keys seen in the last `window` (plus the clock slack), with the latest time each was seen:
/// a partition's dedup state. About 100 bytes per key held (a hash map entry and an occurrence
/// in the eviction queue; `tests/writer_dedup_memory.rs` measures it).
#[derive(Debug)]
pub struct Seen {
    last: HashMap<u128, i64, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<(i64, u128)>,
    window_us: i64,
    keep_us: i64,
    newest: i64,
}

impl Seen {
    pub fn new(window: Duration) -> Self {
        let window_us = window.as_micros() as i64;
        Seen {
            last: HashMap::default(),
            order: VecDeque::new(),
            window_us,
            keep_us: window_us + CLOCK_SLACK.as_micros() as i64,
            newest: i64::MIN,
        }
    }

    /// Record an occurrence of `key` at `at` (µs); true if none was within the window before.
    pub fn admit(&mut self, key: u128, at: i64) -> bool {
        let fresh = match self.last.get_mut(&key) {
            Some(t) => {
                let fresh = at.saturating_sub(*t) > self.window_us;
                *t = (*t).max(at);
                fresh
            }
            None => {
                self.last.insert(key, at);
                true
            }
        };
        self.order.push_back((at, key));
        if at > self.newest {
            self.newest = at;
            let horizon = self.newest.saturating_sub(self.keep_us);
            while let Some(&(t, k)) = self.order.front() {
                if t >= horizon {
                    break;
                }
                self.order.pop_front();
                if self.last.get(&k) == Some(&t) {
                    self.last.remove(&k);
                }
            }
        }
        fresh
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// A batch message as rows, after dedup; `None` for a marker or a message that is not ours.
fn message_rows(
    m: &LogMessage,
    seen: &mut Seen,
    partition: u32,
) -> Option<(Vec<PartitionRows>, usize, usize)> {
    let at = m.stored_at.timestamp_micros();
    let segments = match message::decode(&m.payload) {
        Ok(Decoded::Batch(segments)) => segments,
        Ok(Decoded::Marker) => return None,
        Err(e) => {
            tracing::warn!(partition, seq = m.seq, error = %e, "skipping a message that is not a batch");
            return None;
        }
    };
    let mut rows = batch::RowsBuilder::new(m.payload.len() / 256);
    let (mut kept, mut dropped) = (0, 0);
    for (i, segment) in segments.into_iter().enumerate() {
        let mut valid = if segment.events.is_empty() {
            ValidBatch::default()
        } else {
            match validate::decode(segment.events, BodyFormat::JsonArray, usize::MAX) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(partition, seq = m.seq, segment = i, error = %e, "skipping a segment whose events do not decode");
                    continue;
                }
            }
        };
        valid.rejected.extend(segment.rejected);
        // Earlier segments of the message count as earlier occurrences.
        let fresh: Vec<bool> = valid
            .events
            .iter()
            .map(|e| seen.admit(event_key(e.kind, &e.event_id), at))
            .collect();
        let k = fresh.iter().filter(|f| **f).count();
        kept += k;
        dropped += fresh.len() - k;
        let fresh = FreshBatch::with_fresh(valid, fresh);
        let h = segment.header;
        rows.add(&fresh, h.received_micros, h.bounds, h.source);
    }
    Some((rows.finish(), kept, dropped))
}

fn micros_to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::UNIX_EPOCH)
}

/// Write `partition` from its recorded progress on, until an error (or forever).
pub async fn run_partition<L: PartitionedLog>(
    log: &L,
    partition: u32,
    sink: &Sink,
    config: &WriterConfig,
    health: &Health,
) -> Result<(), PartitionError> {
    let sink = &sink.clone().with_node_id(format!("p{partition:03}"));
    let progress = log.progress(partition).await?;
    let start_after = progress.map_or(0, |p| p.seq);
    let mut seen = Seen::new(config.window);
    // Re-read what the window looks back on, before the start, to rebuild the dedup state.
    let from = match progress {
        Some(p) => {
            let back = config.window + 2 * CLOCK_SLACK;
            ReadFrom::Time(
                micros_to_time(p.stored_at_micros)
                    - chrono::Duration::from_std(back).unwrap_or(chrono::Duration::MAX),
            )
        }
        None => ReadFrom::Seq(1),
    };
    let mut reader = log.read(partition, from).await?;
    tracing::info!(partition, after = start_after, "writing partition");
    let mut lanes = [
        FileWriter::new(config.flush, Lane::Current, start_after),
        FileWriter::new(config.flush, Lane::Late, start_after),
    ];
    let mut prev_cut = start_after;
    // The cut a marker has been appended for, so one is not appended twice.
    let mut marked: Option<u64> = None;
    loop {
        let now = Instant::now();
        let wait = lanes
            .iter()
            .filter_map(|l| l.time_left(now))
            .min()
            .unwrap_or(POLL)
            .clamp(Duration::from_millis(1), POLL);
        if let Some(m) = reader.next(wait).await? {
            if m.seq <= start_after {
                // Rebuilding: occurrences only.
                let _ = message_rows(&m, &mut seen, partition);
            } else if matches!(message::decode(&m.payload), Ok(Decoded::Marker)) {
                cut(log, partition, sink, &mut lanes, &m, health).await?;
                metrics::gauge!(crate::metrics::DEDUP_IDS, "partition" => partition.to_string())
                    .set(seen.len() as f64);
                prev_cut = m.seq;
                marked = None;
            } else if let Some((rows, kept, dropped)) = message_rows(&m, &mut seen, partition) {
                let (late, current): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.late);
                let now = Instant::now();
                lanes[0].add_rows(m.seq, current, now)?;
                lanes[1].add_rows(m.seq, late, now)?;
                metrics::counter!(crate::metrics::WRITER_EVENTS, "outcome" => "fresh")
                    .increment(kept as u64);
                metrics::counter!(crate::metrics::WRITER_EVENTS, "outcome" => "duplicate")
                    .increment(dropped as u64);
            }
        }
        let now = Instant::now();
        if marked != Some(prev_cut) && lanes.iter().any(|l| l.due(now)) {
            match log
                .append(
                    partition,
                    &message::marker_id(partition, prev_cut),
                    message::marker(),
                )
                .await
            {
                Ok(_) => marked = Some(prev_cut),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(partition, error = %e, "cannot append a cut marker; retrying");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Close the range ending at `marker`: put its files, then record the progress.
async fn cut<L: PartitionedLog>(
    log: &L,
    partition: u32,
    sink: &Sink,
    lanes: &mut [FileWriter; 2],
    marker: &LogMessage,
    health: &Health,
) -> Result<(), PartitionError> {
    let mut files = 0;
    for lane in lanes.iter_mut() {
        let Some(cut) = lane.cut()? else { continue };
        for file in cut.files.unwrap_or_default() {
            sink.put(&file, marker.seq, cut.lane, health).await?;
            files += 1;
        }
    }
    log.advance(
        partition,
        Progress {
            seq: marker.seq,
            stored_at_micros: marker.stored_at.timestamp_micros(),
        },
    )
    .await?;
    tracing::debug!(partition, seq = marker.seq, files, "range stored");
    Ok(())
}

/// Hold a fair share of the partitions (their count over the live writers, rounded up) and
/// write them, until `stop` resolves.
pub async fn run<L: PartitionedLog>(
    log: L,
    sink: Sink,
    config: WriterConfig,
    health: Arc<Health>,
    stop: impl std::future::Future<Output = ()>,
) {
    let partitions = log.partitions();
    let mut owned: std::collections::BTreeMap<u32, tokio::task::JoinHandle<()>> =
        Default::default();
    let mut tick = tokio::time::interval(config.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Writers start their search at different partitions, so they rarely contend.
    let offset =
        (xxhash_rust::xxh3::xxh3_64(config.owner.as_bytes()) % u64::from(partitions)) as u32;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let live = match log.heartbeat(&config.owner).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the log for leases");
                health.cluster_log_failed(format!("leases: {e}"));
                continue;
            }
        };
        let share = (partitions as usize).div_ceil(live);
        // Renew, and drop what was lost or finished.
        for p in owned.keys().copied().collect::<Vec<_>>() {
            let held = matches!(log.claim(p, &config.owner).await, Ok(true));
            if !held || owned[&p].is_finished() {
                if let Some(task) = owned.remove(&p) {
                    task.abort();
                }
                if held {
                    let _ = log.release(p, &config.owner).await;
                }
                tracing::info!(partition = p, "partition no longer written here");
            }
        }
        // Give back what is over the share, so a new writer gets its part.
        while owned.len() > share {
            let (p, task) = owned.pop_last().expect("more than share >= 1");
            task.abort();
            let _ = log.release(p, &config.owner).await;
            tracing::info!(partition = p, "partition released to another writer");
        }
        for i in 0..partitions {
            if owned.len() >= share {
                break;
            }
            let p = (offset + i) % partitions;
            if owned.contains_key(&p) {
                continue;
            }
            if matches!(log.claim(p, &config.owner).await, Ok(true)) {
                let (log, sink, config, health) =
                    (log.clone(), sink.clone(), config.clone(), health.clone());
                owned.insert(
                    p,
                    tokio::spawn(async move {
                        partition_loop(&log, p, &sink, &config, &health).await;
                    }),
                );
            }
        }
        health.log_appended();
        metrics::gauge!(crate::metrics::WRITER_PARTITIONS).set(owned.len() as f64);
    }
    for (p, task) in owned {
        task.abort();
        let _ = log.release(p, &config.owner).await;
    }
}

/// Run a partition, starting it again after retryable errors.
async fn partition_loop<L: PartitionedLog>(
    log: &L,
    partition: u32,
    sink: &Sink,
    config: &WriterConfig,
    health: &Health,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match run_partition(log, partition, sink, config, health).await {
            Ok(()) => return,
            Err(e) if e.is_retryable() => {
                tracing::warn!(partition, error = %e, retry_in_ms = delay.as_millis() as u64, "partition stopped; starting it again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "partition stopped; its lease is given up");
                health.cluster_log_failed(format!("partition {partition}: {e}"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn the_window_looks_back_exactly_its_length() {
        let mut seen = Seen::new(Duration::from_secs(10));
        assert!(seen.admit(1, 0));
        assert!(!seen.admit(1, 10 * S), "at the window's edge: a duplicate");
        // Counted from the latest occurrence, kept or not.
        assert!(!seen.admit(1, 19 * S));
        assert!(seen.admit(1, 30 * S));
        assert!(seen.admit(2, 30 * S));
    }

    #[test]
    fn forgetting_old_keys_changes_no_decision() {
        let window = Duration::from_secs(5);
        let (mut evicting, mut all) = (Seen::new(window), Vec::<(u128, i64)>::new());
        let mut x = 7u64;
        for i in 0..20_000i64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Half from a small set (many re-sends), half almost always new.
            let key = u128::from(if i % 2 == 0 { x >> 54 } else { x >> 20 });
            let at = i * S / 100;
            let expected = !all
                .iter()
                .any(|&(k, t)| k == key && at - t <= window.as_micros() as i64);
            all.push((key, at));
            all.retain(|&(_, t)| at - t <= window.as_micros() as i64);
            assert_eq!(evicting.admit(key, at), expected, "event {i}");
        }
        // 100 events a second, kept for the window and the clock slack: 65 s of keys at most.
        assert!(
            evicting.len() <= 6_501,
            "old keys are forgotten: {}",
            evicting.len()
        );
    }
}
