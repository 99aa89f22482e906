//! `Bytes -> ValidBatch`: decode a request body into borrowed events and check them one by one.
//!
//! Owns the event schema of `POST /v1/events` (see `docs/api.md`). It does no I/O and knows nothing
//! of HTTP: the caller hands it the (already decompressed) body and a [`BodyFormat`].
//!
//! Invariants:
//! - Events borrow from the body: strings are `Cow<str>` that only own when the JSON string had
//!   escapes; `props` is kept as the raw JSON text of the object. No per-event heap allocation on
//!   the accepted path.
//! - Validation is per event: a bad event becomes a [`Rejection`] (with its index, and its raw JSON
//!   filled in by a second pass over the body) and never fails the request. Only an unreadable body
//!   (not JSON, not an array, too many events) is a [`BodyError`].
//! - The result is a pure function of the body: replaying a logged body yields the same batch.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use json::{Key, Scalar, check_props};
use serde_json::value::RawValue;

/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Longest accepted `user_id`, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Longest accepted `unit_id` (the randomization unit's value), in bytes.
pub const MAX_UNIT_ID_BYTES: usize = 256;
/// Longest accepted `unit_attribute` or `config_version`, in bytes.
pub const MAX_UNIT_ATTRIBUTE_BYTES: usize = 128;
/// Longest accepted `experiment`, `variant` or conversion `name`, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most keys accepted in `props`.
pub const MAX_PROPS_KEYS: usize = 64;
/// Longest `props` key, in bytes.
pub const MAX_PROP_KEY_BYTES: usize = 128;
/// Longest `props` string value, in bytes (as it decodes, escapes resolved).
///
/// Part of the pure validation function, so a constant, not a setting: a logged body must
/// validate the same way when it is replayed.
pub const MAX_PROP_VALUE_BYTES: usize = 1024;
/// Accepted event times: 2000-01-01T00:00:00Z up to (excluding) 2100-01-01T00:00:00Z, in µs.
const MIN_TS_MICROS: i64 = 946_684_800_000_000;
const MAX_TS_MICROS: i64 = 4_102_444_800_000_000;

/// How the body lists its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one JSON array of event objects.
    JsonArray,
    /// `application/x-ndjson`: one event object per line; a malformed line rejects only itself.
    NdJson,
}

impl BodyFormat {
    /// Stable one-byte tag, stored in the write-ahead log.
    pub fn tag(self) -> u8 {
        match self {
            BodyFormat::JsonArray => 0,
            BodyFormat::NdJson => 1,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(BodyFormat::JsonArray),
            1 => Some(BodyFormat::NdJson),
            _ => None,
        }
    }
}

/// The two event tables clients write to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Assignment,
    Conversion,
}

/// One event that passed validation; strings borrow from the request body.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent<'a> {
    /// Position in the request, as the client counts (0-based).
    pub index: u32,
    pub event_id: Cow<'a, str>,
    pub kind: EventKind,
    /// Event time in microseconds since the Unix epoch (UTC).
    pub ts_micros: i64,
    /// The user, when known. Required on conversions; on an assignment, optional when the
    /// randomization unit is given on its own.
    pub user_id: Option<Cow<'a, str>>,
    /// Assignment only: the attribute the experiment hashed on (`device_id`) and its value, the
    /// randomization unit. Without them the unit is the user: `("user_id", user_id)`.
    pub unit_attribute: Option<Cow<'a, str>>,
    pub unit_id: Option<Cow<'a, str>>,
    /// Assignment only: the experiments-config version the variant was evaluated under.
    pub config_version: Option<Cow<'a, str>>,
    /// Load-test or other synthetic traffic, to be left out of readouts.
    pub synthetic: bool,
    pub experiment: Option<Cow<'a, str>>,
    pub variant: Option<Cow<'a, str>>,
    /// Conversion name (`purchase`); `None` for assignments.
    pub name: Option<Cow<'a, str>>,
    pub value: Option<f64>,
    /// Raw JSON text of the flat `props` object, as the client sent it.
    pub props: Option<&'a str>,
}

/// Why an event was refused. The string forms are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    MissingField,
    UnknownField,
    DuplicateField,
    InvalidType,
    InvalidValue,
    InvalidProps,
    MalformedJson,
}

