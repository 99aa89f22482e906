//! Live experiment health: distinct exposed units per variant, and a sample-ratio test against
//! the configured weights.
//!
//! A sample-ratio mismatch (SRM) means the units that reached the data are not split the way
//! they were randomized: exposures lost for one variant (a crash in its code path, a redirect, a
//! tracking bug), bots in one arm, a changed hash. Every number computed on such data is biased,
//! so it is checked continuously here, not only in the readout.
//!
//! Invariants:
//! - Units, not events: a unit exposed a thousand times counts once, so a chatty client cannot
//!   skew the split. Counting is idempotent, so exposures are counted when they pass dedup,
//!   before the log acknowledges them; a retry after a failed append re-inserts the same units.
//! - Bounded memory: each variant counts exactly in a set of unit hashes up to
//!   `exact_units_per_variant` (8,192 by default, about 150 KiB), then in a HyperLogLog sketch of
//!   2^16 one-byte registers (64 KiB, relative standard error 1.04/sqrt(2^16) = 0.41%). The test adds the sketch's variance to each cell,
//!   so an estimated count never raises a false alarm; it only makes the test less sensitive.
//! - Label values and tracked names come from the experiments config only: an exposure for an
//!   experiment or variant the config does not have is not counted.
//! - Counts are per gateway process, since its start or since the experiment's variants or
//!   weights last changed (a new split needs a new count).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::assign::{Experiments, Status};
use crate::dedup::FreshBatch;
use crate::validate::EventKind;

/// Registers of each sketch: 2^16.
const SKETCH_PRECISION: u8 = 16;
/// Relative standard error of a sketch's estimate: 1.04 / sqrt(2^16).
pub const SKETCH_RELATIVE_ERROR: f64 = 0.004_062_5;
/// Seeds the unit hash and the sketches, so every gateway counts the same way.
const SEED: u64 = 0x5352_4d5f_7631;

/// How the test is run; from `[srm]` in the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SrmConfig {
    /// A p-value below this is a mismatch (default 0.001: with many experiments checked all the
    /// time, a looser threshold would cry wolf).
    pub p_value_threshold: f64,
    /// Units counted exactly per variant before switching to a sketch.
    pub exact_units_per_variant: usize,
    /// Fewer exposed units than this in an experiment: no verdict yet.
    pub min_units: u64,
}

impl Default for SrmConfig {
    fn default() -> Self {
        Self {
            p_value_threshold: 0.001,
            exact_units_per_variant: 8192,
            min_units: 100,
        }
    }
}

/// Distinct units of one variant.
enum Distinct {
    Exact(HashSet<u64>),
    Sketch(Box<hyperloglockless::HyperLogLog>),
}

impl Distinct {
    fn insert(&mut self, unit: u64, exact_limit: usize) {
        match self {
            Distinct::Exact(set) => {
                if set.insert(unit) && set.len() > exact_limit {
                    let mut sketch =
                        hyperloglockless::HyperLogLog::seeded(SKETCH_PRECISION, SEED as u128);
                    for u in set.iter() {
                        sketch.insert(u);
                    }
                    *self = Distinct::Sketch(Box::new(sketch));
                }
            }
            Distinct::Sketch(sketch) => sketch.insert(&unit),
        }
    }

    fn count(&self) -> u64 {
        match self {
            Distinct::Exact(set) => set.len() as u64,
            Distinct::Sketch(sketch) => sketch.count() as u64,
        }
    }

    fn is_exact(&self) -> bool {
        matches!(self, Distinct::Exact(_))
    }
}

struct Tracked {
    variants: Vec<Arc<str>>,
    weights: Vec<f64>,
    status: Status,
    units: Vec<Distinct>,
    since: chrono::DateTime<chrono::Utc>,
    /// Whether the last evaluation found a mismatch (to log on the change only).
    flagged: bool,
}

struct State {
    version: String,
    experiments: HashMap<Arc<str>, Tracked>,
}

