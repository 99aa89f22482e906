//! From a finished run's data to a verdict: pure, deterministic for a seed, no I/O.
//!
//! Order of judgement: a run that cannot be trusted is `invalid` (sample-ratio mismatch,
//! saturated load generator, failing control, missing data) whatever its numbers say; then
//! any `regression` (a variant whose ratio's lower bound clears `1 + margin`, or whose error
//! rate is over the limit); then `inconclusive` if any comparison could not be settled;
//! otherwise `pass`. See docs/harness.md for the reasoning.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::profile::{Endpoint, Profile};
use crate::run::{EventCounts, Record, RunData, Scrape};
use crate::stats::{self, ChiSquare, HolmStep, Obs, RateObs, SortedReplicates, Stratum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub profile: String,
    pub run_id: String,
    /// Start of the load, RFC 3339 UTC.
    pub started_at: String,
    /// Wall-clock length of the load, ramp and drain included.
    pub duration_seconds: f64,
    pub harness_version: String,
    /// The gateway's experiments-config version when the run started.
    pub gateway_config_version: Option<String>,
    pub experiment: String,
    /// Experiment key the posted events carried (`experiment` unless the profile set one).
    pub events_key: String,
    pub control: String,
    /// Variant names, control first.
    pub variants: Vec<String>,
    /// Seed of the bootstrap: with the same data it reproduces the bounds exactly.
    pub seed: u64,
    /// Family-wise error rate of all comparisons together.
    pub alpha: f64,
    /// The judged window, microseconds since the run's epoch (as in `samples.csv`).
    pub window_us: (u64, u64),
    pub window_seconds: f64,
    /// What the comparisons were judged against, so `harness compare` can judge alike.
    pub settings: Settings,
    pub verdict: Verdict,
    pub endpoints: Vec<EndpointStats>,
    pub comparisons: Vec<Comparison>,
    /// Resource use per variant, when the profile has a `[resources]` section.
    pub resources: Option<Vec<ResourceStats>>,
    pub sample_ratio: SampleRatio,
    pub load: LoadCheck,
    pub events: EventCounts,
}

/// The verdict's parameters from the profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Allowed relative slowdown per percentile (`p50`, `p95`, `p99`).
    pub margins: BTreeMap<String, f64>,
    /// Allowed relative increase of CPU per request, when resources are measured.
    pub cpu_margin: Option<f64>,
    pub endpoints: Vec<String>,
    pub replicates: usize,
    pub block_ms: u64,
}

