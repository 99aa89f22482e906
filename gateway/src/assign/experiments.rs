//! The experiments file: `RawExperiments` (serde, unknown fields refused) -> validated, immutable
//! [`Experiments`] with ranges computed, names resolved to indices and conditions compiled.
//!
//! Owns parsing (JSON, or TOML by extension), every validation rule, and `config_version`. Does
//! no I/O but [`Experiments::load`]'s one read. A config error names the experiment (by key, or
//! by position when the key itself is the problem) and the field. Reload policy (keep the old
//! config when a new file is refused) belongs to the caller.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::condition::Condition;
use super::hash;

/// How an experiments file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Json,
    Toml,
}

impl FileFormat {
    /// `.json` or `.toml` (any case); anything else is refused.
    pub fn from_path(path: &Path) -> Result<FileFormat, ConfigError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext.to_ascii_lowercase().as_str() {
            "json" => Ok(FileFormat::Json),
            "toml" => Ok(FileFormat::Toml),
            _ => Err(ConfigError::UnsupportedFormat {
                path: path.to_owned(),
            }),
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileFormat::Json => "JSON",
            FileFormat::Toml => "TOML",
        })
    }
}

/// Which experiment a [`ConfigError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExperimentRef {
    Key(String),
    /// Position in the file, counted from 1, when the key is missing or unusable.
    Position(usize),
}

impl fmt::Display for ExperimentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExperimentRef::Key(key) => write!(f, "experiment {key:?}"),
            ExperimentRef::Position(n) => write!(f, "experiment #{n}"),
        }
    }
}

/// Why an experiments file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read experiments file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("experiments file {}: unsupported extension (expected .json or .toml)", path.display())]
    UnsupportedFormat { path: PathBuf },
    #[error("experiments file is not valid {format}: {message}")]
    Syntax { format: FileFormat, message: String },
    #[error("experiments file: {message}")]
    Structure { message: String },
    #[error("{experiment}: field {field:?}: {reason}")]
    Invalid {
        experiment: ExperimentRef,
        field: String,
        reason: String,
    },
}

impl ConfigError {
    /// The experiment the error is about, if it is about one.
    pub fn experiment(&self) -> Option<&ExperimentRef> {
        match self {
            ConfigError::Invalid { experiment, .. } => Some(experiment),
            _ => None,
        }
    }

    /// The offending field (`"weights"`, `"layer.range"`), if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The file as written: `{"experiments": [ ... ]}`. Each element is read on its own (as a
/// [`RawExperiment`]) so that its errors can name it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiments {
    experiments: Vec<Value>,
}

