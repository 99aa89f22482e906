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
//! A call that cannot be mapped (not an object, a field given twice, no id) still becomes an
//! event with what it has: validation then refuses it with its reason, into the rejected table.
//!
//! Memory: nothing is parsed into a tree. Calls stay borrowed slices of the body, fields we do
//! not map are skipped unread, values are copied verbatim, and at most
//! [`MAX_PROPS_KEYS`](crate::validate::MAX_PROPS_KEYS) + 1 properties are kept per call (one more
//! than validation accepts, so an event with too many is refused, not silently cut). The output
//! is at most the body plus [`OUTPUT_BYTES_PER_CALL`] per call, allocated once; besides it a
//! translation holds one call's properties at a time ([`CALL_WORKING_BYTES`]).
//! [`Batch::translation_bytes`] is what the caller reserves in the memory budget.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::validate::MAX_PROPS_KEYS;

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

/// Why a body could not be read at all (a single bad call is never one).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TranslateError {
    #[error("body is not valid JSON at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: String },
    #[error("body must be a JSON object (one call, or a batch with a \"batch\" array)")]
    NotAnObject,
    #[error("body is not a batch of calls: {0}")]
    Shape(String),
    #[error("batch has more than {limit} calls")]
    TooMany { limit: usize },
}

/// The name GrowthBook's docs give the exposure track call.
pub const EXPERIMENT_VIEWED: &str = "Experiment Viewed";
/// PostHog's exposure event.
pub const FEATURE_FLAG_CALLED: &str = "$feature_flag_called";
/// Bound on what translating one call allocates besides the output (its kept properties, freed
/// before the next call); checked by `tests/compat_memory.rs`.
pub const CALL_WORKING_BYTES: usize = 8 << 10;
/// Bound on what one call's event adds to the output beyond the bytes it copies from the call
/// (field names, a receive time, ids turned into strings); checked by `tests/compat_memory.rs`.
pub const OUTPUT_BYTES_PER_CALL: usize = 320;

/// The body's top level: the batch and the key, everything else skipped unread. The batch is
/// read with its length bounded, so a body of a million empty calls is refused while it is read
/// rather than after a vector of them was built.
struct Top<'a> {
    batch: Option<Vec<&'a RawValue>>,
    key: Option<&'a RawValue>,
}

/// Reads a [`Top`] with at most `max_calls` calls.
struct TopSeed {
    max_calls: usize,
}

/// The error message that stands for [`TranslateError::TooMany`] inside serde.
const TOO_MANY: &str = "more calls than allowed";

impl<'de> de::DeserializeSeed<'de> for TopSeed {
    type Value = Top<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top {
            batch: None,
            key: None,
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "batch" if top.batch.is_some() => {
                    return Err(de::Error::duplicate_field("batch"));
                }
                "batch" => top.batch = Some(map.next_value_seed(CallsSeed(self.max_calls))?),
                "writeKey" | "api_key" if top.key.is_none() => top.key = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// The `batch` array, refused past its bound.
struct CallsSeed(usize);

impl<'de> de::DeserializeSeed<'de> for CallsSeed {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CallsSeed {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of calls")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut calls = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
        while let Some(call) = seq.next_element::<&'de RawValue>()? {
            if calls.len() == self.0 {
                return Err(de::Error::custom(TOO_MANY));
            }
            calls.push(call);
        }
        Ok(calls)
    }
}

/// One call: the fields we map, as raw JSON slices of the body.
#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "messageId")]
    message_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    uuid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "originalTimestamp")]
    original_timestamp: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "userId")]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "anonymousId")]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    distinct_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
}

/// A parsed body: its calls as slices of it, not yet translated.
#[derive(Debug)]
pub struct Batch<'a> {
    calls: Vec<&'a RawValue>,
    body_len: usize,
    /// The write key or API key the body carries (Segment `writeKey`, PostHog `api_key`).
    pub key: Option<String>,
}

