//! Verdict tests on synthetic run data: no network, no goose.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::profile::Profile;

const PROFILE: &str = r#"
    [gateway]
    url = "http://127.0.0.1:1"
    [experiment]
    key = "checkout_button"
    weights = { control = 0.5, treatment = 0.5 }
    [target]
    url = "http://127.0.0.1:2"
    [load]
    users = 10
    rate = 500
    [verdict]
    replicates = 400
    margins = { p50 = 0.05, p95 = 0.10, p99 = 0.20 }
"#;

/// `n` target requests over 10 s, alternating variants by unit, control latency around
/// 1 ms with a log-normal spread, treatment multiplied by `slowdown`.
fn run_data(n: usize, slowdown: f64, seed: u64) -> RunData {
    let mut rng = SmallRng::seed_from_u64(seed);
    let span_us = 10_000_000u64;
    let mut units = vec![0u64; 2];
    let records = (0..n)
        .map(|i| {
            let variant = ((i / 5) % 2) as u16;
            if i % 5 == 0 {
                units[variant as usize] += 1;
            }
            let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
            let base = 1_000.0 * (0.3 * z).exp();
            let factor = if variant == 1 { slowdown } else { 1.0 };
            Record {
                at_us: i as u64 * span_us / n as u64,
                user: (i % 10) as u32,
                variant,
                endpoint: Endpoint::Target,
                latency_us: (base * factor) as u64,
                lag_us: 0,
                ok: true,
            }
        })
        .collect();
    RunData {
        run_id: "test".into(),
        records,
        units,
        excluded_units: 0,
        window_us: (0, span_us),
        executed_slots: vec![n as u64 / 2; 2],
        backlog_slots: vec![0; 2],
        offered_rps: n as f64 / 10.0,
        probe_lag_us: vec![300; 100],
        client_cpu_cores: Some(0.2),
        events: EventCounts::default(),
        info: Default::default(),
        scrapes: Vec::new(),
        scrape_failures: vec![0; 2],
    }
}

const RESOURCES: &str = "[resources]\ncpu_margin = 0.10\n";

fn profile_with_resources() -> Profile {
    let text = PROFILE.replace(
        "[target]\n    url = \"http://127.0.0.1:2\"",
        "[target]\n    url = \"http://127.0.0.1:2\"\n    urls = { treatment = \"http://127.0.0.1:3\" }",
    );
    Profile::parse(&format!("{text}\n{RESOURCES}"), "test").unwrap()
}

/// Adds a scrape of each variant every 250 ms: its CPU counter grows by `cost[v]` seconds
/// per request finished so far, plus an idle 2 ms/s and noise of a few per cent.
fn with_scrapes(mut data: RunData, cost: [f64; 2], seed: u64) -> RunData {
    let mut rng = SmallRng::seed_from_u64(seed);
    let end = data.window_us.1;
    for v in 0..2u16 {
        let mut done: Vec<u64> = data
            .records
            .iter()
            .filter(|r| r.variant == v)
            .map(|r| r.at_us + r.intended_latency_us())
            .collect();
        done.sort_unstable();
        let mut cpu = 0.0;
        let mut last = (0u64, 0usize);
        for at_us in (0..=end).step_by(250_000) {
            let finished = done.partition_point(|&t| t < at_us);
            let noise = 1.0 + 0.05 * (rng.random::<f64>() - 0.5);
            cpu += ((finished - last.1) as f64 * cost[v as usize]
                + 0.002 * (at_us - last.0) as f64 / 1e6)
                * noise;
            last = (at_us, finished);
            data.scrapes.push(crate::run::Scrape {
                variant: v,
                at_us,
                cpu_seconds: cpu,
                memory_bytes: Some(50e6 + v as f64 * 10e6),
            });
        }
    }
    data.scrapes.sort_by_key(|s| s.at_us);
    data
}

