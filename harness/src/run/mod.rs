//! One harness run: pre-flight checks, the goose attack, then verdict and reports.
//!
//! This is the only module that drives goose (`user` builds the scenario, `collect` keeps
//! what the statistics need). It owns the event-loop probe and the CPU reading that tell
//! whether the load generator itself was saturated; the judgement is left to `verdict`.

mod collect;
mod scrape;
mod user;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use goose::config::GooseConfiguration;
use goose::prelude::*;
use rand::Rng;

pub use collect::{Collector, EventCounts, NO_VARIANT, Record, RunData, RunInfo};
pub use scrape::{Scrape, ScrapeError};

use crate::profile::{Method, Profile, Shape, VariantIn};
use crate::report;
use crate::verdict::{self, Summary};

/// How a finished run ended: the summary and the process exit code it maps to.
#[derive(Debug)]
pub struct Finished {
    pub summary: Summary,
    pub exit_code: i32,
}

/// Runs the profile and writes every output into `out_dir`.
pub async fn run(profile: Profile, out_dir: &Path) -> anyhow::Result<Finished> {
    profile.check_resources()?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let run_id = format!("h{:08x}", rand::rng().random::<u32>());
    let config_version = preflight(&profile, &run_id).await?;
    let started_at = chrono::Utc::now();

    let seed = profile.verdict.seed.unwrap_or_else(|| rand::rng().random());
    let staged = matches!(profile.load.shape, Shape::Stages(_));
    let offered_rps = profile.load.rate_per_user * profile.load.shape.mean_users();
    let shared = Arc::new(user::Shared::new(profile.clone(), run_id.clone()));
    eprintln!(
        "harness: run {run_id}: up to {} users paced at {:.1} req/s each ({offered_rps:.0} req/s on average), {} s",
        profile.load.shape.max_users(),
        profile.load.rate_per_user,
        profile.load.shape.total().as_secs(),
    );

    let probe = Probe::spawn(shared.clone(), profile.load.shape.total());
    let scraper = profile
        .resources
        .clone()
        .map(|r| scrape::Scraper::spawn(shared.clone(), r));
    let cpu_before = cpu_seconds();
    let wall_before = Instant::now();
    let attack = build_attack(&profile, shared.clone(), out_dir)?;
    let goose_result = attack.execute().await;
    let cpu = match (cpu_before, cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / wall_before.elapsed().as_secs_f64()),
        _ => None,
    };
    probe.stop().await;
    if let Some(scraper) = scraper {
        scraper.stop().await;
    }
    goose_result.context("goose load test failed")?;

    let mut data = shared.collector.finish(run_id, staged, offered_rps, cpu);
    data.info = RunInfo {
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        duration_seconds: wall_before.elapsed().as_secs_f64(),
        gateway_config_version: config_version,
    };
    let summary = verdict::judge(&profile, &data, seed);
    report::write(out_dir, &profile, &summary, &data)?;
    crate::samples::write(out_dir, &profile, &data)?;
    let exit_code = summary.verdict.outcome.exit_code();
    Ok(Finished { summary, exit_code })
}

fn build_attack(
    profile: &Profile,
    shared: Arc<user::Shared>,
    out_dir: &Path,
) -> anyhow::Result<GooseAttack> {
    let report = out_dir.join(report::GOOSE_REPORT);
    let timeout = format!("{:.3}", profile.target.timeout.as_secs_f64());
    let attack = GooseAttack::initialize_with_config(GooseConfiguration::default())?
        .register_scenario(user::scenario(shared))
        .set_default(GooseDefault::Host, profile.target.urls[0].as_str())?
        .set_default(GooseDefault::ReportFile, report.to_string_lossy().as_ref())?
        .set_default(GooseDefault::Timeout, timeout.as_str())?
        // Latency is measured from each request's due time instead (see `user`).
        .set_default(
            GooseDefault::CoordinatedOmissionMitigation,
            GooseCoordinatedOmissionMitigation::Disabled,
        )?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoPrintMetrics, true)?
        .set_default(GooseDefault::Quiet, 1)?;
    let attack = match &profile.load.shape {
        Shape::Steady { users, ramp, hold } => {
            let attack = attack
                .set_default(GooseDefault::Users, *users)?
                .set_default(GooseDefault::RunTime, hold.as_secs() as usize)?;
            if *users >= 2 && !ramp.is_zero() {
                attack.set_default(GooseDefault::IncreaseTime, ramp.as_secs() as usize)?
            } else {
                let rate = format!("{}", (*users).max(1) * 100);
                attack.set_default(GooseDefault::IncreaseRate, rate.as_str())?
            }
        }
        Shape::Stages(stages) => {
            let mut plan: Vec<String> = stages
                .iter()
                .map(|s| format!("{},{}s", s.users, s.seconds))
                .collect();
            // Goose keeps a plan's last users running until stopped: end at 0 users.
            if stages.last().is_some_and(|s| s.users > 0) {
                plan.push("0,0s".to_string());
            }
            attack.set_default(GooseDefault::TestPlan, plan.join(";").as_str())?
        }
    };
    Ok(*attack)
}

