//! Resource use per variant: scrapes each variant's deployment's Prometheus metrics (CPU
//! seconds, resident memory) every `resources.scrape_ms` during the run.
//!
//! Only readings are kept here (`Scrape`: when, which variant, the counter and the gauge);
//! turning them into CPU per request and a verdict is `verdict`'s job. A failed scrape is
//! counted and skipped: the next good one closes a longer interval, which the per-request
//! ratio handles like any other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::profile::{MetricSelector, Resources};

use super::user::Shared;

/// One reading of one variant's deployment. Times are microseconds since the run's epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scrape {
    pub variant: u16,
    /// Midway between sending the scrape and reading its answer.
    pub at_us: u64,
    /// The CPU counter, in seconds.
    pub cpu_seconds: f64,
    /// The memory gauge, in bytes, when the deployment exposes it.
    pub memory_bytes: Option<f64>,
}

/// Why a deployment's metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("metrics not reachable at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("metrics at {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("metrics at {url} are not in the Prometheus text format: {message}")]
    Format { url: String, message: String },
    #[error("metrics at {url} have no sample of `{metric}`")]
    Missing { url: String, metric: String },
}

/// Sum of the samples of `selector`'s name whose labels include all of its labels; `None`
/// when no sample matches. Counters, gauges and untyped samples count; histogram and summary
/// series are not a single number and are skipped.
pub fn select(scrape: &prometheus_parse::Scrape, selector: &MetricSelector) -> Option<f64> {
    let mut found = None;
    for sample in &scrape.samples {
        if sample.metric != selector.name
            || !selector
                .labels
                .iter()
                .all(|(k, v)| sample.labels.get(k) == Some(v.as_str()))
        {
            continue;
        }
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Reads one deployment's CPU counter and memory gauge.
pub async fn read(
    client: &reqwest::Client,
    url: &str,
    resources: &Resources,
) -> Result<(f64, Option<f64>), ScrapeError> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|source| ScrapeError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    if !response.status().is_success() {
        return Err(ScrapeError::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    let text = response
        .text()
        .await
        .map_err(|source| ScrapeError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).map_err(|e| ScrapeError::Format {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let cpu = select(&scrape, &resources.cpu).ok_or_else(|| ScrapeError::Missing {
        url: url.to_string(),
        metric: resources.cpu.to_string(),
    })?;
    Ok((cpu, select(&scrape, &resources.memory)))
}

/// The scraping task of one run.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    handle: tokio::task::JoinHandle<()>,
}

impl Scraper {
    /// Scrapes every variant at once each `scrape_every`, until stopped.
    pub fn spawn(shared: Arc<Shared>, resources: Resources) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let (flag, woken) = (stop.clone(), wake.clone());
        let handle = tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .timeout(resources.scrape_every.max(Duration::from_millis(200)))
                .build()
            {
                Ok(c) => c,
                Err(_) => return,
            };
            let mut next = Instant::now();
            loop {
                let reads = resources.metrics_urls.iter().enumerate().map(|(v, url)| {
                    let (client, resources, shared) = (&client, &resources, &shared);
                    async move {
                        let sent = Instant::now();
                        let result = read(client, url, resources).await;
                        let mid = sent + (Instant::now() - sent) / 2;
                        match result {
                            Ok((cpu_seconds, memory_bytes)) => shared.collector.scraped(Scrape {
                                variant: v as u16,
                                at_us: mid.saturating_duration_since(shared.epoch).as_micros()
                                    as u64,
                                cpu_seconds,
                                memory_bytes,
                            }),
                            Err(_) => shared.collector.scrape_failed(v),
                        }
                    }
                });
                futures::future::join_all(reads).await;
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                next += resources.scrape_every;
                let now = Instant::now();
                if next < now {
                    // A slow deployment: skip the missed ticks rather than burst.
                    next = now + resources.scrape_every;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = woken.notified() => {}
                }
            }
        });
        Scraper { stop, wake, handle }
    }

    /// Takes one last reading of every variant, so the run's tail has a closing interval.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let _ = self.handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    #[test]
    fn selects_and_sums_matching_samples() {
        let scrape = parse(
            "# HELP process_cpu_seconds_total CPU.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total 1.5\n\
             # TYPE cpu_seconds_total counter\n\
             cpu_seconds_total{mode=\"user\",pod=\"canary\"} 2\n\
             cpu_seconds_total{mode=\"system\",pod=\"canary\"} 0.5\n\
             cpu_seconds_total{mode=\"user\",pod=\"stable\"} 9\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes 1.2e+07\n",
        );
        let sel = |t| MetricSelector::parse("x", t).unwrap();
        assert_eq!(
            select(&scrape, &sel("process_cpu_seconds_total")),
            Some(1.5)
        );
        assert_eq!(
            select(&scrape, &sel("process_resident_memory_bytes")),
            Some(1.2e7)
        );
        assert_eq!(
            select(&scrape, &sel("cpu_seconds_total{pod=\"canary\"}")),
            Some(2.5)
        );
        assert_eq!(
            select(
                &scrape,
                &sel("cpu_seconds_total{pod=\"canary\", mode=\"user\"}")
            ),
            Some(2.0)
        );
        assert_eq!(select(&scrape, &sel("cpu_seconds_total")), Some(11.5));
        assert_eq!(select(&scrape, &sel("cpu_seconds_total{pod=\"x\"}")), None);
        assert_eq!(select(&scrape, &sel("nope")), None);
    }

    #[test]
    fn selectors_are_checked() {
        assert!(MetricSelector::parse("f", "9lives").is_err());
        assert!(MetricSelector::parse("f", "a{b=c}").is_err());
        assert!(MetricSelector::parse("f", "a{b=\"c\"").is_err());
        let s = MetricSelector::parse("f", "a_b:c{x=\"1\",y=\"2\"}").unwrap();
        assert_eq!(s.to_string(), "a_b:c{x=\"1\",y=\"2\"}");
    }
}
