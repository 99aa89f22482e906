//! Pure statistics behind the verdict: quantiles, the block bootstrap of quantile ratios,
//! Holm's step-down procedure and the chi-square test of the sample ratio.
//!
//! No I/O, no clocks, no global RNG: every random draw comes from a seed the caller passes,
//! so a verdict can be recomputed exactly from `summary.json`'s seed and the same data.

mod bootstrap;
mod chi_square;

pub use bootstrap::{
    Obs, RateObs, RateReplicates, RatioReplicates, Stratum, bootstrap_quantile_ratios,
    bootstrap_quantile_ratios_stratified, bootstrap_rate_ratios,
};
pub use chi_square::{ChiSquare, chi_square_gof, chi_square_sf};

/// Nearest-rank quantile (the smallest value with at least `q` of the data at or below it).
/// Reorders `values`; returns NaN for an empty slice.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let idx = nearest_rank_index(values.len(), q);
    let (_, v, _) = values.select_nth_unstable_by(idx, f64::total_cmp);
    *v
}

/// Quantiles of already sorted data (nearest rank, as `quantile`).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[nearest_rank_index(sorted.len(), q)]
}

fn nearest_rank_index(n: usize, q: f64) -> usize {
    let rank = (q * n as f64 - 1e-9).ceil() as usize;
    rank.clamp(1, n) - 1
}

/// `floor(a * b)`, robust to `a * b` landing a hair under an integer.
fn floor_count(a: f64, b: usize) -> usize {
    ((a * b as f64) + 1e-9).floor() as usize
}

/// A one-sided percentile-bootstrap bound and test for a ratio against a threshold.
///
/// `sorted` holds the bootstrap replicates in ascending order. The bounds are chosen so that
/// the decision by bound and the decision by p-value always agree:
/// `lower_bound(a) > t  <=>  p_above(t) <= a` and `upper_bound(a) < t  <=>  p_below(t) <= a`.
#[derive(Debug, Clone, Copy)]
pub struct SortedReplicates<'a> {
    sorted: &'a [f64],
}

impl<'a> SortedReplicates<'a> {
    pub fn new(sorted: &'a [f64]) -> Self {
        debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        SortedReplicates { sorted }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Lower confidence bound at one-sided level `a` (coverage `1 - a`).
    pub fn lower_bound(&self, a: f64) -> f64 {
        let k = floor_count(a, self.len());
        self.sorted.get(k).copied().unwrap_or(f64::INFINITY)
    }

    /// Upper confidence bound at one-sided level `a`.
    pub fn upper_bound(&self, a: f64) -> f64 {
        let k = floor_count(a, self.len());
        match self.len().checked_sub(1 + k) {
            Some(i) => self.sorted[i],
            None => f64::NEG_INFINITY,
        }
    }

    /// Bootstrap p-value of "the ratio is at most `t`" (small means: clearly above `t`).
    pub fn p_above(&self, t: f64) -> f64 {
        let at_or_below = self.sorted.partition_point(|&r| r <= t);
        at_or_below as f64 / self.len() as f64
    }

    /// Bootstrap p-value of "the ratio is at least `t`" (small means: clearly below `t`).
    pub fn p_below(&self, t: f64) -> f64 {
        let below = self.sorted.partition_point(|&r| r < t);
        (self.len() - below) as f64 / self.len() as f64
    }
}

/// The outcome of Holm's step-down procedure for one hypothesis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HolmStep {
    pub rejected: bool,
    /// The per-hypothesis level it was tested at: `alpha / (m - rank)` for the hypotheses
    /// reached, and the level of the step where the procedure stopped for the rest.
    pub level: f64,
}

/// Holm's step-down procedure: controls the family-wise error rate at `alpha` for any
/// dependence between the tests. Input and output are in the caller's order.
pub fn holm(p_values: &[f64], alpha: f64) -> Vec<HolmStep> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut out = vec![
        HolmStep {
            rejected: false,
            level: alpha
        };
        m
    ];
    let mut stopped_at: Option<f64> = None;
    for (rank, &i) in order.iter().enumerate() {
        let level = stopped_at.unwrap_or(alpha / (m - rank) as f64);
        let rejected = stopped_at.is_none() && p_values[i] <= level;
        if !rejected && stopped_at.is_none() {
            stopped_at = Some(level);
        }
        out[i] = HolmStep { rejected, level };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert_eq!(quantile(&mut v, 0.999), 100.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        let mut one = [7.0];
        assert_eq!(quantile(&mut one, 0.99), 7.0);
        assert!(quantile(&mut [], 0.5).is_nan());
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile_sorted(&sorted, 0.95), 10.0);
        assert_eq!(quantile_sorted(&sorted, 0.9), 9.0);
    }

    #[test]
    fn bounds_and_p_values_agree() {
        let reps: Vec<f64> = (0..1000).map(|i| 0.9 + i as f64 * 0.0004).collect();
        let s = SortedReplicates::new(&reps);
        for a in [0.001, 0.0125, 0.025, 0.05, 0.1] {
            for t in [0.9, 0.95, 1.0, 1.05, 1.1, 1.2995, 1.3] {
                assert_eq!(s.lower_bound(a) > t, s.p_above(t) <= a, "lower a={a} t={t}");
                assert_eq!(s.upper_bound(a) < t, s.p_below(t) <= a, "upper a={a} t={t}");
            }
        }
        assert_eq!(s.lower_bound(0.05), reps[50]);
        assert_eq!(s.upper_bound(0.05), reps[949]);
    }

    #[test]
    fn holm_matches_a_worked_example() {
        // m = 4, alpha = 0.05: thresholds 0.0125, 0.0167, 0.025, 0.05 in p order.
        let p = [0.01, 0.04, 0.03, 0.005];
        let steps = holm(&p, 0.05);
        let rejected: Vec<bool> = steps.iter().map(|s| s.rejected).collect();
        // 0.005 <= 0.0125, 0.01 <= 0.0167, 0.03 > 0.025: stop; 0.04 not rejected either.
        assert_eq!(rejected, vec![true, false, false, true]);
        assert!((steps[3].level - 0.0125).abs() < 1e-12);
        assert!((steps[0].level - 0.05 / 3.0).abs() < 1e-12);
        assert!((steps[2].level - 0.025).abs() < 1e-12);
        assert!(
            (steps[1].level - 0.025).abs() < 1e-12,
            "after the stop, the stop's level"
        );
    }

    #[test]
    fn holm_is_uniformly_more_powerful_than_bonferroni() {
        let p = [0.02, 0.024, 0.026];
        // Bonferroni (0.0167) rejects none; Holm rejects none either since 0.02 > 0.0167.
        assert!(holm(&p, 0.05).iter().all(|s| !s.rejected));
        let p = [0.01, 0.024, 0.049];
        // 0.01 <= 0.0167, 0.024 <= 0.025, 0.049 <= 0.05: Holm rejects all three,
        // Bonferroni only the first.
        assert!(holm(&p, 0.05).iter().all(|s| s.rejected));
        assert!(holm(&[], 0.05).is_empty());
    }
}
