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

/// One stretch of time of one group for a rate: `amount` spent (CPU seconds) over `count`
/// events (requests). The rate of a group is `sum amount / sum count`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateObs {
    pub group: usize,
    pub amount: f64,
    pub count: f64,
}

/// A time-ordered series resampled on its own, in blocks of `block_len` consecutive
/// observations. One stratum is the usual case (all variants of one run, drawn together);
/// comparing two runs draws each run from itself, since they share no clock.
#[derive(Debug, Clone, Copy)]
pub struct Stratum<'a, T> {
    pub obs: &'a [T],
    pub block_len: usize,
}

/// Observed ratios and differences of each group to group 0, and their bootstrap
/// distributions.
#[derive(Debug, Clone)]
pub struct RatioReplicates {
    /// `point[g][q]`: the observed `Q_g / Q_0` at `quantiles[q]` (1.0 for `g = 0`).
    pub point: Vec<Vec<f64>>,
    /// `sorted[g][q]`: the bootstrap replicates of that ratio, ascending (empty for `g = 0`).
    pub sorted: Vec<Vec<Vec<f64>>>,
    /// `diff_point[g][q]`: the observed `Q_g - Q_0`.
    pub diff_point: Vec<Vec<f64>>,
    /// `diff_sorted[g][q]`: its bootstrap replicates, ascending (empty for `g = 0`).
    pub diff_sorted: Vec<Vec<Vec<f64>>>,
}

const CHUNK: usize = 25;

/// Smallest denominator a quantile may have, so a ratio is always finite.
const MIN_VALUE: f64 = 1e-9;

/// Ratios and differences of quantiles of each group to group 0, with one stream of
/// observations (every group of one run, in time order) cut into blocks of `block_len`.
pub fn bootstrap_quantile_ratios(
    obs: &[Obs],
    groups: usize,
    quantiles: &[f64],
    replicates: usize,
    block_len: usize,
    seed: u64,
) -> RatioReplicates {
    bootstrap_quantile_ratios_stratified(
        &[Stratum { obs, block_len }],
        groups,
        quantiles,
        replicates,
        seed,
    )
}

