//! Evaluation: which variant of each experiment one unit gets, and why.
//!
//! Order for one unit and one experiment (the first step that decides, decides):
//! `killed` -> `forced` -> `stopped` / outside `start`..`end` -> no hash attribute -> `condition`
//! -> `prerequisites` -> `layer` -> coverage and weights by hash.
//!
//! Pure: the answer depends only on the experiments, the unit's attributes and `now`. No I/O, no
//! clock reads, no randomness; the only allocations are the output vector, one `Arc<str>` per
//! distinct unit id, and (only if some experiment has prerequisites) a memo of outcomes.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::SerializeStruct;
use serde_json::{Map, Value};

use super::experiments::{Experiment, Experiments, Status};
use super::hash;
use super::js;

/// The unit being assigned: its request attributes. `user_id` is just the attribute `"user_id"`;
/// an experiment's `hash_attribute` may name any top-level attribute.
#[derive(Debug, Clone, Copy)]
pub struct Unit<'a> {
    pub attributes: &'a Map<String, Value>,
}

impl<'a> Unit<'a> {
    pub fn new(attributes: &'a Map<String, Value>) -> Self {
        Self { attributes }
    }

    /// The unit id for a hash attribute, as GrowthBook computes it: a non-empty string as is, a
    /// non-zero number in its JavaScript string form (`42`, `1.5`). Anything else (missing,
    /// `null`, `""`, `0`, booleans, arrays, objects) means the unit has no id here.
    pub fn id(&self, hash_attribute: &str) -> Option<Cow<'a, str>> {
        match self.attributes.get(hash_attribute)? {
            Value::String(s) if !s.is_empty() => Some(Cow::Borrowed(s)),
            Value::Number(n) => {
                let n = js::number(n);
                (n != 0.0).then(|| Cow::Owned(js::number_to_js_string(n)))
            }
            _ => None,
        }
    }
}

/// Why a unit got what it got. Serialized in snake_case (`"condition_failed"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The experiment is killed: everyone gets the fallback variant, nobody is in it.
    Killed,
    /// The unit id is in the experiment's `forced` map.
    Forced,
    /// The experiment's status is `stopped`.
    Stopped,
    /// `now` is before the experiment's `start`.
    NotStarted,
    /// `now` is at or after the experiment's `end`.
    Ended,
    /// The unit has no usable value for the experiment's `hash_attribute`.
    NoHashAttribute,
    /// The targeting condition is false for the unit's attributes.
    ConditionFailed,
    /// The unit is not in a required variant of a prerequisite experiment.
    PrerequisiteFailed,
    /// The unit's position in the layer is outside this experiment's layer range.
    LayerExcluded,
    /// The unit's hash falls outside every variant's range (coverage below 1).
    NotCovered,
    /// The unit is in the experiment, in the variant its hash falls in.
    Hashed,
    /// The requested experiment is not in the file (only for explicitly requested keys).
    UnknownExperiment,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Killed,
        Reason::Forced,
        Reason::Stopped,
        Reason::NotStarted,
        Reason::Ended,
        Reason::NoHashAttribute,
        Reason::ConditionFailed,
        Reason::PrerequisiteFailed,
        Reason::LayerExcluded,
        Reason::NotCovered,
        Reason::Hashed,
        Reason::UnknownExperiment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Killed => "killed",
            Reason::Forced => "forced",
            Reason::Stopped => "stopped",
            Reason::NotStarted => "not_started",
            Reason::Ended => "ended",
            Reason::NoHashAttribute => "no_hash_attribute",
            Reason::ConditionFailed => "condition_failed",
            Reason::PrerequisiteFailed => "prerequisite_failed",
            Reason::LayerExcluded => "layer_excluded",
            Reason::NotCovered => "not_covered",
            Reason::Hashed => "hashed",
            Reason::UnknownExperiment => "unknown_experiment",
        }
    }
}

