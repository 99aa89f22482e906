//! The lake's `experiments` table: every config version a gateway serves, as one small Parquet
//! file, so SQL can join exposures (by `config_version`) to the weights they were drawn with.
//!
//! Invariants:
//! - One object per (version, node): `experiments/{config_version}-{node_id}.parquet`, written
//!   create-only. A restart serving the same version finds it and keeps the first
//!   `first_served_at`; several gateways each write their own (readers take the minimum).
//! - Off the event path: a storage outage delays these files (retried like every upload), never
//!   an event. A permanent storage error is reported to `/readyz` by the sink, like any upload.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::health::Health;
use crate::reload::Served;
use crate::sink::Sink;

/// Write each version as it starts serving, in order, until the source is dropped.
pub async fn run(mut served: UnboundedReceiver<Served>, sink: Sink, health: Arc<Health>) {
    while let Some(Served { experiments, since }) = served.recv().await {
        let version = experiments.version();
        let rows =
            crate::batch::experiments_rows(&experiments, since.timestamp_micros(), sink.node_id());
        let bytes = match crate::writer::encode_file(&rows) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(version, error = %e, "cannot encode the experiments table");
                continue;
            }
        };
        let path = sink.experiments_path(version);
        match sink
            .put_retrying(&path, &bytes, rows.num_rows(), &health)
            .await
        {
            Ok(()) => tracing::debug!(version, %path, "experiments table written"),
            Err(e) => {
                tracing::error!(version, error = %e, "cannot write the experiments table");
            }
        }
    }
}
