//! Hand-written SVG plots: a latency chart per endpoint (percentile spectrum and latency
//! over time, one line per variant) and a forest plot of the verdict's ratios.
//!
//! Hand-written rather than `plotters`: three chart types with lines and text are ~300
//! lines, need no font loading or image crates, and keep the harness's build small on a
//! shared 2-core machine. Text is left to the viewer's sans-serif font.

use std::fmt::Write;

use crate::stats::quantile_sorted;
use crate::verdict::{Comparison, Decision};

const COLORS: [&str; 6] = [
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
];
const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 380.0;

/// One variant's latencies for a chart: sorted values (ms) and a time series.
pub struct Series<'a> {
    pub variant: &'a str,
    pub sorted_ms: &'a [f64],
    /// `(second, p50_ms, p99_ms)` per second of the run with data.
    pub per_second: &'a [(f64, f64, f64)],
}

struct Svg {
    out: String,
}

impl Svg {
    fn new(width: f64, height: f64, title: &str) -> Svg {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="16" text-anchor="middle">{}</text>
"#,
            width / 2.0,
            escape(title)
        );
        Svg { out }
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, style: &str) {
        let _ = writeln!(
            self.out,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {style}/>"#
        );
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, text: &str) {
        let _ = writeln!(
            self.out,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}">{}</text>"#,
            escape(text)
        );
    }

    fn polyline(&mut self, points: &[(f64, f64)], color: &str, dashed: bool) {
        if points.is_empty() {
            return;
        }
        let mut pts = String::new();
        for (x, y) in points {
            let _ = write!(pts, "{x:.1},{y:.1} ");
        }
        let dash = if dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            self.out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>"#,
            pts.trim_end()
        );
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round tick steps (1, 2, 5 x 10^k) covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A plotting area inside the SVG with linear axes.
struct Panel {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

impl Panel {
    fn x(&self, v: f64) -> f64 {
        self.x0 + (v - self.x_range.0) / (self.x_range.1 - self.x_range.0) * self.w
    }

    fn y(&self, v: f64) -> f64 {
        self.y0 + self.h - (v - self.y_range.0) / (self.y_range.1 - self.y_range.0) * self.h
    }

