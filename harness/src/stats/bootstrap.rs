//! Circular block bootstrap of the ratio of quantiles `Q_g(q) / Q_control(q)`.
//!
//! Requests close in time are not independent (a GC pause, a noisy neighbour or a queue
//! slows everything in flight), so resampling single requests would understate the
//! uncertainty. Instead the merged, time-ordered stream of all groups is cut into blocks of
//! `block_len` consecutive observations (wrapping around at the end: the circular variant
//! of Politis & Romano gives every observation the same chance to be drawn) and whole blocks
//! are drawn with replacement. Drawing the groups *together*, block by block, keeps the
//! pairing in time between control and the other variants, so a slowdown that hit both at
//! once cancels in the ratio instead of widening its interval.
//!
//! Deterministic for a given seed: replicates are generated in fixed-size chunks, each with
//! its own RNG seeded from `(seed, chunk)`, whatever the number of threads.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::quantile;

/// One observation, in time order: which group (variant index, 0 = control) and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obs {
    pub group: usize,
    pub value: f64,
}

/// Observed ratios and their bootstrap distribution.
#[derive(Debug, Clone)]
pub struct RatioReplicates {
    /// `point[g][q]`: the observed `Q_g / Q_0` at `quantiles[q]` (1.0 for `g = 0`).
    pub point: Vec<Vec<f64>>,
    /// `sorted[g][q]`: the bootstrap replicates of that ratio, ascending (empty for `g = 0`).
    pub sorted: Vec<Vec<Vec<f64>>>,
}

const CHUNK: usize = 25;

/// Smallest denominator a quantile may have, so a ratio is always finite.
const MIN_VALUE: f64 = 1e-9;

pub fn bootstrap_quantile_ratios(
    obs: &[Obs],
    groups: usize,
    quantiles: &[f64],
    replicates: usize,
    block_len: usize,
    seed: u64,
) -> RatioReplicates {
    assert!(groups >= 2, "needs a control and at least one other group");
    assert!(obs.iter().all(|o| o.group < groups));
    let point = point_ratios(obs, groups, quantiles);
    let mut sorted = vec![vec![Vec::with_capacity(replicates); quantiles.len()]; groups];
    if obs.is_empty() {
        return RatioReplicates { point, sorted };
    }
    let block_len = block_len.clamp(1, obs.len());
    let chunks = replicates.div_ceil(CHUNK);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(chunks)
        .max(1);
    let mut per_chunk: Vec<Vec<f64>> = vec![Vec::new(); chunks];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut work = Workspace::new(groups, obs.len());
                    for chunk in (t..chunks).step_by(threads) {
                        let count = CHUNK.min(replicates - chunk * CHUNK);
                        let mut rng = SmallRng::seed_from_u64(mix(seed, chunk as u64));
                        let mut ratios = Vec::with_capacity(count * groups * quantiles.len());
                        for _ in 0..count {
                            work.draw(obs, block_len, &mut rng);
                            work.ratios(quantiles, &mut ratios);
                        }
                        out.push((chunk, ratios));
                    }
                    out
                })
            })
            .collect();
        for handle in handles {
            for (chunk, ratios) in handle.join().expect("bootstrap worker panicked") {
                per_chunk[chunk] = ratios;
            }
        }
    });
    let width = groups * quantiles.len();
    for chunk in per_chunk {
        for replicate in chunk.chunks_exact(width) {
            for g in 1..groups {
                for q in 0..quantiles.len() {
                    let r = replicate[g * quantiles.len() + q];
                    if r.is_finite() {
                        sorted[g][q].push(r);
                    }
                }
            }
        }
    }
    for per_group in &mut sorted {
        for reps in per_group {
            reps.sort_by(f64::total_cmp);
        }
    }
    RatioReplicates { point, sorted }
}

fn point_ratios(obs: &[Obs], groups: usize, quantiles: &[f64]) -> Vec<Vec<f64>> {
    let mut by_group = vec![Vec::new(); groups];
    for o in obs {
        by_group[o.group].push(o.value);
    }
    let mut q_of = |g: usize| -> Vec<f64> {
        quantiles
            .iter()
            .map(|&q| quantile(&mut by_group[g], q))
            .collect()
    };
    let control = q_of(0);
    (0..groups)
        .map(|g| {
            q_of(g)
                .iter()
                .zip(&control)
                .map(|(v, c)| v / c.max(MIN_VALUE))
                .collect()
        })
        .collect()
}

/// Buffers reused across replicates, so a replicate allocates nothing.
struct Workspace {
    by_group: Vec<Vec<f64>>,
    n: usize,
}

impl Workspace {
    fn new(groups: usize, n: usize) -> Self {
        Workspace {
            by_group: vec![Vec::with_capacity(n); groups],
            n,
        }
    }

    /// One circular-block-bootstrap resample of `n` observations.
    fn draw(&mut self, obs: &[Obs], block_len: usize, rng: &mut SmallRng) {
        for buf in &mut self.by_group {
            buf.clear();
        }
        let mut taken = 0;
        while taken < self.n {
            let start = rng.random_range(0..self.n);
            let len = block_len.min(self.n - taken);
            for k in 0..len {
                let o = obs[(start + k) % self.n];
                self.by_group[o.group].push(o.value);
            }
            taken += len;
        }
    }