/// Per-experiment exposure counts and their sample-ratio test.
pub struct ExposureHealth {
    config: SrmConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for ExposureHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExposureHealth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One variant in a health report.
#[derive(Debug, Clone, Serialize)]
pub struct VariantHealth {
    pub variant: String,
    /// Distinct exposed units (exact, or a sketch's estimate when `exact` is false).
    pub units: u64,
    pub exact: bool,
    pub expected_share: f64,
    pub observed_share: f64,
}

/// `healthy`, `srm` or `insufficient_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    Srm,
    InsufficientData,
}

/// The answer of `GET /v1/experiments/{key}/health`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub experiment: String,
    pub config_version: String,
    pub status: &'static str,
    pub counting_since: String,
    pub units: u64,
    pub variants: Vec<VariantHealth>,
    pub chi_square: Option<f64>,
    pub degrees_of_freedom: usize,
    pub p_value: Option<f64>,
    pub threshold: f64,
    pub verdict: Verdict,
}

/// A unit's hash: the same on every gateway.
fn unit_hash(unit: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(unit.as_bytes(), SEED)
}

impl ExposureHealth {
    pub fn new(config: SrmConfig, experiments: &Experiments) -> Self {
        let health = Self {
            config,
            state: Mutex::new(State {
                version: String::new(),
                experiments: HashMap::new(),
            }),
        };
        health.sync(&mut health.lock(), experiments);
        health
    }

    pub fn config(&self) -> SrmConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follow a new config: keep the counts of experiments whose split did not change.
    fn sync(&self, state: &mut State, experiments: &Experiments) {
        if state.version == experiments.version() {
            return;
        }
        let now = chrono::Utc::now();
        let mut next = HashMap::with_capacity(experiments.len());
        for e in experiments.summaries() {
            let kept = state.experiments.remove(e.key).filter(|t| {
                t.variants.as_slice() == e.variants && t.weights.as_slice() == e.weights
            });
            let tracked = match kept {
                Some(mut t) => {
                    t.status = e.status;
                    t
                }
                None => Tracked {
                    variants: e.variants.to_vec(),
                    weights: e.weights.to_vec(),
                    status: e.status,
                    units: e
                        .variants
                        .iter()
                        .map(|_| Distinct::Exact(HashSet::new()))
                        .collect(),
                    since: now,
                    flagged: false,
                },
            };
            next.insert(e.key.clone(), tracked);
        }
        // Experiments gone from the config: drop their series too.
        for (key, gone) in state.experiments.drain() {
            metrics::gauge!(crate::metrics::SRM_P_VALUE, "experiment" => key.to_string()).set(1.0);
            metrics::gauge!(crate::metrics::SRM_DETECTED, "experiment" => key.to_string()).set(0.0);
            for v in &gone.variants {
                metrics::gauge!(crate::metrics::EXPOSED_UNITS,
                    "experiment" => key.to_string(), "variant" => v.to_string())
                .set(0.0);
            }
        }
        state.experiments = next;
        state.version = experiments.version().to_owned();
    }

    /// Count the units of the fresh assignment events of one request.
    pub fn observe(&self, experiments: &Experiments, fresh: &FreshBatch<'_>) {
        let mut events = fresh
            .valid
            .events
            .iter()
            .zip(&fresh.fresh)
            .filter(|(e, f)| **f && e.kind == EventKind::Assignment)
            .map(|(e, _)| e)
            .peekable();
        if events.peek().is_none() {
            return;
        }
        let mut state = self.lock();
        self.sync(&mut state, experiments);
        for e in events {
            let (Some(key), Some(variant)) = (&e.experiment, &e.variant) else {
                continue;
            };
            let Some(t) = state.experiments.get_mut(key.as_ref()) else {
                continue;
            };
            let Some(i) = t.variants.iter().position(|v| **v == **variant) else {
                continue;
            };
            let unit = e.unit_id.as_deref().or(e.user_id.as_deref()).unwrap_or("");
            t.units[i].insert(unit_hash(unit), self.config.exact_units_per_variant);
        }
    }