impl<'a> Batch<'a> {
    /// Reads the top level of one SDK body (decompressed): a batch, or a single call.
    pub fn parse(body: &'a [u8], max_calls: usize) -> Result<Batch<'a>, TranslateError> {
        let whole: &RawValue =
            serde_json::from_slice(body).map_err(|e| TranslateError::Syntax {
                offset: byte_offset(body, e.line(), e.column()),
                reason: e.to_string(),
            })?;
        if !whole.get().starts_with('{') {
            return Err(TranslateError::NotAnObject);
        }
        let mut reader = serde_json::Deserializer::from_str(whole.get());
        let top =
            de::DeserializeSeed::deserialize(TopSeed { max_calls }, &mut reader).map_err(|e| {
                match e.to_string().starts_with(TOO_MANY) {
                    true => TranslateError::TooMany { limit: max_calls },
                    false => TranslateError::Shape(e.to_string()),
                }
            })?;
        let key = top.key.and_then(text).map(Cow::into_owned);
        let calls = top.batch.unwrap_or_else(|| vec![whole]);
        if calls.len() > max_calls {
            return Err(TranslateError::TooMany { limit: max_calls });
        }
        Ok(Batch {
            calls,
            body_len: body.len(),
            key,
        })
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The most [`Batch::translate`] allocates: its output, allocated once at this bound, and
    /// one call's properties at a time.
    pub fn translation_bytes(&self) -> usize {
        self.output_bound() + CALL_WORKING_BYTES
    }

    fn output_bound(&self) -> usize {
        self.body_len + 2 + self.calls.len() * OUTPUT_BYTES_PER_CALL
    }

    /// The events for the calls, received at `received`.
    pub fn translate(self, protocol: Protocol, received: DateTime<Utc>) -> Translated {
        let received = received.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut out = Translated {
            events: Vec::with_capacity(self.output_bound()),
            key: self.key,
            ..Translated::default()
        };
        out.events.push(b'[');
        for raw in self.calls {
            let start = out.events.len();
            if out.count > 0 {
                out.events.push(b',');
            }
            let written = match serde_json::from_str::<Call>(raw.get()) {
                Ok(call) => write_call(&mut out.events, protocol, &call, &received),
                // Not an object, or a field twice: validation refuses it, verbatim.
                Err(_) => {
                    out.events.extend_from_slice(raw.get().as_bytes());
                    true
                }
            };
            if written {
                out.count += 1;
            } else {
                out.events.truncate(start);
                out.skipped += 1;
            }
        }
        out.events.push(b']');
        out
    }
}

/// Parse and translate one SDK body (decompressed) received at `received`.
pub fn translate(
    protocol: Protocol,
    body: &[u8],
    received: DateTime<Utc>,
    max_calls: usize,
) -> Result<Translated, TranslateError> {
    Ok(Batch::parse(body, max_calls)?.translate(protocol, received))
}

/// Appends the event for `call`, or returns false for a call that is not an event here.
fn write_call(out: &mut Vec<u8>, protocol: Protocol, call: &Call<'_>, received: &str) -> bool {
    let name = call.event.and_then(text);
    let mut w = Writer::new(out);
    let (id, exposure) = match protocol {
        Protocol::Segment => {
            // RudderStack's SDKs send the same calls; a call without a type is a track call.
            let kind = call.kind.and_then(text);
            if kind.is_some_and(|k| !k.eq_ignore_ascii_case("track")) {
                return false;
            }
            let exposure = name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(EXPERIMENT_VIEWED));
            (call.message_id, exposure)
        }
        Protocol::PostHog => {
            let n = name.as_deref().unwrap_or("");
            if n.starts_with('$') && n != FEATURE_FLAG_CALLED {
                return false;
            }
            (call.uuid, n == FEATURE_FLAG_CALLED)
        }
    };
    if let Some(id) = id {
        w.raw("event_id", id);
    }
    match [call.timestamp, call.original_timestamp]
        .into_iter()
        .flatten()
        .find(|t| t.get() != "null")
    {
        Some(t) => match text(t) {
            Some(s) => w.string("ts", &normalize_time(&s)),
            None => w.raw("ts", t),
        },
        None => w.string("ts", received),
    }
    let user = [call.user_id, call.anonymous_id, call.distinct_id]
        .into_iter()
        .flatten()
        .find(|v| !matches!(v.get(), "null" | "\"\""));
    if let Some(user) = user {
        w.id("user_id", user);
    }
    let props = call.properties.map(Properties::read).unwrap_or_default();
    if exposure {
        w.string("type", "assignment");
        let (experiment, variant) = match protocol {
            Protocol::Segment => (props.get("experimentId"), props.get("variationId")),
            Protocol::PostHog => (
                props.get("$feature_flag"),
                props.get("$feature_flag_response"),
            ),
        };
        if let Some(e) = experiment {
            w.id("experiment", e);
        }
        if let Some(v) = variant {
            w.id("variant", v);
        }
        if let (Some(attribute), Some(unit)) = (props.get("hashAttribute"), props.get("hashValue"))
            && !matches!(unit.get(), "null" | "\"\"")
        {
            w.raw("unit_attribute", attribute);
            w.id("unit_id", unit);
        }
    } else {
        w.string("type", "conversion");
        if let Some(event) = call.event {
            w.raw("name", event);
        }
        if let Some(value) = props.value() {
            w.raw("value", value);
        }
    }
    w.props(&props, exposure, protocol);
    w.finish();
    true
}

/// Writes one event object field by field.
struct Writer<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Writer<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Writer { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn raw(&mut self, key: &str, value: &RawValue) {
        self.key(key);
        self.out.extend_from_slice(value.get().as_bytes());
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        serde_json::to_writer(&mut *self.out, value).expect("writing to a Vec does not fail");
    }

