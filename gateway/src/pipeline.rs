//! Wires the stages after the HTTP layer: log writer thread -> file writer thread -> uploader task.
//!
//! Owns start-up recovery (replay of the log, re-doing pending cuts) and orderly shutdown.
//!
//! ```text
//! handlers --try_append--> [wal writer] --LoggedBatch--> [file writer] --Cut--> [uploader]
//!            (bounded)      fsync, ack      (bounded)     Parquet       (bounded)  object store,
//!                                                                                  cuts.log, retire
//! ```
//! Every channel is bounded, so a slow stage pushes back to the handlers, which answer 503.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;

use crate::batch::{self, PartitionBounds};
use crate::config::Config;
use crate::dedup::{DedupWindow, EventKey, FreshBatch, event_key};
use crate::health::{Health, Stage, StageGuard};
use crate::sink::{Backoff, Sink};
use crate::validate;
use crate::wal::cuts::CutLog;
use crate::wal::{BatchRecord, LoggedBatch, WalHandle, WalWriter, list_segments, open_segments};
use crate::writer::{
    Cut, FileWriter, FlushPolicy, HYDRATED_CUTS, Lane, Lanes, LogPressure, SealedFile,
};

/// Logged batches waiting for the file writer.
const LOGGED_QUEUE: usize = 4096;

/// The running stages.
#[derive(Debug)]
pub struct Pipeline {
    pub wal: WalHandle,
    pub dedup: Arc<DedupWindow>,
    pub bounds: PartitionBounds,
    pub health: Arc<Health>,
    wal_thread: std::thread::JoinHandle<()>,
    writer_thread: std::thread::JoinHandle<()>,
    uploader: tokio::task::JoinHandle<()>,
    prober: tokio::task::JoinHandle<()>,
    catalog: Option<tokio::task::JoinHandle<()>>,
    _lock: fs::File,
}

