//! Fuzz `validate::codec` (`decompress`, `Inflater`) + `validate::decode`, the path every
//! `POST /v1/events` body takes (and every logged body on replay).
//!
//! Input: one selector byte, then the body.
//!
//! | selector bits | meaning |
//! |---|---|
//! | bit 0 | body format: 0 = JSON array, 1 = NDJSON |
//! | bits 1-2 | content encoding: 0 identity, 1 gzip, 2 zstd, 3 identity |
//! | bit 3 | gzip/zstd only: the harness compresses the body itself (round trip), so mutations of the JSON reach the decoder instead of breaking the compressed stream |
//! | bit 4 | decompression limit 64 bytes instead of 1 MiB (exercises `TooLarge`) |
//! | bits 5-7 | gzip/zstd only: the first `Inflater::step` stops at `STEP_UNTIL[bits]` bytes, as the HTTP path's inline step does; the stepped result must equal `decompress`'s |
//!
//! Beyond "does not panic", it checks what `validate.rs` and `docs/api.md` promise; see
//! `check_batch` and friends. Every failed check panics, so libFuzzer saves the input.
#![no_main]

use std::borrow::Cow;
use std::io::Write;

use bytes::Bytes;
use gateway::budget::MemoryBudget;
use gateway::validate::codec::{Decoding, DecompressError, decompress};
use gateway::validate::{
    BodyError, BodyFormat, EventKind, MAX_EVENT_ID_BYTES, MAX_NAME_BYTES, MAX_PROPS_KEYS,
    MAX_USER_ID_BYTES, RejectCode, ValidBatch, ValidEvent, decode,
};
use gateway::wal::record::{ENCODING_GZIP, ENCODING_IDENTITY, ENCODING_ZSTD};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;

const LIMIT: usize = 1 << 20;
const TINY_LIMIT: usize = 64;
const MAX_EVENTS: usize = 10_000;
const STEP_UNTIL: [usize; 8] = [
    0,
    1,
    100,
    (64 << 10) - 1,
    64 << 10,
    (64 << 10) + 1,
    128 << 10,
    usize::MAX,
];
/// Copies of the private bounds in `validate.rs` (2000-01-01 ..< 2100-01-01, in µs), as documented.
const MIN_TS_MICROS: i64 = 946_684_800_000_000;
const MAX_TS_MICROS: i64 = 4_102_444_800_000_000;
const KNOWN_FIELDS: [&str; 9] = [
    "event_id",
    "type",
    "ts",
    "user_id",
    "experiment",
    "variant",
    "name",
    "value",
    "props",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = if selector & 1 == 0 {
        BodyFormat::JsonArray
    } else {
        BodyFormat::NdJson
    };
    let encoding = match (selector >> 1) & 3 {
        1 => ENCODING_GZIP,
        2 => ENCODING_ZSTD,
        _ => ENCODING_IDENTITY,
    };
    let round_trip = selector & 8 != 0 && encoding != ENCODING_IDENTITY;
    let limit = if selector & 16 != 0 {
        TINY_LIMIT
    } else {
        LIMIT
    };

    let wire = if round_trip {
        Bytes::from(compress(encoding, body))
    } else {
        Bytes::copy_from_slice(body)
    };
    let result = decompress(encoding, &wire, limit);
    assert_eq!(
        result,
        decompress(encoding, &wire, limit),
        "decompress is not deterministic"
    );
    if encoding != ENCODING_IDENTITY {
        check_stepped(
            encoding,
            &wire,
            limit,
            STEP_UNTIL[usize::from(selector >> 5)],
            &result,
        );
    }
    let plain = match result {
        Ok(plain) => plain,
        Err(e) => {
            match &e {
                DecompressError::TooLarge { limit: l } => assert_eq!(*l, limit),
                DecompressError::Corrupt(_) => {}
                DecompressError::Unknown(_) => panic!("known encoding {encoding} refused: {e}"),
                DecompressError::OverBudget(_) => panic!("decompress has no budget, yet: {e}"),
            }
            assert!(encoding != ENCODING_IDENTITY, "identity cannot fail: {e}");
            if round_trip {
                // A stream we made ourselves is never corrupt; it is too large exactly when the
                // body is.
                assert!(
                    matches!(e, DecompressError::TooLarge { .. }) && body.len() > limit,
                    "own {encoding} stream of {} bytes refused: {e}",
                    body.len()
                );
            }
            return;
        }
    };
    if encoding == ENCODING_IDENTITY {
        // Returned as is, whatever the limit (the wire body has its own limit, upstream).
        assert_eq!(&plain[..], body, "identity changed the body");
    } else {
        assert!(
            plain.len() <= limit,
            "decompressed {} > limit {limit}",
            plain.len()
        );
    }
    if round_trip {
        assert_eq!(&plain[..], body, "{encoding} round trip changed the body");
    }

    check_decode(&plain, format);
});

