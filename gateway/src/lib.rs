//! The experimentation gateway: assigns units to experiment variants and ingests their events
//! into deduplicated, Hive-partitioned Parquet on object storage.
//!
//! Modules, in the order an event flows through them:
//! - [`config`]: flags + TOML file -> validated `Config`
//! - [`http`]: hyper server, routes, error mapping (the only module that names hyper)
//! - [`validate`]: request body -> `ValidBatch` of borrowed events and rejections
//! - [`dedup`]: `ValidBatch` -> `FreshBatch`; bounded window of recent event ids
//! - [`batch`]: `FreshBatch` -> Arrow rows per table and hourly partition
//! - [`wal`]: write-ahead log: group commit, replay, cut journal, segment retirement
//! - [`writer`]: logged rows -> Parquet files, cut by the flush policy (own thread)
//! - [`sink`]: Parquet files -> object storage (the only module that names object_store)
//! - [`pipeline`]: wires wal -> writer -> sink; recovery at start, flush at shutdown
//! - [`metrics`]: metric names and the Prometheus recorder
//!
//! Assignment, beside the event flow:
//! - [`assign`]: experiments file, GrowthBook-compatible hashing, conditions, evaluation (pure)
//! - [`reload`]: the current experiments, swapped atomically on file change, SIGHUP or request

pub mod assign;
pub mod batch;
pub mod config;
pub mod dedup;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod sink;
pub mod validate;
pub mod wal;
pub mod writer;

pub use config::Config;
pub use http::{Server, serve};
