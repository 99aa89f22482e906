//! `POST /v1/events`: read the body, validate, dedup, log, acknowledge.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::time::Instant;

use super::body::{self, ReadBody};
use super::response::{ApiError, Body, json};
use super::{AppState, Caller};
use crate::auth::Writer;
use crate::batch::{self, PartitionBounds};
use crate::budget::Reservation;
use crate::config::AckMode;
use crate::dedup::{DedupWindow, EventKey};
use crate::validate::codec::{Decoding, DecompressError};
use crate::validate::{self, BodyError, BodyFormat};
use crate::wal::record::{ENCODING_GZIP, ENCODING_IDENTITY, ENCODING_ZSTD};
use crate::wal::{AppendError, BatchRecord};

#[derive(Serialize)]
struct IngestResponse {
    accepted: usize,
    duplicates: usize,
    rejected: Vec<RejectedEvent>,
}

#[derive(Serialize)]
struct RejectedEvent {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    code: &'static str,
    message: String,
}

/// Counts of one ingested body.
#[derive(Debug, Clone, Copy)]
pub struct Ingested {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
}

pub async fn handle(
    state: &AppState,
    caller: &Caller,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let format = body_format(req.headers())?;
    let encoding = content_encoding(req.headers())?;
    let limits = state.config.limits;
    let (parts, incoming) = req.into_parts();
    let body = body::read(
        &parts.headers,
        incoming,
        limits.max_body_bytes,
        deadline,
        &state.budget,
    )
    .await?;
    let mut rejected = Vec::new();
    let counts =
        ingest_collecting(state, caller, body, format, encoding, Some(&mut rejected)).await?;
    Ok(json(
        StatusCode::OK,
        &IngestResponse {
            accepted: counts.accepted,
            duplicates: counts.duplicates,
            rejected,
        },
    ))
}

/// Validate, dedup and log one body built by the gateway itself (exposures it logs).
pub async fn ingest(
    state: &AppState,
    caller: &Caller,
    wire: Bytes,
    format: BodyFormat,
    encoding: u8,
) -> Result<Ingested, ApiError> {
    let mut hold = state.budget.empty();
    hold.grow(wire.len()).map_err(ApiError::overloaded)?;
    let body = ReadBody { bytes: wire, hold };
    ingest_collecting(state, caller, body, format, encoding, None).await
}

/// Bodies at least this large *decompressed* are decompressed and decoded on the blocking pool,
/// so one big request does not hold an async worker for milliseconds (~0.1 ms per KB of events).
/// A compressed body is inflated inline up to this size, and moved to the pool if it grows past.
const BLOCKING_BODY_BYTES: usize = 128 << 10;

/// A body decoded, deduplicated and turned into rows: everything owned, ready to log.
struct Prepared {
    rows: Vec<batch::PartitionRows>,
    fresh: Vec<bool>,
    inserted: Vec<EventKey>,
    duplicates: usize,
    rejected: Vec<RejectedEvent>,
    /// The wire body and the rows' memory; the decompressed body and the decoded events are
    /// given back once the rows exist.
    hold: Reservation,
}

/// Everything `prepare` needs, owned, so it can run on the blocking pool.
struct Job {
    wire_len: usize,
    format: BodyFormat,
    max_events: usize,
    dedup: Arc<DedupWindow>,
    writer: Option<Writer>,
    received: chrono::DateTime<chrono::Utc>,
    bounds: PartitionBounds,
    source: Option<Arc<str>>,
    exposures: Arc<crate::srm::ExposureHealth>,
    experiments: Arc<crate::assign::Experiments>,
}