    /// The health of one experiment; `None` if the config does not have it.
    pub fn report(&self, experiments: &Experiments, key: &str) -> Option<Report> {
        let mut state = self.lock();
        self.sync(&mut state, experiments);
        let version = state.version.clone();
        let t = state.experiments.get(key)?;
        Some(self.evaluate(key, &version, t))
    }

    /// Re-test every experiment: update the gauges, and warn when one starts to mismatch.
    pub fn refresh(&self, experiments: &Experiments) {
        let mut state = self.lock();
        self.sync(&mut state, experiments);
        let version = state.version.clone();
        for (key, t) in state.experiments.iter_mut() {
            let report = self.evaluate(key, &version, t);
            for v in &report.variants {
                metrics::gauge!(crate::metrics::EXPOSED_UNITS,
                    "experiment" => key.to_string(), "variant" => v.variant.clone())
                .set(v.units as f64);
            }
            metrics::gauge!(crate::metrics::SRM_P_VALUE, "experiment" => key.to_string())
                .set(report.p_value.unwrap_or(1.0));
            let flagged = report.verdict == Verdict::Srm;
            metrics::gauge!(crate::metrics::SRM_DETECTED, "experiment" => key.to_string())
                .set(if flagged { 1.0 } else { 0.0 });
            if flagged && !t.flagged {
                let counts: Vec<String> = report
                    .variants
                    .iter()
                    .map(|v| {
                        format!(
                            "{}={} (expected {:.3})",
                            v.variant, v.units, v.expected_share
                        )
                    })
                    .collect();
                tracing::warn!(
                    experiment = %key,
                    p_value = report.p_value.unwrap_or(0.0),
                    threshold = self.config.p_value_threshold,
                    units = %counts.join(", "),
                    "sample ratio mismatch: exposed units do not follow the configured weights"
                );
            } else if !flagged && t.flagged {
                tracing::info!(experiment = %key, "sample ratio back within the configured weights");
            }
            t.flagged = flagged;
        }
    }

    fn evaluate(&self, key: &str, version: &str, t: &Tracked) -> Report {
        let counts: Vec<u64> = t.units.iter().map(Distinct::count).collect();
        let total: u64 = counts.iter().sum();
        let variants = t
            .variants
            .iter()
            .zip(&t.weights)
            .zip(t.units.iter().zip(&counts))
            .map(|((name, w), (d, n))| VariantHealth {
                variant: name.to_string(),
                units: *n,
                exact: d.is_exact(),
                expected_share: *w,
                observed_share: if total == 0 {
                    0.0
                } else {
                    *n as f64 / total as f64
                },
            })
            .collect();
        let test = (total >= self.config.min_units)
            .then(|| chi_square(&counts, &t.weights, &t.units))
            .flatten();
        let (chi_square, dof, p_value) = match test {
            Some((stat, dof, p)) => (Some(stat), dof, Some(p)),
            None => (
                None,
                t.weights
                    .iter()
                    .filter(|w| **w > 0.0)
                    .count()
                    .saturating_sub(1),
                None,
            ),
        };
        let verdict = match p_value {
            None => Verdict::InsufficientData,
            Some(p) if p < self.config.p_value_threshold => Verdict::Srm,
            Some(_) => Verdict::Healthy,
        };
        Report {
            experiment: key.to_owned(),
            config_version: version.to_owned(),
            status: t.status.as_str(),
            counting_since: t.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            units: total,
            variants,
            chi_square,
            degrees_of_freedom: dof,
            p_value,
            threshold: self.config.p_value_threshold,
            verdict,
        }
    }
}

