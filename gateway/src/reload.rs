//! The current experiments, and swapping them without a restart.
//!
//! Owns the `Arc<Experiments>` every assign request reads. A reload (file change seen by polling,
//! SIGHUP, or `POST /admin/reload`) parses and validates the whole file first and swaps the pointer
//! only if it is valid: a request sees the old config or the new one, never a mix, and a broken
//! file leaves the old one in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::assign::{ConfigError, Experiments, FileFormat, config_version};

/// The example file, served when no experiments file is configured.
pub const EXAMPLE_EXPERIMENTS: &str = include_str!("../experiments.example.json");

/// The config-version gauge: the version in force at 1, the one it replaced at 0.
fn mark_version(old: Option<&str>, new: &str) {
    if let Some(old) = old {
        metrics::gauge!(crate::metrics::CONFIG_VERSION, "version" => old.to_owned()).set(0.0);
    }
    metrics::gauge!(crate::metrics::CONFIG_VERSION, "version" => new.to_owned()).set(1.0);
}

/// A config version that started serving, and when.
#[derive(Debug, Clone)]
pub struct Served {
    pub experiments: Arc<Experiments>,
    pub since: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug)]
pub struct ExperimentsSource {
    path: Option<PathBuf>,
    current: ArcSwap<Experiments>,
    /// Every version put in force, in order, for the lake's experiments table.
    served: tokio::sync::mpsc::UnboundedSender<Served>,
    served_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Served>>>,
}

impl ExperimentsSource {
    /// Load `path`, or the built-in example when `None`.
    pub fn open(path: Option<&Path>) -> Result<Self, ConfigError> {
        let experiments = match path {
            Some(p) => Experiments::load(p)?,
            None => Experiments::parse(EXAMPLE_EXPERIMENTS, FileFormat::Json)?,
        };
        mark_version(None, experiments.version());
        let experiments = Arc::new(experiments);
        let (served, served_rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = served.send(Served {
            experiments: experiments.clone(),
            since: chrono::Utc::now(),
        });
        Ok(Self {
            path: path.map(Path::to_owned),
            current: ArcSwap::new(experiments),
            served,
            served_rx: std::sync::Mutex::new(Some(served_rx)),
        })
    }

    /// The versions put in force, the first one included, as they start serving. Only one
    /// taker: the task that writes them to the lake.
    pub fn take_served(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Served>> {
        self.served_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn current(&self) -> Arc<Experiments> {
        self.current.load_full()
    }

    /// Re-read the file; swap only if it is valid. Returns the config now in force.
    pub fn reload(&self) -> Result<Arc<Experiments>, ConfigError> {
        let Some(path) = &self.path else {
            return Ok(self.current());
        };
        match Experiments::load(path) {
            Ok(new) => {
                let new = Arc::new(new);
                let old = self.current.swap(new.clone());
                if old.version() != new.version() {
                    mark_version(Some(old.version()), new.version());
                    let _ = self.served.send(Served {
                        experiments: new.clone(),
                        since: chrono::Utc::now(),
                    });
                    tracing::info!(
                        from = old.version(),
                        to = new.version(),
                        "experiments reloaded"
                    );
                }
                metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "ok").increment(1);
                Ok(new)
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "experiments file refused; keeping the current one");
                metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "refused")
                    .increment(1);
                Err(e)
            }
        }
    }

    /// Poll the file every `interval` and reload when its bytes change. Polling (not inotify)
    /// also sees files replaced by rename or through symlinks, as config maps are.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut seen = self.current().version().to_owned();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let version = config_version(&bytes);
            if version != seen {
                // Remember the bytes even if refused, so a broken file is reported once.
                seen = version;
                let _ = self.reload();
            }
        }
    }
}
