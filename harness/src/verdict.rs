//! From a finished run's data to a verdict: pure, deterministic for a seed, no I/O.
//!
//! Order of judgement: a run that cannot be trusted is `invalid` (sample-ratio mismatch,
//! saturated load generator, failing control, missing data) whatever its numbers say; then
//! any `regression` (a variant whose ratio's lower bound clears `1 + margin`, or whose error
//! rate is over the limit); then `inconclusive` if any comparison could not be settled;
//! otherwise `pass`. See docs/harness.md for the reasoning.

use serde::Serialize;

use crate::profile::{Endpoint, Profile};
use crate::run::{EventCounts, Record, RunData};
use crate::stats::{self, ChiSquare, HolmStep, Obs, SortedReplicates};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Regression,
    Inconclusive,
    Invalid,
}

impl Outcome {
    /// 0 pass, 1 regression, 2 inconclusive or invalid.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => 0,
            Outcome::Regression => 1,
            Outcome::Inconclusive | Outcome::Invalid => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Regression => "regression",
            Outcome::Inconclusive => "inconclusive",
            Outcome::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub profile: String,
    pub run_id: String,
    pub experiment: String,
    pub control: String,
    /// Seed of the bootstrap: with the same data it reproduces the bounds exactly.
    pub seed: u64,
    /// Family-wise error rate of all comparisons together.
    pub alpha: f64,
    pub window_seconds: f64,
    pub verdict: Verdict,
    pub endpoints: Vec<EndpointStats>,
    pub comparisons: Vec<Comparison>,
    pub sample_ratio: SampleRatio,
    pub load: LoadCheck,
    pub events: EventCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// One sentence per reason for the outcome, most important first.
    pub reasons: Vec<String>,
    /// The variants found slower (or failing more) than control.
    pub regressions: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub variant: String,
    pub endpoint: String,
    /// `p50`, `p95`, `p99` or `error_rate`.
    pub measure: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointStats {
    pub endpoint: String,
    pub variants: Vec<VariantStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantStats {
    pub variant: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub throughput_rps: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Share of requests sent late because the user was behind its schedule.
    pub late_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Regression,
    Pass,
    Inconclusive,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub endpoint: String,
    pub variant: String,
    pub percentile: String,
    pub control_ms: f64,
    pub variant_ms: f64,
    /// Observed `Q_variant / Q_control`.
    pub ratio: f64,
    /// Lower confidence bound, at one-sided level `lower_level` (Holm-adjusted).
    pub lower: f64,
    pub lower_level: f64,
    /// Upper confidence bound, at one-sided level `upper_level` (Holm-adjusted).
    pub upper: f64,
    pub upper_level: f64,
    /// `1 + margin`: the ratio a regression must clear and a pass must stay under.
    pub threshold: f64,
    pub decision: Decision,
    /// Consecutive requests per bootstrap block.
    pub block_requests: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleRatio {
    pub variants: Vec<String>,
    pub units: Vec<u64>,
    pub expected_share: Vec<f64>,
    pub excluded_units: u64,
    pub chi_square: Option<ChiSquare>,
    pub mismatch: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadCheck {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    /// Per variant: target requests sent / (sent + still due when the run stopped).
    pub achieved_ratio: Vec<f64>,
    pub client_lag_p99_ms: f64,
    pub client_lag_max_ms: f64,
    pub client_cpu_cores: Option<f64>,
    pub saturated: bool,
}

const PERCENTILE_NAMES: [(f64, &str); 3] = [(0.50, "p50"), (0.95, "p95"), (0.99, "p99")];

fn percentile_name(q: f64) -> &'static str {
    PERCENTILE_NAMES
        .iter()
        .find(|(p, _)| (p - q).abs() < 1e-9)
        .map_or("p?", |(_, n)| n)
}

/// Fewest requests per variant for a quantile to be compared: ten beyond it, so the
/// quantile is not decided by a single request.
pub fn min_requests(q: f64) -> usize {
    (10.0 / (1.0 - q)).ceil() as usize
}

fn in_window(r: &Record, window: (u64, u64)) -> bool {
    r.at_us >= window.0 && r.at_us < window.1
}

fn value_us(r: &Record) -> f64 {
    r.intended_latency_us() as f64
}

pub fn judge(profile: &Profile, data: &RunData, seed: u64) -> Summary {
    let cfg = &profile.verdict;
    let window = data.window_us;
    let window_seconds = (window.1.saturating_sub(window.0)) as f64 / 1e6;
    let endpoints = endpoint_stats(profile, data, window_seconds);
    let mut reasons = Vec::new();
    let mut regressions = Vec::new();
    let mut invalid = false;

    let sample_ratio = sample_ratio(profile, data);
    if sample_ratio.mismatch {
        invalid = true;
        let p = sample_ratio.chi_square.map_or(f64::NAN, |c| c.p_value);
        reasons.push(format!(
            "sample ratio mismatch: units per variant {:?} against weights {:?} (chi-square p = {p:.2e} < {}); the assignment or the harness is broken, no verdict",
            sample_ratio.units, sample_ratio.expected_share, cfg.srm_alpha
        ));
    } else if sample_ratio.chi_square.is_none() {
        invalid = true;
        reasons.push(
            "too few units to check the sample ratio (need 5 expected per variant): run longer"
                .to_string(),
        );
    }

    let load = load_check(profile, data);
    if load.client_lag_p99_ms > cfg.max_client_lag.as_secs_f64() * 1e3 {
        invalid = true;
        reasons.push(format!(
            "load generator saturated: its event loop woke {:.1} ms late at p99 (limit {:.1} ms); latencies include the harness's own delays",
            load.client_lag_p99_ms,
            cfg.max_client_lag.as_secs_f64() * 1e3
        ));
    }
    if load.achieved_ratio[0] < cfg.min_achieved_ratio {
        invalid = true;
        reasons.push(format!(
            "load generator could not keep its schedule: only {:.0} % of the control's due requests were sent (limit {:.0} %)",
            load.achieved_ratio[0] * 100.0,
            cfg.min_achieved_ratio * 100.0
        ));
    }

    let target = endpoints
        .iter()
        .find(|e| e.endpoint == Endpoint::Target.as_str());
    for (i, v) in target
        .map_or(&[][..], |t| &t.variants[..])
        .iter()
        .enumerate()
    {
        if v.requests == v.errors {
            invalid = true;
            reasons.push(format!("no successful target request for `{}`", v.variant));
        } else if v.error_rate > cfg.max_error_rate {
            if i == 0 {
                invalid = true;
                reasons.push(format!(
                    "the control fails: target error rate {:.2} % over the {:.2} % limit",
                    v.error_rate * 100.0,
                    cfg.max_error_rate * 100.0
                ));
            } else {
                regressions.push(Finding {
                    variant: v.variant.clone(),
                    endpoint: Endpoint::Target.as_str().to_string(),
                    measure: "error_rate".to_string(),
                });
                reasons.push(format!(
                    "`{}` fails more: target error rate {:.2} % over the {:.2} % limit",
                    v.variant,
                    v.error_rate * 100.0,
                    cfg.max_error_rate * 100.0
                ));
            }
        }
    }

    let comparisons = if invalid && reasons.iter().any(|r| r.starts_with("no successful")) {
        Vec::new()
    } else {
        compare(profile, data, seed)
    };
    let mut inconclusive = Vec::new();
    for c in &comparisons {
        match c.decision {
            Decision::Regression => {
                regressions.push(Finding {
                    variant: c.variant.clone(),
                    endpoint: c.endpoint.clone(),
                    measure: c.percentile.clone(),
                });
                reasons.push(format!(
                    "`{}` is slower than `{}` on {} at {}: ratio {:.3}, lower bound {:.3} > {:.3}",
                    c.variant,
                    profile.control(),
                    c.endpoint,
                    c.percentile,
                    c.ratio,
                    c.lower,
                    c.threshold
                ));
            }
            Decision::Inconclusive => inconclusive.push(match &c.note {
                Some(note) => format!("{} {} {}: {note}", c.variant, c.endpoint, c.percentile),
                None => format!(
                    "{} {} {}: ratio {:.3} in [{:.3}, {:.3}] straddles {:.3}",
                    c.variant, c.endpoint, c.percentile, c.ratio, c.lower, c.upper, c.threshold
                ),
            }),
            Decision::Pass => {}
        }
    }
    let outcome = if invalid {
        Outcome::Invalid
    } else if !regressions.is_empty() {
        Outcome::Regression
    } else if !inconclusive.is_empty() || comparisons.is_empty() {
        reasons.push(format!(
            "inconclusive, run longer: {}",
            if inconclusive.is_empty() {
                "nothing to compare".to_string()
            } else {
                inconclusive.join("; ")
            }
        ));
        Outcome::Inconclusive
    } else {
        reasons.push(format!(
            "every variant is within its margins of `{}` at p50, p95 and p99",
            profile.control()
        ));
        Outcome::Pass
    };

    Summary {
        profile: profile.name.clone(),
        run_id: data.run_id.clone(),
        experiment: profile.experiment.clone(),
        control: profile.control().to_string(),
        seed,
        alpha: cfg.alpha,
        window_seconds,
        verdict: Verdict {
            outcome,
            reasons,
            regressions,
        },
        endpoints,
        comparisons,
        sample_ratio,
        load,
        events: data.events.clone(),
    }
}

fn endpoint_stats(profile: &Profile, data: &RunData, window_seconds: f64) -> Vec<EndpointStats> {
    Endpoint::ALL
        .iter()
        .map(|&endpoint| {
            let variants = profile
                .variants
                .iter()
                .enumerate()
                .map(|(v, name)| {
                    let mut requests = 0u64;
                    let mut late = 0u64;
                    let mut ok: Vec<f64> = Vec::new();
                    for r in data.records.iter().filter(|r| {
                        r.endpoint == endpoint
                            && r.variant as usize == v
                            && in_window(r, data.window_us)
                    }) {
                        requests += 1;
                        late += u64::from(r.lag_us > 0);
                        if r.ok {
                            ok.push(value_us(r) / 1e3);
                        }
                    }
                    ok.sort_by(f64::total_cmp);
                    let errors = requests - ok.len() as u64;
                    let share = |n: u64| {
                        if requests == 0 {
                            0.0
                        } else {
                            n as f64 / requests as f64
                        }
                    };
                    VariantStats {
                        variant: name.clone(),
                        requests,
                        errors,
                        error_rate: share(errors),
                        throughput_rps: requests as f64 / window_seconds.max(1e-9),
                        mean_ms: if ok.is_empty() {
                            f64::NAN
                        } else {
                            ok.iter().sum::<f64>() / ok.len() as f64
                        },
                        p50_ms: stats::quantile_sorted(&ok, 0.50),
                        p90_ms: stats::quantile_sorted(&ok, 0.90),
                        p99_ms: stats::quantile_sorted(&ok, 0.99),
                        p999_ms: stats::quantile_sorted(&ok, 0.999),
                        late_share: share(late),
                    }
                })
                .collect();
            EndpointStats {
                endpoint: endpoint.as_str().to_string(),
                variants,
            }
        })
        .collect()
}

fn sample_ratio(profile: &Profile, data: &RunData) -> SampleRatio {
    let total: u64 = data.units.iter().sum();
    let enough = profile.weights.iter().all(|w| w * total as f64 >= 5.0);
    let chi_square = enough.then(|| stats::chi_square_gof(&data.units, &profile.weights));
    SampleRatio {
        variants: profile.variants.clone(),
        units: data.units.clone(),
        expected_share: profile.weights.clone(),
        excluded_units: data.excluded_units,
        mismatch: chi_square.is_some_and(|c| c.p_value < profile.verdict.srm_alpha),
        chi_square,
    }
}

fn load_check(profile: &Profile, data: &RunData) -> LoadCheck {
    let mut lags: Vec<f64> = data.probe_lag_us.iter().map(|&l| l as f64).collect();
    lags.sort_by(f64::total_cmp);
    let lag_ms = |q| {
        if lags.is_empty() {
            0.0
        } else {
            stats::quantile_sorted(&lags, q) / 1e3
        }
    };
    let client_lag_p99_ms = lag_ms(0.99);
    let client_lag_max_ms = lag_ms(1.0);
    let achieved_ratio: Vec<f64> = (0..profile.variants.len())
        .map(|v| {
            let sent = data.executed_slots[v] as f64;
            let due = sent + data.backlog_slots[v] as f64;
            if due == 0.0 { 1.0 } else { sent / due }
        })
        .collect();
    let window_seconds = (data.window_us.1.saturating_sub(data.window_us.0)) as f64 / 1e6;
    let in_window_targets = data
        .records
        .iter()
        .filter(|r| r.endpoint == Endpoint::Target && in_window(r, data.window_us))
        .count();
    let cfg = &profile.verdict;
    LoadCheck {
        offered_rps: data.offered_rps,
        achieved_rps: in_window_targets as f64 / window_seconds.max(1e-9),
        saturated: client_lag_p99_ms > cfg.max_client_lag.as_secs_f64() * 1e3
            || achieved_ratio[0] < cfg.min_achieved_ratio,
        achieved_ratio,
        client_lag_p99_ms,
        client_lag_max_ms,
        client_cpu_cores: data.client_cpu_cores,
    }
}

/// One hypothesis pair (regression side and pass side) before Holm.
struct Pending {
    comparison: Comparison,
    sorted: Vec<f64>,
}

fn compare(profile: &Profile, data: &RunData, seed: u64) -> Vec<Comparison> {
    let cfg = &profile.verdict;
    let quantiles: Vec<f64> = cfg.margins.iter().map(|m| m.quantile).collect();
    let groups = profile.variants.len();
    let mut pending: Vec<Pending> = Vec::new();
    let mut out: Vec<Comparison> = Vec::new();
    for (e, &endpoint) in cfg.endpoints.iter().enumerate() {
        let obs: Vec<Obs> = data
            .records
            .iter()
            .filter(|r| r.is_measured(endpoint) && in_window(r, data.window_us))
            .map(|r| Obs {
                group: r.variant as usize,
                value: value_us(r),
            })
            .collect();
        let mut counts = vec![0usize; groups];
        for o in &obs {
            counts[o.group] += 1;
        }
        let span_us = data.window_us.1.saturating_sub(data.window_us.0).max(1) as f64;
        let block_requests = ((obs.len() as f64 * cfg.block.as_micros() as f64 / span_us).ceil()
            as usize)
            .clamp(1, (obs.len() / 5).max(1));
        let boot = (counts[0] > 0 && counts.iter().skip(1).any(|&c| c > 0)).then(|| {
            stats::bootstrap_quantile_ratios(
                &obs,
                groups,
                &quantiles,
                cfg.replicates,
                block_requests,
                seed.wrapping_add(e as u64),
            )
        });
        let per_group: Vec<Vec<f64>> = (0..groups)
            .map(|g| {
                let mut v: Vec<f64> = obs
                    .iter()
                    .filter(|o| o.group == g)
                    .map(|o| o.value)
                    .collect();
                v.sort_by(f64::total_cmp);
                v
            })
            .collect();
        for g in 1..groups {
            for (qi, m) in cfg.margins.iter().enumerate() {
                let need = min_requests(m.quantile);
                let control_ms = stats::quantile_sorted(&per_group[0], m.quantile) / 1e3;
                let variant_ms = stats::quantile_sorted(&per_group[g], m.quantile) / 1e3;
                let mut comparison = Comparison {
                    endpoint: endpoint.as_str().to_string(),
                    variant: profile.variants[g].clone(),
                    percentile: percentile_name(m.quantile).to_string(),
                    control_ms,
                    variant_ms,
                    ratio: boot.as_ref().map_or(f64::NAN, |b| b.point[g][qi]),
                    lower: f64::NAN,
                    lower_level: f64::NAN,
                    upper: f64::NAN,
                    upper_level: f64::NAN,
                    threshold: 1.0 + m.margin,
                    decision: Decision::Inconclusive,
                    block_requests,
                    note: None,
                };
                let sorted = boot
                    .as_ref()
                    .map(|b| b.sorted[g][qi].clone())
                    .unwrap_or_default();
                if counts[0] < need || counts[g] < need || sorted.is_empty() {
                    comparison.note = Some(format!(
                        "too few requests (need {need} per variant, have {} and {})",
                        counts[0], counts[g]
                    ));
                    out.push(comparison);
                } else {
                    pending.push(Pending { comparison, sorted });
                }
            }
        }
    }
    // Holm over every comparison made, once for the regression side, once for the pass side.
    let reps: Vec<SortedReplicates<'_>> = pending
        .iter()
        .map(|p| SortedReplicates::new(&p.sorted))
        .collect();
    let p_regression: Vec<f64> = pending
        .iter()
        .zip(&reps)
        .map(|(p, s)| s.p_above(p.comparison.threshold))
        .collect();
    let p_pass: Vec<f64> = pending
        .iter()
        .zip(&reps)
        .map(|(p, s)| s.p_below(p.comparison.threshold))
        .collect();
    let regression_steps = stats::holm(&p_regression, cfg.alpha);
    let pass_steps = stats::holm(&p_pass, cfg.alpha);
    for (((p, s), reg), pass) in pending
        .iter()
        .zip(&reps)
        .zip(&regression_steps)
        .zip(&pass_steps)
    {
        let mut c = p.comparison.clone();
        settle(&mut c, s, *reg, *pass);
        out.push(c);
    }
    let rank = |c: &Comparison| {
        let e = cfg.endpoints.iter().position(|e| e.as_str() == c.endpoint);
        let v = profile.variant_index(&c.variant);
        let q = PERCENTILE_NAMES
            .iter()
            .position(|(_, n)| *n == c.percentile);
        (e, v, q)
    };
    out.sort_by_key(rank);
    out
}

fn settle(c: &mut Comparison, reps: &SortedReplicates<'_>, reg: HolmStep, pass: HolmStep) {
    c.lower_level = reg.level;
    c.lower = reps.lower_bound(reg.level);
    c.upper_level = pass.level;
    c.upper = reps.upper_bound(pass.level);
    c.decision = if reg.rejected {
        Decision::Regression
    } else if pass.rejected {
        Decision::Pass
    } else {
        Decision::Inconclusive
    };
}

#[cfg(test)]
mod tests;
