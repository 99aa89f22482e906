//! Assignment: which variant of each experiment a unit (a user, a device, an org) is in.
//!
//! Owns the experiments file format and its validation, GrowthBook-compatible hashing, targeting
//! conditions, and the evaluation order. Pure functions over immutable data: no I/O (except
//! [`Experiments::load`] reading the file it is given), no clock (callers pass `now`), no
//! randomness, no logging, no metrics. It must not know about HTTP, exposure logging or reload;
//! the HTTP layer calls [`Experiments::assign`] on whichever `Arc<Experiments>` is current and
//! logs an exposure for each [`Assignment::should_log_exposure`].
//!
//! Invariants:
//! - Determinism: the same file, attributes and `now` give the same assignments on every
//!   instance, after every restart, and agree with GrowthBook's SDKs (hash version 2), so
//!   client-side assignment lands in the same variant.
//! - Stability under ramp-up: raising `coverage` never moves an assigned unit to another variant.
//! - Layers: experiments in one layer have disjoint ranges and one hash attribute, so no unit
//!   is in two of them.
//! - A loaded [`Experiments`] is valid: every name resolves, prerequisites are acyclic,
//!   conditions and regexes are compiled. A file that is not valid is refused whole, with an error
//!   naming the experiment and the field.
//!
//! Modules, in the order data flows:
//! - [`experiments`]: file -> `RawExperiments` (serde) -> validated [`Experiments`].
//! - [`condition`]: targeting conditions compiled to a tree; evaluated per request.
//! - `js`: the JavaScript coercions GrowthBook's conditions rely on.
//! - [`hash`]: FNV-1a over UTF-16, hash v1/v2, bucket ranges, layers (namespaces).
//! - [`eval`]: the evaluation order, [`Unit`] in, [`Assignment`]s out.
//!
//! The file format, evaluation order, hashing (with worked examples) and reasons are described
//! for operators in `docs/experiments.md`.

pub mod condition;
pub mod eval;
pub mod experiments;
pub mod growthbook;
pub mod hash;
mod js;

pub use condition::{Condition, ConditionError};
pub use eval::{Assignment, Reason, Unit};
pub use experiments::{
    ConfigError, ExperimentRef, Experiments, FileFormat, HashVersion, RawExperiment, RawLayer,
    RawPrerequisite, Status,
};
pub use hash::{
    bucket_ranges, choose_variant, config_version, fnv1a32, hash_v1, hash_v2, in_namespace,
    namespace_hash,
};