#[test]
fn a_costlier_variant_is_a_cpu_regression_naming_it() {
    let data = with_scrapes(run_data(6_000, 1.0, 11), [50e-6, 250e-6], 1);
    let s = judge(&profile_with_resources(), &data, 9);
    assert_eq!(
        s.verdict.outcome,
        Outcome::Regression,
        "{:?}",
        s.verdict.reasons
    );
    assert_eq!(
        s.verdict.regressions.len(),
        1,
        "{:?}",
        s.verdict.regressions
    );
    let finding = &s.verdict.regressions[0];
    assert_eq!(
        (finding.variant.as_str(), finding.measure.as_str()),
        ("treatment", CPU_MEASURE)
    );
    let cpu = s
        .comparisons
        .iter()
        .find(|c| c.measure == CPU_MEASURE)
        .unwrap();
    assert_eq!(cpu.unit, CPU_UNIT);
    // 0.05 and 0.25 CPU s per 1,000 requests, plus the idle share.
    assert!((cpu.baseline - 0.057).abs() < 0.01, "{cpu:?}");
    assert!((cpu.value - 0.257).abs() < 0.02, "{cpu:?}");
    assert!(
        cpu.difference_lower > 0.15 && cpu.difference_lower <= cpu.difference,
        "{cpu:?}"
    );
    let resources = s.resources.as_ref().unwrap();
    assert_eq!(resources[1].peak_memory_mib.map(|m| m.round()), Some(57.0));
    assert!(resources[0].spans >= 35, "{resources:?}");
    assert!(
        s.verdict
            .reasons
            .iter()
            .any(|r| r.contains("CPU per request"))
    );
}

#[test]
fn equal_cpu_per_request_passes() {
    let data = with_scrapes(run_data(20_000, 1.0, 2), [50e-6, 50e-6], 2);
    let s = judge(&profile_with_resources(), &data, 9);
    assert_eq!(s.verdict.outcome, Outcome::Pass, "{:?}", s.verdict.reasons);
    let cpu = s
        .comparisons
        .iter()
        .find(|c| c.measure == CPU_MEASURE)
        .unwrap();
    assert_eq!(cpu.decision, Decision::Pass, "{cpu:?}");
    assert!(cpu.lower <= cpu.ratio && cpu.ratio <= cpu.upper);
}

#[test]
fn missing_scrapes_leave_cpu_inconclusive_not_passed() {
    let mut data = with_scrapes(run_data(20_000, 1.0, 2), [50e-6, 50e-6], 2);
    data.scrapes
        .retain(|s| s.variant == 0 || s.at_us < 1_000_000);
    let s = judge(&profile_with_resources(), &data, 9);
    assert_eq!(
        s.verdict.outcome,
        Outcome::Inconclusive,
        "{:?}",
        s.verdict.reasons
    );
    let cpu = s
        .comparisons
        .iter()
        .find(|c| c.measure == CPU_MEASURE)
        .unwrap();
    assert!(
        cpu.note
            .as_deref()
            .unwrap()
            .contains("too few metric scrapes")
    );
}

#[test]
fn latency_comparisons_carry_absolute_numbers() {
    let s = judge(&profile(), &run_data(6_000, 1.5, 1), 9);
    let p50 = &s.comparisons[0];
    assert_eq!((p50.measure.as_str(), p50.unit.as_str()), ("p50", "ms"));
    // Control around 1 ms, treatment 1.5 times that.
    assert!((p50.baseline - 1.0).abs() < 0.05, "{p50:?}");
    assert!((p50.difference - (p50.value - p50.baseline)).abs() < 1e-9);
    assert!(p50.difference_lower > 0.3 && p50.difference_lower < p50.difference);
    assert!(p50.difference_upper > p50.difference);
    assert!(
        s.verdict.reasons[0].contains(" ms against "),
        "{:?}",
        s.verdict.reasons
    );
    let target = &s.endpoints[1];
    let v = &target.variants[1];
    assert!(v.p90_ms <= v.p95_ms && v.p95_ms <= v.p99_ms, "{v:?}");
}

fn profile() -> Profile {
    Profile::parse(PROFILE, "test").unwrap()
}

#[test]
fn a_large_slowdown_is_a_regression_naming_the_variant() {
    let s = judge(&profile(), &run_data(6_000, 1.5, 1), 9);
    assert_eq!(
        s.verdict.outcome,
        Outcome::Regression,
        "{:?}",
        s.verdict.reasons
    );
    assert!(
        s.verdict
            .regressions
            .iter()
            .all(|f| f.variant == "treatment")
    );
    assert_eq!(s.comparisons.len(), 3);
    assert!(
        s.comparisons
            .iter()
            .all(|c| c.decision == Decision::Regression)
    );
    assert_eq!(s.verdict.outcome.exit_code(), 1);
}

