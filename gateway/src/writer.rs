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
//! - Two lanes, each with its own cuts and journal: *current* rows (partitions of the hour they
//!   were received in, or the one before) cut by the flush policy, and *late* rows (older
//!   partitions, see [`crate::batch::LATE_AFTER_HOURS`]) buffered up to `late_max_age`, so a
//!   trickle of late events makes one file per old partition an hour rather than one a minute.
//!   Each lane's cut at `H` holds that lane's rows of records `prev+1..=H`; a lane with nothing
//!   buffered advances with the other (an empty cut), so it never holds the log back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

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
    /// Age of the oldest buffered *late* row; late rows may also hold a quarter of `max_bytes`.
    pub late_max_age: Duration,
}

/// Which rows a writer holds: see the module invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Current,
    Late,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Current, Lane::Late];

    pub fn index(self) -> usize {
        match self {
            Lane::Current => 0,
            Lane::Late => 1,
        }
    }

    /// The lane's cut journal in the state dir.
    pub fn journal(self) -> &'static str {
        match self {
            Lane::Current => "cuts.log",
            Lane::Late => "late-cuts.log",
        }
    }

    fn holds(self, rows: &PartitionRows) -> bool {
        rows.late == (self == Lane::Late)
    }
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
    pub lane: Lane,
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
        // Unique per row: a dictionary only costs a page of misses before the fallback, and
        // the lengths apart from the bytes let zstd see the ids' characters alone (a UUID
        // column: 21.1 -> 19.0 bytes per event, `parquet_size`).
        .set_column_dictionary_enabled(ColumnPath::from("event_id"), false)
        .set_column_encoding(
            ColumnPath::from("event_id"),
            Encoding::DELTA_LENGTH_BYTE_ARRAY,
        )
        .set_max_row_group_row_count(Some(max_rows.clamp(1, 1 << 20)))
        .set_created_by(format!("experiment-gateway {}", env!("CARGO_PKG_VERSION")))
        .build()
}

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    rows: usize,
}

pub struct FileWriter {
    lane: Lane,
    max_rows: usize,
    max_bytes: usize,
    max_age: Duration,
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
            .field("lane", &self.lane)
            .field("rows", &self.rows)
            .field("partitions", &self.open.len())
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

impl FileWriter {
    /// The writer of one lane. `durable`: every record up to here is already in storage.
    pub fn new(policy: FlushPolicy, lane: Lane, durable: u64) -> Self {
        let (max_bytes, max_age) = match lane {
            Lane::Current => (policy.max_bytes, policy.max_age),
            Lane::Late => ((policy.max_bytes / 4).max(1), policy.late_max_age),
        };
        Self {
            lane,
            max_rows: policy.max_rows,
            max_bytes,
            max_age,
            props: properties(policy.max_rows),
            open: BTreeMap::new(),
            rows: 0,
            oldest: None,
            last_seq: 0,
            prev_cut: durable,
        }
    }

    /// Encode this lane's rows of one logged record; their memory reservation ends with them.
    pub fn add(&mut self, batch: LoggedBatch) -> Result<(), EncodeError> {
        let lane = self.lane;
        let rows = batch.rows.into_iter().filter(|r| lane.holds(r));
        self.add_rows(batch.seq, rows, Instant::now())
    }

    /// Encode rows of record `seq` (all of this lane), received at `now`.
    pub fn add_rows(
        &mut self,
        seq: u64,
        rows: impl IntoIterator<Item = PartitionRows>,
        now: Instant,
    ) -> Result<(), EncodeError> {
        for part in rows {
            debug_assert!(self.lane.holds(&part));
            self.write(part, now)?;
        }
        self.last_seq = self.last_seq.max(seq);
        Ok(())
    }