impl RejectCode {
    pub const ALL: [RejectCode; 7] = [
        RejectCode::MissingField,
        RejectCode::UnknownField,
        RejectCode::DuplicateField,
        RejectCode::InvalidType,
        RejectCode::InvalidValue,
        RejectCode::InvalidProps,
        RejectCode::MalformedJson,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::MissingField => "missing_field",
            RejectCode::UnknownField => "unknown_field",
            RejectCode::DuplicateField => "duplicate_field",
            RejectCode::InvalidType => "invalid_type",
            RejectCode::InvalidValue => "invalid_value",
            RejectCode::InvalidProps => "invalid_props",
            RejectCode::MalformedJson => "malformed_json",
        }
    }
}

/// An event that failed validation. It is still written, raw, to the `rejected` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection<'a> {
    pub index: u32,
    pub event_id: Option<Cow<'a, str>>,
    pub code: RejectCode,
    pub message: String,
    /// The event's JSON text as sent (lossy UTF-8 for a malformed NDJSON line).
    pub raw: Cow<'a, str>,
}

/// The request as a whole could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("body is not valid JSON at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: String },
    #[error("body must be a JSON array of event objects")]
    NotAnArray,
    #[error("batch has more than {limit} events")]
    TooManyEvents { limit: usize },
}

/// A decoded request: accepted events and rejections, both in request order.
#[derive(Debug, Default)]
pub struct ValidBatch<'a> {
    pub events: Vec<ValidEvent<'a>>,
    pub rejected: Vec<Rejection<'a>>,
}

impl ValidBatch<'_> {
    /// Events in the request, accepted or not.
    pub fn len(&self) -> usize {
        self.events.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decode and validate `body`. `max_events` bounds the batch (counted before validation).
pub fn decode(
    body: &[u8],
    format: BodyFormat,
    max_events: usize,
) -> Result<ValidBatch<'_>, BodyError> {
    match format {
        BodyFormat::JsonArray => decode_array(body, max_events),
        BodyFormat::NdJson => decode_ndjson(body, max_events),
    }
}

/// The JSON text of each element of a body that [`decode`] read, in request order (the index
/// of an event or rejection is its position here). Cluster mode forwards events as this text.
pub fn raw_elements(body: &[u8], format: BodyFormat) -> Result<Vec<&str>, BodyError> {
    match format {
        BodyFormat::JsonArray => {
            let raws: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| array_error(body, &e))?;
            Ok(raws.into_iter().map(RawValue::get).collect())
        }
        BodyFormat::NdJson => Ok(body
            .split(|&b| b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            // A line that is not UTF-8 is a rejection, whose text the caller takes from it.
            .map(|line| std::str::from_utf8(line).unwrap_or(""))
            .collect()),
    }
}

fn decode_array(body: &[u8], max_events: usize) -> Result<ValidBatch<'_>, BodyError> {
    let mut batch = ValidBatch::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut too_many = false;
    let seed = BatchSeed {
        batch: &mut batch,
        max_events,
        too_many: &mut too_many,
    };
    let result = de.deserialize_seq(seed);
    // The walk stops at the first event over the limit; serde then complains about the rest of
    // the array, but the limit is the answer.
    if too_many {
        return Err(BodyError::TooManyEvents { limit: max_events });
    }
    result.map_err(|e| array_error(body, &e))?;
    de.end().map_err(|e| array_error(body, &e))?;
    if !batch.rejected.is_empty() {
        // Rare path: a second pass to recover the raw text of each refused element.
        let raws: Vec<&RawValue> =
            serde_json::from_slice(body).map_err(|e| array_error(body, &e))?;
        for r in &mut batch.rejected {
            r.raw = Cow::Borrowed(raws[r.index as usize].get());
        }
    }
    Ok(batch)
}

fn array_error(body: &[u8], e: &serde_json::Error) -> BodyError {
    if e.classify() == serde_json::error::Category::Data {
        return BodyError::NotAnArray;
    }
    let offset = match e.classify() {
        // The body ended early: the problem is at its end.
        serde_json::error::Category::Eof => body.len(),
        _ => byte_offset(body, e.line(), e.column()),
    };
    BodyError::Syntax {
        offset,
        reason: e.to_string(),
    }
}

/// serde_json reports 1-based line and column (in bytes); turn them into a byte offset.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start = body
        .split_inclusive(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(<[u8]>::len)
        .sum::<usize>();
    (line_start + column.saturating_sub(1)).min(body.len())
}

