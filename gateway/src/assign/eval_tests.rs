//! Tests for the evaluation order and its statistical properties.

use super::*;
use crate::assign::experiments::FileFormat;
use crate::assign::hash::hash_v2;
use proptest::prelude::*;
use serde_json::json;

const EXAMPLE: &str = include_str!("../../experiments.example.json");

fn at(time: &str) -> DateTime<Utc> {
    time.parse().expect("RFC 3339 time")
}

fn now() -> DateTime<Utc> {
    at("2025-06-01T12:00:00Z")
}

fn experiments(list: Value) -> Experiments {
    let text = json!({ "experiments": list }).to_string();
    Experiments::parse(&text, FileFormat::Json).unwrap_or_else(|e| panic!("invalid test file: {e}"))
}

fn example() -> Experiments {
    Experiments::parse(EXAMPLE, FileFormat::Json).expect("example file is valid")
}

fn attrs(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("attributes must be an object"),
    }
}

fn user(id: &str) -> Map<String, Value> {
    attrs(json!({ "user_id": id }))
}

fn assign_one(
    exps: &Experiments,
    key: &str,
    attributes: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Assignment {
    exps.assign_one(&Unit::new(attributes), key, now)
        .expect("experiment exists")
}

fn variant(a: &Assignment) -> &str {
    a.variant.as_deref().expect("has a variant")
}

#[test]
fn assignments_agree_with_growthbook_sdk_results() {
    // cases.json "run", "Uses seed with default weights/coverage": seed "foo", v2, id "1" -> 1.
    let exps = experiments(json!([
        {"key": "key", "seed": "foo", "hash_attribute": "id", "variants": ["a", "b"]},
        // cases.json "stickyBucket", evaluation without sticky bucket: bucket 0.6468 -> "red".
        {"key": "feature-exp", "hash_attribute": "device_id", "condition": {"country": "USA"},
         "variants": ["control", "red", "blue"], "weights": [0.3334, 0.3333, 0.3333]},
    ]));
    let a = assign_one(&exps, "key", &attrs(json!({"id": "1"})), now());
    assert_eq!(
        (variant(&a), a.reason, a.bucket),
        ("b", Reason::Hashed, Some(hash_v2("foo", "1")))
    );
    let unit = attrs(json!({"device_id": "d123", "country": "USA"}));
    let a = assign_one(&exps, "feature-exp", &unit, now());
    assert_eq!((variant(&a), a.bucket), ("red", Some(0.6468)));
    assert_eq!(a.hash_value.as_deref(), Some("d123"));
    assert_eq!(&*a.hash_attribute, "device_id");
}

#[test]
fn hash_version_1_experiments_reproduce_growthbook_legacy_run_cases() {
    // cases.json "run" with no hashVersion (so 1): key "my-test", ids 1..9, 50/50, three-way,
    // and coverage 0.4; ids as numbers hash by their JavaScript string form.
    let exps = experiments(json!([
        {"key": "my-test", "variants": ["0", "1"], "hash_version": 1, "hash_attribute": "id"},
        {"key": "three", "seed": "my-test", "variants": ["0", "1", "2"], "hash_version": 1,
         "hash_attribute": "id"},
        {"key": "partial", "seed": "my-test", "variants": ["0", "1"], "coverage": 0.4,
         "hash_version": 1, "hash_attribute": "id"},
        {"key": "same-with-v2", "seed": "my-test", "variants": ["0", "1"], "hash_attribute": "id"},
    ]));
    let cases = [
        ("my-test", ["1", "0", "0", "1", "1", "1", "0", "1", "0"]),
        ("three", ["2", "0", "0", "2", "1", "2", "0", "1", "0"]),
        ("partial", ["-", "0", "0", "-", "1", "-", "0", "1", "-"]),
    ];
    for (key, expected) in cases {
        for (id, want) in (1..=9).zip(expected) {
            let a = assign_one(&exps, key, &attrs(json!({ "id": id })), now());
            let got = if a.in_experiment { variant(&a) } else { "-" };
            assert_eq!(got, want, "{key}, id {id}");
            if a.bucket.is_some() {
                assert_eq!(
                    a.bucket,
                    Some(crate::assign::hash::hash_v1("my-test", &id.to_string()))
                );
            }
        }
    }
    // Version 2 on the same seed and ids puts some units elsewhere: the version is used.
    let moved = (1..=9)
        .filter(|id| {
            let unit = attrs(json!({ "id": id }));
            variant(&assign_one(&exps, "my-test", &unit, now()))
                != variant(&assign_one(&exps, "same-with-v2", &unit, now()))
        })
        .count();
    assert!(moved > 0);
}

#[test]
fn a_hashed_assignment_reports_bucket_and_unit() {
    let exps = example();
    let a = assign_one(&exps, "checkout_button", &user("u-1"), now());
    let bucket = hash_v2("checkout_button", "u-1");
    assert_eq!(a.bucket, Some(bucket));
    assert_eq!(
        variant(&a),
        if bucket < 0.5 { "control" } else { "treatment" }
    );
    assert!(a.in_experiment && a.should_log_exposure());
    assert_eq!(a.reason, Reason::Hashed);
    assert_eq!(a.hash_value.as_deref(), Some("u-1"));
}

#[test]
fn killed_gives_everyone_the_fallback_and_no_exposure() {
    let exps = experiments(json!([
        {"key": "k", "variants": ["a", "b", "c"], "status": "killed", "fallback": "c",
         "forced": {"qa": "a"}, "condition": {"country": "US"}},
        {"key": "k2", "variants": ["a", "b"], "status": "killed"},
    ]));
    for id in ["qa", "u-1", "u-2", ""] {
        let a = assign_one(&exps, "k", &user(id), now());
        assert_eq!(
            (variant(&a), a.reason, a.in_experiment, a.bucket),
            ("c", Reason::Killed, false, None)
        );
        assert!(!a.should_log_exposure());
    }
    let a = assign_one(&exps, "k2", &user("u-1"), now());
    assert_eq!(variant(&a), "a", "fallback defaults to the first variant");
}

#[test]
fn forced_wins_over_everything_but_killed() {
    let exps = experiments(json!([
        {"key": "parent", "variants": ["a", "b"], "coverage": 0},
        {"key": "f", "variants": ["control", "treatment"], "coverage": 0,
         "forced": {"qa-1": "treatment", "42": "treatment"},
         "condition": {"country": "nowhere"},
         "start": "2030-01-01T00:00:00Z",
         "layer": {"name": "l", "range": [0.0, 0.001]},
         "prerequisites": [{"experiment": "parent", "variants": ["b"]}]},
        {"key": "s", "variants": ["control", "treatment"], "status": "stopped", "forced": {"qa-1": "treatment"}},
    ]));
    let a = assign_one(&exps, "f", &user("qa-1"), now());
    assert_eq!(
        (variant(&a), a.reason, a.in_experiment, a.bucket),
        ("treatment", Reason::Forced, true, None)
    );
    assert!(a.should_log_exposure());
    let numeric = attrs(json!({"user_id": 42}));
    assert_eq!(
        assign_one(&exps, "f", &numeric, now()).reason,
        Reason::Forced,
        "ids match in string form"
    );
    let a = assign_one(&exps, "s", &user("qa-1"), now());
    assert_eq!((variant(&a), a.reason), ("treatment", Reason::Forced));
    let a = assign_one(&exps, "f", &user("someone-else"), now());
    assert_eq!((variant(&a), a.in_experiment), ("control", false));
}

#[test]
fn stopped_experiments_have_nobody_in_them() {
    let exps = example();
    for i in 0..100 {
        let a = assign_one(
            &exps,
            "legacy_recommendations",
            &user(&format!("u-{i}")),
            now(),
        );
        assert_eq!(
            (variant(&a), a.reason, a.in_experiment),
            ("control", Reason::Stopped, false)
        );
    }
}

#[test]
fn the_time_window_is_start_inclusive_end_exclusive() {
    let exps = experiments(json!([
        {"key": "w", "variants": ["a", "b"], "start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z"},
    ]));
    let reason = |t: &str| assign_one(&exps, "w", &user("u-1"), at(t)).reason;
    assert_eq!(reason("2024-12-31T23:59:59Z"), Reason::NotStarted);
    assert_eq!(reason("2025-01-01T00:00:00Z"), Reason::Hashed);
    assert_eq!(reason("2025-01-31T23:59:59Z"), Reason::Hashed);
    assert_eq!(reason("2025-02-01T00:00:00Z"), Reason::Ended);
    let a = assign_one(&exps, "w", &user("u-1"), at("2026-01-01T00:00:00Z"));
    assert_eq!((variant(&a), a.in_experiment), ("a", false));
}

#[test]
fn units_without_a_usable_hash_attribute_are_not_in_the_experiment() {
    let exps = example();
    for unit in [
        json!({}),
        json!({"user_id": ""}),
        json!({"user_id": null}),
        json!({"user_id": 0}),
        json!({"user_id": true}),
        json!({"user_id": ["u-1"]}),
        json!({"device_id": "d-1"}),
    ] {
        let a = assign_one(&exps, "checkout_button", &attrs(unit.clone()), now());
        assert_eq!(
            (a.reason, a.in_experiment, variant(&a)),
            (Reason::NoHashAttribute, false, "control"),
            "{unit}"
        );
        assert_eq!(a.hash_value, None);
    }
    // A numeric id hashes as its JavaScript string form, as the SDKs do.
    let by_number = assign_one(
        &exps,
        "checkout_button",
        &attrs(json!({"user_id": 123})),
        now(),
    );
    let by_string = assign_one(&exps, "checkout_button", &user("123"), now());
    assert_eq!(by_number, by_string);
    // hash_attribute picks the unit: device_id, not user_id.
    let a = assign_one(
        &exps,
        "dark_mode_default",
        &attrs(json!({"user_id": "u-1"})),
        now(),
    );
    assert_eq!(a.reason, Reason::NoHashAttribute);
    let a = assign_one(
        &exps,
        "dark_mode_default",
        &attrs(json!({"user_id": "u-1", "device_id": "d-9"})),
        now(),
    );
    assert_eq!(
        (a.reason, a.bucket),
        (Reason::Hashed, Some(hash_v2("dark_mode_default", "d-9")))
    );
}

#[test]
fn conditions_target_on_attributes() {
    let exps = experiments(json!([
        {"key": "t", "variants": ["a", "b"], "condition": {"app_version": {"$vgte": "2.3.0"}, "country": {"$in": ["US", "CA"]}}},
    ]));
    let reason = |a: Value| assign_one(&exps, "t", &attrs(a), now()).reason;
    assert_eq!(
        reason(json!({"user_id": "u", "app_version": "2.3.1", "country": "US"})),
        Reason::Hashed
    );
    assert_eq!(
        reason(json!({"user_id": "u", "app_version": "2.10.0", "country": "CA"})),
        Reason::Hashed
    );
    assert_eq!(
        reason(json!({"user_id": "u", "app_version": "2.2.9", "country": "US"})),
        Reason::ConditionFailed
    );
    assert_eq!(
        reason(json!({"user_id": "u", "app_version": "2.3.0", "country": "FR"})),
        Reason::ConditionFailed
    );
    assert_eq!(
        reason(json!({"user_id": "u", "country": "US"})),
        Reason::ConditionFailed
    );
}

#[test]
fn prerequisites_chain_through_parents() {
    let exps = experiments(json!([
        {"key": "a", "variants": ["x", "y"]},
        {"key": "b", "variants": ["x", "y"], "prerequisites": [{"experiment": "a", "variants": ["y"]}]},
        {"key": "c", "variants": ["x", "y"], "prerequisites": [{"experiment": "b", "variants": ["x"]}]},
        {"key": "gated_by_killed", "variants": ["x", "y"], "prerequisites": [{"experiment": "k", "variants": ["x"]}]},
        {"key": "k", "variants": ["x", "y"], "status": "killed", "fallback": "x"},
    ]));
    let (mut in_b, mut in_c) = (0, 0);
    for i in 0..2_000 {
        let attributes = user(&format!("u-{i}"));
        let all = exps.assign(&Unit::new(&attributes), None, now());
        let [a, b, c, gated, _k] = &all[..] else {
            panic!("five assignments")
        };
        assert_eq!(
            *b,
            assign_one(&exps, "b", &attributes, now()),
            "memoized == fresh"
        );
        if variant(a) == "y" {
            assert_eq!(b.reason, Reason::Hashed);
            in_b += 1;
        } else {
            assert_eq!(
                (b.reason, b.in_experiment),
                (Reason::PrerequisiteFailed, false)
            );
        }
        if b.in_experiment && variant(b) == "x" {
            assert_eq!(c.reason, Reason::Hashed);
            in_c += 1;
        } else {
            assert_eq!(c.reason, Reason::PrerequisiteFailed);
        }
        // A killed parent shows its fallback but nobody is in it, so its children are empty.
        assert_eq!(gated.reason, Reason::PrerequisiteFailed);
    }
    assert!((800..1_200).contains(&in_b), "about half reach b: {in_b}");
    assert!(
        (350..650).contains(&in_c),
        "about a quarter reach c: {in_c}"
    );
}

#[test]
fn a_forced_parent_satisfies_a_prerequisite() {
    let exps = experiments(json!([
        {"key": "a", "variants": ["x", "y"], "coverage": 0, "forced": {"qa": "y"}},
        {"key": "b", "variants": ["x", "y"], "prerequisites": [{"experiment": "a", "variants": ["y"]}]},
    ]));
    assert_eq!(
        assign_one(&exps, "b", &user("qa"), now()).reason,
        Reason::Hashed
    );
    assert_eq!(
        assign_one(&exps, "b", &user("u-1"), now()).reason,
        Reason::PrerequisiteFailed
    );
}

#[test]
fn no_unit_is_in_two_experiments_of_a_layer() {
    let exps = experiments(json!([
        {"key": "l1", "variants": ["a", "b"], "layer": {"name": "checkout", "range": [0.0, 0.3]}},
        {"key": "l2", "variants": ["a", "b", "c"], "layer": {"name": "checkout", "range": [0.3, 0.7]}},
        {"key": "l3", "variants": ["a", "b"], "layer": {"name": "checkout", "range": [0.75, 1.0]}},
        {"key": "free", "variants": ["a", "b"]},
    ]));
    let mut counts = [0usize; 3];
    let mut in_none = 0;
    for i in 0..100_000 {
        let attributes = user(&format!("user-{i}"));
        let all = exps.assign(&Unit::new(&attributes), None, now());
        let in_layer: Vec<usize> = (0..3).filter(|&j| all[j].in_experiment).collect();
        assert!(in_layer.len() <= 1, "unit user-{i} is in {in_layer:?}");
        match in_layer.first() {
            Some(&j) => counts[j] += 1,
            None => {
                assert!(all[..3].iter().all(|a| a.reason == Reason::LayerExcluded));
                in_none += 1;
            }
        }
        assert!(
            all[3].in_experiment,
            "experiments outside the layer are unaffected"
        );
    }
    // Each experiment gets about its share of the layer (the 0.7..0.75 gap gets nobody).
    for (count, share) in counts.iter().zip([0.3, 0.4, 0.25]) {
        let observed = *count as f64 / 100_000.0;
        assert!(
            (observed - share).abs() < 0.01,
            "observed {observed}, expected {share}"
        );
    }
    assert!(
        (in_none as f64 / 100_000.0 - 0.05).abs() < 0.01,
        "gap share {in_none}"
    );
}

#[test]
fn the_example_layer_is_exclusive() {
    let exps = example();
    let keys = ["checkout_copy", "checkout_layout"];
    let mut both_seen = [false; 2];
    for i in 0..100_000 {
        let attributes = user(&format!("u-{i}"));
        let all = exps.assign(&Unit::new(&attributes), Some(&keys), now());
        assert!(
            !(all[0].in_experiment && all[1].in_experiment),
            "u-{i} is in both"
        );
        both_seen[0] |= all[0].in_experiment;
        both_seen[1] |= all[1].in_experiment;
    }
    assert_eq!(both_seen, [true, true]);
}

/// Pearson's chi-square statistic of observed counts against expected shares.
fn chi_square(observed: &[usize], shares: &[f64]) -> f64 {
    let total: usize = observed.iter().sum();
    observed
        .iter()
        .zip(shares)
        .map(|(&o, &p)| {
            let e = p * total as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

#[test]
fn the_split_matches_the_weights_chi_square() {
    // Critical values of the chi-square distribution at alpha = 0.001.
    let critical = |df: usize| [10.828, 13.816, 16.266][df - 1];
    let cases: [(&str, &[&str], &[f64]); 3] = [
        ("split_2", &["a", "b"], &[0.5, 0.5]),
        ("split_3", &["a", "b", "c"], &[0.2, 0.3, 0.5]),
        ("split_4", &["a", "b", "c", "d"], &[0.1, 0.2, 0.3, 0.4]),
    ];
    for (key, variants, weights) in cases {
        let exps = experiments(json!([{ "key": key, "variants": variants, "weights": weights }]));
        let mut counts = vec![0usize; variants.len()];
        for i in 0..100_000 {
            let a = assign_one(&exps, key, &user(&format!("unit-{i}")), now());
            let v = variants
                .iter()
                .position(|v| *v == variant(&a))
                .expect("known variant");
            counts[v] += 1;
        }
        let stat = chi_square(&counts, weights);
        let df = variants.len() - 1;
        assert!(
            stat < critical(df),
            "{key}: chi-square {stat:.2} >= {} for counts {counts:?}",
            critical(df)
        );
    }
}

#[test]
fn the_chi_square_check_detects_a_skewed_split() {
    // The statistic itself must be able to fail: 50.6/49.4 over 100k is outside alpha 0.001.
    assert!(chi_square(&[50_600, 49_400], &[0.5, 0.5]) > 10.828);
    assert!(chi_square(&[50_050, 49_950], &[0.5, 0.5]) < 10.828);
}

#[test]
fn raising_coverage_never_moves_a_unit() {
    let levels = [0.0, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0];
    let configs: Vec<Experiments> = levels
        .iter()
        .map(|c| experiments(json!([{"key": "ramp", "variants": ["a", "b", "c"], "weights": [0.2, 0.3, 0.5], "coverage": c}])))
        .collect();
    let mut entered = vec![0usize; levels.len()];
    for i in 0..20_000 {
        let attributes = user(&format!("u-{i}"));
        let mut assigned: Option<Arc<str>> = None;
        for (level, exps) in configs.iter().enumerate() {
            let a = assign_one(exps, "ramp", &attributes, now());
            if let Some(before) = &assigned {
                assert!(
                    a.in_experiment,
                    "u-{i} left the experiment at coverage {}",
                    levels[level]
                );
                assert_eq!(
                    a.variant.as_ref(),
                    Some(before),
                    "u-{i} moved at coverage {}",
                    levels[level]
                );
            } else if a.in_experiment {
                assigned = a.variant.clone();
            } else {
                assert_eq!(a.reason, Reason::NotCovered);
                assert!(a.bucket.is_some());
            }
            entered[level] += usize::from(a.in_experiment);
        }
    }
    for (count, level) in entered.iter().zip(levels) {
        let observed = *count as f64 / 20_000.0;
        assert!(
            (observed - level).abs() < 0.02,
            "coverage {level}: {observed}"
        );
    }
}

#[test]
fn separately_built_configs_give_the_same_answers() {
    let first = example();
    let second = Experiments::parse(EXAMPLE, FileFormat::Json).expect("valid");
    for i in 0..10_000 {
        let country = ["US", "CA", "FR"][i % 3];
        let app_version = ["2.2.0", "2.3.1", "3.0.0"][i % 3];
        let attributes = attrs(json!({
            "user_id": format!("u-{i}"), "device_id": format!("d-{}", i % 977),
            "country": country, "app_version": app_version,
        }));
        let unit = Unit::new(&attributes);
        assert_eq!(
            first.assign(&unit, None, now()),
            second.assign(&unit, None, now())
        );
    }
}

#[test]
fn keys_select_and_order_the_answers() {
    let exps = example();
    let attributes = user("u-1");
    let unit = Unit::new(&attributes);
    let all = exps.assign(&unit, None, now());
    assert_eq!(
        all.iter().map(|a| &*a.experiment).collect::<Vec<_>>(),
        exps.keys().collect::<Vec<_>>()
    );
    let some = exps.assign(
        &unit,
        Some(&["pricing_banner", "nope", "checkout_button"]),
        now(),
    );
    assert_eq!(some.len(), 3);
    assert_eq!(
        (variant(&some[0]), some[0].reason),
        ("no_banner", Reason::Killed)
    );
    assert_eq!(
        (
            &*some[1].experiment,
            some[1].variant.as_deref(),
            some[1].reason
        ),
        ("nope", None, Reason::UnknownExperiment)
    );
    assert!(!some[1].should_log_exposure());
    assert_eq!(some[2], all[0]);
    assert_eq!(exps.assign_one(&unit, "nope", now()), None);
}

#[test]
fn assignments_serialize_to_the_endpoint_shape() {
    let exps = example();
    let attributes = user("u-1");
    let a = assign_one(&exps, "pricing_banner", &attributes, now());
    assert_eq!(
        serde_json::to_value(&a).expect("serializes"),
        json!({"experiment": "pricing_banner", "variant": "no_banner", "in_experiment": false,
               "bucket": null, "reason": "killed"})
    );
    let a = assign_one(&exps, "checkout_button", &attributes, now());
    let v = serde_json::to_value(&a).expect("serializes");
    assert_eq!(v["reason"], "hashed");
    assert_eq!(v["bucket"].as_f64(), a.bucket);
}

#[test]
fn reasons_serialize_as_their_names() {
    for reason in Reason::ALL {
        assert_eq!(
            serde_json::to_value(reason).expect("serializes"),
            json!(reason.as_str())
        );
    }
}

#[test]
fn the_example_file_shows_each_feature() {
    let exps = example();
    let reason = |key: &str, a: Value| assign_one(&exps, key, &attrs(a), now()).reason;
    assert_eq!(
        reason("pricing_banner", json!({"user_id": "u-1"})),
        Reason::Killed
    );
    assert_eq!(
        reason("search_ranking", json!({"user_id": "qa-alice"})),
        Reason::Forced
    );
    assert_eq!(
        reason("legacy_recommendations", json!({"user_id": "u-1"})),
        Reason::Stopped
    );
    assert_eq!(
        reason("holiday_theme", json!({"user_id": "u-1"})),
        Reason::NotStarted
    );
    let old_app = json!({"user_id": "u-1", "country": "US", "app_version": "2.2.9"});
    assert_eq!(reason("new_onboarding", old_app), Reason::ConditionFailed);
    let forced_alice = assign_one(&exps, "search_ranking", &user("qa-alice"), now());
    assert_eq!(variant(&forced_alice), "ml_ranker");
}

proptest! {
    #[test]
    fn any_unit_id_gets_a_stable_valid_answer(id in ".{1,40}") {
        let exps = example();
        let attributes = user(&id);
        let unit = Unit::new(&attributes);
        let first = exps.assign(&unit, None, now());
        prop_assert_eq!(&first, &exps.assign(&unit, None, now()));
        for a in &first {
            prop_assert!(a.variant.is_some());
            prop_assert_eq!(a.in_experiment, matches!(a.reason, Reason::Hashed | Reason::Forced));
            if let Some(b) = a.bucket {
                prop_assert!((0.0..1.0).contains(&b));
            }
        }
    }
}