    /// Rows buffered since the last cut.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn write(&mut self, part: PartitionRows, now: Instant) -> Result<(), EncodeError> {
        let file = match self.open.get_mut(&part.key) {
            Some(f) => f,
            None => {
                // Late partitions are many and small: a large first buffer in each would count
                // against (and trip) the lane's byte limit long before its age limit.
                let capacity = match self.lane {
                    Lane::Current => 1 << 20,
                    Lane::Late => 16 << 10,
                };
                let writer = ArrowWriter::try_new(
                    Vec::with_capacity(capacity),
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
        self.oldest.get_or_insert(now);
        Ok(())
    }

    /// Whether the policy says to cut now.
    pub fn due(&self, now: Instant) -> bool {
        if self.rows >= self.max_rows {
            return true;
        }
        if self
            .oldest
            .is_some_and(|t| now.duration_since(t) >= self.max_age)
        {
            return true;
        }
        self.held_bytes() >= self.max_bytes
    }

    /// How long until the age limit cuts, if anything is buffered.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.oldest
            .map(|t| self.max_age.saturating_sub(now.duration_since(t)))
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
            lane: self.lane,
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
}

/// Past this many bytes of log on disk, late rows are cut whatever their age, so buffering them
/// never fills the log's disk budget (they pin the segments they came in).
#[derive(Debug, Clone)]
pub struct LogPressure {
    pub log_bytes: Arc<AtomicU64>,
    pub limit_bytes: u64,
}

/// Both lanes' writers: what the file-writer thread runs.
#[derive(Debug)]
pub struct Lanes {
    pub current: FileWriter,
    pub late: FileWriter,
    pressure: Option<LogPressure>,
}

impl Lanes {
    /// `durable[lane.index()]`: each lane's durable point.
    pub fn new(policy: FlushPolicy, durable: [u64; 2], pressure: Option<LogPressure>) -> Self {
        Self {
            current: FileWriter::new(policy, Lane::Current, durable[0]),
            late: FileWriter::new(policy, Lane::Late, durable[1]),
            pressure,
        }
    }

    pub fn lane(&mut self, lane: Lane) -> &mut FileWriter {
        match lane {
            Lane::Current => &mut self.current,
            Lane::Late => &mut self.late,
        }
    }

    /// Split one record's rows between the lanes.
    pub fn add(&mut self, batch: LoggedBatch, now: Instant) -> Result<(), EncodeError> {
        let (late, current): (Vec<_>, Vec<_>) = batch.rows.into_iter().partition(|r| r.late);
        self.current.add_rows(batch.seq, current, now)?;
        self.late.add_rows(batch.seq, late, now)
    }

    /// The cuts the policies call for now; at `stop`, everything buffered.
    pub fn due_cuts(&mut self, now: Instant, stop: bool) -> Result<Vec<Cut>, EncodeError> {
        let mut cuts = Vec::new();
        let current = if stop || self.current.due(now) {
            self.current.cut()?
        } else {
            None
        };
        let pressed = self.pressure.as_ref().is_some_and(|p| {
            self.late.rows() > 0 && p.log_bytes.load(Ordering::Relaxed) >= p.limit_bytes
        });
        // An empty late lane follows the current one, so it never holds the log back.
        let follow = current.is_some() && self.late.rows() == 0;
        if let Some(cut) = current {
            cuts.push(cut);
        }
        if stop || pressed || follow || self.late.due(now) {
            cuts.extend(self.late.cut()?);
        }
        Ok(cuts)
    }

    fn time_left(&self, now: Instant) -> Option<Duration> {
        match (self.current.time_left(now), self.late.time_left(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
            // Under log pressure, look again soon even if nothing arrives.
            let wait = match (
                self.time_left(now),
                self.pressure.is_some() && self.late.rows() > 0,
            ) {
                (Some(left), true) => Some(left.min(PRESSURE_CHECK)),
                (None, true) => Some(PRESSURE_CHECK),
                (left, false) => left,
            };
            let next = match wait {
                Some(left) => input.recv_timeout(left),
                None => input
                    .recv()
                    .map_err(|_| flume::RecvTimeoutError::Disconnected),
            };
            let stop = match next {
                Ok(batch) => {
                    self.add(batch, Instant::now())?;
                    false
                }
                Err(flume::RecvTimeoutError::Timeout) => false,
                Err(flume::RecvTimeoutError::Disconnected) => true,
            };
            for mut cut in self.due_cuts(Instant::now(), stop)? {
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

/// How often log pressure is looked at while late rows are buffered.
const PRESSURE_CHECK: Duration = Duration::from_secs(1);

/// Why the file writer stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum WriterStopped {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the uploader stopped")]
    UploaderGone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{PartitionBounds, Table};
    use crate::dedup::FreshBatch;
    use crate::validate::{BodyFormat, decode};
    use std::collections::{BTreeMap, BTreeSet};

    const MINUTE_MICROS: i64 = 60_000_000;
    const HOUR_MICROS: i64 = 3_600_000_000;

    /// One simulated day: a record a minute of `per_minute` assignments, 5% of them late (their
    /// time 2 to 48 hours back, spread evenly), written with `lanes` (or, with `late_lane` off,
    /// every row in the current lane, as before lanes existed). Returns (files per partition-day,
    /// files holding late rows, rows in late files).
    fn simulate_day(per_minute: usize, late_lane: bool) -> (BTreeMap<i64, usize>, usize, usize) {
        let policy = FlushPolicy {
            max_rows: 1_000_000,
            max_bytes: 32 << 20,
            max_age: Duration::from_secs(60),
            late_max_age: Duration::from_secs(3600),
        };
        let bounds = PartitionBounds {
            max_past_micros: 7 * 24 * HOUR_MICROS,
            max_future_micros: HOUR_MICROS,
        };
        let mut lanes = Lanes::new(policy, [0, 0], None);
        let day_start: i64 = 1_764_374_400_000_000; // 2025-11-29T00:00Z
        let t0 = Instant::now();
        let mut files: Vec<(Lane, SealedFile)> = Vec::new();
        let mut late_seen = 0usize;
        for minute in 0..1440i64 {
            let received = day_start + minute * MINUTE_MICROS;
            let mut body = String::new();
            for i in 0..per_minute {
                let ts = if i % 20 == 0 {
                    late_seen += 1;
                    let back = 2 + (late_seen as i64 * 7) % 47;
                    received - back * HOUR_MICROS
                } else {
                    received
                };
                body.push_str(&format!(
                    "{{\"event_id\":\"{minute}-{i}\",\"type\":\"assignment\",\"ts\":{},\
                     \"user_id\":\"u{i}\",\"experiment\":\"e\",\"variant\":\"v\"}}\n",
                    ts / 1000
                ));
            }
            let valid = decode(body.as_bytes(), BodyFormat::NdJson, usize::MAX).unwrap();
            let n = valid.events.len();
            let mut rows = crate::batch::rows(
                &FreshBatch::with_fresh(valid, vec![true; n]),
                received,
                bounds,
                None,
            );
            if !late_lane {
                rows.iter_mut().for_each(|r| r.late = false);
            }
            let now = t0 + Duration::from_secs(minute as u64 * 60);
            lanes
                .add(
                    LoggedBatch {
                        seq: minute as u64 + 1,
                        rows,
                        hold: None,
                    },
                    now,
                )
                .unwrap();
            // The thread looks at the policy as each record arrives and when a timer fires; a
            // record a minute does both.
            for cut in lanes
                .due_cuts(now + Duration::from_secs(59), false)
                .unwrap()
            {
                files.extend(cut.files.unwrap().into_iter().map(|f| (cut.lane, f)));
            }
        }
        for cut in lanes.due_cuts(t0, true).unwrap() {
            files.extend(cut.files.unwrap().into_iter().map(|f| (cut.lane, f)));
        }
        let mut per_day: BTreeMap<i64, usize> = BTreeMap::new();
        let (mut late_files, mut late_rows) = (0, 0);
        for (lane, f) in &files {
            assert_eq!(f.key.table, Table::Assignments);
            *per_day.entry(f.key.hour.div_euclid(24)).or_default() += 1;
            if *lane == Lane::Late {
                late_files += 1;
                late_rows += f.rows;
            }
        }
        let total: usize = files.iter().map(|(_, f)| f.rows).sum();
        assert_eq!(total, 1440 * per_minute, "every row is in exactly one file");
        (per_day, late_files, late_rows)
    }

    #[test]
    fn late_rows_wait_in_their_own_lane_and_make_few_files() {
        let (before, _, _) = simulate_day(100, false);
        let (after, late_files, late_rows) = simulate_day(100, true);
        eprintln!("files per partition-day (day index: count), 5% late, 100 events/min");
        eprintln!("  one lane:  {before:?}");
        eprintln!("  two lanes: {after:?} ({late_files} late files, {late_rows} late rows)");
        let sum = |m: &BTreeMap<i64, usize>| m.values().sum::<usize>();
        // The current hour's 1,440 cuts stay; late partitions get a file per late cut (about
        // hourly) instead of one per minute.
        let late_partitions: BTreeSet<i64> = (2..=48).collect();
        assert!(late_files <= 25 * late_partitions.len(), "{late_files}");
        assert!(
            sum(&before) - 1440 >= 5 * (sum(&after) - 1440),
            "{before:?} vs {after:?}"
        );
        assert_eq!(late_rows, 1440 * 5);
    }

    #[test]
    fn an_empty_late_lane_follows_the_current_one_and_a_busy_one_keeps_its_place() {
        let policy = FlushPolicy {
            max_rows: 1000,
            max_bytes: 32 << 20,
            max_age: Duration::from_secs(60),
            late_max_age: Duration::from_secs(3600),
        };
        let mut lanes = Lanes::new(policy, [10, 10], None);
        let t0 = Instant::now();
        lanes
            .add(
                LoggedBatch {
                    seq: 11,
                    rows: Vec::new(),
                    hold: None,
                },
                t0,
            )
            .unwrap();
        let cuts = lanes.due_cuts(t0, true).unwrap();
        let got: Vec<(Lane, u64, u64)> = cuts.iter().map(|c| (c.lane, c.after, c.seq)).collect();
        assert_eq!(got, [(Lane::Current, 10, 11), (Lane::Late, 10, 11)]);
    }
}