fn decode_ndjson(body: &[u8], max_events: usize) -> Result<ValidBatch<'_>, BodyError> {
    let mut batch = ValidBatch::default();
    let mut index: u32 = 0;
    for line in body.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if index as usize >= max_events {
            return Err(BodyError::TooManyEvents { limit: max_events });
        }
        match serde_json::from_slice::<Outcome<'_>>(line) {
            Ok(outcome) => batch.push(index, outcome, line),
            Err(e) => batch.rejected.push(Rejection {
                index,
                event_id: None,
                code: RejectCode::MalformedJson,
                message: format!("line is not a JSON object: {e}"),
                raw: String::from_utf8_lossy(line),
            }),
        }
        index += 1;
    }
    Ok(batch)
}

impl<'a> ValidBatch<'a> {
    fn push(&mut self, index: u32, outcome: Outcome<'a>, raw: &'a [u8]) {
        match outcome {
            Outcome::Valid(mut event) => {
                event.index = index;
                self.events.push(event);
            }
            Outcome::Invalid {
                event_id,
                code,
                message,
            } => self.rejected.push(Rejection {
                index,
                event_id,
                code,
                message,
                raw: String::from_utf8_lossy(raw),
            }),
        }
    }
}

/// Walks the top-level array, pushing each element's outcome; flags a batch over the limit.
struct BatchSeed<'b, 'a> {
    batch: &'b mut ValidBatch<'a>,
    max_events: usize,
    too_many: &'b mut bool,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(hint) = seq.size_hint() {
            self.batch.events.reserve(hint.min(self.max_events));
        }
        let mut index: u32 = 0;
        while let Some(outcome) = seq.next_element::<Outcome<'de>>()? {
            if index as usize >= self.max_events {
                *self.too_many = true;
                // Stop early: the rest of the body is not worth parsing.
                return Ok(());
            }
            match outcome {
                Outcome::Valid(mut event) => {
                    event.index = index;
                    self.batch.events.push(event);
                }
                Outcome::Invalid {
                    event_id,
                    code,
                    message,
                } => self.batch.rejected.push(Rejection {
                    index,
                    event_id,
                    code,
                    message,
                    raw: Cow::Borrowed(""),
                }),
            }
            index += 1;
        }
        Ok(())
    }
}

/// The result of reading one event object. Deserializing never fails on a *semantic* problem
/// (wrong type, missing field): that becomes `Invalid`, so the rest of the batch is still read.
enum Outcome<'a> {
    Valid(ValidEvent<'a>),
    Invalid {
        event_id: Option<Cow<'a, str>>,
        code: RejectCode,
        message: String,
    },
}

#[derive(Clone, Copy)]
enum Field {
    EventId,
    Type,
    Ts,
    UserId,
    Experiment,
    Variant,
    Name,
    Value,
    Props,
    UnitAttribute,
    UnitId,
    ConfigVersion,
    Synthetic,
}

