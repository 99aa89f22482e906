//! /v1/assign over HTTP: both forms, exposure logging, hot reload, agreement between instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::common::*;

async fn assign(gw: &TestGateway, body: Value) -> (u16, Value) {
    let resp = gw
        .client
        .post(format!("{}/v1/assign", gw.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn post_and_get_agree_and_give_a_reason_for_every_outcome() {
    let gw = TestGateway::start().await;
    let (status, post) = assign(
        &gw,
        json!({"user_id": "u-1", "attributes": {"country": "US", "app_version": "2.3.1"}}),
    )
    .await;
    assert_eq!(status, 200, "{post}");
    let all = post["assignments"].as_array().unwrap();
    let button = all
        .iter()
        .find(|a| a["experiment"] == "checkout_button")
        .unwrap();
    // GrowthBook hash v2 of ("checkout_button", "u-1") is 0.6469: the second half, treatment.
    assert_eq!(
        button,
        &json!({"experiment": "checkout_button", "variant": "treatment", "in_experiment": true, "bucket": 0.6469, "reason": "hashed"})
    );
    let killed = all
        .iter()
        .find(|a| a["experiment"] == "pricing_banner")
        .unwrap();
    assert_eq!(
        (killed["reason"].as_str(), killed["in_experiment"].as_bool()),
        (Some("killed"), Some(false))
    );
    for a in all {
        assert!(a["reason"].is_string(), "{a}");
    }
    let get: Value = gw
        .client
        .get(format!(
            "{}/v1/assign?user_id=u-1&experiment=checkout_button&attr.country=US",
            gw.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(get["assignments"], json!([button]));
    assert_eq!(get["config_version"], post["config_version"]);

    let (status, err) = assign(&gw, json!({"user_id": "u-1", "colour": 1})).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_request");
    gw.stop().await;
}

#[tokio::test]
async fn exposures_are_logged_once_per_unit_experiment_variant_and_day() {
    let gw = TestGateway::start().await;
    let req = json!({"user_id": "u-7", "experiments": ["checkout_button", "pricing_banner"], "log_exposure": true});
    let (_, first) = assign(&gw, req.clone()).await;
    assert_eq!(
        first["exposures_logged"], 1,
        "killed experiments log nothing: {first}"
    );
    let (_, again) = assign(&gw, req).await;
    assert_eq!(again["assignments"], first["assignments"]);
    let (data, _state) = gw.stop().await;
    let stored = rows(data.path(), "assignments");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["user_id"], "u-7");
    assert_eq!(stored[0]["experiment"], "checkout_button");
    assert_eq!(stored[0]["variant"], first["assignments"][0]["variant"]);
}

#[tokio::test]
async fn two_separately_started_gateways_give_every_unit_the_same_answer() {
    let a = TestGateway::start().await;
    let b = TestGateway::start().await;
    for i in 0..200 {
        let req = json!({"user_id": format!("unit-{i}"), "attributes": {"device_id": format!("d-{i}"), "country": "CA", "app_version": "3.0.0"}});
        let (_, x) = assign(&a, req.clone()).await;
        let (_, y) = assign(&b, req).await;
        assert_eq!(x, y);
    }
    a.stop().await;
    b.stop().await;
}

fn experiments_file(control_weight: f64) -> String {
    json!({"experiments": [{"key": "checkout_button", "variants": ["control", "treatment"],
        "weights": [control_weight, 1.0 - control_weight], "status": "running"}]})
    .to_string()
}

#[tokio::test]
async fn reload_swaps_atomically_under_concurrent_requests_and_refuses_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("experiments.json");
    // Version A sends everyone to control, version B everyone to treatment: a response mixing
    // a version with the other's answer would show a torn read.
    std::fs::write(&path, experiments_file(1.0)).unwrap();
    let gw = Arc::new(TestGateway::start_with(|c| c.experiments = Some(path.clone())).await);
    let (_, first) = assign(&gw, json!({"user_id": "x"})).await;
    let version_a = first["config_version"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let gw = gw.clone();
        let stop = stop.clone();
        let version_a = version_a.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let (status, r) = assign(&gw, json!({"user_id": format!("c{c}-{n}")})).await;
                assert_eq!(status, 200);
                let version = r["config_version"].as_str().unwrap().to_owned();
                let variant = r["assignments"][0]["variant"].as_str().unwrap().to_owned();
                let expected = if version == version_a {
                    "control"
                } else {
                    "treatment"
                };
                assert_eq!(variant, expected, "version {version} answered {variant}");
                seen.insert(version);
                n += 1;
            }
            seen
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    std::fs::write(&path, experiments_file(0.0)).unwrap();
    let resp: Value = gw
        .client
        .post(format!("{}/admin/reload", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version_b = resp["config_version"].as_str().unwrap().to_owned();
    assert_ne!(version_b, version_a);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // A broken file is refused with the experiment and field named; B stays in force.
    std::fs::write(&path, r#"{"experiments":[{"key":"checkout_button","variants":["control","treatment"],"weights":[0.3,0.3]}]}"#).unwrap();
    let resp = gw
        .client
        .post(format!("{}/admin/reload", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let err: Value = resp.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("checkout_button") && message.contains("weights"),
        "{message}"
    );
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    assert!(
        seen.contains(&version_a) && seen.contains(&version_b),
        "{seen:?}"
    );
    let (_, after) = assign(&gw, json!({"user_id": "y"})).await;
    assert_eq!(after["config_version"], version_b);
    Arc::try_unwrap(gw).ok().unwrap().stop().await;
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("experiments.json");
    std::fs::write(&path, experiments_file(1.0)).unwrap();
    let gw = TestGateway::start_with(|c| c.experiments = Some(path.clone())).await;
    std::fs::write(&path, experiments_file(0.0)).unwrap();
    let mut variant = String::new();
    for _ in 0..100 {
        let (_, r) = assign(&gw, json!({"user_id": "z"})).await;
        variant = r["assignments"][0]["variant"].as_str().unwrap().to_owned();
        if variant == "treatment" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        variant, "treatment",
        "file change not picked up within 10 s"
    );
    gw.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_experiments_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("experiments.json");
    std::fs::write(&path, experiments_file(1.0)).unwrap();
    let config = dir.path().join("gateway.toml");
    // No polling: only the signal can pick up the change.
    std::fs::write(
        &config,
        format!(
            "experiments = {:?}\nexperiments_poll_secs = 0\nstorage = {:?}\n",
            path,
            dir.path().join("data")
        ),
    )
    .unwrap();
    let (child, base) = start_gateway(&config, &dir.path().join("state"));
    let client = reqwest::Client::new();
    let variant = || async {
        let r: Value = client
            .post(format!("{base}/v1/assign"))
            .json(&json!({"user_id": "h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["assignments"][0]["variant"].as_str().unwrap().to_owned()
    };
    assert_eq!(variant().await, "control");
    std::fs::write(&path, experiments_file(0.0)).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(variant().await, "control", "reloaded without being asked");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut got = String::new();
    for _ in 0..50 {
        got = variant().await;
        if got == "treatment" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got, "treatment", "SIGHUP did not reload");
    stop_gracefully(child);
}