#[test]
fn equal_variants_pass_with_enough_data() {
    let s = judge(&profile(), &run_data(20_000, 1.0, 2), 9);
    assert_eq!(s.verdict.outcome, Outcome::Pass, "{:?}", s.verdict.reasons);
    for c in &s.comparisons {
        assert!(c.lower <= c.ratio && c.ratio <= c.upper, "{c:?}");
        assert!(c.upper < c.threshold);
    }
}

#[test]
fn little_data_is_inconclusive_not_a_pass() {
    let s = judge(&profile(), &run_data(600, 1.0, 3), 9);
    assert_eq!(
        s.verdict.outcome,
        Outcome::Inconclusive,
        "{:?}",
        s.verdict.reasons
    );
    let p99 = s.comparisons.iter().find(|c| c.measure == "p99").unwrap();
    assert!(p99.note.as_deref().unwrap().contains("too few requests"));
    assert_eq!(s.verdict.outcome.exit_code(), 2);
}

#[test]
fn a_sample_ratio_mismatch_refuses_a_verdict() {
    let mut data = run_data(6_000, 1.5, 4);
    data.units = vec![700, 500];
    let s = judge(&profile(), &data, 9);
    assert_eq!(s.verdict.outcome, Outcome::Invalid);
    assert!(s.sample_ratio.mismatch);
    assert!(s.verdict.reasons[0].contains("sample ratio mismatch"));
}

#[test]
fn a_saturated_generator_makes_the_run_invalid() {
    let mut data = run_data(6_000, 1.0, 5);
    data.probe_lag_us = vec![50_000; 100];
    let s = judge(&profile(), &data, 9);
    assert_eq!(s.verdict.outcome, Outcome::Invalid);
    assert!(s.load.saturated);

    let mut data = run_data(6_000, 1.0, 5);
    data.backlog_slots = vec![1_000, 0];
    let s = judge(&profile(), &data, 9);
    assert_eq!(s.verdict.outcome, Outcome::Invalid);
    assert!(s.verdict.reasons.iter().any(|r| r.contains("schedule")));
}

#[test]
fn a_failing_variant_is_a_regression_and_a_failing_control_invalid() {
    let mut data = run_data(6_000, 1.0, 6);
    for r in data
        .records
        .iter_mut()
        .filter(|r| r.variant == 1)
        .step_by(10)
    {
        r.ok = false;
    }
    let s = judge(&profile(), &data, 9);
    assert_eq!(s.verdict.outcome, Outcome::Regression);
    assert_eq!(s.verdict.regressions[0].measure, "error_rate");

    for r in data
        .records
        .iter_mut()
        .filter(|r| r.variant == 0)
        .step_by(10)
    {
        r.ok = false;
    }
    assert_eq!(
        judge(&profile(), &data, 9).verdict.outcome,
        Outcome::Invalid
    );
}

#[test]
fn schedule_lag_counts_as_latency() {
    // Treatment answers as fast as control but its users fall behind: the time spent
    // waiting for a late slot is part of what its requests cost.
    let mut data = run_data(6_000, 1.0, 7);
    for r in data.records.iter_mut().filter(|r| r.variant == 1) {
        r.lag_us = 2_000;
    }
    let s = judge(&profile(), &data, 9);
    assert_eq!(s.verdict.outcome, Outcome::Regression);
    let target = &s.endpoints[1];
    assert_eq!(target.endpoint, "target");
    assert_eq!(target.variants[1].late_share, 1.0);
}

#[test]
fn the_verdict_is_reproducible_from_its_seed() {
    let data = run_data(3_000, 1.05, 8);
    let a = judge(&profile(), &data, 123);
    let b = judge(&profile(), &data, 123);
    let bounds = |s: &Summary| {
        s.comparisons
            .iter()
            .map(|c| (c.lower, c.upper))
            .collect::<Vec<_>>()
    };
    assert_eq!(bounds(&a), bounds(&b));
}
