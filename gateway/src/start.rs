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
    /// Cluster mode: the log the gateway appends to.
    pub cluster: Option<Arc<crate::cluster::ingest::Appender<crate::cluster::nats::NatsLog>>>,
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
    let cluster = match &config.cluster {
        Some(c) => Some(Arc::new(crate::cluster::ingest::Appender::new(
            connect_log(&c.log).await?,
        ))),
        None => None,
    };
    let pipeline = pipeline::start(&config, store, health, experiments.take_served()).await?;
    Ok(Prepared {
        config,
        experiments: Arc::new(experiments),
        pipeline,
        cluster,
    })
}

/// Connect to the cluster's log and make sure its streams exist, waiting while no server
/// answers (a fleet starting together); a configuration the engine refuses is fatal.
pub async fn connect_log(
    config: &crate::cluster::LogConfig,
) -> Result<crate::cluster::nats::NatsLog, StartError> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match crate::cluster::nats::NatsLog::connect(config.clone()).await {
            Ok(log) => return Ok(log),
            Err(e) if e.is_retryable() => {
                tracing::warn!(urls = ?config.urls, error = %e, "the log does not answer yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => {
                return Err(StartError::Config {
                    field: "cluster",
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// The writer role: connect, then hold a share of the partitions and write them until
/// `shutdown`. `/healthz`, `/readyz` and `/metrics` are served on `admin_listen` (or `listen`).
pub async fn run_writer(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let metrics = crate::metrics::install();
    let cluster = config
        .cluster
        .clone()
        .expect("the writer role is a cluster role");
    let (store, prefix) = crate::sink::open_store(&config.storage, &config.storage_options)
        .map_err(|e| StartError::Config {
            field: "storage",
            reason: e.to_string(),
        })?;
    let sink = crate::sink::Sink::new(store, prefix, String::new())
        .with_backoff(crate::sink::Backoff {
            initial: std::time::Duration::from_millis(100),
            max: config.upload.retry_max_backoff,
        })
        .with_multipart(config.upload.multipart_threshold_bytes, 8 << 20);
    let addr = config.admin_listen.unwrap_or(config.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Runtime(anyhow::anyhow!("cannot listen on {addr}: {e}")))?;
    let log = connect_log(&cluster.log).await?;
    let health = Arc::new(Health::new());
    let owner = format!("{:016x}", rand::random::<u64>());
    tracing::info!(
        "listening on {}",
        listener
            .local_addr()
            .map_err(|e| StartError::Runtime(e.into()))?
    );
    tracing::info!(%owner, partitions = cluster.log.partitions, "writer started");
    // As on one node: storage is probed besides every upload, so /readyz reports it.
    let prober = tokio::spawn({
        let (sink, health) = (sink.clone(), health.clone());
        async move {
            loop {
                let _ = sink.probe(&health).await;
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        }
    });
    let status = tokio::spawn(crate::http::serve_status(listener, health.clone(), metrics));
    crate::cluster::writer::run(
        log,
        sink,
        crate::cluster::writer::WriterConfig {
            owner,
            flush: config.flush,
            window: config.dedup.window,
            lease: cluster.log.lease,
        },
        health,
        shutdown,
    )
    .await;
    status.abort();
    prober.abort();
    Ok(())
}
