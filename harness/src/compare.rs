//! `harness compare OLD_RUN NEW_RUN`: did this build get slower (or costlier) than the last
//! one? The same statistics as a run's verdict, between two runs' recorded samples: for each
//! judged endpoint, each variant both runs have and each percentile, the ratio
//! `Q_new / Q_old`, and the CPU per request of each variant's deployment when both runs
//! measured it. Each run is resampled on its own (circular blocks over its own time: the two
//! runs share no clock), all comparisons form one Holm family, and the exit codes are a
//! run's: 0 pass, 1 regression, 2 inconclusive or invalid.
//!
//! The judgement uses the NEW run's settings (margins, alpha, endpoints, replicates, block
//! length) from its `summary.json`. A run whose own verdict was `invalid` cannot serve on
//! either side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::profile::{Endpoint, Margin};
use crate::run::Record;
use crate::samples::{self, Samples};
use crate::stats::{Obs, RateObs, Stratum};
use crate::verdict::{
    self, CPU_MEASURE, Comparison, Outcome, Pending, Summary, Verdict, block_len, cpu_spans,
};

/// One run on disk: its summary and its samples.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub dir: PathBuf,
    pub summary: Summary,
    pub samples: Samples,
}

impl StoredRun {
    pub fn load(dir: &Path) -> anyhow::Result<StoredRun> {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is it a harness run's output?)",
                path.display()
            )
        })?;
        let summary: Summary = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a summary this harness can read", path.display())
        })?;
        let samples = samples::read(dir, &summary.variants)?;
        Ok(StoredRun {
            dir: dir.to_path_buf(),
            summary,
            samples,
        })
    }

    fn in_window(&self, r: &Record) -> bool {
        r.at_us >= self.summary.window_us.0 && r.at_us < self.summary.window_us.1
    }

    fn span_us(&self) -> u64 {
        self.summary
            .window_us
            .1
            .saturating_sub(self.summary.window_us.0)
    }
}

/// `compare.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareSummary {
    pub old_run: RunRef,
    pub new_run: RunRef,
    pub seed: u64,
    pub alpha: f64,
    pub verdict: Verdict,
    /// `baseline` is the earlier run, `value` the new one, per variant.
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRef {
    pub dir: String,
    pub run_id: String,
    pub profile: String,
    pub started_at: String,
    pub harness_version: String,
    pub gateway_config_version: Option<String>,
    pub outcome: Outcome,
}

impl RunRef {
    fn of(run: &StoredRun) -> RunRef {
        let s = &run.summary;
        RunRef {
            dir: run.dir.display().to_string(),
            run_id: s.run_id.clone(),
            profile: s.profile.clone(),
            started_at: s.started_at.clone(),
            harness_version: s.harness_version.clone(),
            gateway_config_version: s.gateway_config_version.clone(),
            outcome: s.verdict.outcome,
        }
    }
}

fn margins_of(summary: &Summary) -> Vec<Margin> {
    summary
        .settings
        .margins
        .iter()
        .filter_map(|(name, &margin)| {
            let quantile = match name.as_str() {
                "p50" => 0.50,
                "p95" => 0.95,
                "p99" => 0.99,
                _ => return None,
            };
            Some(Margin { quantile, margin })
        })
        .collect()
}