impl Field {
    fn parse(key: &str) -> Option<Field> {
        Some(match key {
            "event_id" => Field::EventId,
            "type" => Field::Type,
            "ts" => Field::Ts,
            "user_id" => Field::UserId,
            "experiment" => Field::Experiment,
            "variant" => Field::Variant,
            "name" => Field::Name,
            "value" => Field::Value,
            "props" => Field::Props,
            "unit_attribute" => Field::UnitAttribute,
            "unit_id" => Field::UnitId,
            "config_version" => Field::ConfigVersion,
            "synthetic" => Field::Synthetic,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        [
            "event_id",
            "type",
            "ts",
            "user_id",
            "experiment",
            "variant",
            "name",
            "value",
            "props",
            "unit_attribute",
            "unit_id",
            "config_version",
            "synthetic",
        ][self as usize]
    }
}

/// Fields as read, before the cross-field checks.
#[derive(Default)]
struct Fields<'a> {
    seen: u16,
    event_id: Option<Scalar<'a>>,
    kind: Option<Scalar<'a>>,
    ts: Option<Scalar<'a>>,
    user_id: Option<Scalar<'a>>,
    experiment: Option<Scalar<'a>>,
    variant: Option<Scalar<'a>>,
    name: Option<Scalar<'a>>,
    value: Option<Scalar<'a>>,
    props: Option<&'a RawValue>,
    unit_attribute: Option<Scalar<'a>>,
    unit_id: Option<Scalar<'a>>,
    config_version: Option<Scalar<'a>>,
    synthetic: Option<Scalar<'a>>,
    /// First problem met while reading; the event is rejected with it.
    problem: Option<(RejectCode, String)>,
}

impl<'de> de::Deserialize<'de> for Outcome<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Outcome<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut f = Fields::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let Some(field) = Field::parse(&key) else {
                map.next_value::<IgnoredAny>()?;
                f.problem.get_or_insert_with(|| {
                    (RejectCode::UnknownField, format!("unknown field \"{key}\""))
                });
                continue;
            };
            let bit = 1u16 << field as u16;
            if f.seen & bit != 0 {
                map.next_value::<IgnoredAny>()?;
                f.problem.get_or_insert_with(|| {
                    (
                        RejectCode::DuplicateField,
                        format!("{} appears twice", field.name()),
                    )
                });
                continue;
            }
            f.seen |= bit;
            match field {
                Field::Props => f.props = Some(map.next_value::<&'de RawValue>()?),
                _ => {
                    let v = map.next_value::<Scalar<'de>>()?;
                    let slot = match field {
                        Field::EventId => &mut f.event_id,
                        Field::Type => &mut f.kind,
                        Field::Ts => &mut f.ts,
                        Field::UserId => &mut f.user_id,
                        Field::Experiment => &mut f.experiment,
                        Field::Variant => &mut f.variant,
                        Field::Name => &mut f.name,
                        Field::Value => &mut f.value,
                        Field::UnitAttribute => &mut f.unit_attribute,
                        Field::UnitId => &mut f.unit_id,
                        Field::ConfigVersion => &mut f.config_version,
                        Field::Synthetic => &mut f.synthetic,
                        Field::Props => unreachable!("handled above"),
                    };
                    *slot = Some(v);
                }
            }
        }
        Ok(f.finish())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_an_object("an array"))
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        Ok(not_an_object("a string"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(not_an_object("a string"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(not_an_object("a number"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(not_an_object("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(not_an_object("null"))
    }
}

fn not_an_object(what: &str) -> Outcome<'static> {
    Outcome::Invalid {
        event_id: None,
        code: RejectCode::InvalidType,
        message: format!("event must be a JSON object, got {what}"),
    }
}

type Check<T> = Result<T, (RejectCode, String)>;

impl<'a> Fields<'a> {
    fn finish(mut self) -> Outcome<'a> {
        // The id is reported even when something else is wrong, so clients can match rejections.
        let event_id = match self.event_id.take() {
            Some(Scalar::Str(s)) => Some(s),
            _ => None,
        };
        match self.check(event_id.as_ref()) {
            Ok(event) => Outcome::Valid(event),
            Err((code, message)) => Outcome::Invalid {
                event_id,
                code,
                message,
            },
        }
    }

    fn check(&mut self, event_id: Option<&Cow<'a, str>>) -> Check<ValidEvent<'a>> {
        if let Some(problem) = self.problem.take() {
            return Err(problem);
        }
        if self.seen & (1 << Field::EventId as u16) == 0 {
            return Err(missing(Field::EventId));
        }
        let Some(event_id) = event_id else {
            return Err(wrong_type(Field::EventId, "a string", "another type"));
        };
        check_len(Field::EventId, event_id, MAX_EVENT_ID_BYTES)?;
        let kind = match required_str(Field::Type, self.kind.take())?.as_ref() {
            "assignment" => EventKind::Assignment,
            "conversion" => EventKind::Conversion,
            other => {
                return Err((
                    RejectCode::InvalidValue,
                    format!("type must be \"assignment\" or \"conversion\", got \"{other}\""),
                ));
            }
        };
        let ts_micros = parse_ts(self.ts.take())?;
        let user_id = optional_str(Field::UserId, self.user_id.take(), MAX_USER_ID_BYTES)?;
        let unit_attribute = optional_str(
            Field::UnitAttribute,
            self.unit_attribute.take(),
            MAX_UNIT_ATTRIBUTE_BYTES,
        )?;
        let unit_id = optional_str(Field::UnitId, self.unit_id.take(), MAX_UNIT_ID_BYTES)?;
        let config_version = optional_str(
            Field::ConfigVersion,
            self.config_version.take(),
            MAX_UNIT_ATTRIBUTE_BYTES,
        )?;
        let synthetic = match self.synthetic.take() {
            None | Some(Scalar::Null) => false,
            Some(Scalar::Bool(b)) => b,
            Some(other) => {
                return Err(wrong_type(Field::Synthetic, "a boolean", other.type_name()));
            }
        };
        let experiment = optional_str(Field::Experiment, self.experiment.take(), MAX_NAME_BYTES)?;
        let variant = optional_str(Field::Variant, self.variant.take(), MAX_NAME_BYTES)?;
        let name = optional_str(Field::Name, self.name.take(), MAX_NAME_BYTES)?;
        let value = match self.value.take() {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Int(v)) => Some(v as f64),
            Some(Scalar::UInt(v)) => Some(v as f64),
            // serde_json never yields a non-finite float, but the contract is ours to keep.
            Some(Scalar::Float(v)) if v.is_finite() => Some(v),
            Some(other) => {
                return Err(wrong_type(
                    Field::Value,
                    "a finite number",
                    other.type_name(),
                ));
            }
        };
        match kind {
            EventKind::Assignment => {
                if experiment.is_none() {
                    return Err(missing(Field::Experiment));
                }
                if variant.is_none() {
                    return Err(missing(Field::Variant));
                }
                for f in [Field::Name, Field::Value] {
                    if self.seen & (1 << f as u16) != 0 {
                        return Err((
                            RejectCode::UnknownField,
                            format!("{} is only allowed on conversion events", f.name()),
                        ));
                    }
                }
                match (&unit_attribute, &unit_id) {
                    (Some(_), Some(_)) => {}
                    (None, None) if user_id.is_some() => {}
                    (None, None) => return Err(missing(Field::UserId)),
                    (Some(_), None) => return Err(missing(Field::UnitId)),
                    (None, Some(_)) => return Err(missing(Field::UnitAttribute)),
                }
            }
            EventKind::Conversion => {
                if name.is_none() {
                    return Err(missing(Field::Name));
                }
                if user_id.is_none() {
                    return Err(missing(Field::UserId));
                }
                for f in [Field::UnitAttribute, Field::UnitId, Field::ConfigVersion] {
                    if self.seen & (1 << f as u16) != 0 {
                        return Err((
                            RejectCode::UnknownField,
                            format!("{} is only allowed on assignment events", f.name()),
                        ));
                    }
                }
            }
        }
        let props = match self.props {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(check_props(raw.get())?),
        };
        Ok(ValidEvent {
            index: 0,
            event_id: event_id.clone(),
            kind,
            ts_micros,
            user_id,
            unit_attribute,
            unit_id,
            config_version,
            synthetic,
            experiment,
            variant,
            name,
            value,
            props,
        })
    }
}

fn missing(field: Field) -> (RejectCode, String) {
    (
        RejectCode::MissingField,
        format!("{} is required", field.name()),
    )
}

fn wrong_type(field: Field, want: &str, got: &str) -> (RejectCode, String) {
    (
        RejectCode::InvalidType,
        format!("{} must be {want}, got {got}", field.name()),
    )
}

fn optional_str<'a>(
    field: Field,
    v: Option<Scalar<'a>>,
    max: usize,
) -> Check<Option<Cow<'a, str>>> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) => {
            check_len(field, &s, max)?;
            Ok(Some(s))
        }
        Some(other) => Err(wrong_type(field, "a string", other.type_name())),
    }
}