/// How often storage is probed (besides every upload) for `/readyz`.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Recover, then start every stage. Must be called inside a Tokio runtime. `store` is the
/// opened (not yet contacted) object store and its prefix.
pub async fn start(
    config: &Config,
    store: (Arc<dyn object_store::ObjectStore>, object_store::path::Path),
    health: Arc<Health>,
    served: Option<tokio::sync::mpsc::UnboundedReceiver<crate::reload::Served>>,
) -> anyhow::Result<Pipeline> {
    let state_dir = &config.state_dir;
    fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let lock = lock_state_dir(state_dir)?;
    let node_id = node_id(state_dir)?;
    let sink = Sink::new(store.0, store.1, node_id)
        .with_backoff(Backoff {
            initial: Duration::from_millis(100),
            max: config.upload.retry_max_backoff,
        })
        .with_multipart(config.upload.multipart_threshold_bytes, 8 << 20);
    // Storage being down is no reason not to start: the log absorbs traffic; /readyz tells.
    let prober = tokio::spawn({
        let (sink, health) = (sink.clone(), health.clone());
        async move {
            loop {
                let _ = sink.probe(&health).await;
                tokio::time::sleep(PROBE_EVERY).await;
            }
        }
    });

    let catalog =
        served.map(|rx| tokio::spawn(crate::catalog::run(rx, sink.clone(), health.clone())));

    // One journal per writer lane; a late journal first met here starts where the current
    // one is (before lanes, every row was cut in the current lane).
    let (current_log, current_state) = CutLog::open(&state_dir.join(Lane::Current.journal()))?;
    let late_path = state_dir.join(Lane::Late.journal());
    let first_late = !late_path.exists();
    let (mut late_log, mut late_state) = CutLog::open(&late_path)?;
    if first_late {
        late_log.done(current_state.durable)?;
        late_state.durable = current_state.durable;
    }
    let states = [current_state, late_state];
    let durable = [states[0].durable, states[1].durable];
    let wal_dir = state_dir.join("wal");
    let segments = open_segments(&wal_dir)?;
    let dedup = Arc::new(DedupWindow::new(config.dedup));
    let wal_bytes = Arc::new(AtomicU64::new(segments.bytes));
    // What a restart found, rather than zeros until the first write and the first cut.
    metrics::gauge!(crate::metrics::WAL_BYTES).set(segments.bytes as f64);
    metrics::gauge!(crate::metrics::DURABLE_SEQ).set(durable[0].min(durable[1]) as f64);

    // Unbounded, but only the first HYDRATED_CUTS entries hold file bytes; the rest are a few
    // numbers each, and their count is bounded by the log's disk budget.
    let (cut_tx, cut_rx) = flume::unbounded::<Cut>();
    let uploader = tokio::spawn(upload_loop(Uploader {
        health: health.clone(),
        rx: cut_rx,
        sink,
        journals: Arc::new(Mutex::new(Journals {
            logs: [current_log, late_log],
            durable,
        })),
        wal_dir: wal_dir.clone(),
        wal_bytes: wal_bytes.clone(),
        concurrency: config.upload.concurrency,
        dedup_window: config.dedup.window,
        flush: config.flush,
        max_decompressed: config.limits.max_decompressed_bytes,
    }));

    // Dedup memory first: the ids of recent requests, also those already in storage.
    let now_ms = chrono::Utc::now().timestamp_millis();
    for path in crate::wal::ids::sidecars(&wal_dir)? {
        for (received_ms, keys) in crate::wal::ids::parse(&fs::read(&path)?) {
            dedup.remember(keys, received_ms, now_ms);
        }
    }

    // Replay: rebuild each lane's rows of every record it has not made durable, cutting where
    // its journal says.
    let pressure = LogPressure {
        log_bytes: wal_bytes.clone(),
        limit_bytes: config.wal.disk_budget_bytes / 4,
    };
    let mut lanes = Lanes::new(config.flush, durable, Some(pressure));
    let mut replayed = 0u64;
    let mut pending = states.map(|s| s.pending.into_iter().peekable());
    let start = durable[0].min(durable[1]);
    for record in segments.replay(start) {
        let record = record?;
        let seq = record.seq;
        let (rows, keys) = record_rows(&record, config.limits.max_decompressed_bytes)
            .with_context(|| format!("replaying log record {seq}"))?;
        dedup.remember(keys, record.received_micros / 1000, now_ms);
        let (late, current): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.late);
        let now = std::time::Instant::now();
        for (lane, rows) in [(Lane::Current, current), (Lane::Late, late)] {
            if seq > durable[lane.index()] {
                lanes.lane(lane).add_rows(seq, rows, now)?;
            }
            while pending[lane.index()].next_if(|&p| p <= seq).is_some() {
                if let Some(cut) = lanes.lane(lane).cut()? {
                    send_cut(&cut_tx, cut);
                }
            }
        }
        replayed += 1;
    }
    // What remains after the last pending cut goes out now rather than waiting for a policy;
    // late rows wait for theirs.
    if let Some(cut) = lanes.current.cut()? {
        send_cut(&cut_tx, cut);
    }
    if lanes.late.rows() == 0
        && let Some(cut) = lanes.late.cut()?
    {
        send_cut(&cut_tx, cut);
    }
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            after = start,
            "replayed write-ahead log"
        );
    }

    let (logged_tx, logged_rx) = flume::bounded::<LoggedBatch>(LOGGED_QUEUE);
    let writer_thread = std::thread::Builder::new()
        .name("file-writer".into())
        .spawn({
            let health = health.clone();
            move || {
                let guard = StageGuard::new(&health, Stage::FileWriter);
                match lanes.run(logged_rx, cut_tx) {
                    Ok(()) => guard.finish(),
                    Err(e) => guard.fail(format!("{e}; rows stay in the write-ahead log")),
                }
            }
        })?;
    let (wal, wal_thread) = WalWriter {
        dir: wal_dir,
        segment_bytes: config.wal.segment_bytes,
        budget_bytes: config.wal.disk_budget_bytes,
        queue_len: config.wal.queue_len,
    }
    .spawn(&segments, wal_bytes, logged_tx, health.clone())?;

    Ok(Pipeline {
        wal,
        dedup,
        bounds: config.partition,
        health,
        prober,
        catalog,
        wal_thread,
        writer_thread,
        uploader,
        _lock: lock,
    })
}

