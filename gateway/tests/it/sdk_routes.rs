//! The analytics SDKs' routes over HTTP (Segment `/v1/batch`, `/v1/track`; PostHog `/batch/`,
//! `/capture/`): credentials in the header or the body, bodies however the SDKs encode them,
//! answers they understand, and the rows in the lake. The real SDKs are driven in `sdk.rs`.

use std::num::NonZeroU32;

use base64::Engine;
use gateway::auth::{RateLimit, WriteKey, hash_key};
use serde_json::{Value, json};

use crate::common::*;

fn key(source: &str, secret: &str, rate_limit: Option<RateLimit>) -> WriteKey {
    WriteKey {
        source: source.into(),
        sha256: hash_key(secret),
        rate_limit,
    }
}

async fn gateway() -> TestGateway {
    TestGateway::start_with(|c| {
        c.limits.max_events = 100;
        c.auth.write_keys = vec![
            key("segment", "wk-segment", None),
            key("posthog", "phc_posthog", None),
            key(
                "limited",
                "wk-limited",
                Some(RateLimit {
                    events_per_sec: NonZeroU32::new(10).unwrap(),
                    burst: NonZeroU32::new(100).unwrap(),
                }),
            ),
        ];
    })
    .await
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn send(gw: &TestGateway, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Answer {
    let mut req = gw.client.post(format!("{}{path}", gw.base)).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    Answer {
        status,
        retry_after,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn basic(key: &str) -> (&'static str, String) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    ("authorization", format!("Basic {b64}"))
}

fn track(id: &str, event: &str, properties: Value) -> Value {
    json!({"type": "track", "messageId": id, "userId": "u-1", "event": event,
           "timestamp": "2026-12-02T06:00:00.250Z", "properties": properties})
}

#[tokio::test]
async fn segment_batches_land_in_the_tables_whatever_their_encoding() {
    let gw = gateway().await;
    let batch = json!({"batch": [
        track("m-1", "Order Completed", json!({"revenue": 12.5, "currency": "EUR", "cart": {"n": 2}})),
        track("m-2", "Experiment Viewed", json!({"experimentId": "checkout_button", "variationId": "treatment"})),
        {"type": "identify", "messageId": "m-3", "userId": "u-1", "traits": {"plan": "pro"}},
        {"type": "page", "messageId": "m-4", "anonymousId": "a-1", "name": "Home"},
    ]});
    // Gzip with no Content-Encoding and a text content type, as browser SDKs send it.
    let a = send(
        &gw,
        "/v1/batch",
        gzip(batch.to_string().as_bytes()),
        &[basic("wk-segment"), ("content-type", "text/plain".into())],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"success": true, "accepted": 2, "duplicates": 0, "rejected": 0, "skipped": 2})
    );
    // The write key in the body instead of the header; one call on /v1/track.
    let mut single = track("m-5", "Signed Up", json!({"value": 3, "plan": "pro"}));
    single["writeKey"] = json!("wk-segment");
    single["userId"] = Value::Null;
    single["anonymousId"] = json!("a-9");
    let a = send(&gw, "/v1/track", single.to_string().into_bytes(), &[]).await;
    assert_eq!(
        (a.status, &a.body["accepted"]),
        (200, &json!(1)),
        "{}",
        a.body
    );
    // Resent: a duplicate, stored once.
    let a = send(
        &gw,
        "/v1/batch",
        batch.to_string().into_bytes(),
        &[basic("wk-segment")],
    )
    .await;
    assert_eq!(
        (a.body["accepted"].clone(), a.body["duplicates"].clone()),
        (json!(0), json!(2))
    );

    let (data, _state) = gw.stop().await;
    let conversions = by_event_id(rows(data.path(), "conversions"));
    let order = &conversions["m-1"];
    assert_eq!(order["name"], "Order Completed");
    assert_eq!(order["value"], 12.5);
    assert_eq!(order["user_id"], "u-1");
    assert_eq!(order["source"], "segment");
    assert_eq!(
        serde_json::from_str::<Value>(order["props"].as_str().unwrap()).unwrap(),
        json!({"currency": "EUR"}),
        "nested properties are dropped"
    );
    assert_eq!(
        conversions["m-5"]["user_id"], "a-9",
        "anonymousId when there is no userId"
    );
    assert_eq!(conversions["m-5"]["value"], 3.0);
    let assignments = by_event_id(rows(data.path(), "assignments"));
    assert_eq!(assignments.len(), 1);
    assert_eq!(assignments["m-2"]["experiment"], "checkout_button");
    assert_eq!(assignments["m-2"]["variant"], "treatment");
    assert_eq!(conversions.len(), 2, "identify and page are not stored");
}

#[tokio::test]
async fn posthog_batches_and_single_captures_with_the_key_in_the_body() {
    let gw = gateway().await;
    let batch = json!({"api_key": "phc_posthog", "batch": [
        {"event": "purchase", "uuid": "0190a-1", "distinct_id": "u-7",
         "timestamp": "2026-12-02T06:10:00+00:00", "properties": {"value": 5.5, "$lib": "web"}},
        {"event": "$feature_flag_called", "uuid": "0190a-2", "distinct_id": "u-7",
         "timestamp": "2026-12-02T06:11:00+00:00",
         "properties": {"$feature_flag": "new_onboarding", "$feature_flag_response": "short_form"}},
        {"event": "$pageview", "uuid": "0190a-3", "distinct_id": "u-7"},
    ]});
    let a = send(&gw, "/batch/", batch.to_string().into_bytes(), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"status": 1, "accepted": 2, "duplicates": 0, "rejected": 0, "skipped": 1})
    );
    // posthog-js style: a form field `data` holding base64 JSON, gzipped under a form type.
    let capture = json!({"api_key": "phc_posthog", "event": "signup", "uuid": "0190a-4",
                         "distinct_id": "u-8", "timestamp": "2026-12-02T06:12:00Z"});
    let b64 = base64::engine::general_purpose::STANDARD.encode(capture.to_string());
    let form = format!(
        "data={}",
        b64.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    let a = send(
        &gw,
        "/capture/",
        gzip(form.as_bytes()),
        &[("content-type", "application/x-www-form-urlencoded".into())],
    )
    .await;
    assert_eq!(
        (a.status, &a.body["accepted"]),
        (200, &json!(1)),
        "{}",
        a.body
    );

    let (data, _state) = gw.stop().await;
    let conversions = by_event_id(rows(data.path(), "conversions"));
    assert_eq!(conversions["0190a-1"]["user_id"], "u-7");
    assert_eq!(conversions["0190a-1"]["source"], "posthog");
    assert_eq!(conversions["0190a-4"]["name"], "signup");
    let assignments = by_event_id(rows(data.path(), "assignments"));
    assert_eq!(assignments["0190a-2"]["experiment"], "new_onboarding");
    assert_eq!(assignments["0190a-2"]["variant"], "short_form");
}

#[tokio::test]
async fn refusals_carry_top_level_code_and_message_and_overload_is_429_with_retry_after() {
    let gw = gateway().await;
    let one = |id: &str| json!({"batch": [track(id, "Click", json!({}))]}).to_string();
    // No key anywhere, a wrong key, a body that is not JSON.
    let a = send(&gw, "/v1/batch", one("x-1").into_bytes(), &[]).await;
    assert_eq!((a.status, &a.body["code"]), (401, &json!("unauthorized")));
    let a = send(&gw, "/v1/batch", one("x-1").into_bytes(), &[basic("nope")]).await;
    assert_eq!((a.status, &a.body["code"]), (403, &json!("forbidden")));
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let a = send(
        &gw,
        "/batch/",
        b"{\"api_key\": \"phc_posthog\", ".to_vec(),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, &a.body["code"]),
        (400, &json!("invalid_json")),
        "{}",
        a.body
    );
    assert_eq!(a.body["error"]["code"], "invalid_json");

    // A key limited to 10 events/s with a burst of 100: a full batch passes, the next is 429.
    let full = |n: usize| {
        let calls: Vec<Value> = (0..100)
            .map(|i| track(&format!("r-{n}-{i}"), "Click", json!({})))
            .collect();
        json!({"batch": calls}).to_string().into_bytes()
    };
    let a = send(&gw, "/v1/batch", full(0), &[basic("wk-limited")]).await;
    assert_eq!(
        (a.status, &a.body["accepted"]),
        (200, &json!(100)),
        "{}",
        a.body
    );
    let a = send(&gw, "/v1/batch", full(1), &[basic("wk-limited")]).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["code"], "rate_limited");
    let wait: u64 = a.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=11).contains(&wait), "{wait}");
    let (data, _state) = gw.stop().await;
    let ids = event_ids(data.path(), "conversions");
    assert_eq!(ids.len(), 100);
    assert!(
        ids.iter().all(|id| id.starts_with("r-0-")),
        "nothing of the refused batch"
    );
}