/// As [`bootstrap_quantile_ratios`], each stratum resampled on its own.
pub fn bootstrap_quantile_ratios_stratified(
    strata: &[Stratum<'_, Obs>],
    groups: usize,
    quantiles: &[f64],
    replicates: usize,
    seed: u64,
) -> RatioReplicates {
    assert!(groups >= 2, "needs a control and at least one other group");
    assert!(
        strata
            .iter()
            .all(|s| s.obs.iter().all(|o| o.group < groups))
    );
    let all: Vec<Obs> = strata.iter().flat_map(|s| s.obs.iter().copied()).collect();
    let mut by_group = vec![Vec::new(); groups];
    for o in &all {
        by_group[o.group].push(o.value);
    }
    let mut point_q = vec![Vec::new(); groups];
    quantiles_into(&mut by_group, quantiles, &mut point_q);
    let (point, diff_point) = ratio_and_difference(&point_q);
    let width = groups * quantiles.len();
    let n: usize = strata.iter().map(|s| s.obs.len()).sum();
    let columns = replicate(
        strata,
        replicates,
        2 * width,
        seed,
        || {
            (
                vec![Vec::with_capacity(n); groups],
                vec![Vec::new(); groups],
            )
        },
        |(buffers, q), drawn, out| {
            for b in buffers.iter_mut() {
                b.clear();
            }
            for o in drawn {
                buffers[o.group].push(o.value);
            }
            quantiles_into(buffers, quantiles, q);
            let (r, d) = ratio_and_difference(q);
            out.extend(r.iter().flatten());
            out.extend(d.iter().flatten());
        },
    );
    let split = |offset: usize| -> Vec<Vec<Vec<f64>>> {
        (0..groups)
            .map(|g| {
                (0..quantiles.len())
                    .map(|qi| {
                        if g == 0 {
                            Vec::new()
                        } else {
                            columns[offset + g * quantiles.len() + qi].clone()
                        }
                    })
                    .collect()
            })
            .collect()
    };
    RatioReplicates {
        point,
        sorted: split(0),
        diff_point,
        diff_sorted: split(width),
    }
}

/// Observed rates (`sum amount / sum count`) per group, and the bootstrap distributions of
/// each group's rate ratio and difference to group 0.
#[derive(Debug, Clone)]
pub struct RateReplicates {
    /// `rate[g]`: the observed rate of group `g` (NaN without events).
    pub rate: Vec<f64>,
    /// `point[g]`: `rate[g] / rate[0]`.
    pub point: Vec<f64>,
    /// `sorted[g]`: bootstrap replicates of that ratio, ascending (empty for `g = 0`).
    pub sorted: Vec<Vec<f64>>,
    /// `diff_sorted[g]`: bootstrap replicates of `rate[g] - rate[0]`, ascending.
    pub diff_sorted: Vec<Vec<f64>>,
}

/// Block bootstrap of rate ratios: the spans of each stratum are drawn in blocks of
/// consecutive spans, all groups together, and each group's rate recomputed as a ratio of
/// sums (so a span with more requests weighs more, as it should).
pub fn bootstrap_rate_ratios(
    strata: &[Stratum<'_, RateObs>],
    groups: usize,
    replicates: usize,
    seed: u64,
) -> RateReplicates {
    assert!(groups >= 2, "needs a control and at least one other group");
    let rates = |spans: &mut dyn Iterator<Item = RateObs>| -> Vec<f64> {
        let mut sums = vec![(0.0, 0.0); groups];
        for o in spans {
            sums[o.group].0 += o.amount;
            sums[o.group].1 += o.count;
        }
        sums.iter()
            .map(|&(a, c)| if c > 0.0 { a / c } else { f64::NAN })
            .collect()
    };
    let rate = rates(&mut strata.iter().flat_map(|s| s.obs.iter().copied()));
    let point: Vec<f64> = rate.iter().map(|r| r / rate[0].max(MIN_VALUE)).collect();
    let columns = replicate(
        strata,
        replicates,
        2 * groups,
        seed,
        || (),
        |_, drawn, out| {
            let r = rates(&mut drawn.iter().copied());
            out.extend(r.iter().map(|x| x / r[0].max(MIN_VALUE)));
            out.extend(r.iter().map(|x| x - r[0]));
        },
    );
    let pick = |offset: usize| -> Vec<Vec<f64>> {
        (0..groups)
            .map(|g| {
                if g == 0 {
                    Vec::new()
                } else {
                    columns[offset + g].clone()
                }
            })
            .collect()
    };
    RateReplicates {
        rate,
        point,
        sorted: pick(0),
        diff_sorted: pick(groups),
    }
}

/// Runs `replicates` circular-block-bootstrap resamples of `strata`: `statistic` gets the
/// drawn observations and appends exactly `width` numbers. Returns, per column, the finite
/// replicates in ascending order. Work is split in chunks with their own seeded RNG, so the
/// result does not depend on the number of threads.
fn replicate<T, W, M, F>(
    strata: &[Stratum<'_, T>],
    replicates: usize,
    width: usize,
    seed: u64,
    make_workspace: M,
    statistic: F,
) -> Vec<Vec<f64>>
where
    T: Copy + Sync,
    M: Fn() -> W + Sync,
    F: Fn(&mut W, &[T], &mut Vec<f64>) + Sync,
{
    let mut columns = vec![Vec::with_capacity(replicates); width];
    let n: usize = strata.iter().map(|s| s.obs.len()).sum();
    if n == 0 {
        return columns;
    }
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
                let (make_workspace, statistic) = (&make_workspace, &statistic);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut workspace = make_workspace();
                    let mut drawn: Vec<T> = Vec::with_capacity(n);
                    for chunk in (t..chunks).step_by(threads) {
                        let count = CHUNK.min(replicates - chunk * CHUNK);
                        let mut rng = SmallRng::seed_from_u64(mix(seed, chunk as u64));
                        let mut values = Vec::with_capacity(count * width);
                        for _ in 0..count {
                            drawn.clear();
                            for stratum in strata {
                                draw(stratum, &mut rng, &mut drawn);
                            }
                            let before = values.len();
                            statistic(&mut workspace, &drawn, &mut values);
                            debug_assert_eq!(values.len() - before, width);
                        }
                        out.push((chunk, values));
                    }
                    out
                })
            })
            .collect();
        for handle in handles {
            for (chunk, values) in handle.join().expect("bootstrap worker panicked") {
                per_chunk[chunk] = values;
            }
        }
    });
    for chunk in per_chunk {
        for replicate in chunk.chunks_exact(width) {
            for (column, &v) in columns.iter_mut().zip(replicate) {
                // An empty group in a resample (only possible with tiny samples) yields
                // NaN, which is dropped.
                if v.is_finite() {
                    column.push(v);
                }
            }
        }
    }
    for column in &mut columns {
        column.sort_by(f64::total_cmp);
    }
    columns
}

/// One circular-block-bootstrap resample of a stratum, as many observations as it has.
fn draw<T: Copy>(stratum: &Stratum<'_, T>, rng: &mut SmallRng, out: &mut Vec<T>) {
    let n = stratum.obs.len();
    if n == 0 {
        return;
    }
    let block_len = stratum.block_len.clamp(1, n);
    let mut taken = 0;
    while taken < n {
        let start = rng.random_range(0..n);
        let len = block_len.min(n - taken);
        for k in 0..len {
            out.push(stratum.obs[(start + k) % n]);
        }
        taken += len;
    }
}

/// `out[g][q]`: quantile `quantiles[q]` of group `g` (reorders the buffers).
fn quantiles_into(by_group: &mut [Vec<f64>], quantiles: &[f64], out: &mut [Vec<f64>]) {
    for (values, q_out) in by_group.iter_mut().zip(out.iter_mut()) {
        q_out.clear();
        q_out.extend(quantiles.iter().map(|&q| quantile(values, q)));
    }
}

