//! The launch harness: drives per-variant load through goose and says whether any variant
//! of an experiment makes the service slower, with a controlled false-alarm rate.
//!
//! Module map, in the order data flows:
//! - `profile`: launch profiles (TOML in `loadtests/`) -> validated `Profile`.
//! - `run`: pre-flight checks, the goose attack (paced users, one request name per endpoint
//!   and variant), per-request records -> `RunData`.
//! - `stats`: pure statistics: quantiles, block bootstrap, Holm, chi-square.
//! - `verdict`: `RunData` -> `Summary` (pass / regression / inconclusive / invalid).
//! - `report`: `summary.json`, `summary.md` and SVG plots beside goose's `report.html`.
//! - `demo_target`: the reference target service with per-variant latency and CPU cost.

pub mod demo_target;
pub mod profile;
pub mod report;
pub mod run;
pub mod stats;
pub mod verdict;

pub use profile::{Overrides, Profile};
pub use run::{Finished, run};
pub use verdict::Summary;
