//! The analytics SDKs' batch routes: Segment's `POST /v1/batch` and `/v1/track` (RudderStack's
//! SDKs speak the same), PostHog's `POST /batch/` and `/capture/`.
//!
//! A body is read within the same limits as `/v1/events`, decompressed (gzip by
//! `Content-Encoding`, or by its magic bytes whatever the headers say), read as JSON (or as a
//! form with a `data` field), translated by [`crate::compat`], and then validated, deduplicated
//! and logged exactly as `/v1/events` does. Whatever the content type: SDKs send
//! `application/json`, `text/plain` or a form type for the same JSON.
//!
//! Answers are what the SDKs expect: 200 with `{"success": true}` (Segment) or `{"status": 1}`
//! (PostHog) whatever single events were refused (they are counted in the answer and kept in
//! the rejected table). Errors have top-level `code` and `message`. Overload is 429 with
//! `Retry-After`, which every one of these SDKs retries after (some ignore `Retry-After` on 503).

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::time::Instant;

use super::AppState;
use super::body;
use super::ingest::{self, decompress_error};
use super::response::{ApiError, Body, json};
use crate::compat::{Batch, Protocol, TranslateError};
use crate::validate::BodyFormat;
use crate::validate::codec::Decoding;
use crate::wal::record::ENCODING_IDENTITY;

/// Which SDK route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Api {
    pub protocol: Protocol,
}

impl Api {
    pub fn for_path(path: &str) -> Api {
        let protocol = if path.starts_with("/v1/") {
            Protocol::Segment
        } else {
            Protocol::PostHog
        };
        Api { protocol }
    }

    pub fn route_name(self) -> &'static str {
        match self.protocol {
            Protocol::Segment => "segment",
            Protocol::PostHog => "posthog",
        }
    }
}

#[derive(Serialize)]
struct Answer {
    /// Segment's `{"success": true}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    /// PostHog's `{"status": 1}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u8>,
    accepted: usize,
    duplicates: usize,
    rejected: usize,
    skipped: usize,
}

pub async fn handle(
    state: &AppState,
    api: Api,
    authorization: Option<&[u8]>,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    sdk_errors(handle_inner(state, api, authorization, req, deadline).await)
}

async fn handle_inner(
    state: &AppState,
    api: Api,
    authorization: Option<&[u8]>,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let limits = state.config.limits;
    // A wrong key in the header is refused before the body is read (and the body dropped, so
    // the client sees the answer), as on /v1/events.
    if authorization.is_some()
        && let Err(e) = super::writer(state, authorization)
    {
        body::discard(req.into_body(), limits.max_body_bytes, deadline).await;
        return Err(e);
    }
    let (parts, incoming) = req.into_parts();
    let read = body::read(
        &parts.headers,
        incoming,
        limits.max_body_bytes,
        deadline,
        &state.budget,
    )
    .await?;
    let mut hold = read.hold;
    let plain = decompress(
        &parts.headers,
        &read.bytes,
        limits.max_decompressed_bytes,
        &mut hold,
    )?;
    let text = form_data(&parts.headers, &plain)?;
    let batch = Batch::parse(&text, limits.max_events).map_err(translate_error)?;
    hold.grow(batch.translation_bytes())
        .map_err(ApiError::overloaded)?;
    let translated = batch.translate(api.protocol, chrono::Utc::now());
    let caller = match (authorization, &translated.key) {
        (Some(header), _) => super::writer(state, Some(header))?,
        (None, Some(key)) => super::writer(state, Some(format!("Bearer {key}").as_bytes()))?,
        (None, None) => super::writer(state, None)?,
    };
    drop((plain, text, read.bytes, hold));
    let counts = if translated.count == 0 {
        ingest::Ingested {
            accepted: 0,
            duplicates: 0,
            rejected: 0,
        }
    } else {
        ingest::ingest(
            state,
            &caller,
            Bytes::from(translated.events),
            BodyFormat::JsonArray,
            ENCODING_IDENTITY,
        )
        .await?
    };
    // Counted once the request is accepted: a batch refused (429) and retried counts once.
    metrics::counter!(crate::metrics::SDK_CALLS_SKIPPED, "route" => api.route_name())
        .increment(translated.skipped as u64);
    let (success, status) = match api.protocol {
        Protocol::Segment => (Some(true), None),
        Protocol::PostHog => (None, Some(1)),
    };
    Ok(json(
        StatusCode::OK,
        &Answer {
            success,
            status,
            accepted: counts.accepted,
            duplicates: counts.duplicates,
            rejected: counts.rejected,
            skipped: translated.skipped,
        },
    ))
}

/// Overload becomes 429 with `Retry-After` (see the module docs); the rest is unchanged.
fn sdk_errors(result: Result<Response<Body>, ApiError>) -> Result<Response<Body>, ApiError> {
    match result {
        Err(ApiError::Unavailable { reason, message }) => Err(ApiError::RateLimited {
            code: reason,
            message,
            retry_after_secs: 1,
        }),
        other => other,
    }
}

/// Gzip by header or by magic bytes (one SDK gzips under a form content type); zstd by header.
fn decompress(
    headers: &HeaderMap,
    wire: &Bytes,
    limit: usize,
    hold: &mut crate::budget::Reservation,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let encoding = match declared.as_deref() {
        Some("gzip" | "x-gzip") => crate::wal::record::ENCODING_GZIP,
        Some("zstd") => crate::wal::record::ENCODING_ZSTD,
        Some("" | "identity") | None if wire.starts_with(&[0x1f, 0x8b]) => {
            crate::wal::record::ENCODING_GZIP
        }
        Some("" | "identity") | None => ENCODING_IDENTITY,
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content-encoding {other:?} is not supported; use gzip, zstd or none"
            )));
        }
    };
    match Decoding::start(encoding, wire, limit).map_err(decompress_error)? {
        Decoding::Plain(plain) => Ok(plain),
        Decoding::Inflate(mut inflater) => {
            inflater.step(usize::MAX, hold).map_err(decompress_error)?;
            Ok(inflater.finish())
        }
    }
}

/// A form body (`data=...`, the JSON itself or its base64) yields its JSON; anything else is
/// taken as JSON whatever its content type.
fn form_data(headers: &HeaderMap, plain: &Bytes) -> Result<Bytes, ApiError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let first = plain.iter().find(|b| !b.is_ascii_whitespace());
    if !form || matches!(first, Some(b'{' | b'[')) {
        return Ok(plain.clone());
    }
    let data = url::form_urlencoded::parse(plain)
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_json",
                "a form body must carry the JSON in its \"data\" field",
            )
        })?;
    if data.trim_start().starts_with(['{', '[']) {
        return Ok(Bytes::from(data));
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(Bytes::from)
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_json",
                "the form's \"data\" field is neither JSON nor base64 JSON",
            )
        })
}

fn translate_error(e: TranslateError) -> ApiError {
    match e {
        TranslateError::Syntax { offset, .. } => ApiError::BadRequest {
            code: "invalid_json",
            message: e.to_string(),
            offset: Some(offset),
        },
        TranslateError::TooMany { .. } => ApiError::PayloadTooLarge(e.to_string()),
        TranslateError::NotAnObject | TranslateError::Shape(_) => {
            ApiError::bad_request("invalid_json", e.to_string())
        }
    }
}
