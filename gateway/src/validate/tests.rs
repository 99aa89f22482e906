use super::*;
use proptest::prelude::*;

fn one(event: &str) -> ValidBatch<'_> {
    decode(event.as_bytes(), BodyFormat::NdJson, 10).unwrap()
}

fn rejection(event: &str) -> (RejectCode, String) {
    let b = one(event);
    assert_eq!(b.events.len(), 0, "expected a rejection for {event}");
    (b.rejected[0].code, b.rejected[0].message.clone())
}

const ASSIGNMENT: &str = r#"{"event_id":"5b0c","type":"assignment","ts":"2026-11-29T12:34:56.789Z","user_id":"u-123","experiment":"checkout_button","variant":"treatment","props":{"device":"ios","n":3,"b":true}}"#;

#[test]
fn a_valid_assignment_borrows_from_the_body() {
    let b = one(ASSIGNMENT);
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    let e = &b.events[0];
    assert!(matches!(e.event_id, Cow::Borrowed("5b0c")));
    assert!(matches!(e.user_id, Some(Cow::Borrowed("u-123"))));
    assert_eq!(e.kind, EventKind::Assignment);
    assert_eq!(e.ts_micros, 1_795_955_696_789_000);
    assert_eq!(e.experiment.as_deref(), Some("checkout_button"));
    assert_eq!(e.variant.as_deref(), Some("treatment"));
    assert_eq!(e.props, Some(r#"{"device":"ios","n":3,"b":true}"#));
}

#[test]
fn a_conversion_takes_epoch_milliseconds_and_a_value() {
    let b = one(
        r#"{"event_id":"9e1a","type":"conversion","ts":1764419696789,"user_id":"u","name":"purchase","value":19.99}"#,
    );
    let e = &b.events[0];
    assert_eq!(e.ts_micros, 1_764_419_696_789_000);
    assert_eq!(e.name.as_deref(), Some("purchase"));
    assert_eq!(e.value, Some(19.99));
}

#[test]
fn escaped_strings_are_unescaped() {
    let b = one(
        r#"{"event_id":"a\"b","type":"conversion","ts":1764419696789,"user_id":"\u00e9","name":"n"}"#,
    );
    assert_eq!(b.events[0].event_id, "a\"b");
    assert_eq!(b.events[0].user_id.as_deref(), Some("é"));
}

#[test]
fn each_rejection_code_names_the_problem() {
    let cases: &[(&str, RejectCode, &str)] = &[
        (
            r#"{"type":"conversion","ts":1,"user_id":"u","name":"n"}"#,
            RejectCode::MissingField,
            "event_id is required",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"name":"n"}"#,
            RejectCode::MissingField,
            "user_id is required",
        ),
        (
            r#"{"event_id":"a","type":"assignment","ts":1764419696789,"user_id":"u","variant":"v"}"#,
            RejectCode::MissingField,
            "experiment is required",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u"}"#,
            RejectCode::MissingField,
            "name is required",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","colour":1}"#,
            RejectCode::UnknownField,
            "unknown field \"colour\"",
        ),
        (
            r#"{"event_id":"a","event_id":"b","type":"conversion","ts":1764419696789,"user_id":"u","name":"n"}"#,
            RejectCode::DuplicateField,
            "event_id appears twice",
        ),
        (
            r#"{"event_id":7,"type":"conversion","ts":1764419696789,"user_id":"u","name":"n"}"#,
            RejectCode::InvalidType,
            "event_id must be a string",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","value":"1"}"#,
            RejectCode::InvalidType,
            "value must be a finite number",
        ),
        (
            r#"{"event_id":"a","type":"click","ts":1764419696789,"user_id":"u"}"#,
            RejectCode::InvalidValue,
            "type must be",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":"yesterday","user_id":"u","name":"n"}"#,
            RejectCode::InvalidValue,
            "ts must be an RFC 3339",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":5,"user_id":"u","name":"n"}"#,
            RejectCode::InvalidValue,
            "between 2000-01-01 and 2100-01-01",
        ),
        (
            r#"{"event_id":"","type":"conversion","ts":1764419696789,"user_id":"u","name":"n"}"#,
            RejectCode::InvalidValue,
            "event_id must be 1 to 128 bytes",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","props":{"a":{"b":1}}}"#,
            RejectCode::InvalidProps,
            "props.a must be a string, number or boolean",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","props":[1]}"#,
            RejectCode::InvalidProps,
            "props must be an object",
        ),
        (
            r#"{"event_id":"a","type":"assignment","ts":1764419696789,"user_id":"u","experiment":"e","variant":"v","value":1}"#,
            RejectCode::UnknownField,
            "value is only allowed on conversion",
        ),
        (
            r#"[1,2]"#,
            RejectCode::InvalidType,
            "event must be a JSON object",
        ),
        (
            r#"{"event_id":"a", oops}"#,
            RejectCode::MalformedJson,
            "line is not a JSON object",
        ),
    ];
    for (event, code, message) in cases {
        let (got_code, got_message) = rejection(event);
        assert_eq!(got_code, *code, "{event}: {got_message}");
        assert!(
            got_message.contains(message),
            "{event}: {got_message:?} lacks {message:?}"
        );
    }
}

#[test]
fn overlong_ids_are_rejected() {
    let id = "x".repeat(MAX_EVENT_ID_BYTES + 1);
    let event = format!(
        r#"{{"event_id":"{id}","type":"conversion","ts":1764419696789,"user_id":"u","name":"n"}}"#
    );
    assert_eq!(rejection(&event).0, RejectCode::InvalidValue);
    let user = "u".repeat(MAX_USER_ID_BYTES + 1);
    let event = format!(
        r#"{{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"{user}","name":"n"}}"#
    );
    assert_eq!(rejection(&event).0, RejectCode::InvalidValue);
}

#[test]
fn rejections_keep_their_index_id_and_raw_json_in_an_array() {
    let body = format!(r#"[{ASSIGNMENT}, {{"event_id":"bad","type":"conversion"}} ,{ASSIGNMENT}]"#);
    let b = decode(body.as_bytes(), BodyFormat::JsonArray, 10).unwrap();
    assert_eq!(b.events.len(), 2);
    assert_eq!(b.events[1].index, 2);
    let r = &b.rejected[0];
    assert_eq!(r.index, 1);
    assert_eq!(r.event_id.as_deref(), Some("bad"));
    assert_eq!(r.raw, r#"{"event_id":"bad","type":"conversion"}"#);
}

#[test]
fn a_malformed_ndjson_line_rejects_only_itself() {
    let body = format!("{ASSIGNMENT}\n{{not json\n\n{ASSIGNMENT}\n");
    let b = decode(body.as_bytes(), BodyFormat::NdJson, 10).unwrap();
    assert_eq!(b.events.len(), 2);
    assert_eq!(b.rejected.len(), 1);
    assert_eq!(b.rejected[0].index, 1);
    assert_eq!(b.rejected[0].raw, "{not json");
}

#[test]
fn unreadable_bodies_fail_the_request_with_the_offset() {
    let err = decode(b"[{\"a\": 1}, nope]", BodyFormat::JsonArray, 10).unwrap_err();
    assert!(
        matches!(err, BodyError::Syntax { offset: 12, .. }),
        "{err:?}"
    );
    let err = decode(b"[1]\n\n  x", BodyFormat::JsonArray, 10).unwrap_err();
    assert!(
        matches!(err, BodyError::Syntax { offset: 7, .. }),
        "{err:?}"
    );
    assert_eq!(
        decode(br#"{"a":1}"#, BodyFormat::JsonArray, 10).unwrap_err(),
        BodyError::NotAnArray
    );
}

#[test]
fn the_event_count_is_limited() {
    let body = format!("[{ASSIGNMENT},{ASSIGNMENT},{ASSIGNMENT}]");
    assert!(decode(body.as_bytes(), BodyFormat::JsonArray, 3).is_ok());
    assert_eq!(
        decode(body.as_bytes(), BodyFormat::JsonArray, 2).unwrap_err(),
        BodyError::TooManyEvents { limit: 2 }
    );
    let many = format!("[{}]", vec![ASSIGNMENT; 50].join(","));
    assert_eq!(
        decode(many.as_bytes(), BodyFormat::JsonArray, 2).unwrap_err(),
        BodyError::TooManyEvents { limit: 2 }
    );
    let lines = format!("{ASSIGNMENT}\n{ASSIGNMENT}\n{ASSIGNMENT}\n");
    assert_eq!(
        decode(lines.as_bytes(), BodyFormat::NdJson, 2).unwrap_err(),
        BodyError::TooManyEvents { limit: 2 }
    );
}

proptest! {
    /// Any bytes at all: decoding never panics, and every event is either accepted or rejected.
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(b) = decode(&body, BodyFormat::NdJson, 1000) {
            let lines = body.split(|&c| c == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count();
            prop_assert_eq!(b.len(), lines);
        }
        let _ = decode(&body, BodyFormat::JsonArray, 1000);
    }

    /// Valid events with arbitrary ids and users round-trip their strings.
    #[test]
    fn string_fields_round_trip(id in "\\PC{1,40}", user in "\\PC{1,40}") {
        let event = serde_json::json!({"event_id": id, "type": "conversion", "ts": 1764419696789i64, "user_id": user, "name": "n"});
        let text = serde_json::to_string(&event).unwrap();
        let b = one(&text);
        prop_assert_eq!(b.events.len(), 1);
        prop_assert_eq!(b.events[0].event_id.as_ref(), id.as_str());
        prop_assert_eq!(b.events[0].user_id.as_deref(), Some(user.as_str()));
    }
}

#[test]
fn props_values_and_keys_have_a_size_limit() {
    let event = |props: String| {
        format!(
            r#"{{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","props":{props}}}"#
        )
    };
    let at_limit = event(format!(r#"{{"k":"{}"}}"#, "v".repeat(MAX_PROP_VALUE_BYTES)));
    let valid = decode(at_limit.as_bytes(), BodyFormat::NdJson, 10).unwrap();
    assert_eq!(valid.events.len(), 1, "{:?}", valid.rejected);
    let (code, message) = rejection(&event(format!(
        r#"{{"k":"{}"}}"#,
        "v".repeat(MAX_PROP_VALUE_BYTES + 1)
    )));
    assert_eq!(code, RejectCode::InvalidProps);
    assert!(
        message.contains("props.k is longer than 1024 bytes"),
        "{message}"
    );
    let (code, _) = rejection(&event(format!(
        r#"{{"{}":1}}"#,
        "k".repeat(MAX_PROP_KEY_BYTES + 1)
    )));
    assert_eq!(code, RejectCode::InvalidProps);
}

#[test]
fn an_assignment_names_its_unit_apart_from_the_user() {
    let b = one(
        r#"{"event_id":"d1","type":"assignment","ts":1764419696789,"user_id":"u-9","unit_attribute":"device_id","unit_id":"dev-42","config_version":"0123456789abcdef","experiment":"e","variant":"v","synthetic":true}"#,
    );
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    let e = &b.events[0];
    assert_eq!(e.user_id.as_deref(), Some("u-9"));
    assert_eq!(e.unit_attribute.as_deref(), Some("device_id"));
    assert_eq!(e.unit_id.as_deref(), Some("dev-42"));
    assert_eq!(e.config_version.as_deref(), Some("0123456789abcdef"));
    assert!(e.synthetic);
    // An anonymous device: the unit without a user.
    let b = one(
        r#"{"event_id":"d2","type":"assignment","ts":1764419696789,"unit_attribute":"device_id","unit_id":"dev-42","experiment":"e","variant":"v"}"#,
    );
    assert!(b.rejected.is_empty(), "{:?}", b.rejected);
    assert_eq!(b.events[0].user_id, None);
    assert!(!b.events[0].synthetic);
}

#[test]
fn unit_fields_come_in_pairs_and_only_on_assignments() {
    let cases: &[(&str, RejectCode, &str)] = &[
        (
            r#"{"event_id":"a","type":"assignment","ts":1764419696789,"unit_id":"d","experiment":"e","variant":"v"}"#,
            RejectCode::MissingField,
            "unit_attribute is required",
        ),
        (
            r#"{"event_id":"a","type":"assignment","ts":1764419696789,"user_id":"u","unit_attribute":"device_id","experiment":"e","variant":"v"}"#,
            RejectCode::MissingField,
            "unit_id is required",
        ),
        (
            r#"{"event_id":"a","type":"assignment","ts":1764419696789,"experiment":"e","variant":"v"}"#,
            RejectCode::MissingField,
            "user_id is required",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","unit_id":"d"}"#,
            RejectCode::UnknownField,
            "unit_id is only allowed on assignment events",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"unit_attribute":"device_id","name":"n"}"#,
            RejectCode::MissingField,
            "user_id is required",
        ),
        (
            r#"{"event_id":"a","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","synthetic":"yes"}"#,
            RejectCode::InvalidType,
            "synthetic must be a boolean, got a string",
        ),
        (
            r#"{"event_id":"a","type":"assignment","ts":1764419696789,"unit_attribute":"","unit_id":"d","experiment":"e","variant":"v"}"#,
            RejectCode::InvalidValue,
            "unit_attribute must be 1 to 128 bytes long, got 0",
        ),
    ];
    for (event, code, message) in cases {
        let (got_code, got_message) = rejection(event);
        assert_eq!(
            (got_code, got_message.as_str()),
            (*code, *message),
            "{event}"
        );
    }
}
