//! Writes a run's outputs beside goose's own report ([`GOOSE_REPORT`]): `summary.json` (the
//! `Summary` as is), `summary.md` (the same for people), `latency-<endpoint>.svg`,
//! `verdict.svg`, and `report.html` (`summary.md` with the charts inline, readable offline).
//!
//! Reads the summary and the raw records; decides nothing.

mod html;
mod svg;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::profile::{Endpoint, Profile};
use crate::run::RunData;
use crate::stats::quantile;
use crate::verdict::{CPU_UNIT, Comparison, Decision, Summary};

/// Goose's own report in the output directory: Markdown, its per-request-name tables
/// (`target:treatment`, ...) without goose's HTML report's charts, which load a script
/// from the network.
pub const GOOSE_REPORT: &str = "goose-report.md";

pub fn write(
    out_dir: &Path,
    profile: &Profile,
    summary: &Summary,
    data: &RunData,
) -> anyhow::Result<()> {
    let put = |name: &str, contents: &str| {
        let path = out_dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))
    };
    put(
        "summary.json",
        &(serde_json::to_string_pretty(summary)? + "\n"),
    )?;
    let mut charts: Vec<(String, String)> = Endpoint::ALL
        .into_iter()
        .map(|endpoint| {
            (
                format!("latency-{}.svg", endpoint.as_str()),
                latency_svg(profile, data, endpoint),
            )
        })
        .collect();
    charts.push((
        "verdict.svg".to_string(),
        svg::verdict_chart(
            &format!(
                "{}: {}",
                profile.experiment,
                summary.verdict.outcome.as_str()
            ),
            &summary.comparisons,
        ),
    ));
    for (name, contents) in &charts {
        put(name, contents)?;
    }
    // Goose's report used to be `report.html`; that name is now the harness's own page.
    let md = markdown(summary).replace(
        "[report.html](report.html)",
        &format!("[{GOOSE_REPORT}]({GOOSE_REPORT})"),
    );
    put("summary.md", &md)?;
    put("report.html", &html::page(&md, &charts))?;
    Ok(())
}

/// `(second, p50_ms, p99_ms)` for each second of the run with data.
type PerSecond = Vec<(f64, f64, f64)>;

fn latency_svg(profile: &Profile, data: &RunData, endpoint: Endpoint) -> String {
    let per_variant: Vec<(Vec<f64>, PerSecond)> = (0..profile.variants.len())
        .map(|v| {
            let records: Vec<_> = data
                .records
                .iter()
                .filter(|r| r.is_measured(endpoint) && r.variant as usize == v)
                .collect();
            let mut sorted: Vec<f64> = records
                .iter()
                .map(|r| r.intended_latency_us() as f64 / 1e3)
                .collect();
            sorted.sort_by(f64::total_cmp);
            // Per-second p50 and p99 over the whole run (records are in time order).
            let mut per_second = Vec::new();
            let mut bucket: Vec<f64> = Vec::new();
            let mut second = None;
            for r in &records {
                let s = r.at_us / 1_000_000;
                if second.is_some_and(|cur| cur != s) {
                    flush_second(&mut per_second, second, &mut bucket);
                }
                second = Some(s);
                bucket.push(r.intended_latency_us() as f64 / 1e3);
            }
            flush_second(&mut per_second, second, &mut bucket);
            (sorted, per_second)
        })
        .collect();
    let series: Vec<svg::Series<'_>> = per_variant
        .iter()
        .zip(&profile.variants)
        .map(|((sorted, per_second), name)| svg::Series {
            variant: name,
            sorted_ms: sorted,
            per_second,
        })
        .collect();
    svg::latency_chart(endpoint.as_str(), &series)
}

fn flush_second(out: &mut PerSecond, second: Option<u64>, bucket: &mut Vec<f64>) {
    if let Some(s) = second
        && !bucket.is_empty()
    {
        let p50 = quantile(bucket, 0.5);
        let p99 = quantile(bucket, 0.99);
        out.push((s as f64 + 0.5, p50, p99));
    }
    bucket.clear();
}

fn ms(v: f64) -> String {
    num(v, 3)
}

fn ratio(v: f64) -> String {
    num(v, 3)
}

/// `v` with its sign, for differences.
fn signed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{}{v:.decimals$}", if v >= 0.0 { "+" } else { "" })
    } else {
        "-".to_string()
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "-".to_string()
    }
}

/// The comparison table shared by a run's summary and `harness compare`: absolute values
/// beside every ratio, with the difference's interval at the same levels.
pub fn comparison_table(md: &mut String, comparisons: &[Comparison], baseline: &str, value: &str) {
    let _ = writeln!(
        md,
        "| endpoint | variant | measure | unit | {baseline} | {value} | difference [lower, upper] | ratio | lower | upper | 1 + margin | decision |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for c in comparisons {
        let decision = match c.decision {
            Decision::Regression => "**regression**".to_string(),
            Decision::Pass => "pass".to_string(),
            Decision::Inconclusive => match &c.note {
                Some(note) => format!("inconclusive ({note})"),
                None => "inconclusive, run longer".to_string(),
            },
        };
        let (decimals, unit) = if c.unit == CPU_UNIT {
            (4, "CPU s / 1k req")
        } else {
            (3, "ms")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {unit} | {} | {} | {} [{}, {}] | {} | {} | {} | {:.2} | {decision} |",
            c.endpoint,
            c.variant,
            c.measure,
            num(c.baseline, decimals),
            num(c.value, decimals),
            signed(c.difference, decimals),
            signed(c.difference_lower, decimals),
            signed(c.difference_upper, decimals),
            ratio(c.ratio),
            ratio(c.lower),
            ratio(c.upper),
            c.threshold,
        );
    }
    let _ = writeln!(
        md,
        "\nBounds are one-sided percentile-bootstrap bounds at the Holm-adjusted level of each comparison (lower: regression side, upper: pass side), from a circular block bootstrap over time; the difference's bounds are taken at the same levels. CPU per request is CPU seconds over target requests between scrapes of each variant's deployment.\n"
    );
}