/// Pearson's chi-square of observed counts against `weights`, with each sketched cell's
/// variance widened by the sketch's error. Returns (statistic, degrees of freedom, p-value), or
/// `None` when an expected count is under 5 (the chi-square approximation does not hold).
///
/// A variant of weight 0 that has units is a mismatch outright (p = 0).
fn chi_square(counts: &[u64], weights: &[f64], units: &[Distinct]) -> Option<(f64, usize, f64)> {
    let total: f64 = counts.iter().sum::<u64>() as f64;
    let mut stat = 0.0;
    let mut cells = 0usize;
    for ((n, w), d) in counts.iter().zip(weights).zip(units) {
        let observed = *n as f64;
        if *w <= 0.0 {
            if *n > 0 {
                return Some((f64::INFINITY, 0, 0.0));
            }
            continue;
        }
        let expected = total * w;
        if expected < 5.0 {
            return None;
        }
        let sketch_var = if d.is_exact() {
            0.0
        } else {
            (SKETCH_RELATIVE_ERROR * observed).powi(2)
        };
        stat += (observed - expected).powi(2) / (expected + sketch_var);
        cells += 1;
    }
    let dof = cells.checked_sub(1).filter(|d| *d > 0)?;
    let p = ChiSquared::new(dof as f64).ok()?.sf(stat);
    Some((stat, dof, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(n: usize) -> Vec<Distinct> {
        (0..n).map(|_| Distinct::Exact(HashSet::new())).collect()
    }

    #[test]
    fn chi_square_matches_reference_values() {
        // 50/50 with 520 vs 480: statistic 1.6, p = 0.2059 (scipy.stats.chisquare).
        let (stat, dof, p) = chi_square(&[520, 480], &[0.5, 0.5], &exact(2)).unwrap();
        assert!((stat - 1.6).abs() < 1e-9, "{stat}");
        assert_eq!(dof, 1);
        assert!((p - 0.205_903).abs() < 1e-5, "{p}");
        // Three variants 0.2/0.4/0.4 with 230/380/390: 5.75, p = exp(-5.75/2) = 0.056416.
        let (stat, dof, p) = chi_square(&[230, 380, 390], &[0.2, 0.4, 0.4], &exact(3)).unwrap();
        assert!((stat - 5.75).abs() < 1e-9, "{stat}");
        assert_eq!(dof, 2);
        assert!((p - 0.056_416).abs() < 1e-5, "{p}");
    }

    #[test]
    fn units_past_the_exact_limit_are_estimated_within_the_sketch_error() {
        let mut d = Distinct::Exact(HashSet::new());
        for i in 0..200_000u64 {
            d.insert(unit_hash(&format!("u-{i}")), 8192);
            // Repeats are one unit.
            d.insert(unit_hash(&format!("u-{i}")), 8192);
        }
        assert!(!d.is_exact());
        let n = d.count() as f64;
        // Four standard errors: a deterministic hash, so this is one fixed draw.
        assert!(
            (n / 200_000.0 - 1.0).abs() < 4.0 * SKETCH_RELATIVE_ERROR,
            "{n}"
        );
    }

    #[test]
    fn a_sketched_count_widens_the_test_instead_of_raising_an_alarm() {
        let mut sketched: Vec<Distinct> = Vec::new();
        for _ in 0..2 {
            let mut d = Distinct::Exact(HashSet::new());
            for i in 0..5000u64 {
                d.insert(i, 10);
            }
            sketched.push(d);
        }
        // A 0.5% difference at a million units: Pearson alone says p ~ 6e-7; within the
        // sketch's error it is no evidence.
        let (_, _, p_exact) = chi_square(&[502_500, 497_500], &[0.5, 0.5], &exact(2)).unwrap();
        let (_, _, p_sketch) = chi_square(&[502_500, 497_500], &[0.5, 0.5], &sketched).unwrap();
        assert!(p_exact < 1e-6, "{p_exact}");
        assert!(p_sketch > 0.01, "{p_sketch}");
        // A 5% drop of one variant is still found.
        let (_, _, p_drop) = chi_square(&[500_000, 475_000], &[0.5, 0.5], &sketched).unwrap();
        assert!(p_drop < 0.001, "{p_drop}");
    }

    #[test]
    fn zero_weight_variants_with_units_are_a_mismatch_and_small_counts_have_no_verdict() {
        let (_, _, p) = chi_square(&[500, 500, 3], &[0.5, 0.5, 0.0], &exact(3)).unwrap();
        assert_eq!(p, 0.0);
        assert!(chi_square(&[3, 2], &[0.5, 0.5], &exact(2)).is_none());
    }
}