async fn ingest_collecting(
    state: &AppState,
    caller: &Caller,
    body: ReadBody,
    format: BodyFormat,
    encoding: u8,
    rejected_out: Option<&mut Vec<RejectedEvent>>,
) -> Result<Ingested, ApiError> {
    let limits = state.config.limits;
    let received = chrono::Utc::now();
    let received_micros = received.timestamp_micros();
    let ReadBody { bytes: wire, hold } = body;
    let job = Job {
        wire_len: wire.len(),
        format,
        max_events: limits.max_events,
        dedup: state.pipeline.dedup.clone(),
        writer: caller.writer.clone(),
        received,
        bounds: state.pipeline.bounds,
        source: caller.source().cloned(),
        exposures: state.exposures.clone(),
        experiments: state.experiments.current(),
    };
    if let Some(cluster) = state.pipeline.cluster.clone() {
        let job = ClusterJob {
            job,
            source: caller.source().cloned(),
            partitions: cluster.partitions(),
        };
        let p = decoded(
            &wire,
            encoding,
            limits.max_decompressed_bytes,
            hold,
            move |plain, hold| job.run(plain, hold),
        )
        .await?;
        let appended = cluster.append(p.segments).await;
        drop(p.hold);
        let appended = appended.map_err(|e| {
            state.pipeline.health.cluster_log_failed(e.to_string());
            log_unavailable(e)
        })?;
        state.pipeline.health.log_appended();
        let counts = Ingested {
            accepted: appended.accepted,
            duplicates: appended.duplicates,
            rejected: p.rejected.len(),
        };
        record_metrics(&counts, &p.rejected);
        if let Some(out) = rejected_out {
            out.extend(p.rejected);
        }
        return Ok(counts);
    }
    let p = decoded(
        &wire,
        encoding,
        limits.max_decompressed_bytes,
        hold,
        move |plain, hold| job.run(plain, hold),
    )
    .await?;

    // Nothing new and nothing refused (all duplicates, or an empty batch): nothing to log.
    if !p.inserted.is_empty() || !p.rejected.is_empty() {
        let record = BatchRecord {
            seq: 0,
            received_micros,
            bounds: state.pipeline.bounds,
            format,
            encoding,
            fresh: p.fresh,
            source: caller.source().cloned(),
            body: wire,
        };
        let result = match state.pipeline.wal.try_append(
            record,
            p.rows,
            p.inserted.clone(),
            Some(p.hold),
        ) {
            Ok(ack) if state.config.ack == AckMode::Durable => {
                ack.await.unwrap_or(Err(AppendError::Closed))
            }
            Ok(ack) => {
                // Buffered: answer now; a later write failure can no longer reach the client.
                tokio::spawn(async move {
                    if let Ok(Err(e)) = ack.await {
                        tracing::error!(error = %e, "buffered batch was acknowledged but not logged");
                    }
                });
                Ok(0)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Not acknowledged: forget the ids so the client's retry is not a "duplicate".
            state.pipeline.dedup.forget(&p.inserted);
            return Err(unavailable(e));
        }
    }

    let counts = Ingested {
        accepted: p.inserted.len(),
        duplicates: p.duplicates,
        rejected: p.rejected.len(),
    };
    record_metrics(&counts, &p.rejected);
    if let Some(out) = rejected_out {
        out.extend(p.rejected);
    }
    Ok(counts)
}

/// Decompress `wire` (inline while small, on the blocking pool past [`BLOCKING_BODY_BYTES`])
/// and hand the plain body to `run`, on the blocking pool too when it is large.
async fn decoded<T: Send + 'static>(
    wire: &Bytes,
    encoding: u8,
    max_decompressed: usize,
    mut hold: Reservation,
    run: impl FnOnce(&Bytes, Reservation) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let join_error =
        |e: tokio::task::JoinError| ApiError::Internal(format!("decoding failed: {e}"));
    match Decoding::start(encoding, wire, max_decompressed).map_err(decompress_error)? {
        Decoding::Plain(plain) if plain.len() < BLOCKING_BODY_BYTES => run(&plain, hold),
        Decoding::Plain(plain) => tokio::task::spawn_blocking(move || run(&plain, hold))
            .await
            .map_err(join_error)?,
        Decoding::Inflate(mut inflater) => {
            if inflater
                .step(BLOCKING_BODY_BYTES, &mut hold)
                .map_err(decompress_error)?
            {
                run(&inflater.finish(), hold)
            } else {
                tokio::task::spawn_blocking(move || {
                    inflater
                        .step(usize::MAX, &mut hold)
                        .map_err(decompress_error)?;
                    run(&inflater.finish(), hold)
                })
                .await
                .map_err(join_error)?
            }
        }
    }
}

