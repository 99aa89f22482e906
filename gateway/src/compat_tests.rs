use super::*;
use serde_json::{Value, json};

fn received() -> DateTime<Utc> {
    "2026-12-02T08:00:00Z".parse().unwrap()
}

fn events(protocol: Protocol, body: Value) -> (Vec<Value>, Translated) {
    let t = translate(protocol, body.to_string().as_bytes(), received(), 100).unwrap();
    let events: Vec<Value> = serde_json::from_slice(&t.events).unwrap();
    assert_eq!(events.len(), t.count);
    (events, t)
}

#[test]
fn segment_track_calls_become_conversions_and_experiment_viewed_assignments() {
    let (events, t) = events(
        Protocol::Segment,
        json!({
            "writeKey": "wk-1",
            "sentAt": "2026-12-02T07:59:59Z",
            "batch": [
                {"type": "track", "messageId": "m-1", "userId": "u-1", "anonymousId": "a-1",
                 "event": "Order Completed", "timestamp": "2026-12-02T07:30:00.123456+00:00",
                 "properties": {"revenue": 19.99, "currency": "EUR", "items": [1, 2],
                                "coupon": null, "first": true},
                 "context": {"library": {"name": "analytics-python"}}},
                {"type": "track", "messageId": "m-2", "anonymousId": "a-2",
                 "event": "Experiment Viewed", "originalTimestamp": "2026-12-02T07:31:00",
                 "properties": {"experimentId": "checkout_button", "variationId": "treatment",
                                "hashAttribute": "device_id", "hashValue": "d-9", "page": "/cart"}},
                {"type": "identify", "messageId": "m-3", "userId": "u-1", "traits": {"plan": "pro"}},
                {"type": "page", "messageId": "m-4", "userId": "u-1", "name": "Home"},
                {"type": "track", "messageId": "m-5", "userId": 42, "event": "Signed Up",
                 "properties": {"value": 3}}
            ]
        }),
    );
    assert_eq!(t.key.as_deref(), Some("wk-1"));
    assert_eq!(t.skipped, 2, "identify and page are counted, not sent on");
    assert_eq!(
        events[0],
        json!({"event_id": "m-1", "type": "conversion", "ts": "2026-12-02T07:30:00.123456+00:00",
               "user_id": "u-1", "name": "Order Completed", "value": 19.99,
               "props": {"currency": "EUR", "first": true}})
    );
    assert_eq!(
        events[1],
        json!({"event_id": "m-2", "type": "assignment", "ts": "2026-12-02T07:31:00.000000Z",
               "user_id": "a-2", "experiment": "checkout_button", "variant": "treatment",
               "unit_attribute": "device_id", "unit_id": "d-9", "props": {"page": "/cart"}})
    );
    assert_eq!(
        events[2],
        json!({"event_id": "m-5", "type": "conversion", "ts": "2026-12-02T08:00:00.000000Z",
               "user_id": "42", "name": "Signed Up", "value": 3})
    );
}

#[test]
fn a_single_segment_call_is_a_batch_of_one() {
    let (events, t) = events(
        Protocol::Segment,
        json!({"type": "track", "messageId": "m-1", "userId": "u", "event": "Click",
               "timestamp": "2026-12-02T07:00:00Z"}),
    );
    assert_eq!((t.count, t.skipped, t.key), (1, 0, None));
    assert_eq!(events[0]["name"], "Click");
}

#[test]
fn posthog_batches_map_uuid_distinct_id_and_feature_flag_called() {
    let (events, t) = events(
        Protocol::PostHog,
        json!({
            "api_key": "phc_1",
            "batch": [
                {"event": "purchase", "uuid": "0190-a", "distinct_id": "u-7",
                 "timestamp": "2026-12-02T07:10:00+00:00",
                 "properties": {"value": 5.5, "$lib": "posthog-python", "sku": "x"}},
                {"event": "$feature_flag_called", "uuid": "0190-b", "distinct_id": "u-7",
                 "timestamp": "2026-12-02T07:11:00+00:00",
                 "properties": {"$feature_flag": "new_onboarding",
                                "$feature_flag_response": "short_form"}},
                {"event": "$pageview", "uuid": "0190-c", "distinct_id": "u-7"},
                {"event": "$identify", "uuid": "0190-d", "distinct_id": "u-7"}
            ]
        }),
    );
    assert_eq!(t.key.as_deref(), Some("phc_1"));
    assert_eq!(t.skipped, 2);
    assert_eq!(
        events[0],
        json!({"event_id": "0190-a", "type": "conversion", "ts": "2026-12-02T07:10:00+00:00",
               "user_id": "u-7", "name": "purchase", "value": 5.5,
               "props": {"$lib": "posthog-python", "sku": "x"}})
    );
    assert_eq!(
        events[1],
        json!({"event_id": "0190-b", "type": "assignment", "ts": "2026-12-02T07:11:00+00:00",
               "user_id": "u-7", "experiment": "new_onboarding", "variant": "short_form"})
    );
}

#[test]
fn calls_that_cannot_be_mapped_are_passed_on_for_validation_to_refuse() {
    let (events, t) = events(
        Protocol::Segment,
        json!({"batch": [{"type": "track", "userId": "u", "event": "No Id"}, "not a call"]}),
    );
    assert_eq!((t.count, t.skipped), (2, 0));
    assert!(events[0].get("event_id").is_none());
    assert_eq!(events[1], json!("not a call"));
}

#[test]
fn unreadable_bodies_are_errors_with_offsets() {
    let err = translate(Protocol::Segment, b"{\n \"batch\": [}", received(), 10).unwrap_err();
    assert!(
        matches!(err, TranslateError::Syntax { offset: 13, .. }),
        "{err:?}"
    );
    assert_eq!(
        translate(Protocol::PostHog, b"[1]", received(), 10).unwrap_err(),
        TranslateError::NotAnObject
    );
    assert!(matches!(
        translate(Protocol::PostHog, br#"{"batch": {}}"#, received(), 10).unwrap_err(),
        TranslateError::Shape(_)
    ));
    let many = json!({"batch": vec![json!({}); 11]}).to_string();
    assert_eq!(
        translate(Protocol::Segment, many.as_bytes(), received(), 10).unwrap_err(),
        TranslateError::TooMany { limit: 10 }
    );
}