/// Judges `new` against `old`.
pub fn compare(old: &StoredRun, new: &StoredRun, seed: u64) -> CompareSummary {
    let settings = &new.summary.settings;
    let alpha = new.summary.alpha;
    let block = std::time::Duration::from_millis(settings.block_ms);
    let mut reasons = Vec::new();
    let mut invalid = false;
    for (label, run) in [("earlier", old), ("new", new)] {
        if run.summary.verdict.outcome == Outcome::Invalid {
            invalid = true;
            reasons.push(format!(
                "the {label} run `{}` was invalid ({}): it cannot be compared",
                run.summary.run_id,
                run.summary
                    .verdict
                    .reasons
                    .first()
                    .map_or("", String::as_str)
            ));
        }
    }
    let common: Vec<&String> = new
        .summary
        .variants
        .iter()
        .filter(|v| old.summary.variants.contains(v))
        .collect();
    if common.is_empty() {
        invalid = true;
        reasons.push(format!(
            "the runs share no variant (earlier: {:?}, new: {:?})",
            old.summary.variants, new.summary.variants
        ));
    }
    let mut margins = margins_of(&new.summary);
    margins.sort_by(|a, b| a.quantile.total_cmp(&b.quantile));

    let mut pending: Vec<Pending> = Vec::new();
    let mut out: Vec<Comparison> = Vec::new();
    let mut stream = 0u64;
    for endpoint_name in &settings.endpoints {
        let Some(endpoint) = Endpoint::ALL
            .into_iter()
            .find(|e| e.as_str() == endpoint_name)
        else {
            continue;
        };
        for variant in &common {
            // Group 0: the variant in the earlier run; group 1: in the new one.
            let obs_of = |run: &StoredRun, group: usize| -> Vec<Obs> {
                let v = run.summary.variants.iter().position(|x| x == *variant);
                run.samples
                    .records
                    .iter()
                    .filter(|r| {
                        r.is_measured(endpoint) && Some(r.variant as usize) == v && run.in_window(r)
                    })
                    .map(|r| Obs {
                        group,
                        value: r.intended_latency_us() as f64,
                    })
                    .collect()
            };
            let (a, b) = (obs_of(old, 0), obs_of(new, 1));
            let strata = [
                Stratum {
                    obs: &a,
                    block_len: block_len(a.len(), block, old.span_us()),
                },
                Stratum {
                    obs: &b,
                    block_len: block_len(b.len(), block, new.span_us()),
                },
            ];
            let names = [format!("{variant} (earlier)"), (*variant).clone()];
            verdict::latency_pending(
                endpoint.as_str(),
                &names,
                &margins,
                &strata,
                settings.replicates,
                seed.wrapping_add(stream),
                &mut pending,
                &mut out,
            );
            stream += 1;
        }
    }
    let measured = |run: &StoredRun| !run.samples.scrapes.is_empty();
    if let (Some(margin), true, true) = (settings.cpu_margin, measured(old), measured(new)) {
        for variant in &common {
            let spans_of = |run: &StoredRun, group: usize| -> Vec<RateObs> {
                let v = run.summary.variants.iter().position(|x| x == *variant);
                cpu_spans(
                    &run.samples.records,
                    &run.samples.scrapes,
                    run.summary.variants.len(),
                    run.summary.window_us,
                )
                .into_iter()
                .filter(|o| Some(o.group) == v)
                .map(|o| RateObs { group, ..o })
                .collect()
            };
            let (a, b) = (spans_of(old, 0), spans_of(new, 1));
            let strata = [
                Stratum {
                    obs: &a,
                    block_len: block_len(a.len(), block, old.span_us()),
                },
                Stratum {
                    obs: &b,
                    block_len: block_len(b.len(), block, new.span_us()),
                },
            ];
            let names = [format!("{variant} (earlier)"), (*variant).clone()];
            verdict::cpu_pending(
                &names,
                margin,
                &strata,
                settings.replicates,
                seed.wrapping_add(stream),
                &mut pending,
                &mut out,
            );
            stream += 1;
        }
    }
    verdict::settle_all(pending, alpha, &mut out);
    let rank = |c: &Comparison| {
        (
            c.measure == CPU_MEASURE,
            c.endpoint.clone(),
            new.summary.variants.iter().position(|v| *v == c.variant),
            c.measure.clone(),
        )
    };
    out.sort_by_key(rank);

    let tally = verdict::tally(&out, "the earlier run");
    reasons.extend(tally.reasons);
    let outcome = if invalid {
        Outcome::Invalid
    } else if !tally.regressions.is_empty() {
        Outcome::Regression
    } else if !tally.inconclusive.is_empty() || out.is_empty() {
        reasons.push(format!(
            "inconclusive, run longer: {}",
            if tally.inconclusive.is_empty() {
                "nothing to compare".to_string()
            } else {
                tally.inconclusive.join("; ")
            }
        ));
        Outcome::Inconclusive
    } else {
        reasons.push(
            "every variant is within its margins of the earlier run on every judged measure"
                .to_string(),
        );
        Outcome::Pass
    };
    CompareSummary {
        old_run: RunRef::of(old),
        new_run: RunRef::of(new),
        seed,
        alpha,
        verdict: Verdict {
            outcome,
            reasons,
            regressions: tally.regressions,
        },
        comparisons: out,
    }
}

pub fn markdown(c: &CompareSummary) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Harness compare: {}\n",
        c.verdict.outcome.as_str().to_uppercase()
    );
    for (label, r) in [("Earlier", &c.old_run), ("New", &c.new_run)] {
        let _ = writeln!(
            md,
            "- {label} run `{}` ({}), profile `{}`, started {}, harness {}, gateway config `{}`: {}",
            r.run_id,
            r.dir,
            r.profile,
            r.started_at,
            r.harness_version,
            r.gateway_config_version.as_deref().unwrap_or("unknown"),
            r.outcome.as_str()
        );
    }
    let _ = writeln!(
        md,
        "\nFamily-wise alpha {} (Holm); bootstrap seed {}.\n",
        c.alpha, c.seed
    );
    for reason in &c.verdict.reasons {
        let _ = writeln!(md, "- {reason}");
    }
    let _ = writeln!(md, "\n## Comparisons against the earlier run\n");
    crate::report::comparison_table(&mut md, &c.comparisons, "earlier", "new");
    md
}

/// Writes `compare.json` and `compare.md` into `out_dir`.
pub fn write(out_dir: &Path, c: &CompareSummary) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let put = |name: &str, contents: String| {
        let path = out_dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))
    };
    put("compare.json", serde_json::to_string_pretty(c)? + "\n")?;
    put("compare.md", markdown(c))
}