/// One experiment's answer for one unit.
///
/// `variant` is what the caller should show: the assigned variant when `in_experiment`, the
/// `fallback` when killed, and otherwise the first variant (as GrowthBook returns variation 0
/// with `inExperiment: false`). It is `None` only for [`Reason::UnknownExperiment`].
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub experiment: Arc<str>,
    pub variant: Option<Arc<str>>,
    /// True only for [`Reason::Hashed`] and [`Reason::Forced`].
    pub in_experiment: bool,
    /// The unit's hash in `[0, 1)` when it was computed (`hashed`, `not_covered`).
    pub bucket: Option<f64>,
    pub reason: Reason,
    /// The attribute the experiment randomizes on (`user_id`, `device_id`, ...).
    pub hash_attribute: Arc<str>,
    /// The unit id used (the value of `hash_attribute`), when the unit has one.
    pub hash_value: Option<Arc<str>>,
}

impl Assignment {
    /// Whether an exposure should be logged: only for units actually in the experiment.
    /// Killed, stopped, excluded and uncovered units see a variant but are not in the test.
    pub fn should_log_exposure(&self) -> bool {
        self.in_experiment && matches!(self.reason, Reason::Hashed | Reason::Forced)
    }
}

/// `{"experiment", "variant", "in_experiment", "bucket", "reason"}`, the shape of the assign
/// endpoints' `assignments` items. The unit id is left out: the caller sent it.
impl Serialize for Assignment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Assignment", 5)?;
        s.serialize_field("experiment", &*self.experiment)?;
        s.serialize_field("variant", &self.variant.as_deref())?;
        s.serialize_field("in_experiment", &self.in_experiment)?;
        s.serialize_field("bucket", &self.bucket)?;
        s.serialize_field("reason", &self.reason)?;
        s.end()
    }
}

/// An assignment before names are attached: indices only, `Copy`, cheap to memoize.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Outcome {
    variant: usize,
    in_experiment: bool,
    bucket: Option<f64>,
    reason: Reason,
}

impl Outcome {
    fn out(variant: usize, reason: Reason) -> Self {
        Outcome {
            variant,
            in_experiment: false,
            bucket: None,
            reason,
        }
    }
}

struct Evaluation<'a> {
    experiments: &'a Experiments,
    unit: Unit<'a>,
    now: DateTime<Utc>,
    /// Outcomes by experiment index; empty unless some experiment has prerequisites.
    memo: Vec<Option<Outcome>>,
}

impl Experiments {
    /// Assigns one unit to the experiments named by `keys` (in that order), or to every
    /// experiment in the file, in file order, when `keys` is `None` (stopped and killed ones
    /// included: their answers carry the variant to show). A requested key that is not in the
    /// file yields an assignment with [`Reason::UnknownExperiment`] and no variant.
    pub fn assign(
        &self,
        unit: &Unit<'_>,
        keys: Option<&[&str]>,
        now: DateTime<Utc>,
    ) -> Vec<Assignment> {
        let mut out = Vec::with_capacity(keys.map_or(self.list.len(), <[_]>::len));
        self.assign_into(unit, keys, now, &mut out);
        out
    }

    /// One experiment; `None` if the key is not in the file.
    pub fn assign_one(&self, unit: &Unit<'_>, key: &str, now: DateTime<Utc>) -> Option<Assignment> {
        let i = self.position(key)?;
        let mut eval = Evaluation::new(self, *unit, now);
        let outcome = eval.outcome(i);
        Some(eval.assignment(i, outcome, &mut Vec::new()))
    }

    /// [`Experiments::assign`] appending to a caller-owned vector (reuse it across requests).
    pub fn assign_into(
        &self,
        unit: &Unit<'_>,
        keys: Option<&[&str]>,
        now: DateTime<Utc>,
        out: &mut Vec<Assignment>,
    ) {
        let mut eval = Evaluation::new(self, *unit, now);
        let mut ids = Vec::new();
        match keys {
            None => {
                for i in 0..self.list.len() {
                    let outcome = eval.outcome(i);
                    out.push(eval.assignment(i, outcome, &mut ids));
                }
            }
            Some(keys) => {
                for key in keys {
                    match self.position(key) {
                        Some(i) => {
                            let outcome = eval.outcome(i);
                            out.push(eval.assignment(i, outcome, &mut ids));
                        }
                        None => out.push(Assignment {
                            experiment: Arc::from(*key),
                            variant: None,
                            in_experiment: false,
                            bucket: None,
                            reason: Reason::UnknownExperiment,
                            hash_attribute: Arc::from(""),
                            hash_value: None,
                        }),
                    }
                }
            }
        }
    }
}