    /// Ids sent as numbers or booleans become their text (`42` -> `"42"`), as the SDKs' own
    /// backends store them; anything else is copied for validation to judge.
    fn id(&mut self, key: &str, value: &RawValue) {
        let v = value.get();
        if v.starts_with(|c: char| c == '-' || c.is_ascii_digit()) || v == "true" || v == "false" {
            self.string(key, v);
        } else {
            self.raw(key, value);
        }
    }

    fn props(&mut self, props: &Properties<'_>, exposure: bool, protocol: Protocol) {
        let value_key = (!exposure).then(|| props.value_key()).flatten();
        let mapped = |k: &str| match (exposure, protocol) {
            (true, Protocol::Segment) => EXPOSURE_KEYS.contains(&k),
            (true, Protocol::PostHog) => k == "$feature_flag" || k == "$feature_flag_response",
            (false, _) => Some(k) == value_key,
        };
        let mut any = false;
        for (k, v) in props.flat.iter().filter(|(k, _)| !mapped(k)) {
            if !any {
                self.key("props");
                self.out.push(b'{');
                any = true;
            } else {
                self.out.push(b',');
            }
            serde_json::to_writer(&mut *self.out, k).expect("writing to a Vec does not fail");
            self.out.push(b':');
            self.out.extend_from_slice(v.get().as_bytes());
        }
        if any {
            self.out.push(b'}');
        }
    }

    fn finish(self) {
        self.out.push(b'}');
    }
}

/// The Segment exposure's mapped properties.
const EXPOSURE_KEYS: [&str; 4] = ["experimentId", "variationId", "hashAttribute", "hashValue"];
/// Properties looked up by name, kept whatever else the call has.
const WANTED: [&str; 8] = [
    "experimentId",
    "variationId",
    "hashAttribute",
    "hashValue",
    "$feature_flag",
    "$feature_flag_response",
    "revenue",
    "value",
];

/// A call's properties: the flat scalars (strings, numbers, booleans) in order, at most one
/// more than validation accepts, and the wanted ones by name.
#[derive(Default)]
struct Properties<'a> {
    flat: Vec<(Cow<'a, str>, &'a RawValue)>,
    wanted: [Option<&'a RawValue>; WANTED.len()],
}

impl<'a> Properties<'a> {
    /// Properties that are not an object are ignored, like nested values.
    fn read(raw: &'a RawValue) -> Self {
        serde_json::from_str::<Properties<'a>>(raw.get()).unwrap_or_default()
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        let i = WANTED.iter().position(|w| *w == key)?;
        self.wanted[i]
    }

    /// Which property is the conversion's value: `revenue`, else `value`, if a number.
    fn value_key(&self) -> Option<&'static str> {
        let number = |v: &RawValue| {
            v.get()
                .starts_with(|c: char| c == '-' || c.is_ascii_digit())
        };
        ["revenue", "value"]
            .into_iter()
            .find(|k| self.get(k).is_some_and(number))
    }

    fn value(&self) -> Option<&'a RawValue> {
        self.get(self.value_key()?)
    }
}

impl<'de> Deserialize<'de> for Properties<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Properties<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut props = Properties::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let wanted = WANTED.iter().position(|w| *w == key);
                    let keep = props.flat.len() <= MAX_PROPS_KEYS;
                    if wanted.is_none() && !keep {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let value: &'de RawValue = map.next_value()?;
                    if let Some(i) = wanted {
                        props.wanted[i] = Some(value);
                    }
                    let scalar = !matches!(value.get().as_bytes()[0], b'{' | b'[' | b'n');
                    if scalar && keep {
                        props.flat.push((key, value));
                    }
                }
                Ok(props)
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON string's text (escapes resolved), or `None` for any other value.
fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Cow<'_, str>>(raw.get()).ok()
}

/// An ISO 8601 time without an offset (`2026-12-02T07:30:00.123456`, as some SDKs write naive
/// times) is read as UTC; anything else is passed on as written.
fn normalize_time(s: &str) -> Cow<'_, str> {
    if DateTime::parse_from_rfc3339(s).is_ok() {
        return Cow::Borrowed(s);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, format) {
            return Cow::Owned(naive.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true));
        }
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Cow::Owned(t.to_rfc3339_opts(SecondsFormat::Micros, true));
    }
    Cow::Borrowed(s)
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
