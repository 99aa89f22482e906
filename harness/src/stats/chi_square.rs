//! Chi-square goodness of fit, for the sample-ratio-mismatch check.
//!
//! The survival function is the regularized upper incomplete gamma function
//! `Q(df / 2, x / 2)`, computed with the series for small `x` and Lentz's continued fraction
//! otherwise (Numerical Recipes, 3rd ed., 6.2). Accurate to ~1e-12 relative here, which is
//! far more than a p-value compared against 0.001 needs, and avoids a dependency.

/// Result of a chi-square goodness-of-fit test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChiSquare {
    pub statistic: f64,
    pub df: usize,
    pub p_value: f64,
}

/// Tests observed counts against expected proportions (which are normalised to sum to 1).
/// Categories with zero expected proportion are not allowed.
pub fn chi_square_gof(observed: &[u64], expected_proportions: &[f64]) -> ChiSquare {
    assert_eq!(observed.len(), expected_proportions.len());
    assert!(observed.len() >= 2, "needs at least two categories");
    let total: u64 = observed.iter().sum();
    let weight_sum: f64 = expected_proportions.iter().sum();
    let statistic = observed
        .iter()
        .zip(expected_proportions)
        .map(|(&o, &w)| {
            let e = total as f64 * w / weight_sum;
            assert!(e > 0.0 || total == 0, "expected count must be positive");
            if e == 0.0 {
                0.0
            } else {
                (o as f64 - e).powi(2) / e
            }
        })
        .sum::<f64>();
    let df = observed.len() - 1;
    ChiSquare {
        statistic,
        df,
        p_value: chi_square_sf(statistic, df),
    }
}

/// `P(X >= x)` for `X ~ chi-square(df)`.
pub fn chi_square_sf(x: f64, df: usize) -> f64 {
    assert!(df > 0);
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(df as f64 / 2.0, x / 2.0)
}

/// Regularized upper incomplete gamma `Q(a, x) = 1 - P(a, x)`.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x < a + 1.0 {
        1.0 - gamma_p_series(a, x)
    } else {
        gamma_q_continued_fraction(a, x)
    }
}

fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut sum = 1.0 / a;
    let mut term = sum;
    for _ in 0..10_000 {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() < sum.abs() * 1e-16 {
            break;
        }
    }
    sum * (-x + a * x.ln() - ln_gamma(a)).exp()
}

fn gamma_q_continued_fraction(a: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..10_000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// Lanczos approximation (g = 7, n = 9), good to ~1e-15 for positive arguments.
fn ln_gamma(x: f64) -> f64 {
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_known_values() {
        assert!(ln_gamma(1.0).abs() < 1e-14);
        assert!(close(ln_gamma(5.0), 24.0_f64.ln(), 1e-13));
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-13
        ));
        assert!(close(
            ln_gamma(10.5),
            1_133_278.388_948_785_4_f64.ln(),
            1e-12
        ));
    }

    #[test]
    fn survival_matches_tabulated_critical_values() {
        // (x, df, upper-tail probability) from standard chi-square tables.
        let table = [
            (3.841_458_820_694_124, 1, 0.05),
            (6.634_896_601_021_214, 1, 0.01),
            (10.827_566_170_662_733, 1, 0.001),
            (5.991_464_547_107_979, 2, 0.05),
            (7.814_727_903_251_178, 3, 0.05),
            (9.487_729_036_781_154, 4, 0.05),
            (18.307_038_053_275_146, 10, 0.05),
            (0.454_936_423_119_572_7, 1, 0.5),
            (124.342_113_404_070_5, 100, 0.05),
        ];
        for (x, df, p) in table {
            let got = chi_square_sf(x, df);
            assert!(close(got, p, 1e-7), "sf({x}, {df}) = {got}, want {p}");
        }
        // df = 2 has the closed form exp(-x / 2).
        for x in [0.1, 1.0, 7.3, 40.0] {
            assert!(close(chi_square_sf(x, 2), (-x / 2.0_f64).exp(), 1e-12));
        }
        assert_eq!(chi_square_sf(0.0, 3), 1.0);
    }

    #[test]
    fn goodness_of_fit_detects_a_sample_ratio_mismatch() {
        let fair = chi_square_gof(&[5_030, 4_970], &[0.5, 0.5]);
        assert!(close(fair.statistic, 0.36, 1e-12));
        assert_eq!(fair.df, 1);
        assert!(fair.p_value > 0.5);
        // 5,200 vs 4,800 on a 50/50 split: chi2 = 16, p = 6.3e-5.
        let skewed = chi_square_gof(&[5_200, 4_800], &[0.5, 0.5]);
        assert!(close(skewed.statistic, 16.0, 1e-12));
        assert!(close(skewed.p_value, 6.334_248_366_623_996e-5, 1e-6));
        // Unequal weights are honoured.
        let weighted = chi_square_gof(&[2_000, 8_000], &[0.2, 0.8]);
        assert!(weighted.statistic.abs() < 1e-12 && weighted.p_value == 1.0);
    }
}
