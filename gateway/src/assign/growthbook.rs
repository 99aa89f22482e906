//! The experiments as a GrowthBook SDK payload (`features`), so GrowthBook's own SDKs, evaluating
//! locally, give every unit the variant and in-experiment flag [`Experiments::assign`] gives.
//!
//! One feature per experiment, named by its key; its value is the variant name. The mapping
//! (`docs/api.md` has it for SDK users):
//! - `defaultValue`: the first variant (the fallback when killed), what units outside get.
//! - Forced units: one experiment rule per forced variant, conditioned on the unit id being one
//!   of its forced ids and weighted entirely to that variant, so the SDK reports them in the
//!   experiment and tracks them, as `/v1/assign` does. They come first and stay while the
//!   experiment is stopped or outside its window, since forcing wins over both here too.
//! - The experiment rule (running and inside `start`..`end` only): variations, weights as
//!   configured (summing to 1 within 0.01, as the SDKs take them), coverage, condition as written, seed, `hashAttribute` and `hashVersion` explicit,
//!   the layer as a namespace, prerequisites as `parentConditions`, and `meta` keys equal to the
//!   variant names (the tracked variation id is the name).
//! - Killed: no rules, the fallback as default. Stopped, not started or ended: forced rules only.
//! - A prerequisite that accepts the parent's default value (its first variant, or the fallback
//!   of a killed parent) cannot be told apart from "not in the parent" by the parent's value, so
//!   it refers to a helper feature `{parent}.in_experiment`: the parent's rules with no default.
//!
//! Pure: the payload depends on the experiments and on `now` only through the start/end
//! windows; [`Payload::next_change`] says when it would next differ.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::experiments::{Experiment, Experiments, Status};

/// The `features` object of a payload, and until when it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub features: Map<String, Value>,
    /// The next start or end after `now`: the payload may differ from then on.
    pub next_change: Option<DateTime<Utc>>,
    /// The last start or end at or before `now`: when the windows last changed.
    pub last_change: Option<DateTime<Utc>>,
}

/// Suffix of the helper features prerequisites use (see the module docs).
pub const IN_EXPERIMENT_SUFFIX: &str = ".in_experiment";

impl Experiments {
    /// The GrowthBook `features` for the experiments in force at `now`.
    pub fn growthbook_features(&self, now: DateTime<Utc>) -> Payload {
        let mut features = Map::new();
        let mut helpers = vec![false; self.list.len()];
        for exp in &self.list {
            let mut rules = forced_rules(exp);
            if exp.status == Status::Killed {
                rules.clear();
            } else if exp.status == Status::Running && in_window(exp, now) {
                let mut rule = rule_base(exp, &exp.key);
                // As configured: the SDKs build ranges from them without normalizing, as we do.
                rule.insert("weights".into(), json!(exp.configured_weights));
                rule.insert("coverage".into(), json!(exp.coverage));
                if let Some(condition) = &exp.condition_json {
                    rule.insert("condition".into(), condition.clone());
                }
                if let Some(layer) = &exp.layer {
                    rule.insert(
                        "namespace".into(),
                        json!([&*layer.name, layer.range.0, layer.range.1]),
                    );
                }
                if !exp.prerequisites.is_empty() {
                    let parents = exp.prerequisites.iter().map(|p| {
                        let parent = &self.list[p.experiment];
                        let required: Vec<&str> =
                            p.variants.iter().map(|&v| &*parent.variants[v]).collect();
                        let id = if required.contains(&default_value(parent)) {
                            helpers[p.experiment] = true;
                            self.helper_name(parent)
                        } else {
                            parent.key.to_string()
                        };
                        json!({"id": id, "condition": {"value": {"$in": required}}})
                    });
                    rule.insert("parentConditions".into(), Value::Array(parents.collect()));
                }
                rules.push(Value::Object(rule));
            }
            features.insert(
                exp.key.to_string(),
                json!({"defaultValue": default_value(exp), "rules": rules}),
            );
        }
        for (i, exp) in self.list.iter().enumerate() {
            if helpers[i] {
                let rules = match &features[&*exp.key]["rules"] {
                    Value::Array(rules) if exp.status != Status::Killed => rules.clone(),
                    _ => Vec::new(),
                };
                features.insert(
                    self.helper_name(exp),
                    json!({"defaultValue": null, "rules": rules}),
                );
            }
        }
        let boundaries = || self.list.iter().flat_map(|e| [e.start, e.end]).flatten();
        Payload {
            features,
            next_change: boundaries().filter(|t| *t > now).min(),
            last_change: boundaries().filter(|t| *t <= now).max(),
        }
    }
}