/// One variant's deployment, from its Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceStats {
    pub variant: String,
    pub metrics_url: String,
    /// CPU seconds per 1,000 target requests over the judged window.
    pub cpu_s_per_1k_requests: f64,
    /// Cores busy on average over the judged window.
    pub cpu_cores: f64,
    /// Largest memory reading of the run, MiB (none if the deployment does not expose it).
    pub peak_memory_mib: Option<f64>,
    /// Scrape-to-scrape spans inside the window, and the target requests they hold.
    pub spans: usize,
    pub requests: u64,
    pub scrape_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// One sentence per reason for the outcome, most important first.
    pub reasons: Vec<String>,
    /// The variants found slower (or failing more) than control.
    pub regressions: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub variant: String,
    pub endpoint: String,
    /// `p50`, `p95`, `p99`, `error_rate` or `cpu_per_request`.
    pub measure: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStats {
    pub endpoint: String,
    pub variants: Vec<VariantStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantStats {
    pub variant: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub throughput_rps: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Share of requests sent late because the user was behind its schedule.
    pub late_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Regression,
    Pass,
    Inconclusive,
}

/// One variant against the baseline on one measure: control in a run, or the same variant
/// in the earlier run for `harness compare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub endpoint: String,
    pub variant: String,
    /// `p50`, `p95`, `p99` (latency) or `cpu_per_request`.
    pub measure: String,
    /// Unit of `baseline`, `value` and the differences: `ms`, or `cpu_s_per_1k_requests`.
    pub unit: String,
    /// The baseline's value (control's, or the earlier run's).
    pub baseline: f64,
    /// The variant's value.
    pub value: f64,
    /// `value - baseline`, with its bounds at the same levels as the ratio's.
    pub difference: f64,
    pub difference_lower: f64,
    pub difference_upper: f64,
    /// Observed `value / baseline` (a ratio of quantiles, or of CPU per request).
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
    /// Consecutive observations per bootstrap block (requests, or scrape spans for CPU).
    pub block_len: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

impl Comparison {
    /// A comparison with its observed values and nothing settled yet.
    pub fn new(endpoint: &str, variant: &str, measure: &str, unit: &str, threshold: f64) -> Self {
        Comparison {
            endpoint: endpoint.to_string(),
            variant: variant.to_string(),
            measure: measure.to_string(),
            unit: unit.to_string(),
            baseline: f64::NAN,
            value: f64::NAN,
            difference: f64::NAN,
            difference_lower: f64::NAN,
            difference_upper: f64::NAN,
            ratio: f64::NAN,
            lower: f64::NAN,
            lower_level: f64::NAN,
            upper: f64::NAN,
            upper_level: f64::NAN,
            threshold,
            decision: Decision::Inconclusive,
            block_len: 0,
            note: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleRatio {
    pub variants: Vec<String>,
    pub units: Vec<u64>,
    pub expected_share: Vec<f64>,
    pub excluded_units: u64,
    pub chi_square: Option<ChiSquare>,
    pub mismatch: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

pub fn percentile_name(q: f64) -> &'static str {
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

    let resources = resource_stats(profile, data);
    let comparisons = if invalid && reasons.iter().any(|r| r.starts_with("no successful")) {
        Vec::new()
    } else {
        compare(profile, data, seed)
    };
    let tally = tally(&comparisons, &format!("`{}`", profile.control()));
    regressions.extend(tally.regressions);
    reasons.extend(tally.reasons);
    let inconclusive = tally.inconclusive;
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
            "every variant is within its margins of `{}` at p50, p95 and p99{}",
            profile.control(),
            if profile.resources.is_some() {
                ", and in CPU per request"
            } else {
                ""
            }
        ));
        Outcome::Pass
    };

    Summary {
        profile: profile.name.clone(),
        run_id: data.run_id.clone(),
        started_at: data.info.started_at.clone(),
        duration_seconds: data.info.duration_seconds,
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
        gateway_config_version: data.info.gateway_config_version.clone(),
        experiment: profile.experiment.clone(),
        events_key: profile.events_key.clone(),
        control: profile.control().to_string(),
        variants: profile.variants.clone(),
        seed,
        alpha: cfg.alpha,
        window_us: window,
        window_seconds,
        settings: Settings {
            margins: cfg
                .margins
                .iter()
                .map(|m| (percentile_name(m.quantile).to_string(), m.margin))
                .collect(),
            cpu_margin: profile.resources.as_ref().map(|r| r.cpu_margin),
            endpoints: cfg
                .endpoints
                .iter()
                .map(|e| e.as_str().to_string())
                .collect(),
            replicates: cfg.replicates,
            block_ms: cfg.block.as_millis() as u64,
        },
        verdict: Verdict {
            outcome,
            reasons,
            regressions,
        },
        endpoints,
        comparisons,
        resources,
        sample_ratio,
        load,
        events: data.events.clone(),
    }
}

/// What a set of settled comparisons says: the regressions found, one reason line each, and
/// the comparisons that stay open.
pub struct Tally {
    pub regressions: Vec<Finding>,
    pub reasons: Vec<String>,
    pub inconclusive: Vec<String>,
}

/// Reads settled comparisons; `baseline` names what they were made against in the reasons
/// (`` `control` ``, or "the earlier run").
pub fn tally(comparisons: &[Comparison], baseline: &str) -> Tally {
    let mut t = Tally {
        regressions: Vec::new(),
        reasons: Vec::new(),
        inconclusive: Vec::new(),
    };
    for c in comparisons {
        let (value, base, diff, diff_lower) = (
            amount(c.value, &c.unit),
            amount(c.baseline, &c.unit),
            signed(c.difference, &c.unit),
            signed(c.difference_lower, &c.unit),
        );
        match c.decision {
            Decision::Regression => {
                t.regressions.push(Finding {
                    variant: c.variant.clone(),
                    endpoint: c.endpoint.clone(),
                    measure: c.measure.clone(),
                });
                let what = if c.measure == CPU_MEASURE {
                    format!("costs more CPU per request than {baseline} on {}", c.endpoint)
                } else {
                    format!("is slower than {baseline} on {} at {}", c.endpoint, c.measure)
                };
                t.reasons.push(format!(
                    "`{}` {what}: {value} against {base} ({diff}, at least {diff_lower}); ratio {:.3}, lower bound {:.3} > {:.3}",
                    c.variant, c.ratio, c.lower, c.threshold
                ));
            }
            Decision::Inconclusive => t.inconclusive.push(match &c.note {
                Some(note) => format!("{} {} {}: {note}", c.variant, c.endpoint, c.measure),
                None => format!(
                    "{} {} {}: {value} against {base}, ratio {:.3} in [{:.3}, {:.3}] straddles {:.3}",
                    c.variant, c.endpoint, c.measure, c.ratio, c.lower, c.upper, c.threshold
                ),
            }),
            Decision::Pass => {}
        }
    }
    t
}

/// `measure` of the CPU-per-request comparisons.
pub const CPU_MEASURE: &str = "cpu_per_request";
/// `unit` of the CPU-per-request comparisons.
pub const CPU_UNIT: &str = "cpu_s_per_1k_requests";

/// A value with its unit, for reason lines.
fn amount(v: f64, unit: &str) -> String {
    if unit == CPU_UNIT {
        format!("{v:.4} CPU s per 1,000 requests")
    } else {
        format!("{v:.3} ms")
    }
}

fn signed(v: f64, unit: &str) -> String {
    let sign = if v >= 0.0 { "+" } else { "" };
    if unit == CPU_UNIT {
        format!("{sign}{v:.4}")
    } else {
        format!("{sign}{v:.3} ms")
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
                        p95_ms: stats::quantile_sorted(&ok, 0.95),
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

/// One hypothesis pair (regression side and pass side) before Holm, with the bootstrap
/// replicates of its ratio and of its difference.
pub struct Pending {
    pub comparison: Comparison,
    pub sorted: Vec<f64>,
    pub diff_sorted: Vec<f64>,
}

/// Bootstrap block length in observations: as many as `block` of time holds in `span_us`,
/// at least 1 and at most a fifth of the data.
pub fn block_len(n: usize, block: std::time::Duration, span_us: u64) -> usize {
    ((n as f64 * block.as_micros() as f64 / span_us.max(1) as f64).ceil() as usize)
        .clamp(1, (n / 5).max(1))
}

/// Latency comparisons of one endpoint, with the variants' observations `obs` (groups =
/// variant indices, 0 the baseline) split in `strata` resampled on their own. Comparisons
/// with too few requests come back settled as inconclusive in `done`.
#[allow(clippy::too_many_arguments)]
pub fn latency_pending(
    endpoint: &str,
    variants: &[String],
    margins: &[crate::profile::Margin],
    strata: &[Stratum<'_, Obs>],
    replicates: usize,
    seed: u64,
    pending: &mut Vec<Pending>,
    done: &mut Vec<Comparison>,
) {
    let groups = variants.len();
    let quantiles: Vec<f64> = margins.iter().map(|m| m.quantile).collect();
    let mut per_group: Vec<Vec<f64>> = vec![Vec::new(); groups];
    for o in strata.iter().flat_map(|s| s.obs.iter()) {
        per_group[o.group].push(o.value);
    }
    for v in &mut per_group {
        v.sort_by(f64::total_cmp);
    }
    let counts: Vec<usize> = per_group.iter().map(Vec::len).collect();
    let boot = (counts[0] > 0 && counts.iter().skip(1).any(|&c| c > 0)).then(|| {
        stats::bootstrap_quantile_ratios_stratified(strata, groups, &quantiles, replicates, seed)
    });
    let block = strata.iter().map(|s| s.block_len).max().unwrap_or(1);
    for g in 1..groups {
        for (qi, m) in margins.iter().enumerate() {
            let need = min_requests(m.quantile);
            let mut c = Comparison::new(
                endpoint,
                &variants[g],
                percentile_name(m.quantile),
                "ms",
                1.0 + m.margin,
            );
            c.baseline = stats::quantile_sorted(&per_group[0], m.quantile) / 1e3;
            c.value = stats::quantile_sorted(&per_group[g], m.quantile) / 1e3;
            c.difference = c.value - c.baseline;
            c.ratio = boot.as_ref().map_or(f64::NAN, |b| b.point[g][qi]);
            c.block_len = block;
            let (sorted, diff_sorted) = boot.as_ref().map_or_else(Default::default, |b| {
                (
                    b.sorted[g][qi].clone(),
                    b.diff_sorted[g][qi].iter().map(|d| d / 1e3).collect(),
                )
            });
            if counts[0] < need || counts[g] < need || sorted.is_empty() {
                c.note = Some(format!(
                    "too few requests (need {need} per variant, have {} and {})",
                    counts[0], counts[g]
                ));
                done.push(c);
            } else {
                pending.push(Pending {
                    comparison: c,
                    sorted,
                    diff_sorted,
                });
            }
        }
    }
}

/// Fewest scrape spans with requests per variant for a CPU comparison.
pub const MIN_SPANS: usize = 5;

/// CPU-per-request comparisons, as `latency_pending` does for latency: `strata` hold scrape
/// spans (amount = CPU seconds, count = requests).
#[allow(clippy::too_many_arguments)]
pub fn cpu_pending(
    variants: &[String],
    margin: f64,
    strata: &[Stratum<'_, RateObs>],
    replicates: usize,
    seed: u64,
    pending: &mut Vec<Pending>,
    done: &mut Vec<Comparison>,
) {
    let groups = variants.len();
    let mut spans = vec![0usize; groups];
    for o in strata.iter().flat_map(|s| s.obs.iter()) {
        spans[o.group] += usize::from(o.count > 0.0);
    }
    let boot = stats::bootstrap_rate_ratios(strata, groups, replicates, seed);
    let block = strata.iter().map(|s| s.block_len).max().unwrap_or(1);
    for g in 1..groups {
        let mut c = Comparison::new(
            Endpoint::Target.as_str(),
            &variants[g],
            CPU_MEASURE,
            CPU_UNIT,
            1.0 + margin,
        );
        c.baseline = boot.rate[0] * 1e3;
        c.value = boot.rate[g] * 1e3;
        c.difference = c.value - c.baseline;
        c.ratio = boot.point[g];
        c.block_len = block;
        if spans[0] < MIN_SPANS || spans[g] < MIN_SPANS || boot.sorted[g].is_empty() {
            c.note = Some(format!(
                "too few metric scrapes (need {MIN_SPANS} spans with requests per variant, have {} and {})",
                spans[0], spans[g]
            ));
            done.push(c);
        } else {
            pending.push(Pending {
                comparison: c,
                sorted: boot.sorted[g].clone(),
                diff_sorted: boot.diff_sorted[g].iter().map(|d| d * 1e3).collect(),
            });
        }
    }
}

/// Holm over every pending comparison (one family), once for the regression side and once
/// for the pass side; appends them, settled, to `out`.
pub fn settle_all(pending: Vec<Pending>, alpha: f64, out: &mut Vec<Comparison>) {
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
    let regression_steps = stats::holm(&p_regression, alpha);
    let pass_steps = stats::holm(&p_pass, alpha);
    for (((p, s), reg), pass) in pending
        .iter()
        .zip(&reps)
        .zip(&regression_steps)
        .zip(&pass_steps)
    {
        let mut c = p.comparison.clone();
        settle(
            &mut c,
            s,
            &SortedReplicates::new(&p.diff_sorted),
            *reg,
            *pass,
        );
        out.push(c);
    }
}

/// Spans between consecutive scrapes of each variant inside `window`, merged in time order:
/// CPU seconds spent and target requests finished in the span.
pub fn cpu_spans(
    records: &[Record],
    scrapes: &[Scrape],
    variants: usize,
    window: (u64, u64),
) -> Vec<RateObs> {
    let mut spans: Vec<(u64, RateObs)> = Vec::new();
    for v in 0..variants {
        let scrapes: Vec<_> = scrapes
            .iter()
            .filter(|s| s.variant as usize == v && s.at_us >= window.0 && s.at_us <= window.1)
            .collect();
        let mut done: Vec<u64> = records
            .iter()
            .filter(|r| r.endpoint == Endpoint::Target && r.variant as usize == v)
            .map(|r| r.at_us + r.intended_latency_us())
            .collect();
        done.sort_unstable();
        for pair in scrapes.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let from = done.partition_point(|&t| t < a.at_us);
            let to = done.partition_point(|&t| t < b.at_us);
            spans.push((
                a.at_us,
                RateObs {
                    group: v,
                    amount: (b.cpu_seconds - a.cpu_seconds).max(0.0),
                    count: (to - from) as f64,
                },
            ));
        }
    }
    spans.sort_by_key(|(at, _)| *at);
    spans.into_iter().map(|(_, o)| o).collect()
}

fn resource_stats(profile: &Profile, data: &RunData) -> Option<Vec<ResourceStats>> {
    let resources = profile.resources.as_ref()?;
    let spans = cpu_spans(
        &data.records,
        &data.scrapes,
        profile.variants.len(),
        data.window_us,
    );
    let window_seconds = data.window_us.1.saturating_sub(data.window_us.0) as f64 / 1e6;
    Some(
        profile
            .variants
            .iter()
            .enumerate()
            .map(|(v, name)| {
                let mine = spans.iter().filter(|o| o.group == v);
                let (cpu, requests, n) = mine.fold((0.0, 0.0, 0), |(c, r, n), o| {
                    (c + o.amount, r + o.count, n + 1)
                });
                let peak = data
                    .scrapes
                    .iter()
                    .filter(|s| s.variant as usize == v)
                    .filter_map(|s| s.memory_bytes)
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
                ResourceStats {
                    variant: name.clone(),
                    metrics_url: resources.metrics_urls[v].clone(),
                    cpu_s_per_1k_requests: if requests > 0.0 {
                        cpu / requests * 1e3
                    } else {
                        f64::NAN
                    },
                    cpu_cores: cpu / window_seconds.max(1e-9),
                    peak_memory_mib: peak.map(|b| b / (1024.0 * 1024.0)),
                    spans: n,
                    requests: requests as u64,
                    scrape_failures: data.scrape_failures.get(v).copied().unwrap_or(0),
                }
            })
            .collect(),
    )
}

fn compare(profile: &Profile, data: &RunData, seed: u64) -> Vec<Comparison> {
    let cfg = &profile.verdict;
    let mut pending: Vec<Pending> = Vec::new();
    let mut out: Vec<Comparison> = Vec::new();
    let span_us = data.window_us.1.saturating_sub(data.window_us.0);
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
        let stratum = Stratum {
            obs: &obs,
            block_len: block_len(obs.len(), cfg.block, span_us),
        };
        latency_pending(
            endpoint.as_str(),
            &profile.variants,
            &cfg.margins,
            &[stratum],
            cfg.replicates,
            seed.wrapping_add(e as u64),
            &mut pending,
            &mut out,
        );
    }
    if let Some(resources) = &profile.resources {
        let spans = cpu_spans(
            &data.records,
            &data.scrapes,
            profile.variants.len(),
            data.window_us,
        );
        let stratum = Stratum {
            obs: &spans,
            block_len: block_len(spans.len(), cfg.block, span_us),
        };
        cpu_pending(
            &profile.variants,
            resources.cpu_margin,
            &[stratum],
            cfg.replicates,
            seed.wrapping_add(0x0c9u64),
            &mut pending,
            &mut out,
        );
    }
    settle_all(pending, cfg.alpha, &mut out);
    let rank = |c: &Comparison| {
        let e = cfg.endpoints.iter().position(|e| e.as_str() == c.endpoint);
        let v = profile.variant_index(&c.variant);
        let q = PERCENTILE_NAMES
            .iter()
            .position(|(_, n)| *n == c.measure)
            .unwrap_or(PERCENTILE_NAMES.len());
        (c.measure == CPU_MEASURE, e, v, q)
    };
    out.sort_by_key(rank);
    out
}

fn settle(
    c: &mut Comparison,
    reps: &SortedReplicates<'_>,
    diffs: &SortedReplicates<'_>,
    reg: HolmStep,
    pass: HolmStep,
) {
    c.lower_level = reg.level;
    c.lower = reps.lower_bound(reg.level);
    c.upper_level = pass.level;
    c.upper = reps.upper_bound(pass.level);
    c.difference_lower = diffs.lower_bound(reg.level);
    c.difference_upper = diffs.upper_bound(pass.level);
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
