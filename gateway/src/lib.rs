//! The experimentation gateway: assigns units to experiment variants and ingests their events
//! into deduplicated, Hive-partitioned Parquet on object storage.
//!
//! Modules, in the order an event flows through them:
//! - [`config`]: flags + TOML file -> validated `Config`
//! - [`start`]: start-up checks before binding; config errors vs runtime errors
//! - [`http`]: hyper server, connection limits, routes, error mapping (the only module that
//!   names hyper)
//! - [`auth`]: write keys, admin token, per-key rate limits
//! - [`validate`]: request body -> `ValidBatch` of borrowed events and rejections
//! - [`dedup`]: `ValidBatch` -> `FreshBatch`; bounded window of recent event ids
//! - [`batch`]: `FreshBatch` -> Arrow rows per table and hourly partition
//! - [`wal`]: write-ahead log: group commit, replay, cut journal, segment retirement
//! - [`writer`]: logged rows -> Parquet files, cut by the flush policy (own thread)
//! - [`sink`]: Parquet files -> object storage (the only module that names object_store)
//! - [`pipeline`]: wires wal -> writer -> sink; recovery at start, flush at shutdown
//! - [`catalog`]: each served experiments config -> the lake's `experiments` table
//! - [`srm`]: distinct exposed units per variant and the live sample-ratio test
//! - [`metrics`]: metric names and the Prometheus recorder
//!
//! Beside the flow: [`budget`] (the process memory budget every stage draws from) and
//! [`health`] (what each stage reports, read by `/readyz`).
//!
//! Assignment, beside the event flow:
//! - [`assign`]: experiments file, GrowthBook-compatible hashing, conditions, evaluation (pure)
//! - [`reload`]: the current experiments, swapped atomically on file change, SIGHUP or request

pub mod assign;
pub mod auth;
pub mod batch;
pub mod budget;
pub mod catalog;
pub mod cluster;
pub mod compat;
pub mod config;
pub mod dedup;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod sink;
pub mod srm;
pub mod start;
pub mod validate;
pub mod wal;
pub mod writer;

pub use config::Config;
pub use http::{Server, serve};