impl Experiments {
    /// `{key}.in_experiment`, with `_` appended while that is some experiment's own key.
    fn helper_name(&self, parent: &Experiment) -> String {
        let mut name = format!("{}{IN_EXPERIMENT_SUFFIX}", parent.key);
        while self.contains(&name) {
            name.push('_');
        }
        name
    }
}

/// What units outside the experiment see: the fallback of a killed experiment, else variant 0.
fn default_value(exp: &Experiment) -> &str {
    if exp.status == Status::Killed {
        &exp.variants[exp.fallback]
    } else {
        &exp.variants[0]
    }
}

fn in_window(exp: &Experiment, now: DateTime<Utc>) -> bool {
    exp.start.is_none_or(|s| now >= s) && exp.end.is_none_or(|e| now < e)
}

/// The fields every experiment rule of `exp` shares.
fn rule_base(exp: &Experiment, id: &str) -> Map<String, Value> {
    let variations: Vec<&str> = exp.variants.iter().map(|v| &**v).collect();
    let meta: Vec<Value> = variations
        .iter()
        .map(|v| json!({"key": v, "name": v}))
        .collect();
    let mut rule = Map::new();
    rule.insert("id".into(), json!(id));
    rule.insert("key".into(), json!(&*exp.key));
    rule.insert("name".into(), json!(&*exp.key));
    rule.insert("variations".into(), json!(variations));
    rule.insert("meta".into(), Value::Array(meta));
    rule.insert("seed".into(), json!(&*exp.seed));
    rule.insert("hashAttribute".into(), json!(&*exp.hash_attribute));
    rule.insert("hashVersion".into(), json!(exp.hash_version.number()));
    rule
}

/// One rule per forced variant: the forced ids as a condition, all weight on that variant.
fn forced_rules(exp: &Experiment) -> Vec<Value> {
    let mut by_variant: Vec<Vec<Value>> = vec![Vec::new(); exp.variants.len()];
    let mut ids: Vec<(&str, usize)> = exp.forced.iter().map(|(k, v)| (&**k, *v)).collect();
    ids.sort_unstable();
    for (id, variant) in ids {
        by_variant[variant].push(json!(id));
        // A numeric attribute hashes and forces by its JavaScript string form here, but a
        // condition compares values strictly: list the number too.
        if let Some(n) = numeric_form(id) {
            by_variant[variant].push(n);
        }
    }
    by_variant
        .into_iter()
        .enumerate()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(variant, ids)| {
            let mut rule = rule_base(
                exp,
                &format!("{}:forced:{}", exp.key, exp.variants[variant]),
            );
            let weights: Vec<f64> = (0..exp.variants.len())
                .map(|i| if i == variant { 1.0 } else { 0.0 })
                .collect();
            rule.insert("weights".into(), json!(weights));
            rule.insert("coverage".into(), json!(1.0));
            rule.insert(
                "condition".into(),
                json!({ &*exp.hash_attribute: {"$in": ids} }),
            );
            Value::Object(rule)
        })
        .collect()
}

/// `"42"` -> `42`: an id that is exactly some number's JavaScript string form.
fn numeric_form(id: &str) -> Option<Value> {
    let n: f64 = id.parse().ok()?;
    let number = serde_json::Number::from_f64(n)?;
    (super::js::number_to_js_string(n) == id && n != 0.0).then(|| {
        if n.fract() == 0.0 && n.abs() < 9e15 {
            Value::from(n as i64)
        } else {
            Value::Number(number)
        }
    })
}

/// RFC 3339 with milliseconds and `Z`, as GrowthBook writes `dateUpdated`.
pub fn date_updated(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
#[path = "growthbook_tests.rs"]
mod tests;
