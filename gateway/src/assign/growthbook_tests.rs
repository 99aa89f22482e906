use serde_json::json;

use super::*;
use crate::assign::FileFormat;

fn parse(doc: Value) -> Experiments {
    Experiments::parse(&doc.to_string(), FileFormat::Json).expect("valid")
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn a_running_experiment_is_one_rule_with_every_field_explicit() {
    // Weights summing to 0.995 are served as written: the SDKs build their ranges from them
    // as the gateway does, and normalized weights would move the units near the boundaries.
    let exps = parse(json!({"experiments": [{
        "key": "e", "variants": ["a", "b", "c"], "weights": [0.5, 0.25, 0.245], "coverage": 0.5,
        "seed": "s", "hash_attribute": "device_id", "hash_version": 1,
        "condition": {"country": "US"}, "layer": {"name": "l", "range": [0.25, 0.75]}
    }]}));
    let p = exps.growthbook_features(at("2026-12-02T00:00:00Z"));
    assert_eq!(
        p.features["e"],
        json!({"defaultValue": "a", "rules": [{
            "id": "e", "key": "e", "name": "e", "variations": ["a", "b", "c"],
            "meta": [{"key": "a", "name": "a"}, {"key": "b", "name": "b"}, {"key": "c", "name": "c"}],
            "seed": "s", "hashAttribute": "device_id", "hashVersion": 1,
            "weights": [0.5, 0.25, 0.245], "coverage": 0.5, "condition": {"country": "US"},
            "namespace": ["l", 0.25, 0.75]
        }]})
    );
    assert_eq!((p.next_change, p.last_change), (None, None));
}

#[test]
fn killed_stopped_and_out_of_window_experiments_keep_only_what_still_applies() {
    let exps = parse(json!({"experiments": [
        {"key": "killed", "variants": ["a", "b"], "status": "killed", "fallback": "b",
         "forced": {"u1": "a"}},
        {"key": "stopped", "variants": ["a", "b"], "status": "stopped",
         "forced": {"u1": "b", "42": "b", "u2": "a"}},
        {"key": "window", "variants": ["a", "b"], "start": "2026-12-01T00:00:00Z",
         "end": "2026-12-03T00:00:00Z"},
    ]}));
    let before = exps.growthbook_features(at("2026-11-30T00:00:00Z"));
    // Killed: the fallback for everyone, forced units included.
    assert_eq!(
        before.features["killed"],
        json!({"defaultValue": "b", "rules": []})
    );
    // Stopped: forcing still wins, one rule per forced variant; a numeric id matches as a number.
    let rules = before.features["stopped"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["condition"], json!({"user_id": {"$in": ["u2"]}}));
    assert_eq!(rules[0]["weights"], json!([1.0, 0.0]));
    assert_eq!(
        rules[1]["condition"],
        json!({"user_id": {"$in": ["42", 42, "u1"]}})
    );
    assert_eq!(rules[1]["weights"], json!([0.0, 1.0]));
    assert_eq!(before.features["window"]["rules"], json!([]));
    assert_eq!(before.next_change, Some(at("2026-12-01T00:00:00Z")));
    assert_eq!(before.last_change, None);

    let during = exps.growthbook_features(at("2026-12-02T00:00:00Z"));
    assert_eq!(
        during.features["window"]["rules"].as_array().unwrap().len(),
        1
    );
    assert_eq!(during.next_change, Some(at("2026-12-03T00:00:00Z")));
    assert_eq!(during.last_change, Some(at("2026-12-01T00:00:00Z")));
    let after = exps.growthbook_features(at("2026-12-03T00:00:00Z"));
    assert_eq!(
        after.features["window"]["rules"],
        json!([]),
        "the end is exclusive"
    );
    assert_eq!(after.last_change, Some(at("2026-12-03T00:00:00Z")));
}

#[test]
fn prerequisites_refer_to_the_parent_or_to_its_helper_when_its_default_is_accepted() {
    let exps = parse(json!({"experiments": [
        {"key": "p", "variants": ["a", "b"], "forced": {"u1": "b"}},
        {"key": "on_b", "variants": ["x", "y"], "prerequisites": [{"experiment": "p", "variants": ["b"]}]},
        {"key": "on_a", "variants": ["x", "y"], "prerequisites": [{"experiment": "p", "variants": ["a"]}]},
    ]}));
    let p = exps.growthbook_features(at("2026-12-02T00:00:00Z"));
    assert_eq!(
        p.features["on_b"]["rules"][0]["parentConditions"],
        json!([{"id": "p", "condition": {"value": {"$in": ["b"]}}}])
    );
    // "a" is also what units outside p get: ask the helper, which has no default.
    assert_eq!(
        p.features["on_a"]["rules"][0]["parentConditions"],
        json!([{"id": "p.in_experiment", "condition": {"value": {"$in": ["a"]}}}])
    );
    assert_eq!(p.features["p.in_experiment"]["defaultValue"], Value::Null);
    assert_eq!(
        p.features["p.in_experiment"]["rules"],
        p.features["p"]["rules"]
    );
    assert!(!p.features.contains_key("on_b.in_experiment"));
}

#[test]
fn a_helper_feature_never_replaces_an_experiment_of_that_name() {
    let exps = parse(json!({"experiments": [
        {"key": "p", "variants": ["a", "b"]},
        {"key": "p.in_experiment", "variants": ["x", "y"]},
        {"key": "child", "variants": ["x", "y"], "prerequisites": [{"experiment": "p", "variants": ["a"]}]},
    ]}));
    let p = exps.growthbook_features(at("2026-12-02T00:00:00Z"));
    assert_eq!(
        p.features["p.in_experiment"]["defaultValue"], "x",
        "the experiment stays"
    );
    assert_eq!(p.features["p.in_experiment_"]["defaultValue"], Value::Null);
    assert_eq!(
        p.features["child"]["rules"][0]["parentConditions"][0]["id"],
        "p.in_experiment_"
    );
}
