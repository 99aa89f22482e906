//! Analytics SDK batches (Segment's and RudderStack's tracking API, PostHog's capture API) ->
//! our events, so those SDKs can post to the gateway unchanged.
//!
//! Pure: a decoded SDK body and the receive time in, a `POST /v1/events` body out (a JSON array
//! of our events), plus what was skipped. The gateway then validates, deduplicates and logs that
//! body exactly as if a client had posted it, and the log stores it, so a replay is the same.
//!
//! The mapping (`docs/api.md` has it for SDK users):
//! - `messageId` (Segment) / `uuid` (PostHog) -> `event_id`;
//! - `timestamp`, else `originalTimestamp`, else the receive time -> `ts` (a time without an
//!   offset is UTC);
//! - `userId`, else `anonymousId`, else `distinct_id` -> `user_id`;
//! - track `Experiment Viewed` (`experimentId`, `variationId`, and the unit as `hashAttribute`
//!   and `hashValue` when the tracking callback sends them) and PostHog's `$feature_flag_called`
//!   (`$feature_flag`, `$feature_flag_response`) -> an assignment;
//! - any other track event (a PostHog event not starting with `$`) -> a conversion: `name` the
//!   event, `value` from `revenue`, else `value`, and the flat scalar properties as `props`;
//! - `identify`, `page`, `screen`, `group`, `alias` and PostHog's other `$` events are counted as
//!   skipped.
//!
//! A message that cannot be mapped (no id, an id of the wrong type) still becomes an event, with
//! what it has: validation then refuses it with its reason, into the rejected table.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// The SDK protocols understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Segment's HTTP tracking API, also spoken by RudderStack's SDKs.
    Segment,
    /// PostHog's capture API.
    PostHog,
}

/// A translated body.
#[derive(Debug, Default)]
pub struct Translated {
    /// A JSON array of events, for the ingest path.
    pub events: Vec<u8>,
    pub count: usize,
    /// Calls that are not events here (`identify`, `page`, `$pageview`, ...).
    pub skipped: usize,
    /// The write key or API key the body carries (Segment `writeKey`, PostHog `api_key`).
    pub key: Option<String>,
}

/// Why a body could not be read at all (a single bad message is never one).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TranslateError {
    #[error("body is not valid JSON at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: String },
    #[error("body must be a JSON object (one call, or a batch with a \"batch\" array)")]
    NotAnObject,
    #[error("\"batch\" must be an array of call objects")]
    BatchNotArray,
    #[error("batch has more than {limit} calls")]
    TooMany { limit: usize },
}

/// The name GrowthBook's docs give the exposure track call.
pub const EXPERIMENT_VIEWED: &str = "Experiment Viewed";
/// PostHog's exposure event.
pub const FEATURE_FLAG_CALLED: &str = "$feature_flag_called";

/// Translate one SDK body (decompressed) received at `received`.
pub fn translate(
    protocol: Protocol,
    body: &[u8],
    received: DateTime<Utc>,
    max_calls: usize,
) -> Result<Translated, TranslateError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| TranslateError::Syntax {
        offset: byte_offset(body, e.line(), e.column()),
        reason: e.to_string(),
    })?;
    let Value::Object(mut top) = value else {
        return Err(TranslateError::NotAnObject);
    };
    let key = ["writeKey", "write_key", "api_key", "token"]
        .iter()
        .find_map(|k| top.get(*k).and_then(Value::as_str))
        .map(str::to_owned);
    let calls = match top.remove("batch") {
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(TranslateError::BatchNotArray),
        None => vec![Value::Object(top)],
    };
    if calls.len() > max_calls {
        return Err(TranslateError::TooMany { limit: max_calls });
    }
    let mut out = Translated {
        key,
        ..Translated::default()
    };
    let mut events = Vec::with_capacity(calls.len());
    for call in calls {
        let event = match (protocol, call) {
            (Protocol::Segment, Value::Object(call)) => segment(&call, received),
            (Protocol::PostHog, Value::Object(call)) => posthog(&call, received),
            // Not an object: validation refuses it and keeps it in the rejected table.
            (_, other) => Some(other),
        };
        match event {
            Some(e) => events.push(e),
            None => out.skipped += 1,
        }
    }
    out.count = events.len();
    out.events = serde_json::to_vec(&events).expect("JSON values serialize");
    Ok(out)
}

fn segment(call: &Map<String, Value>, received: DateTime<Utc>) -> Option<Value> {
    // RudderStack's SDKs send the same calls; a call without a type is a track call's shape.
    let kind = call.get("type").and_then(Value::as_str).unwrap_or("track");
    if !kind.eq_ignore_ascii_case("track") {
        return None;
    }
    let name = call.get("event");
    let properties = call.get("properties").and_then(Value::as_object);
    let mut event = common(call, "messageId", received);
    let is_exposure = name
        .and_then(Value::as_str)
        .is_some_and(|n| n.eq_ignore_ascii_case(EXPERIMENT_VIEWED));
    if is_exposure {
        let get = |a: &str, b: &str| properties.and_then(|p| p.get(a).or_else(|| p.get(b)));
        assignment(
            &mut event,
            get("experimentId", "experiment_id"),
            get("variationId", "variation_id"),
            get("hashAttribute", "hash_attribute"),
            get("hashValue", "hash_value"),
        );
        let used = [
            "experimentId",
            "experiment_id",
            "variationId",
            "variation_id",
            "hashAttribute",
            "hash_attribute",
            "hashValue",
            "hash_value",
        ];
        props(&mut event, properties, &used);
    } else {
        conversion(&mut event, name, properties);
    }
    Some(Value::Object(event))
}