pub fn markdown(s: &Summary) -> String {
    let mut md = String::new();
    let outcome = s.verdict.outcome.as_str().to_uppercase();
    let _ = writeln!(md, "# Harness verdict: {outcome}\n");
    let _ = writeln!(
        md,
        "Profile `{}`, run `{}` started {} ({:.1} s), harness {}, gateway config `{}`; experiment `{}` (events as `{}`), control `{}`; {:.1} s judged; family-wise alpha {} (Holm); bootstrap seed {}.\n",
        s.profile,
        s.run_id,
        s.started_at,
        s.duration_seconds,
        s.harness_version,
        s.gateway_config_version.as_deref().unwrap_or("unknown"),
        s.experiment,
        s.events_key,
        s.control,
        s.window_seconds,
        s.alpha,
        s.seed
    );
    for reason in &s.verdict.reasons {
        let _ = writeln!(md, "- {reason}");
    }
    let _ = writeln!(md, "\n![verdict](verdict.svg)\n");

    let _ = writeln!(md, "## Comparisons against `{}`\n", s.control);
    comparison_table(&mut md, &s.comparisons, "control", "variant");

    if let Some(resources) = &s.resources {
        let _ = writeln!(md, "## Resource use per variant\n");
        let _ = writeln!(
            md,
            "| variant | metrics | CPU s per 1,000 requests | CPU cores | peak memory MiB | spans | requests | failed scrapes |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
        for r in resources {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.variant,
                r.metrics_url,
                num(r.cpu_s_per_1k_requests, 4),
                num(r.cpu_cores, 3),
                r.peak_memory_mib.map_or("-".to_string(), |m| num(m, 1)),
                r.spans,
                r.requests,
                r.scrape_failures,
            );
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## Latency per variant\n");
    let _ = writeln!(
        md,
        "| endpoint | variant | requests | req/s | errors | error rate | mean ms | p50 ms | p90 ms | p95 ms | p99 ms | p99.9 ms | late |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for e in &s.endpoints {
        for v in &e.variants {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {} | {:.2} % | {} | {} | {} | {} | {} | {} | {:.1} % |",
                e.endpoint,
                v.variant,
                v.requests,
                v.throughput_rps,
                v.errors,
                v.error_rate * 100.0,
                ms(v.mean_ms),
                ms(v.p50_ms),
                ms(v.p90_ms),
                ms(v.p95_ms),
                ms(v.p99_ms),
                ms(v.p999_ms),
                v.late_share * 100.0,
            );
        }
    }
    let _ = writeln!(
        md,
        "\nLatency is time to response headers, measured from when the request was due on the user's schedule. `late`: share of requests sent behind schedule.\n"
    );
    for e in &s.endpoints {
        let _ = writeln!(md, "![{0}](latency-{0}.svg)", e.endpoint);
    }

    let sr = &s.sample_ratio;
    let _ = writeln!(md, "\n## Sample ratio\n");
    let _ = writeln!(md, "| variant | units | share | expected |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    let total: u64 = sr.units.iter().sum();
    for ((v, n), e) in sr.variants.iter().zip(&sr.units).zip(&sr.expected_share) {
        let share = if total == 0 {
            0.0
        } else {
            *n as f64 / total as f64
        };
        let _ = writeln!(md, "| {v} | {n} | {share:.4} | {e:.4} |");
    }
    match &sr.chi_square {
        Some(c) => {
            let _ = writeln!(
                md,
                "\nChi-square {:.3} on {} df, p = {:.4}: {}. Units not in the experiment: {}.",
                c.statistic,
                c.df,
                c.p_value,
                if sr.mismatch {
                    "**mismatch**"
                } else {
                    "consistent with the weights"
                },
                sr.excluded_units
            );
        }
        None => {
            let _ = writeln!(md, "\nToo few units for the chi-square test.");
        }
    }

    let l = &s.load;
    let _ = writeln!(md, "\n## Load generator\n");
    let _ = writeln!(
        md,
        "- offered {:.1} req/s to the target, achieved {:.1} req/s in the judged window",
        l.offered_rps, l.achieved_rps
    );
    let ratios: Vec<String> = l
        .achieved_ratio
        .iter()
        .map(|r| format!("{:.1} %", r * 100.0))
        .collect();
    let _ = writeln!(
        md,
        "- due requests sent, per variant: {}",
        ratios.join(", ")
    );
    let _ = writeln!(
        md,
        "- event-loop lag p99 {:.2} ms, max {:.2} ms; harness CPU {}",
        l.client_lag_p99_ms,
        l.client_lag_max_ms,
        l.client_cpu_cores
            .map_or("unknown".to_string(), |c| format!(
                "{:.0} % of one core",
                c * 100.0
            ))
    );
    let _ = writeln!(
        md,
        "- saturated: {}",
        if l.saturated { "**yes**" } else { "no" }
    );
    let ev = &s.events;
    let _ = writeln!(
        md,
        "\n## Events posted to the gateway\n\nposted {}, accepted {}, duplicates {}, rejected {}, dropped {}.",
        ev.posted, ev.accepted, ev.duplicates, ev.rejected, ev.dropped
    );
    let _ = writeln!(md, "\nGoose's own report: [report.html](report.html).");
    md
}