/// Inflating in two steps (first up to `until` bytes, then the rest), as the HTTP path does,
/// gives what `decompress` gives; the budget holds at least the output.
fn check_stepped(
    encoding: u8,
    wire: &Bytes,
    limit: usize,
    until: usize,
    want: &Result<Bytes, DecompressError>,
) {
    let budget = MemoryBudget::new(usize::MAX);
    let mut hold = budget.empty();
    let got = (|| {
        let mut inflater = match Decoding::start(encoding, wire, limit)? {
            Decoding::Plain(_) => panic!("encoding {encoding} not inflated"),
            Decoding::Inflate(i) => i,
        };
        let done = inflater.step(until, &mut hold)?;
        if done {
            assert!(inflater.len() <= limit);
        } else {
            assert!(
                inflater.len() >= until,
                "step stopped early: {} < {until}",
                inflater.len()
            );
            assert!(
                inflater.step(usize::MAX, &mut hold)?,
                "step(MAX) did not finish"
            );
        }
        assert!(
            hold.bytes() >= inflater.len(),
            "output {} bytes, reserved {}",
            inflater.len(),
            hold.bytes()
        );
        Ok(inflater.finish())
    })();
    assert_eq!(
        &got, want,
        "stepped inflate (first step to {until}) differs from decompress"
    );
    drop(hold);
    assert_eq!(budget.used_bytes(), 0, "reservation not returned");
}

fn compress(encoding: u8, body: &[u8]) -> Vec<u8> {
    if encoding == ENCODING_GZIP {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(body).unwrap();
        enc.finish().unwrap()
    } else {
        zstd::bulk::compress(body, 1).unwrap()
    }
}

fn check_decode(plain: &[u8], format: BodyFormat) {
    let result = decode(plain, format, MAX_EVENTS);

    // "The result is a pure function of the body."
    match (&result, &decode(plain, format, MAX_EVENTS)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.events, b.events, "events differ between two decodes");
            assert_eq!(
                a.rejected, b.rejected,
                "rejections differ between two decodes"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "errors differ between two decodes"),
        (a, b) => panic!("two decodes disagree: {a:?} vs {b:?}"),
    }

    let batch = match result {
        Ok(batch) => batch,
        Err(e) => {
            check_body_error(plain, format, &e);
            return;
        }
    };
    let n = batch.len();
    assert!(n <= MAX_EVENTS);
    check_indexes(&batch);
    check_limit(plain, format, &batch);

    // The elements of the request, as raw text, in order.
    let elements: Vec<Cow<'_, str>> = match format {
        BodyFormat::JsonArray => {
            let raws: Vec<&RawValue> = serde_json::from_slice(plain)
                .expect("decode accepted the array but it does not parse as one");
            raws.into_iter().map(|r| Cow::Borrowed(r.get())).collect()
        }
        BodyFormat::NdJson => ndjson_lines(plain).map(String::from_utf8_lossy).collect(),
    };
    assert_eq!(
        elements.len(),
        n,
        "batch length != number of elements in the body"
    );

    for r in &batch.rejected {
        let raw = &elements[r.index as usize];
        assert_eq!(
            &r.raw, raw,
            "rejection {} carries the wrong raw text",
            r.index
        );
        assert!(!r.raw.is_empty());
        if format == BodyFormat::JsonArray {
            assert_ne!(
                r.code,
                RejectCode::MalformedJson,
                "malformed_json in a JSON array"
            );
        }
        if r.code == RejectCode::MalformedJson {
            assert!(r.event_id.is_none());
            continue;
        }
        // Not malformed: the element is JSON. Its first `event_id`, if a string, is reported.
        let first_id = key_values(raw, "event_id").and_then(|v| v.into_iter().next().flatten());
        assert_eq!(
            r.event_id.as_deref(),
            first_id.as_deref(),
            "wrong event_id reported"
        );
        check_alone(
            raw,
            format,
            Err((r.code, &r.message, r.event_id.as_deref())),
        );
    }
    for e in &batch.events {
        let raw = &elements[e.index as usize];
        check_event(e, raw);
        check_alone(raw, format, Ok(e));
    }
}

