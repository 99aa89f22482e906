//! `POST /v1/assign`, `GET /v1/assign` and `POST /admin/reload`.
//!
//! Evaluation is [`crate::assign`]'s; this module parses requests, picks the current experiments
//! (one atomic load per request, so a request sees one config), and logs exposures through the
//! same path as clients' events.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::body;
use super::ingest::{self, Ingested};
use super::response::{ApiError, Body, json};
use super::{AppState, Caller};
use crate::assign::{Assignment, Reason, Unit};
use crate::validate::BodyFormat;
use crate::wal::record::ENCODING_IDENTITY;

/// Largest `POST /v1/assign` body.
const MAX_ASSIGN_BODY_BYTES: usize = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    user_id: Option<String>,
    #[serde(default)]
    attributes: Map<String, Value>,
    experiments: Option<Vec<String>>,
    #[serde(default)]
    log_exposure: bool,
}

#[derive(Serialize)]
struct AssignResponse<'a> {
    config_version: &'a str,
    assignments: &'a [Assignment],
    #[serde(skip_serializing_if = "Option::is_none")]
    exposures_logged: Option<usize>,
}

pub async fn post(
    state: &AppState,
    caller: &Caller,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let (parts, incoming) = req.into_parts();
    let body = body::read(
        &parts.headers,
        incoming,
        MAX_ASSIGN_BODY_BYTES,
        deadline,
        &state.budget,
    )
    .await?;
    let request: AssignRequest = serde_json::from_slice(&body.bytes).map_err(|e| {
        ApiError::bad_request("invalid_request", format!("invalid assign request: {e}"))
    })?;
    let mut attributes = request.attributes;
    if let Some(user_id) = request.user_id {
        attributes.insert("user_id".into(), Value::String(user_id));
    }
    drop(body);
    answer(
        state,
        caller,
        &attributes,
        request.experiments,
        request.log_exposure,
    )
    .await
}

pub async fn get(
    state: &AppState,
    caller: &Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let mut attributes = Map::new();
    let mut experiments = Vec::new();
    let mut log_exposure = false;
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "user_id" => {
                attributes.insert("user_id".into(), Value::String(v.into_owned()));
            }
            "experiment" => experiments.push(v.into_owned()),
            "log_exposure" => log_exposure = matches!(v.as_ref(), "1" | "true"),
            other => match other.strip_prefix("attr.") {
                Some(name) if !name.is_empty() => {
                    attributes.insert(name.to_owned(), Value::String(v.into_owned()));
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_request",
                        format!(
                            "unknown query parameter {other:?}; attributes are attr.NAME=VALUE"
                        ),
                    ));
                }
            },
        }
    }
    let experiments = (!experiments.is_empty()).then_some(experiments);
    answer(state, caller, &attributes, experiments, log_exposure).await
}

async fn answer(
    state: &AppState,
    caller: &Caller,
    attributes: &Map<String, Value>,
    experiments: Option<Vec<String>>,
    log_exposure: bool,
) -> Result<Response<Body>, ApiError> {
    let config = state.experiments.current();
    let now = chrono::Utc::now();
    let unit = Unit::new(attributes);
    let keys: Option<Vec<&str>> = experiments
        .as_ref()
        .map(|e| e.iter().map(String::as_str).collect());
    let mut assignments = config.assign(&unit, keys.as_deref(), now);
    if keys.is_none() {
        // "All experiments" means those a unit can be in now, including killed ones (their
        // fallback is what clients must show).
        assignments.retain(|a| {
            !matches!(
                a.reason,
                Reason::Stopped | Reason::NotStarted | Reason::Ended
            )
        });
    }
    for a in &assignments {
        metrics::counter!(crate::metrics::ASSIGNMENTS, "reason" => a.reason.as_str()).increment(1);
        // In an experiment, key and variant are the config's own strings, never client input.
        if let (true, Some(variant)) = (a.in_experiment, &a.variant) {
            metrics::counter!(
                crate::metrics::ASSIGNMENTS_BY_VARIANT,
                "experiment" => a.experiment.to_string(),
                "variant" => variant.to_string()
            )
            .increment(1);
        }
    }
    let exposures_logged = if log_exposure {
        Some(log_exposures(state, caller, &assignments, now).await?)
    } else {
        None
    };
    Ok(json(
        StatusCode::OK,
        &AssignResponse {
            config_version: config.version(),
            assignments: &assignments,
            exposures_logged,
        },
    ))
}

/// Write an `assignment` event for each exposure, through the ingest path (validated, deduped,
/// logged before we answer). The event id is derived from unit, experiment, variant and UTC day,
/// so repeated exposures of a unit on one day are one event.
async fn log_exposures(
    state: &AppState,
    caller: &Caller,
    assignments: &[Assignment],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, ApiError> {
    let day = now.format("%Y-%m-%d").to_string();
    let mut body = String::new();
    let mut count = 0;
    for a in assignments.iter().filter(|a| a.should_log_exposure()) {
        let (Some(variant), Some(unit)) = (&a.variant, &a.hash_value) else {
            continue;
        };
        let id_source = format!("{unit}\u{1f}{}\u{1f}{variant}\u{1f}{day}", a.experiment);
        let event_id = format!(
            "exp-{:032x}",
            xxhash_rust::xxh3::xxh3_128(id_source.as_bytes())
        );
        let event = serde_json::json!({
            "event_id": event_id,
            "type": "assignment",
            "ts": now.timestamp_millis(),
            "user_id": unit.as_ref(),
            "experiment": a.experiment.as_ref(),
            "variant": variant.as_ref(),
            "props": {"source": "gateway", "hash_attribute": a.hash_attribute.as_ref()},
        });
        let _ = writeln!(body, "{event}");
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    let Ingested { rejected, .. } = ingest::ingest(
        state,
        caller,
        Bytes::from(body),
        BodyFormat::NdJson,
        ENCODING_IDENTITY,
    )
    .await?;
    if rejected > 0 {
        // The unit id or names broke an event limit (e.g. an id over 256 bytes): the events are
        // in the rejected table; say so rather than pretend they were logged.
        return Err(ApiError::bad_request(
            "exposure_rejected",
            format!(
                "{rejected} exposure events were refused by validation; see the rejected table"
            ),
        ));
    }
    Ok(count)
}

/// `POST /admin/reload`: reload the experiments file now.
pub async fn reload(state: &AppState) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Reloaded<'a> {
        config_version: &'a str,
        changed: bool,
    }
    let before = state.experiments.current();
    match state.experiments.reload() {
        Ok(now) => Ok(json(
            StatusCode::OK,
            &Reloaded {
                config_version: now.version(),
                changed: now.version() != before.version(),
            },
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_experiments",
            format!(
                "experiments file refused, still serving {}: {e}",
                before.version()
            ),
        )),
    }
}