impl Pipeline {
    /// Stop taking records, flush every buffered row into files and wait (up to `timeout`) for
    /// their upload. What does not make it stays in the log and is replayed at the next start.
    pub async fn shutdown(self, timeout: Duration) -> anyhow::Result<()> {
        let Pipeline {
            wal,
            wal_thread,
            writer_thread,
            uploader,
            prober,
            catalog,
            health,
            ..
        } = self;
        health.shutting_down();
        prober.abort();
        wal.close().await;
        drop(wal);
        let joined = tokio::task::spawn_blocking(move || {
            let a = wal_thread.join();
            let b = writer_thread.join();
            a.is_ok() && b.is_ok()
        })
        .await?;
        anyhow::ensure!(joined, "a pipeline thread panicked");
        match tokio::time::timeout(timeout, uploader).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(
                timeout_secs = timeout.as_secs(),
                "uploads still pending at shutdown; they stay in the write-ahead log"
            ),
        }
        // The version in force is written again at the next start if this one was cut short.
        if let Some(catalog) = catalog {
            catalog.abort();
        }
        Ok(())
    }
}

fn send_cut(tx: &flume::Sender<Cut>, mut cut: Cut) {
    if tx.len() >= HYDRATED_CUTS {
        cut.files = None;
    }
    let _ = tx.send(cut);
}

/// Decode a logged record back into its rows, and the dedup keys of its new events.
fn record_rows(
    record: &BatchRecord,
    max_decompressed: usize,
) -> anyhow::Result<(Vec<batch::PartitionRows>, Vec<EventKey>)> {
    let body = validate::codec::decompress(record.encoding, &record.body, max_decompressed)?;
    let valid = validate::decode(&body, record.format, usize::MAX)
        .map_err(|e| anyhow::anyhow!("logged body no longer decodes: {e}"))?;
    anyhow::ensure!(
        valid.events.len() == record.fresh.len(),
        "logged body has {} valid events, record says {}",
        valid.events.len(),
        record.fresh.len()
    );
    let keys: Vec<_> = valid
        .events
        .iter()
        .zip(&record.fresh)
        .filter(|(_, f)| **f)
        .map(|(e, _)| event_key(&e.event_id))
        .collect();
    let fresh = FreshBatch::with_fresh(valid, record.fresh.clone());
    Ok((
        batch::rows(
            &fresh,
            record.received_micros,
            record.bounds,
            record.source.as_deref(),
        ),
        keys,
    ))
}

