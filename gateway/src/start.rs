//! Start-up: everything that can be checked before the gateway binds and says `listening on`.
//!
//! Order: the config (already validated), the storage URL and its options, the experiments file,
//! then the state directory (lock, log replay) and the pipeline. A configuration problem is a
//! [`StartError::Config`] (exit 2, naming the field); anything else a [`StartError::Runtime`]
//! (exit 1). Storage is *not* contacted here: a gateway restarted during an outage must come up
//! and absorb traffic into its log, and `/readyz` reports the outage.

use std::sync::Arc;

use crate::config::Config;
use crate::health::Health;
use crate::pipeline::{self, Pipeline};
use crate::reload::ExperimentsSource;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Exit code 2: fix the configuration.
    #[error("config field {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// Exit code 1: the environment (state dir in use, corrupt log, port taken...).
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

impl StartError {
    /// The process exit code the docs promise for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config { .. } => 2,
            StartError::Runtime(_) => 1,
        }
    }
}

/// The gateway's parts, checked and running, before any socket is bound.
#[derive(Debug)]
pub struct Prepared {
    pub config: Config,
    pub experiments: Arc<ExperimentsSource>,
    pub pipeline: Pipeline,
}

/// Check what can be checked locally, recover the log and start the pipeline.
pub async fn prepare(config: Config) -> Result<Prepared, StartError> {
    // First, so what start-up records (the config version, stage gauges) is exported.
    crate::metrics::install();
    let store = crate::sink::open_store(&config.storage, &config.storage_options).map_err(|e| {
        let field = match &e {
            crate::sink::SinkError::Option { .. } => "storage_options",
            _ => "storage",
        };
        StartError::Config {
            field,
            reason: e.to_string(),
        }
    })?;
    let experiments =
        ExperimentsSource::open(config.experiments.as_deref()).map_err(|e| StartError::Config {
            field: "experiments",
            reason: e.to_string(),
        })?;
    let health = Arc::new(Health::new());
    let pipeline = pipeline::start(&config, store, health, experiments.take_served()).await?;
    Ok(Prepared {
        config,
        experiments: Arc::new(experiments),
        pipeline,
    })
}