/// NDJSON elements: the lines that are not blank, as `decode_ndjson` counts them.
fn ndjson_lines(plain: &[u8]) -> impl Iterator<Item = &[u8]> {
    plain
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

fn check_body_error(plain: &[u8], format: BodyFormat, e: &BodyError) {
    match (format, e) {
        (BodyFormat::JsonArray, BodyError::Syntax { offset, .. }) => {
            assert!(
                *offset <= plain.len(),
                "error offset {offset} past the body ({})",
                plain.len()
            );
        }
        (BodyFormat::JsonArray, BodyError::NotAnArray) => {}
        (_, BodyError::TooManyEvents { limit }) => {
            assert_eq!(*limit, MAX_EVENTS);
            if format == BodyFormat::NdJson {
                assert!(ndjson_lines(plain).count() > MAX_EVENTS);
            }
        }
        // "A malformed line rejects only itself": NDJSON never fails as a whole on syntax.
        (BodyFormat::NdJson, e) => panic!("NDJSON body refused as a whole: {e:?}"),
    }
}

/// Every element of the request is exactly one of events / rejected, both in request order.
fn check_indexes(batch: &ValidBatch<'_>) {
    let n = batch.len();
    let mut seen = vec![false; n];
    for idx in [
        batch.events.iter().map(|e| e.index).collect::<Vec<_>>(),
        batch.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
    ] {
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "indexes not increasing: {idx:?}"
        );
        for i in idx {
            let i = i as usize;
            assert!(i < n, "index {i} >= batch length {n}");
            assert!(!seen[i], "index {i} both accepted and rejected");
            seen[i] = true;
        }
    }
}

/// `max_events` bounds the batch, counted before validation: exactly at the count the batch is
/// the same, one below it is `TooManyEvents`.
fn check_limit(plain: &[u8], format: BodyFormat, batch: &ValidBatch<'_>) {
    let n = batch.len();
    let at = decode(plain, format, n).expect("decode fails with max_events = its own length");
    assert_eq!(at.events, batch.events);
    assert_eq!(at.rejected, batch.rejected);
    if n > 0 {
        match decode(plain, format, n - 1) {
            Err(BodyError::TooManyEvents { limit }) if limit == n - 1 => {}
            other => panic!(
                "{n} events under max_events = {}: {:?}",
                n - 1,
                other.map(|b| b.len())
            ),
        }
    }
}

/// A valid event keeps the documented limits and says what its JSON says.
fn check_event(e: &ValidEvent<'_>, raw: &str) {
    let len_ok = |s: &str, max: usize| (1..=max).contains(&s.len());
    assert!(
        len_ok(&e.event_id, MAX_EVENT_ID_BYTES),
        "event_id length {}",
        e.event_id.len()
    );
    assert!(
        len_ok(&e.user_id, MAX_USER_ID_BYTES),
        "user_id length {}",
        e.user_id.len()
    );
    for s in [&e.experiment, &e.variant, &e.name].into_iter().flatten() {
        assert!(
            len_ok(s, MAX_NAME_BYTES),
            "name-like field length {}",
            s.len()
        );
    }
    assert!(
        (MIN_TS_MICROS..MAX_TS_MICROS).contains(&e.ts_micros),
        "ts {} out of range",
        e.ts_micros
    );
    if let Some(v) = e.value {
        assert!(v.is_finite(), "value {v}");
    }
    match e.kind {
        EventKind::Assignment => {
            assert!(
                e.experiment.is_some() && e.variant.is_some(),
                "assignment without experiment/variant"
            );
            assert!(
                e.name.is_none() && e.value.is_none(),
                "assignment with name/value"
            );
        }
        EventKind::Conversion => assert!(e.name.is_some(), "conversion without name"),
    }
    if let Some(props) = e.props {
        let p: Value = serde_json::from_str(props).expect("props of a valid event is not JSON");
        let obj = p
            .as_object()
            .expect("props of a valid event is not an object");
        assert!(obj.len() <= MAX_PROPS_KEYS, "props has {} keys", obj.len());
        for (k, v) in obj {
            assert!(
                v.is_string() || v.is_number() || v.is_boolean(),
                "props.{k} is {v}"
            );
        }
    }

    // Independent reading of the same element with serde_json::Value.
    let v: Value = serde_json::from_str(raw).expect("valid event is not JSON");
    let obj = v.as_object().expect("valid event is not a JSON object");
    for k in obj.keys() {
        assert!(
            KNOWN_FIELDS.contains(&k.as_str()),
            "valid event has unknown field {k:?}"
        );
        let n = key_values(raw, k)
            .expect("valid event is not an object")
            .len();
        assert_eq!(n, 1, "valid event has {k:?} {n} times");
    }
    let s = |k: &str| obj.get(k).and_then(Value::as_str);
    assert_eq!(s("event_id"), Some(&*e.event_id));
    assert_eq!(s("user_id"), Some(&*e.user_id));
    assert_eq!(s("experiment"), e.experiment.as_deref());
    assert_eq!(s("variant"), e.variant.as_deref());
    assert_eq!(s("name"), e.name.as_deref());
    let kind = match e.kind {
        EventKind::Assignment => "assignment",
        EventKind::Conversion => "conversion",
    };
    assert_eq!(s("type"), Some(kind));
    assert_eq!(obj.get("value").and_then(Value::as_f64), e.value);
    match &obj["ts"] {
        Value::Number(ms) => {
            let ms = ms.as_i64().expect("accepted ts is not an integer");
            assert_eq!(ms.checked_mul(1000), Some(e.ts_micros), "ts {ms} ms");
        }
        Value::String(_) => {}
        other => panic!("accepted ts {other}"),
    }
    match obj.get("props") {
        None | Some(Value::Null) => assert_eq!(e.props, None),
        Some(p) => {
            let got: Value = serde_json::from_str(e.props.expect("props dropped")).unwrap();
            assert_eq!(&got, p, "props text is not the element's props");
        }
    }
}