pub(super) fn decompress_error(e: DecompressError) -> ApiError {
    match e {
        DecompressError::TooLarge { limit } => {
            ApiError::PayloadTooLarge(format!("body decompresses to more than {limit} bytes"))
        }
        DecompressError::OverBudget(e) => ApiError::overloaded(e),
        other => ApiError::bad_request("invalid_encoding", other.to_string()),
    }
}

impl Job {
    /// Decode, rate-limit, dedup and build rows. `hold` covers the body so far (wire and
    /// decompressed); it grows for the decoded events and rows, then shrinks to wire + rows.
    fn run(self, plain: &Bytes, mut hold: Reservation) -> Result<Prepared, ApiError> {
        // Decoded events and their rows together stay within twice the decompressed body.
        hold.grow(2 * plain.len()).map_err(ApiError::overloaded)?;
        let valid = validate::decode(plain, self.format, self.max_events).map_err(body_error)?;
        if let Some(writer) = &self.writer {
            writer.spend(valid.len()).map_err(|e| {
                metrics::counter!(crate::metrics::RATE_LIMITED).increment(1);
                ApiError::RateLimited {
                    code: "rate_limited",
                    message: format!("{e}; nothing from this request was accepted"),
                    retry_after_secs: e.retry_after.as_secs_f64().ceil().max(1.0) as u64,
                }
            })?;
        }
        let fresh = self.dedup.admit(valid, self.received.timestamp_millis());
        self.exposures.observe(&self.experiments, &fresh);
        let rows = if fresh.accepted() > 0 || !fresh.valid.rejected.is_empty() {
            batch::rows(
                &fresh,
                self.received.timestamp_micros(),
                self.bounds,
                self.source.as_deref(),
            )
        } else {
            Vec::new()
        };
        let rejected = fresh
            .valid
            .rejected
            .iter()
            .map(|r| RejectedEvent {
                index: r.index,
                event_id: r.event_id.as_deref().map(str::to_owned),
                code: r.code.as_str(),
                message: r.message.clone(),
            })
            .collect();
        let row_bytes: usize = rows.iter().map(|r| r.batch.get_array_memory_size()).sum();
        // Shrinking never fails: rows are built within the 2x reserved above.
        let _ = hold.resize(self.wire_len + row_bytes);
        Ok(Prepared {
            rows,
            duplicates: fresh.duplicates(),
            rejected,
            fresh: fresh.fresh,
            inserted: fresh.inserted,
            hold,
        })
    }
}

/// A request in cluster mode: its segments, one per partition, ready to append.
struct ClusterPrepared {
    segments: Vec<crate::cluster::message::Outgoing>,
    rejected: Vec<RejectedEvent>,
    /// The wire body and the segments.
    hold: Reservation,
}

/// Cluster mode's work on a body: decode and rate-limit as on one node, then split the events
/// into one segment per partition, which the appender groups into messages. No dedup here: the
/// partitions' writers do it.
struct ClusterJob {
    job: Job,
    source: Option<Arc<str>>,
    partitions: u32,
}