fn posthog(call: &Map<String, Value>, received: DateTime<Utc>) -> Option<Value> {
    let name = call.get("event");
    let properties = call.get("properties").and_then(Value::as_object);
    let text = name.and_then(Value::as_str).unwrap_or("");
    let exposure = text == FEATURE_FLAG_CALLED;
    if text.starts_with('$') && !exposure {
        return None;
    }
    let mut event = common(call, "uuid", received);
    if exposure {
        let get = |k: &str| properties.and_then(|p| p.get(k));
        assignment(
            &mut event,
            get("$feature_flag"),
            get("$feature_flag_response"),
            None,
            None,
        );
        props(
            &mut event,
            properties,
            &["$feature_flag", "$feature_flag_response"],
        );
    } else {
        conversion(&mut event, name, properties);
    }
    Some(Value::Object(event))
}

/// `event_id`, `ts`, `user_id`: what every mapped call has.
fn common(
    call: &Map<String, Value>,
    id_field: &str,
    received: DateTime<Utc>,
) -> Map<String, Value> {
    let mut event = Map::new();
    if let Some(id) = call.get(id_field) {
        event.insert("event_id".into(), id.clone());
    }
    let ts = ["timestamp", "originalTimestamp"]
        .iter()
        .find_map(|k| call.get(*k).filter(|v| !v.is_null()));
    event.insert(
        "ts".into(),
        match ts {
            Some(Value::String(s)) => Value::String(normalize_time(s)),
            Some(other) => other.clone(),
            None => Value::String(received.to_rfc3339_opts(SecondsFormat::Micros, true)),
        },
    );
    let user = ["userId", "anonymousId", "distinct_id"]
        .iter()
        .find_map(|k| call.get(*k).filter(|v| !is_blank(v)));
    if let Some(user) = user {
        event.insert("user_id".into(), id_string(user));
    }
    event
}

fn assignment(
    event: &mut Map<String, Value>,
    experiment: Option<&Value>,
    variant: Option<&Value>,
    unit_attribute: Option<&Value>,
    unit_id: Option<&Value>,
) {
    event.insert("type".into(), json!("assignment"));
    if let Some(e) = experiment {
        event.insert("experiment".into(), id_string(e));
    }
    if let Some(v) = variant {
        event.insert("variant".into(), id_string(v));
    }
    if let (Some(attribute), Some(unit)) = (unit_attribute, unit_id)
        && !is_blank(unit)
    {
        event.insert("unit_attribute".into(), attribute.clone());
        event.insert("unit_id".into(), id_string(unit));
    }
}

fn conversion(
    event: &mut Map<String, Value>,
    name: Option<&Value>,
    properties: Option<&Map<String, Value>>,
) {
    event.insert("type".into(), json!("conversion"));
    if let Some(name) = name {
        event.insert("name".into(), name.clone());
    }
    let value_field = ["revenue", "value"].into_iter().find(|k| {
        properties
            .and_then(|p| p.get(*k))
            .is_some_and(Value::is_number)
    });
    if let Some(k) = value_field {
        event.insert("value".into(), properties.expect("found in it")[k].clone());
    }
    props(event, properties, value_field.as_slice());
}

/// The flat scalar properties (strings, numbers, booleans) but those already mapped.
fn props(event: &mut Map<String, Value>, properties: Option<&Map<String, Value>>, used: &[&str]) {
    let flat: Map<String, Value> = properties
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            !used.contains(&k.as_str())
                && matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !flat.is_empty() {
        event.insert("props".into(), Value::Object(flat));
    }
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Ids sent as numbers or booleans become their text (`42` -> `"42"`), as the SDKs' own
/// backends store them; anything else is passed on for validation to refuse.
fn id_string(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        other => other.clone(),
    }
}

/// An ISO 8601 time without an offset (`2026-12-02T07:30:00.123456`, as some SDKs write naive
/// times) is read as UTC; anything else is passed on as written.
fn normalize_time(s: &str) -> String {
    if DateTime::parse_from_rfc3339(s).is_ok() {
        return s.to_owned();
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, format) {
            return naive.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true);
        }
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return t.to_rfc3339_opts(SecondsFormat::Micros, true);
    }
    s.to_owned()
}

/// serde_json reports line and column; the API reports byte offsets.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = body
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}

#[cfg(test)]
#[path = "compat_tests.rs"]
mod tests;