fn required_str<'a>(field: Field, v: Option<Scalar<'a>>) -> Check<Cow<'a, str>> {
    match v {
        None | Some(Scalar::Null) => Err(missing(field)),
        Some(Scalar::Str(s)) => Ok(s),
        Some(other) => Err(wrong_type(field, "a string", other.type_name())),
    }
}

fn check_len(field: Field, s: &str, max: usize) -> Check<()> {
    if s.is_empty() || s.len() > max {
        return Err((
            RejectCode::InvalidValue,
            format!(
                "{} must be 1 to {max} bytes long, got {}",
                field.name(),
                s.len()
            ),
        ));
    }
    Ok(())
}

fn parse_ts(v: Option<Scalar<'_>>) -> Check<i64> {
    let micros = match v {
        None | Some(Scalar::Null) => return Err(missing(Field::Ts)),
        Some(Scalar::Str(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|e| {
                (
                    RejectCode::InvalidValue,
                    format!("ts must be an RFC 3339 time or epoch milliseconds: \"{s}\": {e}"),
                )
            })?
            .timestamp_micros(),
        Some(Scalar::Int(ms)) => ms.saturating_mul(1000),
        Some(Scalar::UInt(ms)) => i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1000),
        Some(other) => {
            return Err(wrong_type(
                Field::Ts,
                "an RFC 3339 string or integer epoch milliseconds",
                other.type_name(),
            ));
        }
    };
    if !(MIN_TS_MICROS..MAX_TS_MICROS).contains(&micros) {
        return Err((
            RejectCode::InvalidValue,
            "ts must be between 2000-01-01 and 2100-01-01".to_owned(),
        ));
    }
    Ok(micros)
}

pub mod codec;
mod json;

#[cfg(test)]
mod tests;