    /// Appends `Q_g / Q_0` for every group and quantile (group 0 as 1.0) to `out`.
    fn ratios(&mut self, quantiles: &[f64], out: &mut Vec<f64>) {
        let (control, others) = self.by_group.split_first_mut().expect("groups >= 2");
        let control_q: Vec<f64> = quantiles.iter().map(|&q| quantile(control, q)).collect();
        out.extend(std::iter::repeat_n(1.0, quantiles.len()));
        for group in others {
            for (&q, &c) in quantiles.iter().zip(&control_q) {
                // An empty group in a resample (only possible with tiny samples) yields NaN,
                // which the caller drops.
                out.push(quantile(group, q) / c.max(MIN_VALUE));
            }
        }
    }
}

/// SplitMix64 of `seed` and `stream`: well-separated seeds for each chunk.
fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::super::SortedReplicates;
    use super::*;

    /// Synthetic latencies: a slowly varying load level shared by all groups (AR(1) on the
    /// log scale, so neighbours are correlated), times independent log-normal noise, times
    /// `shift[group]`. Groups alternate at random, as users of different variants do.
    fn synthetic(n: usize, shift: &[f64], seed: u64) -> Vec<Obs> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut level: f64 = 0.0;
        (0..n)
            .map(|_| {
                level = 0.98 * level + 0.06 * normal(&mut rng);
                let group = rng.random_range(0..shift.len());
                let noise = 0.4 * normal(&mut rng);
                Obs {
                    group,
                    value: 1_000.0 * shift[group] * (level + noise).exp(),
                }
            })
            .collect()
    }

    fn normal(rng: &mut SmallRng) -> f64 {
        // Box-Muller.
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    const QS: [f64; 3] = [0.5, 0.95, 0.99];

    #[test]
    fn a_known_shift_is_detected_at_every_percentile() {
        let obs = synthetic(6_000, &[1.0, 1.25], 1);
        let r = bootstrap_quantile_ratios(&obs, 2, &QS, 1_000, 30, 7);
        for (q, quantile) in QS.iter().enumerate() {
            let s = SortedReplicates::new(&r.sorted[1][q]);
            let lower = s.lower_bound(0.05 / 3.0);
            assert!(lower > 1.10, "q={quantile} lower={lower}");
            assert!(s.upper_bound(0.05 / 3.0) > 1.25 * 0.95);
            assert!(
                (r.point[1][q] - 1.25).abs() < 0.15,
                "point {}",
                r.point[1][q]
            );
        }
    }

    #[test]
    fn identical_distributions_rarely_look_slower() {
        // 30 A/A data sets; one-sided 5 % test against ratio 1 at p50: about 1.5 expected
        // false alarms, and the count must stay well under a broken test's.
        let mut false_alarms = 0;
        let mut covered = 0;
        for seed in 0..30 {
            let obs = synthetic(2_000, &[1.0, 1.0], 100 + seed);
            let r = bootstrap_quantile_ratios(&obs, 2, &[0.5], 400, 20, seed);
            let s = SortedReplicates::new(&r.sorted[1][0]);
            if s.lower_bound(0.05) > 1.0 {
                false_alarms += 1;
            }
            if s.lower_bound(0.025) <= 1.0 && s.upper_bound(0.025) >= 1.0 {
                covered += 1;
            }
        }
        assert!(
            false_alarms <= 5,
            "{false_alarms} false alarms in 30 A/A runs"
        );
        assert!(
            covered >= 24,
            "95 % interval covered 1.0 in only {covered}/30 runs"
        );
    }

    #[test]
    fn blocks_widen_the_interval_for_correlated_data() {
        // Strongly autocorrelated data and only one group changing level: resampling single
        // requests pretends there are far more independent observations than there are.
        let mut rng = SmallRng::seed_from_u64(3);
        let mut level: f64 = 0.0;
        let obs: Vec<Obs> = (0..4_000)
            .map(|i| {
                level = 0.995 * level + 0.1 * normal(&mut rng);
                let group = i % 2;
                let value = if group == 0 {
                    1_000.0
                } else {
                    1_000.0 * level.exp()
                };
                Obs { group, value }
            })
            .collect();
        let width = |block| {
            let r = bootstrap_quantile_ratios(&obs, 2, &[0.5], 400, block, 11);
            let s = SortedReplicates::new(&r.sorted[1][0]);
            s.upper_bound(0.025) - s.lower_bound(0.025)
        };
        let iid = width(1);
        let blocked = width(200);
        assert!(blocked > 2.0 * iid, "iid {iid}, blocked {blocked}");
    }

    #[test]
    fn deterministic_for_a_seed() {
        let obs = synthetic(500, &[1.0, 1.1, 0.9], 5);
        let a = bootstrap_quantile_ratios(&obs, 3, &QS, 300, 10, 42);
        let b = bootstrap_quantile_ratios(&obs, 3, &QS, 300, 10, 42);
        assert_eq!(a.sorted, b.sorted);
        assert_eq!(a.sorted[2][0].len(), 300);
        assert!(a.sorted[0][0].is_empty());
        assert_eq!(a.point[0], vec![1.0; 3]);
    }
}