impl ClusterJob {
    fn run(self, plain: &Bytes, mut hold: Reservation) -> Result<ClusterPrepared, ApiError> {
        let job = self.job;
        // Decoded events and the segments together stay within twice the decompressed body.
        hold.grow(2 * plain.len()).map_err(ApiError::overloaded)?;
        let valid = validate::decode(plain, job.format, job.max_events).map_err(body_error)?;
        if let Some(writer) = &job.writer {
            writer.spend(valid.len()).map_err(|e| {
                metrics::counter!(crate::metrics::RATE_LIMITED).increment(1);
                ApiError::RateLimited {
                    code: "rate_limited",
                    message: format!("{e}; nothing from this request was accepted"),
                    retry_after_secs: e.retry_after.as_secs_f64().ceil().max(1.0) as u64,
                }
            })?;
        }
        let raws = validate::raw_elements(plain, job.format).map_err(body_error)?;
        let segments = crate::cluster::message::split(
            &valid,
            &raws,
            crate::cluster::message::Header {
                received_micros: job.received.timestamp_micros(),
                bounds: job.bounds,
                source: self.source.as_deref(),
            },
            self.partitions,
        );
        let rejected = valid
            .rejected
            .iter()
            .map(|r| RejectedEvent {
                index: r.index,
                event_id: r.event_id.as_deref().map(str::to_owned),
                code: r.code.as_str(),
                message: r.message.clone(),
            })
            .collect();
        let fresh = vec![true; valid.events.len()];
        job.exposures.observe(
            &job.experiments,
            &crate::dedup::FreshBatch::with_fresh(valid, fresh),
        );
        let message_bytes: usize = segments.iter().map(|m| m.payload.len()).sum();
        let _ = hold.resize(job.wire_len + message_bytes);
        Ok(ClusterPrepared {
            segments,
            rejected,
            hold,
        })
    }
}

fn log_unavailable(e: crate::cluster::LogError) -> ApiError {
    use crate::cluster::LogError;
    let reason = match &e {
        LogError::Unavailable(_) => "log_unavailable",
        LogError::TooLarge(_) => {
            return ApiError::PayloadTooLarge(format!(
                "{e}; raise the NATS servers' max_payload or send smaller requests"
            ));
        }
        LogError::Config(_) | LogError::Other(_) => "log_unwritable",
    };
    metrics::counter!(crate::metrics::OVERLOADED, "reason" => reason).increment(1);
    ApiError::Unavailable {
        reason,
        message: format!("{e}; nothing from this request was acknowledged, retry later"),
    }
}

fn body_error(e: BodyError) -> ApiError {
    match e {
        BodyError::TooManyEvents { limit } => {
            ApiError::PayloadTooLarge(format!("batch has more than {limit} events"))
        }
        BodyError::Syntax { offset, reason } => ApiError::BadRequest {
            code: "invalid_json",
            message: format!("body is not valid JSON at byte {offset}: {reason}"),
            offset: Some(offset),
        },
        BodyError::NotAnArray => {
            ApiError::bad_request("invalid_json", "body must be a JSON array of event objects")
        }
    }
}

fn record_metrics(counts: &Ingested, rejected: &[RejectedEvent]) {
    metrics::counter!(crate::metrics::EVENTS_ACCEPTED).increment(counts.accepted as u64);
    metrics::counter!(crate::metrics::EVENTS_DUPLICATE).increment(counts.duplicates as u64);
    for r in rejected {
        metrics::counter!(crate::metrics::EVENTS_REJECTED, "code" => r.code).increment(1);
    }
}

fn unavailable(e: AppendError) -> ApiError {
    let reason = match e {
        AppendError::Busy => "overloaded",
        AppendError::OverBudget { .. } => "log_full",
        AppendError::Io(_) => "log_unwritable",
        AppendError::Closed => "shutting_down",
    };
    metrics::counter!(crate::metrics::OVERLOADED, "reason" => reason).increment(1);
    ApiError::Unavailable {
        reason,
        message: format!("{e}; nothing from this request was accepted, retry later"),
    }
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(BodyFormat::JsonArray),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            Ok(BodyFormat::NdJson)
        }
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content-type {raw:?} is not supported; use application/json or application/x-ndjson"
        ))),
    }
}

fn content_encoding(headers: &HeaderMap) -> Result<u8, ApiError> {
    let raw = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(ENCODING_IDENTITY),
        "gzip" | "x-gzip" => Ok(ENCODING_GZIP),
        "zstd" => Ok(ENCODING_ZSTD),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content-encoding {raw:?} is not supported; use gzip, zstd or none"
        ))),
    }
}