/// One experiment as written in the file. Field docs are the operator docs (docs/experiments.md
/// says the same at more length).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    /// Unique name; also the hash seed unless `seed` is set. Changing it reshuffles everyone.
    pub key: String,
    /// Free text for humans; ignored by evaluation.
    #[serde(default)]
    pub description: Option<String>,
    /// Hash seed (default: `key`). Set it to keep assignments when renaming an experiment.
    #[serde(default)]
    pub seed: Option<String>,
    /// The attribute whose value is the randomization unit (default `user_id`).
    #[serde(default)]
    pub hash_attribute: Option<String>,
    /// GrowthBook hash version: 2 (default) or 1 (GrowthBook's legacy experiments; its SDKs
    /// assume 1 when a rule does not say). Changing it reshuffles everyone.
    #[serde(default)]
    pub hash_version: Option<u8>,
    /// Two or more distinct variant names; the first is what units outside the experiment get.
    pub variants: Vec<String>,
    /// One weight per variant, each >= 0, summing to 1 within 0.01 (default: equal).
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    /// Share of eligible units that enter the experiment, 0..=1 (default 1).
    #[serde(default)]
    pub coverage: Option<f64>,
    /// GrowthBook/MongoDB-style targeting condition on the request attributes.
    #[serde(default)]
    pub condition: Option<Value>,
    /// `running` (default), `stopped` or `killed`.
    #[serde(default)]
    pub status: Option<Status>,
    /// The variant everyone gets while `killed` (default: the first variant).
    #[serde(default)]
    pub fallback: Option<String>,
    /// Unit id (value of `hash_attribute`) -> variant; wins over everything but `killed`.
    #[serde(default)]
    pub forced: Option<BTreeMap<String, String>>,
    /// Mutual exclusion with the other experiments of the same layer.
    #[serde(default)]
    pub layer: Option<RawLayer>,
    /// Other experiments' variants a unit must be assigned to first.
    #[serde(default)]
    pub prerequisites: Vec<RawPrerequisite>,
    /// RFC 3339 time from which the experiment runs (inclusive).
    #[serde(default)]
    pub start: Option<String>,
    /// RFC 3339 time at which the experiment ends (exclusive).
    #[serde(default)]
    pub end: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLayer {
    pub name: String,
    /// `[start, end)` within `[0, 1]`: the share of the layer's units this experiment may see.
    pub range: [f64; 2],
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrerequisite {
    pub experiment: String,
    pub variants: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Stopped,
    Killed,
}

/// A validated, immutable set of experiments. Cheap to share behind an `Arc`; a reload builds a
/// new one and swaps it in whole.
#[derive(Debug)]
pub struct Experiments {
    pub(super) version: String,
    pub(super) list: Vec<Experiment>,
    index: HashMap<Arc<str>, usize>,
    /// Whether any experiment has prerequisites (evaluation then memoizes outcomes).
    pub(super) has_prerequisites: bool,
}

#[derive(Debug)]
pub(super) struct Experiment {
    pub(super) key: Arc<str>,
    pub(super) seed: Box<str>,
    pub(super) hash_attribute: Arc<str>,
    pub(super) hash_version: HashVersion,
    pub(super) variants: Vec<Arc<str>>,
    pub(super) ranges: Vec<(f64, f64)>,
    /// Variant weights as configured (or equal), normalized to sum to 1.
    pub(super) weights: Vec<f64>,
    /// Variant weights exactly as configured (or equal): what `ranges` were built from, and
    /// what GrowthBook's SDKs must be given to build the same ranges (they do not normalize).
    pub(super) configured_weights: Vec<f64>,
    pub(super) coverage: f64,
    pub(super) status: Status,
    pub(super) fallback: usize,
    pub(super) forced: HashMap<Box<str>, usize>,
    pub(super) layer: Option<Layer>,
    pub(super) prerequisites: Vec<Prerequisite>,
    pub(super) condition: Option<Condition>,
    /// The condition as written, for payloads that SDKs evaluate themselves.
    pub(super) condition_json: Option<Value>,
    pub(super) start: Option<DateTime<Utc>>,
    pub(super) end: Option<DateTime<Utc>>,
}

/// GrowthBook's hash versions: how a unit id and the seed become a bucket in `[0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashVersion {
    /// `(fnv1a32(value + seed) % 1000) / 1000`: GrowthBook's legacy experiments.
    V1,
    /// `(fnv1a32(decimal(fnv1a32(seed + value))) % 10000) / 10000`: the default.
    V2,
}

impl HashVersion {
    pub fn number(self) -> u8 {
        match self {
            HashVersion::V1 => 1,
            HashVersion::V2 => 2,
        }
    }

    /// The unit's bucket for `seed`.
    pub fn bucket(self, seed: &str, unit_id: &str) -> f64 {
        match self {
            HashVersion::V1 => hash::hash_v1(seed, unit_id),
            HashVersion::V2 => hash::hash_v2(seed, unit_id),
        }
    }
}

/// The public face of one experiment: what it randomizes and with which weights.
#[derive(Debug, Clone, Copy)]
pub struct ExperimentSummary<'a> {
    pub key: &'a Arc<str>,
    pub variants: &'a [Arc<str>],
    /// Normalized to sum to 1; equal when the file gives none.
    pub weights: &'a [f64],
    pub coverage: f64,
    pub status: Status,
    pub layer: Option<&'a str>,
    pub hash_attribute: &'a str,
    pub hash_version: HashVersion,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Killed => "killed",
        }
    }
}

#[derive(Debug)]
pub(super) struct Layer {
    pub(super) name: Box<str>,
    pub(super) range: (f64, f64),
}

#[derive(Debug)]
pub(super) struct Prerequisite {
    pub(super) experiment: usize,
    pub(super) variants: Vec<usize>,
}

impl Experiments {
    /// Parses and validates an experiments file's text.
    pub fn parse(text: &str, format: FileFormat) -> Result<Experiments, ConfigError> {
        let document = match format {
            FileFormat::Json => serde_json::from_str::<Value>(text).map_err(|e| e.to_string()),
            FileFormat::Toml => toml::from_str::<toml::Table>(text)
                .map_err(|e| e.to_string())
                .and_then(|table| toml_to_json(toml::Value::Table(table))),
        }
        .map_err(|message| ConfigError::Syntax { format, message })?;
        let raw = RawExperiments::deserialize(document).map_err(|e| ConfigError::Structure {
            message: e.to_string(),
        })?;
        let mut experiments = Vec::with_capacity(raw.experiments.len());
        for (i, element) in raw.experiments.into_iter().enumerate() {
            experiments.push(read_experiment(i + 1, element)?);
        }
        validate(experiments, hash::config_version(text.as_bytes()))
    }

