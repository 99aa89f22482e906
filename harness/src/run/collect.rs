//! What the simulated users record for the statistics, beside goose's own metrics.
//!
//! Goose aggregates per request name but keeps no per-request times in memory; the verdict
//! needs every request, in time order, with its variant and schedule lag, so users push a
//! `Record` here as each request ends. Pushes take a short `Mutex` (a few hundred to a few
//! thousand a second: uncontended in practice). `Collector::finish` hands the data to the
//! pure `verdict` module as a `RunData`; nothing here computes statistics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::scrape::Scrape;
use crate::profile::Endpoint;

/// Variant index used for requests made before a variant was known (a failed assign).
pub const NO_VARIANT: u16 = u16::MAX;

/// One request as the harness saw it. Times are microseconds since the run's epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// When the request was due (target) or sent (gateway calls).
    pub at_us: u64,
    pub user: u32,
    pub variant: u16,
    pub endpoint: Endpoint,
    /// Time to response headers, as goose measures it.
    pub latency_us: u64,
    /// How late the user's schedule was when this slot started (0 when on time). Only
    /// target requests are scheduled; gateway calls carry 0.
    pub lag_us: u64,
    pub ok: bool,
}

impl Record {
    /// Latency from the moment the request was due: the service time plus any schedule lag,
    /// so a slow variant cannot hide its queueing by sending fewer requests.
    pub fn intended_latency_us(&self) -> u64 {
        self.latency_us + self.lag_us
    }

    /// A successful request of `endpoint` made by a unit in a variant: what latency is judged on.
    pub fn is_measured(&self, endpoint: Endpoint) -> bool {
        self.endpoint == endpoint && self.ok && self.variant != NO_VARIANT
    }
}

/// Counters for the events the users posted to the gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Events sent, a batch the gateway shed and that was sent again counting twice.
    pub posted: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Events given up on after the gateway refused a batch (503 or a network error).
    pub dropped: u64,
}

/// When and against what a run was made, for the reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunInfo {
    /// Start of the load, RFC 3339 UTC.
    pub started_at: String,
    /// Wall-clock length of the load, ramp and drain included.
    pub duration_seconds: f64,
    /// The gateway's experiments-config version, from its pre-flight assign answer.
    pub gateway_config_version: Option<String>,
}

/// Everything a finished run leaves for the verdict and the report.
#[derive(Debug, Clone)]
pub struct RunData {
    pub run_id: String,
    pub info: RunInfo,
    pub records: Vec<Record>,
    /// Units (unit ids) that the gateway put in the experiment, per variant index.
    pub units: Vec<u64>,
    /// Units the gateway answered "not in the experiment" for, or with an unknown variant.
    pub excluded_units: u64,
    /// Steady-state window the verdict uses, microseconds since the epoch.
    pub window_us: (u64, u64),
    /// Target requests users sent per variant (whole run).
    pub executed_slots: Vec<u64>,
    /// Slots due but not yet sent when users stopped, per variant of the unit in hand.
    pub backlog_slots: Vec<u64>,
    /// Planned target request rate, requests per second, on average over the judged window.
    pub offered_rps: f64,
    /// Wake-up delays of the event-loop probe inside the window, microseconds.
    pub probe_lag_us: Vec<u64>,
    /// CPU the harness process used during the run, as a share of one core (1.0 = 100 %).
    pub client_cpu_cores: Option<f64>,
    pub events: EventCounts,
    /// Readings of each variant's deployment metrics, whole run, in time order (empty
    /// without a `[resources]` section).
    pub scrapes: Vec<Scrape>,
    /// Scrapes that failed, per variant.
    pub scrape_failures: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    records: Vec<Record>,
    user_started_us: Vec<u64>,
    user_stopped_us: Vec<u64>,
    probe: Vec<(u64, u64)>,
    scrapes: Vec<Scrape>,
}

#[derive(Debug)]
pub struct Collector {
    inner: Mutex<Inner>,
    units: Vec<AtomicU64>,
    executed: Vec<AtomicU64>,
    backlog: Vec<AtomicU64>,
    scrape_failures: Vec<AtomicU64>,
    excluded_units: AtomicU64,
    posted: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
}