impl<'a> Evaluation<'a> {
    fn new(experiments: &'a Experiments, unit: Unit<'a>, now: DateTime<Utc>) -> Self {
        let memo = if experiments.has_prerequisites {
            vec![None; experiments.list.len()]
        } else {
            Vec::new()
        };
        Evaluation {
            experiments,
            unit,
            now,
            memo,
        }
    }

    fn outcome(&mut self, i: usize) -> Outcome {
        if let Some(Some(done)) = self.memo.get(i) {
            return *done;
        }
        let experiments = self.experiments;
        let outcome = self.evaluate(&experiments.list[i]);
        if let Some(slot) = self.memo.get_mut(i) {
            *slot = Some(outcome);
        }
        outcome
    }

    fn evaluate(&mut self, exp: &'a Experiment) -> Outcome {
        if exp.status == Status::Killed {
            return Outcome::out(exp.fallback, Reason::Killed);
        }
        let id = self.unit.id(&exp.hash_attribute);
        if let Some(&forced) = id.as_deref().and_then(|id| exp.forced.get(id)) {
            return Outcome {
                variant: forced,
                in_experiment: true,
                bucket: None,
                reason: Reason::Forced,
            };
        }
        if exp.status == Status::Stopped {
            return Outcome::out(0, Reason::Stopped);
        }
        if exp.start.is_some_and(|start| self.now < start) {
            return Outcome::out(0, Reason::NotStarted);
        }
        if exp.end.is_some_and(|end| self.now >= end) {
            return Outcome::out(0, Reason::Ended);
        }
        let Some(id) = id else {
            return Outcome::out(0, Reason::NoHashAttribute);
        };
        if let Some(condition) = &exp.condition
            && !condition.matches(self.unit.attributes)
        {
            return Outcome::out(0, Reason::ConditionFailed);
        }
        for p in &exp.prerequisites {
            let parent = self.outcome(p.experiment);
            if !(parent.in_experiment && p.variants.contains(&parent.variant)) {
                return Outcome::out(0, Reason::PrerequisiteFailed);
            }
        }
        if let Some(layer) = &exp.layer
            && !hash::in_namespace(&id, &layer.name, layer.range)
        {
            return Outcome::out(0, Reason::LayerExcluded);
        }
        let bucket = exp.hash_version.bucket(&exp.seed, &id);
        match hash::choose_variant(bucket, &exp.ranges) {
            Some(variant) => Outcome {
                variant,
                in_experiment: true,
                bucket: Some(bucket),
                reason: Reason::Hashed,
            },
            None => Outcome {
                bucket: Some(bucket),
                ..Outcome::out(0, Reason::NotCovered)
            },
        }
    }

    /// Attaches names; `ids` caches one `Arc<str>` unit id per hash attribute for this unit.
    fn assignment(
        &self,
        i: usize,
        outcome: Outcome,
        ids: &mut Vec<(Arc<str>, Option<Arc<str>>)>,
    ) -> Assignment {
        let exp = &self.experiments.list[i];
        let hash_value = match ids.iter().find(|(attr, _)| *attr == exp.hash_attribute) {
            Some((_, id)) => id.clone(),
            None => {
                let id: Option<Arc<str>> = self.unit.id(&exp.hash_attribute).map(Arc::from);
                ids.push((exp.hash_attribute.clone(), id.clone()));
                id
            }
        };
        Assignment {
            experiment: exp.key.clone(),
            variant: Some(exp.variants[outcome.variant].clone()),
            in_experiment: outcome.in_experiment,
            bucket: outcome.bucket,
            reason: outcome.reason,
            hash_attribute: exp.hash_attribute.clone(),
            hash_value,
        }
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
