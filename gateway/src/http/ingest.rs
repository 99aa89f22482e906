//! `POST /v1/events`: read the body, validate, dedup, log, acknowledge.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use super::AppState;
use super::response::{ApiError, Body, json};
use crate::batch::{self, PartitionBounds};
use crate::config::AckMode;
use crate::dedup::{DedupWindow, EventKey};
use crate::pipeline::{DecompressError, decompress};
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

pub async fn handle(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let format = body_format(req.headers())?;
    let encoding = content_encoding(req.headers())?;
    let limits = state.config.limits;
    if let Some(len) = content_length(req.headers())
        && len > limits.max_body_bytes
    {
        return Err(too_large(limits.max_body_bytes));
    }
    let wire: Bytes = Limited::new(req.into_body(), limits.max_body_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(limits.max_body_bytes)
            } else {
                ApiError::bad_request("unreadable_body", format!("could not read the body: {e}"))
            }
        })?
        .to_bytes();
    let mut rejected = Vec::new();
    let counts = ingest_collecting(state, wire, format, encoding, Some(&mut rejected)).await?;
    Ok(json(
        StatusCode::OK,
        &IngestResponse {
            accepted: counts.accepted,
            duplicates: counts.duplicates,
            rejected,
        },
    ))
}

/// Validate, dedup and log one body; answers once the accepted events are durable.
pub async fn ingest(
    state: &AppState,
    wire: Bytes,
    format: BodyFormat,
    encoding: u8,
) -> Result<Ingested, ApiError> {
    ingest_collecting(state, wire, format, encoding, None).await
}

/// Bodies at least this large as sent are decompressed and decoded on the blocking pool, so one
/// big request does not hold an async worker for milliseconds (~0.1 ms per KB of events).
const BLOCKING_BODY_BYTES: usize = 128 << 10;

/// A body decoded, deduplicated and turned into rows: everything owned, ready to log.
struct Prepared {
    rows: Vec<batch::PartitionRows>,
    fresh: Vec<bool>,
    inserted: Vec<EventKey>,
    duplicates: usize,
    rejected: Vec<RejectedEvent>,
}

async fn ingest_collecting(
    state: &AppState,
    wire: Bytes,
    format: BodyFormat,
    encoding: u8,
    rejected_out: Option<&mut Vec<RejectedEvent>>,
) -> Result<Ingested, ApiError> {
    let limits = state.config.limits;
    let received = chrono::Utc::now();
    let received_micros = received.timestamp_micros();
    let dedup = state.pipeline.dedup.clone();
    let bounds = state.pipeline.bounds;
    let body = wire.clone();
    let prepare = move || {
        let plain =
            decompress(encoding, &body, limits.max_decompressed_bytes).map_err(|e| match e {
                DecompressError::TooLarge { limit } => ApiError::PayloadTooLarge(format!(
                    "body decompresses to more than {limit} bytes"
                )),
                other => ApiError::bad_request("invalid_encoding", other.to_string()),
            })?;
        prepare(&plain, format, limits.max_events, &dedup, received, bounds)
    };
    let p = if wire.len() >= BLOCKING_BODY_BYTES {
        tokio::task::spawn_blocking(prepare)
            .await
            .map_err(|e| ApiError::Internal(format!("decoding failed: {e}")))??
    } else {
        prepare()?
    };

    // Nothing new and nothing refused (all duplicates, or an empty batch): nothing to log.
    if !p.inserted.is_empty() || !p.rejected.is_empty() {
        let record = BatchRecord {
            seq: 0,
            received_micros,
            bounds,
            format,
            encoding,
            fresh: p.fresh,
            body: wire,
        };
        let result = match state
            .pipeline
            .wal
            .try_append(record, p.rows, p.inserted.clone())
        {
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

fn prepare(
    plain: &Bytes,
    format: BodyFormat,
    max_events: usize,
    dedup: &DedupWindow,
    received: chrono::DateTime<chrono::Utc>,
    bounds: PartitionBounds,
) -> Result<Prepared, ApiError> {
    let valid = validate::decode(plain, format, max_events).map_err(|e| match e {
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
    })?;
    let fresh = dedup.admit(valid, received.timestamp_millis());
    let rows = if fresh.accepted() > 0 || !fresh.valid.rejected.is_empty() {
        batch::rows(&fresh, received.timestamp_micros(), bounds)
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
    Ok(Prepared {
        rows,
        duplicates: fresh.duplicates(),
        rejected,
        fresh: fresh.fresh,
        inserted: fresh.inserted,
    })
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

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("body is larger than {limit} bytes"))
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
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