fn counters(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

fn load(v: &[AtomicU64]) -> Vec<u64> {
    v.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

impl Collector {
    pub fn new(variants: usize) -> Self {
        Collector {
            inner: Mutex::new(Inner::default()),
            units: counters(variants),
            executed: counters(variants),
            backlog: counters(variants),
            scrape_failures: counters(variants),
            excluded_units: AtomicU64::new(0),
            posted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking user must not take the whole run's data with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, record: Record) {
        if record.endpoint == Endpoint::Target && record.variant != NO_VARIANT {
            self.executed[record.variant as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.lock().records.push(record);
    }

    /// Target requests recorded so far, all variants.
    pub fn target_requests(&self) -> u64 {
        load(&self.executed).iter().sum()
    }

    pub fn unit_assigned(&self, variant: usize) {
        self.units[variant].fetch_add(1, Ordering::Relaxed);
    }

    pub fn unit_excluded(&self) {
        self.excluded_units.fetch_add(1, Ordering::Relaxed);
    }

    pub fn user_started(&self, at: Duration) {
        self.lock().user_started_us.push(at.as_micros() as u64);
    }

    pub fn user_stopped(&self, at: Duration, backlog: Option<(usize, u64)>) {
        if let Some((variant, slots)) = backlog {
            self.backlog[variant].fetch_add(slots, Ordering::Relaxed);
        }
        self.lock().user_stopped_us.push(at.as_micros() as u64);
    }

    pub fn probe(&self, at: Duration, lag: Duration) {
        self.lock()
            .probe
            .push((at.as_micros() as u64, lag.as_micros() as u64));
    }

    pub fn scraped(&self, scrape: Scrape) {
        self.lock().scrapes.push(scrape);
    }

    pub fn scrape_failed(&self, variant: usize) {
        self.scrape_failures[variant].fetch_add(1, Ordering::Relaxed);
    }

    pub fn events_posted(&self, n: u64) {
        self.posted.fetch_add(n, Ordering::Relaxed);
    }

    pub fn events_answered(&self, accepted: u64, duplicates: u64, rejected: u64) {
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
    }

    pub fn events_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Ends collection. `staged` runs are judged over their whole length (the changing load
    /// is the point); steady runs from the moment the last user started to the moment the
    /// first one stopped, as goose's own metrics reset does.
    pub fn finish(
        &self,
        run_id: String,
        staged: bool,
        offered_rps: f64,
        client_cpu_cores: Option<f64>,
    ) -> RunData {
        let mut inner = self.lock();
        let mut records = std::mem::take(&mut inner.records);
        records.sort_by_key(|r| r.at_us);
        let last_record = records.last().map_or(0, |r| r.at_us + 1);
        let started = inner.user_started_us.iter().copied();
        let stopped = inner.user_stopped_us.iter().copied();
        let window_us = if staged {
            (
                started.min().unwrap_or(0),
                stopped.max().unwrap_or(last_record),
            )
        } else {
            (
                started.max().unwrap_or(0),
                stopped.min().unwrap_or(last_record),
            )
        };
        let probe_lag_us = inner
            .probe
            .iter()
            .filter(|(at, _)| *at >= window_us.0 && *at < window_us.1)
            .map(|(_, lag)| *lag)
            .collect();
        let mut scrapes = std::mem::take(&mut inner.scrapes);
        scrapes.sort_by_key(|s| s.at_us);
        RunData {
            run_id,
            info: RunInfo::default(),
            records,
            units: load(&self.units),
            excluded_units: self.excluded_units.load(Ordering::Relaxed),
            window_us,
            executed_slots: load(&self.executed),
            backlog_slots: load(&self.backlog),
            offered_rps,
            probe_lag_us,
            client_cpu_cores,
            events: EventCounts {
                posted: self.posted.load(Ordering::Relaxed),
                accepted: self.accepted.load(Ordering::Relaxed),
                duplicates: self.duplicates.load(Ordering::Relaxed),
                rejected: self.rejected.load(Ordering::Relaxed),
                dropped: self.dropped.load(Ordering::Relaxed),
            },
            scrapes,
            scrape_failures: load(&self.scrape_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_us: u64, variant: u16, endpoint: Endpoint) -> Record {
        Record {
            at_us,
            user: 0,
            variant,
            endpoint,
            latency_us: 100,
            lag_us: 5,
            ok: true,
        }
    }

    #[test]
    fn steady_window_spans_last_start_to_first_stop() {
        let c = Collector::new(2);
        c.user_started(Duration::from_millis(0));
        c.user_started(Duration::from_millis(500));
        c.record(rec(900_000, 1, Endpoint::Target));
        c.record(rec(600_000, 0, Endpoint::Target));
        c.record(rec(700_000, NO_VARIANT, Endpoint::Assign));
        c.probe(Duration::from_millis(100), Duration::from_micros(7));
        c.probe(Duration::from_millis(800), Duration::from_micros(9));
        c.user_stopped(Duration::from_secs(2), Some((1, 3)));
        c.user_stopped(Duration::from_secs(3), None);
        let d = c.finish("r".into(), false, 10.0, None);
        assert_eq!(d.window_us, (500_000, 2_000_000));
        assert_eq!(d.records[0].at_us, 600_000, "records sorted by time");
        assert_eq!(d.executed_slots, vec![1, 1]);
        assert_eq!(d.backlog_slots, vec![0, 3]);
        assert_eq!(d.probe_lag_us, vec![9]);
        assert_eq!(d.records[0].intended_latency_us(), 105);
    }

    #[test]
    fn staged_window_is_the_whole_run() {
        let c = Collector::new(2);
        c.user_started(Duration::from_millis(0));
        c.user_started(Duration::from_millis(500));
        c.user_stopped(Duration::from_secs(2), None);
        c.user_stopped(Duration::from_secs(3), None);
        assert_eq!(
            c.finish("r".into(), true, 1.0, None).window_us,
            (0, 3_000_000)
        );
    }
}
