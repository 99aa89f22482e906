//! `/metrics` values, not only names: the gateway binary (its own process, so no other test's
//! traffic is counted) gets known traffic and its counters must say exactly that.

use serde_json::{Value, json};

use crate::common::*;

/// The value of one series, as rendered (labels included in `series`).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_from_the_start_and_count_known_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let data = dir.path().join("data");
    std::fs::write(&config, format!("storage = \"{}\"\n", data.display())).unwrap();
    let (child, base) = start_gateway(&config, &dir.path().join("state"));
    let client = reqwest::Client::new();
    let scrape = || async {
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    };

    // Before any traffic, the series alerts are written against are there, at zero.
    let before = scrape().await;
    for series in [
        "gateway_events_accepted_total",
        "gateway_events_rejected_total{code=\"missing_field\"}",
        "gateway_overloaded_total{reason=\"log_full\"}",
        "gateway_upload_errors_total",
        "gateway_assignments_total{reason=\"hashed\"}",
    ] {
        assert_eq!(value(&before, series), Some(0.0), "{series} in:\n{before}");
    }
    assert_eq!(
        value(&before, "gateway_stage_up{stage=\"uploader\"}"),
        Some(1.0)
    );

    let t = now_ms();
    let events = json!([assignment("m-1", t), conversion("m-2", t), assignment("m-1", t),
        {"event_id": "m-3", "type": "conversion", "ts": t, "name": "purchase"}]);
    let r = client
        .post(format!("{base}/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    let r = client
        .post(format!("{base}/v1/events"))
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let assign: Value = client
        .post(format!("{base}/v1/assign"))
        .json(&json!({"user_id": "u-metrics", "experiments": ["checkout_button"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = &assign["assignments"][0];
    assert_eq!(a["in_experiment"], true, "{assign}");

    let after = scrape().await;
    assert_eq!(value(&after, "gateway_events_accepted_total"), Some(2.0));
    assert_eq!(value(&after, "gateway_events_duplicate_total"), Some(1.0));
    assert_eq!(
        value(
            &after,
            "gateway_events_rejected_total{code=\"missing_field\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "gateway_assignments_total{reason=\"hashed\"}"),
        Some(1.0)
    );
    let variant = a["variant"].as_str().unwrap();
    let by_variant = format!(
        "gateway_assignments_by_variant_total{{experiment=\"checkout_button\",variant=\"{variant}\"}}"
    );
    assert_eq!(value(&after, &by_variant), Some(1.0), "{after}");
    let version = format!(
        "gateway_experiments_config{{version=\"{}\"}}",
        assign["config_version"].as_str().unwrap()
    );
    assert_eq!(value(&after, &version), Some(1.0));
    // Latency is a histogram (aggregatable across gateways), two requests on the events route.
    assert_eq!(
        value(
            &after,
            "gateway_http_request_duration_seconds_bucket{route=\"events\",le=\"+Inf\"}"
        ),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "gateway_http_requests_total{route=\"events\",status=\"200\"}"
        ),
        Some(2.0)
    );
    stop_gracefully(child);

    // A restart reports the log it found and how far storage is, before any traffic.
    let (child, base) = start_gateway(&config, &dir.path().join("state"));
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let durable = value(&text, "gateway_durable_seq").unwrap();
    assert!(durable >= 1.0, "the logged record is durable: {durable}");
    assert!(value(&text, "gateway_wal_bytes").unwrap() > 0.0, "{text}");
    stop_gracefully(child);
}