    /// Reads a file and parses it in the format its extension names.
    pub fn load(path: &Path) -> Result<Experiments, ConfigError> {
        let format = FileFormat::from_path(path)?;
        let read_error = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::read(path).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Syntax {
            format,
            message: format!("not UTF-8: {e}"),
        })?;
        Experiments::parse(&text, format)
    }

    /// `config_version`: 16 hex digits identifying the file's exact bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Experiment keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|e| &*e.key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The variants of an experiment, in file order.
    pub fn variants(&self, key: &str) -> Option<impl Iterator<Item = &str>> {
        let exp = &self.list[*self.index.get(key)?];
        Some(exp.variants.iter().map(|v| &**v))
    }

    /// What each experiment is, for the lake's `experiments` table and the live health checks.
    pub fn summaries(&self) -> impl Iterator<Item = ExperimentSummary<'_>> {
        self.list.iter().map(|e| ExperimentSummary {
            key: &e.key,
            variants: &e.variants,
            weights: &e.weights,
            coverage: e.coverage,
            status: e.status,
            layer: e.layer.as_ref().map(|l| &*l.name),
            hash_attribute: &e.hash_attribute,
            hash_version: e.hash_version,
            start: e.start,
            end: e.end,
        })
    }

    /// One experiment's summary.
    pub fn summary(&self, key: &str) -> Option<ExperimentSummary<'_>> {
        let i = self.position(key)?;
        self.summaries().nth(i)
    }

    pub(super) fn position(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }
}