/// How long pre-flight waits for a gateway or target that refuses connections (one that
/// is still starting, as in the README's commands) before giving up.
const PREFLIGHT_PATIENCE: Duration = Duration::from_secs(10);

/// Sends `request` until it gets an answer, retrying refused connections for
/// `PREFLIGHT_PATIENCE`; any answer (even an error status) ends the wait.
async fn patiently(request: reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
    let deadline = Instant::now() + PREFLIGHT_PATIENCE;
    loop {
        let attempt = request
            .try_clone()
            .expect("pre-flight bodies are in memory")
            .send()
            .await;
        match attempt {
            Err(e) if e.is_connect() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Fails early, with a message a person can act on, when the gateway or a variant's
/// deployment is not there, the gateway does not know the experiment, or a deployment's
/// metrics cannot be read: otherwise the run would be a minute of errors followed by an
/// "invalid" verdict. Returns the gateway's `config_version`.
async fn preflight(profile: &Profile, run_id: &str) -> anyhow::Result<Option<String>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = format!("{}/v1/assign", profile.gateway_url);
    let answer: serde_json::Value = patiently(client.post(&url).json(&serde_json::json!({
        "user_id": format!("{run_id}-preflight"),
        "experiments": [profile.experiment],
    })))
    .await
    .with_context(|| format!("gateway not reachable at {url}"))?
    .error_for_status()
    .with_context(|| format!("gateway refused POST {url}"))?
    .json()
    .await
    .with_context(|| format!("gateway answer to POST {url} is not JSON"))?;
    let known = answer["assignments"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["experiment"] == profile.experiment.as_str())
    });
    if !known {
        bail!(
            "the gateway at {} does not know experiment `{}` (answer: {answer})",
            profile.gateway_url,
            profile.experiment
        );
    }
    let config_version = answer["config_version"].as_str().map(str::to_string);
    let target = &profile.target;
    let method = match target.method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
    };
    for (v, variant) in profile.variants.iter().enumerate() {
        let base = &target.urls[v];
        let mut request = client.request(
            method.clone(),
            format!("{base}{}", target.path_for(variant)),
        );
        if target.variant_in == VariantIn::Header {
            request = request.header(target.variant_key.as_str(), variant.as_str());
        }
        if let Some(body) = &target.body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let response = patiently(request)
            .await
            .with_context(|| format!("target for `{variant}` not reachable at {base}"))?;
        if !response.status().is_success() {
            bail!(
                "target at {base} answered {} to {} for variant `{variant}`",
                response.status(),
                target.path
            );
        }
    }
    if let Some(resources) = &profile.resources {
        for (variant, url) in profile.variants.iter().zip(&resources.metrics_urls) {
            let (_, memory) = scrape::read(&client, url, resources)
                .await
                .with_context(|| format!("cannot measure the resources of `{variant}`"))?;
            if memory.is_none() {
                eprintln!(
                    "harness: {url} has no `{}`: peak memory of `{variant}` will not be reported",
                    resources.memory
                );
            }
        }
    }
    Ok(config_version)
}

/// How often the event-loop probe wakes up.
const PROBE_PERIOD: Duration = Duration::from_millis(10);

/// How often a progress line is printed to stderr.
const PROGRESS_PERIOD: Duration = Duration::from_secs(15);

/// A task on the same runtime as the users that sleeps `PROBE_PERIOD` at a time and records
/// how late it wakes. When the load generator runs out of CPU, its users' requests and
/// their timestamps are delayed exactly like these wake-ups.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Also prints a progress line every `PROGRESS_PERIOD`, so a long run is not silent.
    fn spawn(shared: Arc<user::Shared>, planned: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut next_progress = shared.epoch + PROGRESS_PERIOD;
            // Bounded whatever goose does: stop a run that overstays its plan.
            let deadline = shared.epoch + planned + (planned / 2).max(Duration::from_secs(30));
            while !flag.load(Ordering::Relaxed) {
                let due = Instant::now() + PROBE_PERIOD;
                tokio::time::sleep_until(due.into()).await;
                let now = Instant::now();
                shared
                    .collector
                    .probe(now - shared.epoch, now.saturating_duration_since(due));
                if now >= deadline && !goose::is_killswitch_triggered() {
                    eprintln!("harness: the run overstayed its planned length; stopping it");
                    goose::trigger_killswitch("harness: run exceeded its planned length");
                }
                if now >= next_progress {
                    next_progress += PROGRESS_PERIOD;
                    eprintln!(
                        "harness: {:.0} s of {} s, {} target requests sent",
                        (now - shared.epoch).as_secs_f64(),
                        planned.as_secs(),
                        shared.collector.target_requests()
                    );
                }
            }
        });
        Probe { stop, handle }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.await;
    }
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`; `None` where
/// that file does not exist. Assumes the kernel's usual 100 clock ticks per second.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its closing ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 overall, 12 and 13 after the ')'.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_reads_this_process() {
        if Path::new("/proc/self/stat").exists() {
            let a = cpu_seconds().expect("readable");
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_add(i * i);
            }
            assert!(x > 0);
            assert!(cpu_seconds().expect("readable") >= a);
        }
    }
}
