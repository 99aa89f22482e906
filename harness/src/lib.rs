//! The launch harness: drives per-variant load through goose and says whether any variant
//! of an experiment makes the service slower, with a controlled false-alarm rate.
//!
//! Module map, in the order data flows:
//! - `profile`: launch profiles (TOML in `loadtests/`) -> validated `Profile`.
//! - `run`: pre-flight checks, the goose attack (paced users, one request name per endpoint
//!   and variant), per-request records -> `RunData`.
//! - `stats`: pure statistics: quantiles, block bootstrap, Holm, chi-square.
//! - `verdict`: `RunData` -> `Summary` (pass / regression / inconclusive / invalid).
//! - `report`: `summary.json`, `summary.md`, SVG plots and an offline `report.html`.
//! - `samples`: a run's raw samples on disk (`samples.csv`, `scrapes.csv`).
//! - `compare`: `harness compare OLD NEW`, the same statistics between two stored runs.
//! - `demo_target`: the reference target service with per-variant latency and CPU cost.

pub mod compare;
pub mod demo_target;
pub mod profile;
pub mod report;
pub mod run;
pub mod samples;
pub mod stats;
pub mod verdict;

pub use profile::{Overrides, Profile};
pub use run::{Finished, run};
pub use verdict::Summary;
