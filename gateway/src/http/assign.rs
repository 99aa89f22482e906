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
    /// Marks logged exposures as load-test traffic (the `synthetic` column).
    #[serde(default)]
    synthetic: bool,
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
        Exposure {
            log: request.log_exposure,
            synthetic: request.synthetic,
        },
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
    let mut exposure = Exposure::default();
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "user_id" => {
                attributes.insert("user_id".into(), Value::String(v.into_owned()));
            }
            "experiment" => experiments.push(v.into_owned()),
            "log_exposure" => exposure.log = matches!(v.as_ref(), "1" | "true"),
            "synthetic" => exposure.synthetic = matches!(v.as_ref(), "1" | "true"),
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
    answer(state, caller, &attributes, experiments, exposure).await
}

/// Whether to log exposures for the assignments answered, and how to mark them.
#[derive(Debug, Default, Clone, Copy)]
struct Exposure {
    log: bool,
    synthetic: bool,
}

async fn answer(
    state: &AppState,
    caller: &Caller,
    attributes: &Map<String, Value>,
    experiments: Option<Vec<String>>,
    exposure: Exposure,
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
    let exposures_logged = if exposure.log {
        // A numeric user id is written as the SDKs hash and send it: its JavaScript string form.
        let user_id = crate::assign::Unit::new(attributes).id("user_id");
        let logged = Logged {
            config_version: config.version(),
            user_id: user_id.as_deref(),
            synthetic: exposure.synthetic,
        };
        Some(log_exposures(state, caller, &assignments, &logged, now).await?)
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

/// What every exposure logged by one assign request shares.
struct Logged<'a> {
    config_version: &'a str,
    /// The `user_id` attribute, when the request had one.
    user_id: Option<&'a str>,
    synthetic: bool,
}

/// Write an `assignment` event for each exposure, through the ingest path (validated, deduped,
/// logged before we answer). The event id is derived from unit, experiment, variant and UTC day,
/// so repeated exposures of a unit on one day are one event.
async fn log_exposures(
    state: &AppState,
    caller: &Caller,
    assignments: &[Assignment],
    logged: &Logged<'_>,
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
            "user_id": logged.user_id,
            "unit_attribute": a.hash_attribute.as_ref(),
            "unit_id": unit.as_ref(),
            "config_version": logged.config_version,
            "synthetic": logged.synthetic,
            "experiment": a.experiment.as_ref(),
            "variant": variant.as_ref(),
            // Kept for readers of the lake before the unit columns existed.
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

/// `GET /v1/experiments/{key}/health`: the path's prefix.
pub const HEALTH_PREFIX: &str = "/v1/experiments/";

/// `GET /v1/experiments/{key}/health`: exposed units per variant and the sample-ratio test.
pub fn health(state: &AppState, path: &str) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no route for GET {path}"));
    let key = path
        .strip_prefix(HEALTH_PREFIX)
        .and_then(|rest| rest.strip_suffix("/health"))
        .filter(|key| !key.is_empty() && !key.contains('/'))
        .ok_or_else(not_found)?;
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8()
        .map_err(|_| not_found())?;
    let config = state.experiments.current();
    match state.exposures.report(&config, &key) {
        Some(report) => Ok(json(StatusCode::OK, &report)),
        None => Err(ApiError::NotFound(format!(
            "no experiment {key:?} in config version {}",
            config.version()
        ))),
    }
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
