//! Liveness and readiness: what every stage reports about itself, read by `/readyz`.
//!
//! Owns no stage; each stage reports here. A stage that stops for any reason other than shutdown
//! (an error, a panic) is recorded with its reason, logged once, and counted in the
//! `gateway_stage_up` gauge, so a gateway whose uploads stopped is visibly not ready long
//! before its log fills.
//!
//! Ready means: the experiments are loaded, the last log append succeeded, storage answered
//! within [`STORAGE_STALE`] and has not refused us permanently, and every stage is running.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Storage not reached for this long (while failing) makes the gateway not ready.
pub const STORAGE_STALE: Duration = Duration::from_secs(30);

/// The pipeline's long-running stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    LogWriter,
    FileWriter,
    Uploader,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::LogWriter => "log_writer",
            Stage::FileWriter => "file_writer",
            Stage::Uploader => "uploader",
        }
    }
}

#[derive(Debug, Default)]
struct StorageState {
    last_ok: Option<Instant>,
    /// The latest failure since the last success, and whether it was permanent.
    failing: Option<(String, bool, Instant)>,
}

#[derive(Debug, Default)]
struct State {
    stopped: BTreeMap<Stage, String>,
    log_error: Option<String>,
    storage: StorageState,
    shutting_down: bool,
}

/// Shared by the stages (writers of it) and the HTTP layer (its reader).
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

impl Health {
    pub fn new() -> Self {
        for stage in [Stage::LogWriter, Stage::FileWriter, Stage::Uploader] {
            metrics::gauge!(crate::metrics::STAGE_UP, "stage" => stage.as_str()).set(1.0);
        }
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stage stopped before shutdown: it is not coming back until a restart.
    pub fn stopped(&self, stage: Stage, reason: impl Into<String>) {
        let reason = reason.into();
        let mut s = self.lock();
        if s.shutting_down {
            return;
        }
        tracing::error!(stage = stage.as_str(), %reason, "pipeline stage stopped");
        metrics::gauge!(crate::metrics::STAGE_UP, "stage" => stage.as_str()).set(0.0);
        s.stopped.entry(stage).or_insert(reason);
    }

    /// Stages ending from here on are shutting down, not failing.
    pub fn shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    pub fn log_appended(&self) {
        let mut s = self.lock();
        if s.log_error.take().is_some() {
            tracing::info!("write-ahead log writable again");
        }
    }

    pub fn log_failed(&self, error: impl Into<String>) {
        self.lock().log_error = Some(format!("write-ahead log not writable: {}", error.into()));
    }

    /// Cluster mode: the replicated log did not take an append (or a writer's lease call);
    /// cleared by [`Health::log_appended`].
    pub fn cluster_log_failed(&self, error: impl Into<String>) {
        self.lock().log_error = Some(format!("the cluster's log failed: {}", error.into()));
    }

    pub fn storage_ok(&self) {
        let mut s = self.lock();
        if let Some((error, _, _)) = s.storage.failing.take() {
            tracing::info!(previous_error = %error, "storage reachable again");
        }
        s.storage.last_ok = Some(Instant::now());
    }

    pub fn storage_failed(&self, error: impl Into<String>, permanent: bool) {
        let mut s = self.lock();
        // A permanent refusal is not cleared by a later transient error.
        if s.storage.failing.as_ref().is_some_and(|f| f.1) && !permanent {
            return;
        }
        s.storage.failing = Some((error.into(), permanent, Instant::now()));
    }

    /// Why the gateway is not ready, one line per reason; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        let s = self.lock();
        let mut reasons = Vec::new();
        if s.shutting_down {
            reasons.push("shutting down".to_owned());
        }
        for (stage, reason) in &s.stopped {
            reasons.push(format!("{} stopped: {reason}", stage.as_str()));
        }
        if let Some(e) = &s.log_error {
            reasons.push(e.clone());
        }
        let now = Instant::now();
        match (&s.storage.failing, s.storage.last_ok) {
            (Some((e, true, _)), _) => reasons.push(format!(
                "storage refused the gateway (permanent, not retried; fix the storage settings \
                 and restart): {e}"
            )),
            (Some((e, false, since)), last_ok)
                if last_ok.is_none_or(|t| now.duration_since(t) > STORAGE_STALE) =>
            {
                reasons.push(format!(
                    "storage unreachable for {} s: {e}",
                    now.duration_since(last_ok.unwrap_or(*since)).as_secs()
                ));
            }
            (None, None) => reasons.push("storage not reached yet".to_owned()),
            _ => {}
        }
        reasons
    }
}

/// Held by a stage's thread or task: if it ends without [`StageGuard::finish`] (a panic, or a
/// return on error that forgot to report), the stage is recorded as stopped.
#[derive(Debug)]
pub struct StageGuard<'a> {
    health: &'a Health,
    stage: Stage,
    finished: bool,
}

impl<'a> StageGuard<'a> {
    pub fn new(health: &'a Health, stage: Stage) -> Self {
        Self {
            health,
            stage,
            finished: false,
        }
    }

    /// The stage ended because the gateway is shutting down.
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// The stage ends on an error.
    pub fn fail(mut self, reason: impl Into<String>) {
        self.finished = true;
        self.health.stopped(self.stage, reason);
    }
}

impl Drop for StageGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let reason = if std::thread::panicking() {
                "panicked"
            } else {
                "ended unexpectedly"
            };
            self.health.stopped(self.stage, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_stage_and_a_permanent_storage_error_are_reasons() {
        let h = Health::new();
        assert_eq!(h.not_ready(), ["storage not reached yet"]);
        h.storage_ok();
        assert!(h.not_ready().is_empty());
        h.storage_failed("connection refused", false);
        assert!(h.not_ready().is_empty(), "a blip is not a reason");
        h.storage_failed("403 Forbidden", true);
        h.storage_failed("timeout", false);
        let reasons = h.not_ready();
        assert!(
            reasons[0].contains("permanent") && reasons[0].contains("403"),
            "{reasons:?}"
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = StageGuard::new(&h, Stage::FileWriter);
                // Returns without finish(): e.g. an early return on error.
            });
        });
        assert!(
            h.not_ready()
                .iter()
                .any(|r| r.starts_with("file_writer stopped"))
        );
    }

    #[test]
    fn stages_ending_at_shutdown_are_not_failures() {
        let h = Health::new();
        h.storage_ok();
        h.shutting_down();
        h.stopped(Stage::Uploader, "channel closed");
        assert_eq!(h.not_ready(), ["shutting down"]);
    }
}