/// Ratios `Q_g / Q_0` and differences `Q_g - Q_0` of per-group quantiles.
fn ratio_and_difference(q: &[Vec<f64>]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let control = &q[0];
    let ratio = q
        .iter()
        .map(|g| {
            g.iter()
                .zip(control)
                .map(|(v, c)| v / c.max(MIN_VALUE))
                .collect()
        })
        .collect();
    let difference = q
        .iter()
        .map(|g| g.iter().zip(control).map(|(v, c)| v - c).collect())
        .collect();
    (ratio, difference)
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
    fn differences_come_with_the_ratios() {
        let obs = synthetic(6_000, &[1.0, 1.25], 1);
        let r = bootstrap_quantile_ratios(&obs, 2, &[0.5], 1_000, 30, 7);
        // Medians of about 1000 and 1250: a difference of about 250, both bounds positive.
        let d = r.diff_point[1][0];
        assert!((d - 250.0).abs() < 60.0, "{d}");
        let s = SortedReplicates::new(&r.diff_sorted[1][0]);
        assert!(s.lower_bound(0.025) > 100.0 && s.upper_bound(0.025) < 400.0);
        assert!(s.lower_bound(0.025) < d && d < s.upper_bound(0.025));
    }

    #[test]
    fn strata_are_resampled_on_their_own() {
        // Two runs of the same distribution, one with twice the data: each resample keeps
        // every run's size, so no replicate lacks a group and the A/A ratio centres on 1.
        let old: Vec<Obs> = synthetic(1_000, &[1.0], 21);
        let new: Vec<Obs> = synthetic(2_000, &[1.0], 22)
            .into_iter()
            .map(|o| Obs { group: 1, ..o })
            .collect();
        let strata = [
            Stratum {
                obs: &old,
                block_len: 20,
            },
            Stratum {
                obs: &new,
                block_len: 20,
            },
        ];
        let r = bootstrap_quantile_ratios_stratified(&strata, 2, &[0.5], 400, 3);
        assert_eq!(r.sorted[1][0].len(), 400);
        let s = SortedReplicates::new(&r.sorted[1][0]);
        assert!(s.lower_bound(0.025) < 1.0 && s.upper_bound(0.025) > 1.0);
        let slow: Vec<Obs> = new
            .iter()
            .map(|o| Obs {
                value: o.value * 1.3,
                ..*o
            })
            .collect();
        let strata = [
            strata[0],
            Stratum {
                obs: &slow,
                block_len: 20,
            },
        ];
        let r = bootstrap_quantile_ratios_stratified(&strata, 2, &[0.5], 400, 3);
        assert!(SortedReplicates::new(&r.sorted[1][0]).lower_bound(0.025) > 1.1);
    }

    /// Spans of 250 ms: about 100 requests per group, each costing `cost[group]` CPU seconds
    /// plus noise, and a background that varies over time for everyone.
    fn spans(n: usize, cost: &[f64], seed: u64) -> Vec<RateObs> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut level: f64 = 0.0;
        let mut out = Vec::new();
        for _ in 0..n {
            level = 0.9 * level + 0.05 * normal(&mut rng);
            for (group, c) in cost.iter().enumerate() {
                let count = 100.0 + (10.0 * normal(&mut rng)).round();
                let amount = count * c * level.exp() * (1.0 + 0.05 * normal(&mut rng));
                out.push(RateObs {
                    group,
                    amount,
                    count,
                });
            }
        }
        out
    }

    #[test]
    fn rate_ratios_find_a_costlier_group_and_not_an_equal_one() {
        let costly = spans(40, &[50e-6, 250e-6], 4);
        let r = bootstrap_rate_ratios(
            &[Stratum {
                obs: &costly,
                block_len: 2,
            }],
            2,
            1_000,
            9,
        );
        assert!((r.point[1] - 5.0).abs() < 0.3, "{:?}", r.point);
        assert!((r.rate[0] - 50e-6).abs() < 5e-6, "{:?}", r.rate);
        let s = SortedReplicates::new(&r.sorted[1]);
        assert!(s.lower_bound(0.025) > 4.0, "{}", s.lower_bound(0.025));
        let d = SortedReplicates::new(&r.diff_sorted[1]);
        assert!(d.lower_bound(0.025) > 150e-6 && d.upper_bound(0.025) < 250e-6);

        let mut false_alarms = 0;
        for seed in 0..30 {
            let equal = spans(40, &[50e-6, 50e-6], 100 + seed);
            let r = bootstrap_rate_ratios(
                &[Stratum {
                    obs: &equal,
                    block_len: 2,
                }],
                2,
                400,
                seed,
            );
            if SortedReplicates::new(&r.sorted[1]).lower_bound(0.05) > 1.0 {
                false_alarms += 1;
            }
        }
        assert!(
            false_alarms <= 5,
            "{false_alarms} false alarms in 30 A/A runs"
        );
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