/// The values of top-level key `key` of the object `raw` (escapes decoded), in order: `Some` for
/// a string. `None` if `raw` is not an object. Values are skipped the way the gateway skips them
/// (no nesting or number-range limit), so this reads whatever the gateway could read.
fn key_values(raw: &str, key: &str) -> Option<Vec<Option<String>>> {
    struct Values<'k>(&'k str);
    impl<'de> serde::de::DeserializeSeed<'de> for Values<'_> {
        type Value = Vec<Option<String>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for Values<'_> {
        type Value = Vec<Option<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                let v = m.next_value::<&'de RawValue>()?;
                if k == self.0 {
                    out.push(serde_json::from_str::<String>(v.get()).ok());
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    serde::de::DeserializeSeed::deserialize(Values(key), &mut de).ok()
}

/// "Validation is per event": the element alone, in either body format, has the same outcome.
fn check_alone(
    raw: &str,
    format: BodyFormat,
    want: Result<&ValidEvent<'_>, (RejectCode, &str, Option<&str>)>,
) {
    // Outside strings a newline in JSON is whitespace, and inside them it is not allowed raw: so
    // any JSON element fits on one NDJSON line. (It moves serde_json's line/column in messages.)
    let moved = raw.contains('\n');
    let mut alone = vec![(BodyFormat::NdJson, raw.replace('\n', " "), moved)];
    if format == BodyFormat::NdJson {
        alone.push((BodyFormat::JsonArray, format!("[{raw}]"), false));
    }
    for (fmt, body, moved) in alone {
        let batch = decode(body.as_bytes(), fmt, 1)
            .unwrap_or_else(|e| panic!("element alone as {fmt:?} fails: {e:?}"));
        assert_eq!(
            batch.len(),
            1,
            "element alone as {fmt:?} is {} elements",
            batch.len()
        );
        match want {
            Ok(e) => {
                let got = batch.events.first().unwrap_or_else(|| {
                    panic!(
                        "valid element rejected alone as {fmt:?}: {:?}",
                        batch.rejected
                    )
                });
                let mut want = e.clone();
                want.index = 0;
                let want_props = e.props.map(|p| p.replace('\n', " "));
                want.props = got.props;
                assert_eq!(
                    got, &want,
                    "valid element decodes differently alone as {fmt:?}"
                );
                assert_eq!(
                    got.props.map(str::to_owned),
                    want_props,
                    "props differ alone as {fmt:?}"
                );
            }
            Err((code, message, event_id)) => {
                let got = batch.rejected.first().unwrap_or_else(|| {
                    panic!("rejected element ({code:?}) accepted alone as {fmt:?}")
                });
                assert_eq!(
                    (got.code, got.event_id.as_deref()),
                    (code, event_id),
                    "rejected element decodes differently alone as {fmt:?}"
                );
                if !moved {
                    assert_eq!(
                        got.message, message,
                        "rejection message differs alone as {fmt:?}"
                    );
                }
            }
        }
    }
}