/// Rebuild the files of a dehydrated cut from the log: the lane's rows of records
/// `after+1..=seq`.
/// Those records are synced and whole; the writer may be appending past them meanwhile.
fn rehydrate(
    wal_dir: &Path,
    lane: Lane,
    after: u64,
    seq: u64,
    flush: FlushPolicy,
    max_decompressed: usize,
) -> anyhow::Result<Vec<SealedFile>> {
    let mut writer = FileWriter::new(flush, lane, after);
    let mut last = after;
    for record in list_segments(wal_dir)?.replay(after) {
        match record {
            Ok(r) if r.seq <= seq => {
                let (rows, _) = record_rows(&r, max_decompressed)?;
                last = r.seq;
                writer.add(LoggedBatch {
                    seq: r.seq,
                    rows,
                    hold: None,
                })?;
            }
            Ok(_) => break,
            // A record being appended right now, past the cut.
            Err(_) if last == seq => break,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::ensure!(
        last == seq,
        "log ends at {last}, cut {seq} cannot be rebuilt"
    );
    Ok(writer.cut()?.and_then(|c| c.files).unwrap_or_default())
}

struct Uploader {
    health: Arc<Health>,
    rx: flume::Receiver<Cut>,
    sink: Sink,
    journals: Arc<Mutex<Journals>>,
    wal_dir: PathBuf,
    wal_bytes: Arc<AtomicU64>,
    concurrency: usize,
    dedup_window: Duration,
    flush: FlushPolicy,
    max_decompressed: usize,
}

/// Upload cuts in order: journal `cut`, upload every file, journal `done`, retire segments.
/// Stops (and says why, in the health state) on the first error a retry cannot fix.
async fn upload_loop(u: Uploader) {
    let health = u.health.clone();
    let guard = StageGuard::new(&health, Stage::Uploader);
    match upload_cuts(&u).await {
        Ok(()) => guard.finish(),
        Err(reason) => guard.fail(format!("{reason}; rows stay in the write-ahead log")),
    }
}

/// Both lanes' cut journals, and how far each lane is in storage.
struct Journals {
    logs: [CutLog; 2],
    durable: [u64; 2],
}

async fn upload_cuts(u: &Uploader) -> Result<(), String> {
    while let Ok(cut) = u.rx.recv_async().await {
        let (seq, lane) = (cut.seq, cut.lane);
        let files = match cut.files {
            Some(files) => files,
            None => {
                let (dir, flush, max) = (u.wal_dir.clone(), u.flush, u.max_decompressed);
                let after = cut.after;
                tokio::task::spawn_blocking(move || rehydrate(&dir, lane, after, seq, flush, max))
                    .await
                    .map_err(|e| format!("rebuilding cut {seq} from the log panicked: {e}"))?
                    .map_err(|e| format!("cannot rebuild cut {seq} from the log: {e:#}"))?
            }
        };
        // Without the journal entry a crash could re-cut differently: do not upload.
        journal(&u.journals, lane, seq, false)
            .await
            .map_err(|e| format!("cannot journal cut {seq}: {e}"))?;
        let count = files.len();
        let results = futures::stream::iter(files)
            .map(|file| {
                let (sink, health) = (u.sink.clone(), u.health.clone());
                async move { sink.put(&file, seq, lane, &health).await }
            })
            .buffer_unordered(u.concurrency)
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(format!("upload of cut {seq} failed permanently: {e}"));
        }
        // Records are in storage once both lanes have cut past them.
        let seq = journal(&u.journals, lane, seq, true)
            .await
            .map_err(|e| format!("cannot journal finished cut {seq}: {e}"))?;
        metrics::gauge!(crate::metrics::DURABLE_SEQ).set(seq as f64);
        let dir = u.wal_dir.clone();
        let keep = u.dedup_window * 2;
        let retired = tokio::task::spawn_blocking(move || {
            let freed = crate::wal::retire(&dir, seq)?;
            crate::wal::ids::expire(&dir, keep)?;
            Ok::<_, std::io::Error>(freed)
        });
        match retired.await {
            Ok(Ok(freed)) => {
                let _ = u
                    .wal_bytes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                        Some(b.saturating_sub(freed))
                    });
            }
            // The log is durable either way; space is reclaimed at the next retirement.
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete retired log segments"),
            Err(e) => tracing::warn!(error = %e, "segment retirement panicked"),
        }
        tracing::debug!(seq, files = count, "cut durable");
    }
    Ok(())
}

/// Journal `cut seq` or `done seq` for `lane`; returns the sequence every record up to which is
/// in storage (the lesser of the lanes' durable points).
async fn journal(
    journals: &Arc<Mutex<Journals>>,
    lane: Lane,
    seq: u64,
    done: bool,
) -> std::io::Result<u64> {
    let journals = journals.clone();
    tokio::task::spawn_blocking(move || {
        let mut j = journals.lock().unwrap_or_else(|p| p.into_inner());
        let i = lane.index();
        if done {
            j.logs[i].done(seq)?;
            j.durable[i] = j.durable[i].max(seq);
        } else {
            j.logs[i].begin(seq)?;
        }
        Ok(j.durable[0].min(j.durable[1]))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// One process per state dir: two writers appending to one log would corrupt it.
fn lock_state_dir(dir: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "state dir {} is in use by another gateway process",
            dir.display()
        )
    })?;
    Ok(file)
}

/// A random id made at first start and kept in the state dir; it names this gateway's objects.
fn node_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node_id");
    match fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(id)
}