    /// Frame, grid and y ticks; x ticks are given as `(value, label)`.
    fn axes(&self, svg: &mut Svg, x_ticks: &[(f64, String)], x_label: &str, y_label: &str) {
        let grid = r##"stroke="#e5e5e5""##;
        let axis = r##"stroke="#333""##;
        for t in ticks(self.y_range.0, self.y_range.1, 5) {
            let y = self.y(t);
            svg.line(self.x0, y, self.x0 + self.w, y, grid);
            svg.text(self.x0 - 6.0, y + 4.0, "end", &fmt_tick(t));
        }
        for (v, label) in x_ticks {
            let x = self.x(*v);
            svg.line(x, self.y0, x, self.y0 + self.h, grid);
            svg.text(x, self.y0 + self.h + 16.0, "middle", label);
        }
        svg.line(
            self.x0,
            self.y0 + self.h,
            self.x0 + self.w,
            self.y0 + self.h,
            axis,
        );
        svg.line(self.x0, self.y0, self.x0, self.y0 + self.h, axis);
        svg.text(
            self.x0 + self.w / 2.0,
            self.y0 + self.h + 34.0,
            "middle",
            x_label,
        );
        let _ = writeln!(
            svg.out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
            self.x0 - 46.0,
            self.y0 + self.h / 2.0,
            self.x0 - 46.0,
            self.y0 + self.h / 2.0,
            escape(y_label)
        );
    }
}

/// Percentile position on a "nines" axis: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9.
fn nines(p: f64) -> f64 {
    -(1.0 - p).max(1e-3).log10()
}

pub fn latency_chart(endpoint: &str, series: &[Series<'_>]) -> String {
    let mut svg = Svg::new(
        WIDTH,
        HEIGHT,
        &format!("{endpoint}: latency by variant (ms, from when each request was due)"),
    );
    let y_max = series
        .iter()
        .map(|s| quantile_sorted(s.sorted_ms, 0.999))
        .chain(series.iter().flat_map(|s| s.per_second.iter().map(|p| p.2)))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(0.001)
        * 1.08;

    // Left: the percentile spectrum.
    let left = Panel {
        x0: 70.0,
        y0: 50.0,
        w: 380.0,
        h: 260.0,
        x_range: (0.0, 3.0),
        y_range: (0.0, y_max),
    };
    let x_ticks: Vec<(f64, String)> = [
        (0.0, "p0"),
        (0.5, "p50"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
    ]
    .iter()
    .map(|(p, l)| (nines(*p), l.to_string()))
    .collect();
    left.axes(&mut svg, &x_ticks, "percentile", "latency (ms)");
    for (i, s) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = (0..=300)
            .map(|k| {
                let x = k as f64 / 100.0;
                let p = 1.0 - 10f64.powf(-x);
                (
                    left.x(x),
                    left.y(quantile_sorted(s.sorted_ms, p).min(y_max)),
                )
            })
            .filter(|(_, y)| y.is_finite())
            .collect();
        svg.polyline(&points, COLORS[i % COLORS.len()], false);
    }

    // Right: p50 (solid) and p99 (dashed) per second.
    let t_max = series
        .iter()
        .flat_map(|s| s.per_second.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let right = Panel {
        x0: 580.0,
        y0: 50.0,
        w: 380.0,
        h: 260.0,
        x_range: (0.0, t_max),
        y_range: (0.0, y_max),
    };
    let t_ticks: Vec<(f64, String)> = ticks(0.0, t_max, 6)
        .into_iter()
        .map(|t| (t, fmt_tick(t)))
        .collect();
    right.axes(
        &mut svg,
        &t_ticks,
        "seconds into the run (solid p50, dashed p99)",
        "latency (ms)",
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let p50: Vec<(f64, f64)> = s
            .per_second
            .iter()
            .map(|p| (right.x(p.0), right.y(p.1.min(y_max))))
            .collect();
        let p99: Vec<(f64, f64)> = s
            .per_second
            .iter()
            .map(|p| (right.x(p.0), right.y(p.2.min(y_max))))
            .collect();
        svg.polyline(&p50, color, false);
        svg.polyline(&p99, color, true);
    }

    legend(&mut svg, series.iter().map(|s| s.variant), HEIGHT - 18.0);
    svg.finish()
}

fn legend<'a>(svg: &mut Svg, names: impl Iterator<Item = &'a str>, y: f64) {
    let mut x = 70.0;
    for (i, name) in names.enumerate() {
        let color = COLORS[i % COLORS.len()];
        svg.line(
            x,
            y - 4.0,
            x + 24.0,
            y - 4.0,
            &format!(r#"stroke="{color}" stroke-width="3""#),
        );
        svg.text(x + 30.0, y, "start", name);
        x += 40.0 + 8.0 * name.len() as f64;
    }
}

/// Font size of the SVGs' text (px), and a generous average glyph width for it: sizes text
/// without a font to measure with.
const FONT_PX: f64 = 12.0;
const GLYPH_PX: f64 = 0.62 * FONT_PX;

/// Width, in px, that `text` at least needs at the charts' font size.
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * GLYPH_PX
}

/// Least distance (px) between the centres of two tick labels on the ratio axis.
const MIN_TICK_GAP_PX: f64 = 45.0;
const ROW_PX: f64 = 28.0;

/// The forest plot's layout: the label column sized to its longest row label, then the
/// log-ratio panel (at least `MIN_PANEL_W` wide; the chart grows wider rather than clip).
fn verdict_panel(labels: &[String], lo: f64, hi: f64) -> (f64, Panel) {
    const MIN_PANEL_W: f64 = 560.0;
    const RIGHT: f64 = 60.0;
    let label_w = labels.iter().map(|l| text_width(l)).fold(0.0, f64::max);
    let x0 = (label_w + 30.0).max(120.0);
    let w = (WIDTH - x0 - RIGHT).max(MIN_PANEL_W);
    let rows = labels.len().max(1) as f64;
    let pad = (hi - lo) * 0.05;
    let panel = Panel {
        x0,
        y0: 40.0,
        w,
        h: rows * ROW_PX,
        x_range: (lo - pad, hi + pad),
        y_range: (0.0, rows),
    };
    (x0 + w + RIGHT, panel)
}

/// Forest plot: each comparison's ratio with its confidence bounds against `1 + margin`.
pub fn verdict_chart(title: &str, comparisons: &[Comparison]) -> String {
    let finite = |v: f64| v.is_finite().then_some(v);
    let values: Vec<f64> = comparisons
        .iter()
        .flat_map(|c| {
            [
                finite(c.lower),
                finite(c.upper),
                finite(c.ratio),
                Some(c.threshold),
            ]
        })
        .flatten()
        .collect();
    // A log axis: a ratio of 10 and one of 1.05 both stay readable.
    let lo = values
        .iter()
        .copied()
        .fold(1.0_f64, f64::min)
        .clamp(1e-3, 0.95)
        .ln();
    let hi = values
        .iter()
        .copied()
        .fold(1.0_f64, f64::max)
        .max(1.05)
        .ln();
    let labels: Vec<String> = comparisons
        .iter()
        .map(|c| {
            let decision = match c.decision {
                Decision::Regression => "regression",
                Decision::Pass => "pass",
                Decision::Inconclusive => "inconclusive",
            };
            format!("{} {} {}: {decision}", c.variant, c.endpoint, c.measure)
        })
        .collect();
    let (width, panel) = verdict_panel(&labels, lo, hi);
    let mut svg = Svg::new(width, 90.0 + panel.h, title);
    for t in ratio_ticks(&panel) {
        let x = panel.x(t.ln());
        svg.line(x, panel.y0, x, panel.y0 + panel.h, r##"stroke="#e5e5e5""##);
        svg.text(x, panel.y0 + panel.h + 16.0, "middle", &format!("{t}"));
    }
    svg.text(
        panel.x0 + panel.w / 2.0,
        panel.y0 + panel.h + 34.0,
        "middle",
        "ratio variant / control, log scale (bar: Holm-adjusted bounds; red tick: 1 + margin)",
    );
    let one = panel.x(0.0);
    svg.line(
        one,
        panel.y0,
        one,
        panel.y0 + panel.h,
        r##"stroke="#333" stroke-dasharray="2,2""##,
    );
    for (i, (c, label)) in comparisons.iter().zip(&labels).enumerate() {
        let y = panel.y0 + (i as f64 + 0.5) * ROW_PX;
        let color = match c.decision {
            Decision::Regression => "#c44e52",
            Decision::Pass => "#55a868",
            Decision::Inconclusive => "#999999",
        };
        svg.text(panel.x0 - 10.0, y + 4.0, "end", label);
        let t = panel.x(c.threshold.ln());
        svg.line(
            t,
            y - 10.0,
            t,
            y + 10.0,
            r##"stroke="#c44e52" stroke-width="2""##,
        );
        if let (Some(l), Some(u)) = (finite(c.lower), finite(c.upper)) {
            let (l, u) = (l.max(1e-3).ln(), u.max(1e-3).ln());
            svg.line(
                panel.x(l),
                y,
                panel.x(u),
                y,
                &format!(r#"stroke="{color}" stroke-width="4""#),
            );
        }
        if let Some(r) = finite(c.ratio) {
            let _ = writeln!(
                svg.out,
                r##"<circle cx="{:.1}" cy="{y:.1}" r="5" fill="{color}" stroke="#333"/>"##,
                panel.x(r.max(1e-3).ln())
            );
        }
    }
    svg.finish()
}

/// Ratio ticks for the log axis of `panel` (whose x is the natural log of the ratio):
/// candidates are taken roundest first (1, powers of ten, 2, 5 and 3 times them, then the
/// steps near 1 where margins live), each kept only if its label centre is at least
/// `MIN_TICK_GAP_PX` from every label already kept, so 1.0 is always there.
fn ratio_ticks(panel: &Panel) -> Vec<f64> {
    let (lo, hi) = (panel.x_range.0.exp(), panel.x_range.1.exp());
    // 1, then m * 10^k for each m (the axis is clamped to 1e-3 ..= 1e3), then the steps near 1.
    const TIMES_TEN: [f64; 4] = [1.0, 2.0, 5.0, 3.0];
    const NEAR_ONE: [f64; 7] = [1.5, 1.2, 0.8, 1.1, 0.9, 1.05, 0.95];
    let mut candidates = vec![1.0];
    for m in TIMES_TEN {
        for k in -3..=3 {
            let t = round_tick(m * 10f64.powi(k));
            if !candidates.contains(&t) {
                candidates.push(t);
            }
        }
    }
    candidates.extend(NEAR_ONE);
    let mut kept: Vec<f64> = Vec::new();
    for t in candidates {
        let x = panel.x(t.ln());
        let inside = t >= lo && t <= hi;
        if inside
            && kept
                .iter()
                .all(|k| (panel.x(k.ln()) - x).abs() >= MIN_TICK_GAP_PX)
        {
            kept.push(t);
        }
    }
    kept.sort_by(f64::total_cmp);
    kept
}

/// `v` without the float noise of `m * 10^k` (0.30000000000000004 -> 0.3).
fn round_tick(v: f64) -> f64 {
    format!("{v:.6}").parse().unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 0.37, 4);
        assert_eq!(t.first(), Some(&0.0));
        assert!((t[1] - 0.1).abs() < 1e-12);
        assert_eq!(ticks(1.0, 1.0, 4), vec![1.0]);
    }

    /// The panel `verdict_chart` draws for ratios spanning `[lo, hi]`, with `labels`.
    fn ratio_panel(lo: f64, hi: f64, labels: &[&str]) -> (f64, Panel) {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        verdict_panel(&labels, lo.ln(), hi.ln())
    }

    #[test]
    fn ratio_tick_labels_never_crowd() {
        let labels = ["treatment target p50: regression"];
        for (lo, hi) in [
            (0.9, 12.0),
            (0.95, 40.0),
            (0.5, 1.2),
            (0.95, 1.1),
            (0.001, 1000.0),
            (0.2, 1.05),
            (0.95, 1.05),
        ] {
            let (_, panel) = ratio_panel(lo, hi, &labels);
            let ticks = ratio_ticks(&panel);
            assert!(ticks.contains(&1.0), "({lo}, {hi}): {ticks:?}");
            assert!(ticks.len() >= 3, "({lo}, {hi}): {ticks:?}");
            for pair in ticks.windows(2) {
                let gap = panel.x(pair[1].ln()) - panel.x(pair[0].ln());
                assert!(
                    gap >= MIN_TICK_GAP_PX,
                    "({lo}, {hi}): {} and {} are {gap:.1} px apart in {ticks:?}",
                    pair[0],
                    pair[1]
                );
            }
            for t in &ticks {
                let x = panel.x(t.ln());
                assert!(
                    x >= panel.x0 && x <= panel.x0 + panel.w,
                    "{t} off the panel"
                );
                assert_eq!(format!("{t}"), format!("{}", round_tick(*t)));
            }
        }
        // Near 1 the margins' own steps are there; on a wide axis the round ones win.
        let (_, narrow) = ratio_panel(0.95, 1.1, &labels);
        assert_eq!(ratio_ticks(&narrow), vec![0.95, 1.0, 1.05, 1.1]);
        let (_, wide) = ratio_panel(0.9, 12.0, &labels);
        let wide = ratio_ticks(&wide);
        assert!(wide.contains(&2.0) && wide.contains(&10.0), "{wide:?}");
    }

    #[test]
    fn long_row_labels_stay_on_the_chart() {
        let long = "a-very-long-variant-name-indeed events cpu_seconds_per_request: inconclusive";
        for labels in [
            &["treatment target p50: pass"][..],
            &[long, "b target cpu: pass"],
        ] {
            let (width, panel) = ratio_panel(0.9, 1.2, labels);
            for l in labels {
                // Right-aligned 10 px left of the panel: its start must be inside the SVG.
                assert!(
                    panel.x0 - 10.0 - text_width(l) >= 0.0,
                    "{l} runs off the left"
                );
            }
            assert!(
                panel.w >= 560.0 && width >= panel.x0 + panel.w,
                "{width} {}",
                panel.w
            );
        }
        let (width, _) = ratio_panel(0.9, 1.2, &["treatment target p50: pass"]);
        assert_eq!(width, WIDTH, "short labels keep the usual width");
    }

    #[test]
    fn nines_axis() {
        assert!(nines(0.0).abs() < 1e-12);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert!((nines(0.9999) - 3.0).abs() < 1e-9, "clamped at p99.9");
    }

    #[test]
    fn charts_are_well_formed_svg() {
        let sorted: Vec<f64> = (1..=1000).map(|i| i as f64 / 100.0).collect();
        let per_second = vec![(0.5, 1.0, 9.0), (1.5, 1.1, 9.5)];
        let svg = latency_chart(
            "target <&>",
            &[
                Series {
                    variant: "control",
                    sorted_ms: &sorted,
                    per_second: &per_second,
                },
                Series {
                    variant: "treatment",
                    sorted_ms: &sorted,
                    per_second: &per_second,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("target &lt;&amp;&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2 + 4);
        let empty = latency_chart("events", &[]);
        assert!(empty.ends_with("</svg>\n"));
    }
}
