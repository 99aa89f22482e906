//! Live sample-ratio checks, end to end: exposures posted to the gateway binary (its own
//! process, so its gauges hold only this traffic), read back through
//! `GET /v1/experiments/{key}/health` and `/metrics`.

use serde_json::{Map, Value, json};

use crate::common::*;

const EXPERIMENTS: &str = r#"{"experiments": [
  {"key": "balanced", "variants": ["control", "treatment"]},
  {"key": "leaky", "variants": ["control", "treatment"]},
  {"key": "device_split", "variants": ["a", "b", "c"], "weights": [0.2, 0.4, 0.4],
   "hash_attribute": "device_id"}
]}"#;

/// Units per experiment: enough that a 5% loss of one variant is far past p = 0.001
/// (chi-square about 25 expected at 20,000 units per arm) while a fair split stays healthy.
const UNITS: usize = 40_000;

/// The variant the gateway's own assignment gives a unit.
fn variant_of(
    config: &gateway::assign::Experiments,
    key: &str,
    attributes: &Map<String, Value>,
) -> String {
    let unit = gateway::assign::Unit::new(attributes);
    let a = config.assign(&unit, Some(&[key]), chrono::Utc::now());
    a[0].variant.as_deref().unwrap().to_owned()
}

fn scrape_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_split_is_healthy_and_a_five_percent_loss_of_treatment_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let experiments = dir.path().join("experiments.json");
    std::fs::write(&experiments, EXPERIMENTS).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "storage = \"{}\"\nexperiments = \"{}\"\n[srm]\nexact_units_per_variant = 32768\n",
            dir.path().join("data").display(),
            experiments.display()
        ),
    )
    .unwrap();
    let parsed = gateway::assign::Experiments::load(&experiments).unwrap();
    let (child, base) = start_gateway(&config, &dir.path().join("state"));
    let client = reqwest::Client::new();

    let now = now_ms();
    let mut events = Vec::new();
    let mut dropped = 0;
    for i in 0..UNITS {
        let user = format!("user-{i}");
        let mut attrs = Map::new();
        attrs.insert("user_id".into(), Value::from(user.clone()));
        for key in ["balanced", "leaky"] {
            let variant = variant_of(&parsed, key, &attrs);
            // Every 20th treatment exposure of `leaky` never arrives.
            if key == "leaky" && variant == "treatment" && i % 20 == 0 {
                dropped += 1;
                continue;
            }
            // Each unit is exposed twice: units, not events, are counted.
            for n in 0..2 {
                events.push(
                    json!({"event_id": format!("{key}-{i}-{n}"), "type": "assignment",
                    "ts": now, "user_id": user, "experiment": key, "variant": variant}),
                );
            }
        }
        // The device experiment counts devices, posted with their unit fields.
        let device = format!("device-{i}");
        attrs.insert("device_id".into(), Value::from(device.clone()));
        let variant = variant_of(&parsed, "device_split", &attrs);
        events.push(
            json!({"event_id": format!("dev-{i}"), "type": "assignment", "ts": now,
            "user_id": user, "unit_attribute": "device_id", "unit_id": device,
            "experiment": "device_split", "variant": variant}),
        );
    }
    // An unknown variant is stored but not counted: labels come from the config only.
    events.push(
        json!({"event_id": "odd", "type": "assignment", "ts": now, "user_id": "x",
        "experiment": "balanced", "variant": "not-a-variant"}),
    );
    assert!(dropped > 500, "{dropped}");
    for chunk in events.chunks(5000) {
        let (status, body) = gateway_post(&client, &base, chunk).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rejected"], json!([]));
    }

    let health = |key: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client
                .get(format!("{base}/v1/experiments/{key}/health"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let balanced = health("balanced").await;
    assert_eq!(balanced["verdict"], "healthy", "{balanced}");
    assert_eq!(balanced["units"], UNITS, "{balanced}");
    assert!(balanced["p_value"].as_f64().unwrap() > 0.001, "{balanced}");
    assert_eq!(balanced["variants"][0]["exact"], true);
    assert_eq!(balanced["variants"][0]["expected_share"], 0.5);

    let leaky = health("leaky").await;
    assert_eq!(leaky["verdict"], "srm", "{leaky}");
    assert_eq!(leaky["units"], UNITS - dropped, "{leaky}");
    assert!(leaky["p_value"].as_f64().unwrap() < 0.001, "{leaky}");

    let device = health("device_split").await;
    assert_eq!(device["verdict"], "healthy", "{device}");
    assert_eq!(device["units"], UNITS, "{device}");
    assert_eq!(device["degrees_of_freedom"], 2);
    assert_eq!(device["variants"][1]["expected_share"], 0.4);

    let missing = client
        .get(format!("{base}/v1/experiments/nope/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The gauges follow within a refresh (2 s).
    let mut text = String::new();
    for _ in 0..100 {
        text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if scrape_value(&text, "gateway_experiment_srm{experiment=\"leaky\"}") == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        scrape_value(&text, "gateway_experiment_srm{experiment=\"leaky\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        scrape_value(&text, "gateway_experiment_srm{experiment=\"balanced\"}"),
        Some(0.0)
    );
    let p_leaky = scrape_value(
        &text,
        "gateway_experiment_srm_p_value{experiment=\"leaky\"}",
    )
    .unwrap();
    assert!(p_leaky < 0.001, "{p_leaky}");
    let p_balanced = scrape_value(
        &text,
        "gateway_experiment_srm_p_value{experiment=\"balanced\"}",
    )
    .unwrap();
    assert_eq!(p_balanced, balanced["p_value"].as_f64().unwrap());
    let control = scrape_value(
        &text,
        "gateway_experiment_exposed_units{experiment=\"balanced\",variant=\"control\"}",
    )
    .unwrap();
    assert_eq!(control, balanced["variants"][0]["units"].as_f64().unwrap());
    assert!(
        !text.contains("not-a-variant"),
        "client input never becomes a label"
    );
    stop_gracefully(child);
}

async fn gateway_post(client: &reqwest::Client, base: &str, events: &[Value]) -> (u16, Value) {
    let r = client
        .post(format!("{base}/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}