fn invalid(key: &str, field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        experiment: ExperimentRef::Key(key.to_owned()),
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Deserializes one element; on failure, names the field at fault by trying each field alone
/// next to a minimal valid experiment (serde's own message does not say which field it was).
fn read_experiment(position: usize, element: Value) -> Result<RawExperiment, ConfigError> {
    let at_position = |field: &str, reason: String| ConfigError::Invalid {
        experiment: ExperimentRef::Position(position),
        field: field.to_owned(),
        reason,
    };
    let Value::Object(fields) = &element else {
        return Err(at_position("", "must be an object".to_owned()));
    };
    let key = match fields.get("key") {
        Some(Value::String(key)) if !key.trim().is_empty() => key.clone(),
        Some(Value::String(_)) => return Err(at_position("key", "must not be empty".to_owned())),
        Some(_) => return Err(at_position("key", "must be a string".to_owned())),
        None => return Err(at_position("key", "missing".to_owned())),
    };
    let error = match RawExperiment::deserialize(&element) {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    if !fields.contains_key("variants") {
        return Err(invalid(&key, "variants", "missing"));
    }
    for (name, value) in fields {
        let mut probe = serde_json::Map::new();
        probe.insert("key".to_owned(), Value::from("k"));
        probe.insert("variants".to_owned(), serde_json::json!(["a", "b"]));
        probe.insert(name.clone(), value.clone());
        if let Err(e) = RawExperiment::deserialize(&Value::Object(probe)) {
            return Err(invalid(&key, name, e.to_string()));
        }
    }
    Err(invalid(&key, "", error.to_string()))
}

/// TOML has no null and has datetimes; datetimes become RFC 3339 strings.
fn toml_to_json(value: toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a usable number"))?,
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(dt) => Value::String(dt.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| Ok((k, toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Trims a float for messages: 0.8999999999999999 -> "0.9".
fn fmt_num(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn parse_time(
    key: &str,
    field: &str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, ConfigError> {
    value
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    invalid(
                        key,
                        field,
                        format!(
                            "{s:?} is not an RFC 3339 time ({e}), e.g. \"2025-01-31T00:00:00Z\""
                        ),
                    )
                })
        })
        .transpose()
}

/// Checks everything that can be checked on one experiment alone, and builds it with
/// prerequisites still unresolved (names).
fn validate_one(
    raw: RawExperiment,
) -> Result<(Experiment, Option<Vec<RawPrerequisite>>), ConfigError> {
    let key = raw.key.as_str();
    let err = |field: &str, reason: String| invalid(key, field, reason);

    let n = raw.variants.len();
    if n < 2 {
        return Err(err(
            "variants",
            format!("has {n} variant(s), needs at least 2"),
        ));
    }
    for (i, v) in raw.variants.iter().enumerate() {
        if v.is_empty() {
            return Err(err("variants", format!("variant #{} is empty", i + 1)));
        }
        if raw.variants[..i].contains(v) {
            return Err(err("variants", format!("{v:?} is listed twice")));
        }
    }
    let variant_index = |field: &str, name: &str| {
        raw.variants.iter().position(|v| v == name).ok_or_else(|| {
            err(
                field,
                format!("{name:?} is not one of the variants {:?}", raw.variants),
            )
        })
    };

    if let Some(weights) = &raw.weights {
        if weights.len() != n {
            return Err(err(
                "weights",
                format!("has {} weights for {n} variants", weights.len()),
            ));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
            return Err(err(
                "weights",
                format!("weight {} is negative", fmt_num(*w)),
            ));
        }
        if !hash::weights_sum_ok(weights) {
            let sum: f64 = weights.iter().sum();
            return Err(err(
                "weights",
                format!("sum to {}, must be 1 (within 0.01)", fmt_num(sum)),
            ));
        }
    }
    let coverage = raw.coverage.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&coverage) {
        return Err(err(
            "coverage",
            format!("is {}, must be between 0 and 1", fmt_num(coverage)),
        ));
    }
    let ranges = hash::bucket_ranges(n, coverage, raw.weights.as_deref());
    let configured_weights = raw
        .weights
        .clone()
        .unwrap_or_else(|| vec![1.0 / n as f64; n]);
    let sum: f64 = configured_weights.iter().sum();
    let weights = configured_weights.iter().map(|x| x / sum).collect();

    let seed = match raw.seed {
        Some(seed) if seed.is_empty() => {
            return Err(err(
                "seed",
                "must not be empty (leave it out to use the key)".to_owned(),
            ));
        }
        Some(seed) => seed,
        None => raw.key.clone(),
    };
    let hash_version = match raw.hash_version {
        None | Some(2) => HashVersion::V2,
        Some(1) => HashVersion::V1,
        Some(other) => {
            return Err(err(
                "hash_version",
                format!("is {other}, must be 1 or 2 (GrowthBook's hash versions)"),
            ));
        }
    };
    let hash_attribute = raw.hash_attribute.unwrap_or_else(|| "user_id".to_owned());
    if hash_attribute.is_empty() {
        return Err(err("hash_attribute", "must not be empty".to_owned()));
    }
    let fallback = match &raw.fallback {
        Some(name) => variant_index("fallback", name)?,
        None => 0,
    };
    let mut forced = HashMap::new();
    for (unit, variant) in raw.forced.iter().flatten() {
        if unit.is_empty() {
            return Err(err("forced", "a unit id is empty".to_owned()));
        }
        forced.insert(Box::from(unit.as_str()), variant_index("forced", variant)?);
    }
    let layer = match raw.layer {
        Some(RawLayer {
            name,
            range: [start, end],
        }) => {
            if name.is_empty() {
                return Err(err("layer.name", "must not be empty".to_owned()));
            }
            if !(0.0..=1.0).contains(&start) || !(0.0..=1.0).contains(&end) || start >= end {
                return Err(err(
                    "layer.range",
                    format!(
                        "[{}, {}] must satisfy 0 <= start < end <= 1",
                        fmt_num(start),
                        fmt_num(end)
                    ),
                ));
            }
            Some(Layer {
                name: name.into(),
                range: (start, end),
            })
        }
        None => None,
    };
    let condition = raw
        .condition
        .as_ref()
        .map(Condition::compile)
        .transpose()
        .map_err(|e| err("condition", e.to_string()))?;
    let start = parse_time(key, "start", raw.start.as_deref())?;
    let end = parse_time(key, "end", raw.end.as_deref())?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(err(
            "end",
            format!("{} is not after start {}", e.to_rfc3339(), s.to_rfc3339()),
        ));
    }
    for p in &raw.prerequisites {
        if p.variants.is_empty() {
            return Err(err(
                "prerequisites",
                format!("the prerequisite on {:?} lists no variants", p.experiment),
            ));
        }
    }

    let experiment = Experiment {
        key: Arc::from(key),
        seed: seed.into(),
        hash_attribute: hash_attribute.into(),
        hash_version,
        variants: raw.variants.iter().map(|v| Arc::from(v.as_str())).collect(),
        ranges,
        weights,
        configured_weights,
        coverage,
        status: raw.status.unwrap_or(Status::Running),
        fallback,
        forced,
        layer,
        prerequisites: Vec::new(),
        condition,
        condition_json: raw.condition,
        start,
        end,
    };
    let prerequisites = (!raw.prerequisites.is_empty()).then_some(raw.prerequisites);
    Ok((experiment, prerequisites))
}

/// Whole-file checks: unique keys, prerequisites resolved and acyclic, layers disjoint.
fn validate(raws: Vec<RawExperiment>, version: String) -> Result<Experiments, ConfigError> {
    let mut list = Vec::with_capacity(raws.len());
    let mut pending = Vec::with_capacity(raws.len());
    let mut index: HashMap<Arc<str>, usize> = HashMap::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let (exp, prerequisites) = validate_one(raw)?;
        if let Some(&first) = index.get(&exp.key) {
            return Err(ConfigError::Invalid {
                experiment: ExperimentRef::Position(i + 1),
                field: "key".to_owned(),
                reason: format!(
                    "{:?} is already the key of experiment #{}",
                    exp.key,
                    first + 1
                ),
            });
        }
        index.insert(exp.key.clone(), i);
        list.push(exp);
        pending.push(prerequisites);
    }

    for (i, raws) in pending.into_iter().enumerate() {
        for raw in raws.into_iter().flatten() {
            let key = &list[i].key;
            let Some(&parent) = index.get(raw.experiment.as_str()) else {
                return Err(invalid(
                    key,
                    "prerequisites",
                    format!("experiment {:?} does not exist", raw.experiment),
                ));
            };
            let variants = raw
                .variants
                .iter()
                .map(|name| {
                    list[parent]
                        .variants
                        .iter()
                        .position(|v| **v == **name)
                        .ok_or_else(|| {
                            invalid(
                                key,
                                "prerequisites",
                                format!("experiment {:?} has no variant {name:?}", raw.experiment),
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
            list[i].prerequisites.push(Prerequisite {
                experiment: parent,
                variants,
            });
        }
    }
    check_cycles(&list)?;
    check_layers(&list)?;

    let has_prerequisites = list.iter().any(|e| !e.prerequisites.is_empty());
    Ok(Experiments {
        version,
        list,
        index,
        has_prerequisites,
    })
}

/// Depth-first search over prerequisite edges; a back edge is a cycle, reported in full.
fn check_cycles(list: &[Experiment]) -> Result<(), ConfigError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        list: &[Experiment],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Result<(), ConfigError> {
        marks[i] = Mark::Active;
        stack.push(i);
        for p in &list[i].prerequisites {
            match marks[p.experiment] {
                Mark::Done => {}
                Mark::New => visit(p.experiment, list, marks, stack)?,
                Mark::Active => {
                    let from = stack.iter().position(|&s| s == p.experiment).unwrap_or(0);
                    let cycle: Vec<&str> = stack[from..]
                        .iter()
                        .chain([&p.experiment])
                        .map(|&s| &*list[s].key)
                        .collect();
                    return Err(invalid(
                        &list[p.experiment].key,
                        "prerequisites",
                        format!("prerequisites form a cycle: {}", cycle.join(" -> ")),
                    ));
                }
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        Ok(())
    }
    let mut marks = vec![Mark::New; list.len()];
    let mut stack = Vec::new();
    for i in 0..list.len() {
        if marks[i] == Mark::New {
            visit(i, list, &mut marks, &mut stack)?;
        }
    }
    Ok(())
}

/// Experiments of one layer must hash the same attribute and own disjoint ranges; otherwise a
/// unit could be in two of them.
fn check_layers(list: &[Experiment]) -> Result<(), ConfigError> {
    for (i, exp) in list.iter().enumerate() {
        let Some(layer) = &exp.layer else { continue };
        for other in &list[..i] {
            let Some(other_layer) = &other.layer else {
                continue;
            };
            if other_layer.name != layer.name {
                continue;
            }
            if other.hash_attribute != exp.hash_attribute {
                return Err(invalid(
                    &exp.key,
                    "hash_attribute",
                    format!(
                        "is {:?} but experiment {:?} in the same layer {:?} uses {:?}; a layer needs one unit type",
                        exp.hash_attribute, other.key, layer.name, other.hash_attribute
                    ),
                ));
            }
            let (a, b) = (layer.range, other_layer.range);
            if a.0 < b.1 && b.0 < a.1 {
                return Err(invalid(
                    &exp.key,
                    "layer.range",
                    format!(
                        "[{}, {}) overlaps experiment {:?}'s [{}, {}) in layer {:?}",
                        fmt_num(a.0),
                        fmt_num(a.1),
                        other.key,
                        fmt_num(b.0),
                        fmt_num(b.1),
                        layer.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "experiments_tests.rs"]
mod tests;
