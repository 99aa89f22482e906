//! Launch profiles: the TOML files in `loadtests/`.
//!
//! `RawProfile` is what serde reads (unknown fields are refused, so a typo never silently
//! falls back to a default); `RawProfile::validate` turns it into a typed `Profile` or a
//! `ProfileError` naming the field. Command-line overrides are applied to the validated
//! profile by `Profile::with_overrides`, which re-checks what it changes. Nothing here does
//! I/O beyond reading the profile file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A profile that cannot be used, naming the offending field (`load.rate`, ...).
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("profile {path} is not valid TOML for a profile: {message}")]
    Parse { path: String, message: String },
    #[error("profile field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The endpoints a simulated user calls; also the first half of every request name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// Gateway `POST /v1/assign`.
    Assign,
    /// The service under test.
    Target,
    /// Gateway `POST /v1/events`.
    Events,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Assign, Endpoint::Target, Endpoint::Events];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Assign => "assign",
            Endpoint::Target => "target",
            Endpoint::Events => "events",
        }
    }
}

/// Where the target reads the variant from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantIn {
    /// A request header named `variant_key` (default `x-variant`).
    Header,
    /// A query parameter named `variant_key` (default `variant`).
    Query,
    /// The `{variant}` placeholder in `path`.
    Path,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub name: Option<String>,
    pub gateway: RawGateway,
    pub experiment: RawExperiment,
    pub target: RawTarget,
    pub load: RawLoad,
    #[serde(default)]
    pub events: RawEvents,
    #[serde(default)]
    pub verdict: RawVerdict,
    pub resources: Option<RawResources>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub url: String,
    pub log_exposure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    pub key: String,
    pub events_key: Option<String>,
    pub control: Option<String>,
    pub weights: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub url: String,
    pub urls: Option<BTreeMap<String, String>>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub variant_in: Option<VariantIn>,
    pub variant_key: Option<String>,
    pub body: Option<String>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoad {
    pub users: Option<usize>,
    pub stages: Option<Vec<RawStage>>,
    pub rate: Option<f64>,
    pub rate_per_user: Option<f64>,
    pub ramp_seconds: Option<u64>,
    pub duration_seconds: Option<u64>,
    pub requests_per_unit: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub users: usize,
    pub seconds: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    pub batch_size: Option<usize>,
    pub flush_ms: Option<u64>,
    pub conversion_rate: Option<f64>,
    pub conversion_name: Option<String>,
    pub conversion_value: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerdict {
    pub alpha: Option<f64>,
    pub margins: Option<RawMargins>,
    pub endpoints: Option<Vec<Endpoint>>,
    pub replicates: Option<usize>,
    pub block_ms: Option<u64>,
    pub srm_alpha: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub min_achieved_ratio: Option<f64>,
    pub max_client_lag_ms: Option<f64>,
    pub seed: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    pub metrics_path: Option<String>,
    pub metrics_urls: Option<BTreeMap<String, String>>,
    pub cpu_metric: Option<String>,
    pub memory_metric: Option<String>,
    pub scrape_ms: Option<u64>,
    pub cpu_margin: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMargins {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub gateway_url: String,
    /// Ask the gateway to log exposures itself (`log_exposure` in `/v1/assign`).
    pub log_exposure: bool,
    pub experiment: String,
    /// Experiment key the posted events carry: `experiment` unless the profile names a
    /// dedicated one, so load-test events can sit apart from users' in the lake.
    pub events_key: String,
    /// Variant names; index 0 is the control.
    pub variants: Vec<String>,
    /// Weights in the order of `variants`, normalised to sum to 1.
    pub weights: Vec<f64>,
    pub target: Target,
    pub load: Load,
    pub events: Events,
    pub verdict: VerdictConfig,
    /// Resource use per variant, scraped from each deployment's Prometheus metrics.
    pub resources: Option<Resources>,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of each variant's deployment, no trailing slash, in the order of
    /// `Profile::variants`: `target.url` unless `target.urls` names another one.
    pub urls: Vec<String>,
    pub method: Method,
    /// Path starting with `/`; may hold `{variant}` (required when `variant_in = "path"`).
    pub path: String,
    pub variant_in: VariantIn,
    /// Header or query parameter name (unused for `path`).
    pub variant_key: String,
    pub body: Option<String>,
    pub timeout: Duration,
}

impl Target {
    /// The request path for `variant`, with the variant in it for `path` and `query`.
    pub fn path_for(&self, variant: &str) -> String {
        match self.variant_in {
            VariantIn::Path => self.path.replace("{variant}", variant),
            VariantIn::Query => format!("{}?{}={variant}", self.path, self.variant_key),
            VariantIn::Header => self.path.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

#[derive(Debug, Clone)]
pub struct Load {
    pub shape: Shape,
    /// Target requests per second each user is paced at (a fixed schedule, not a think time).
    pub rate_per_user: f64,
    /// Target requests per unit before the user takes a new unit id.
    pub requests_per_unit: u32,
}

#[derive(Debug, Clone)]
pub enum Shape {
    /// A fixed number of users started over `ramp`, then held for `hold`.
    Steady {
        users: usize,
        ramp: Duration,
        hold: Duration,
    },
    /// Goose test-plan steps: reach `users` over `seconds`, in order.
    Stages(Vec<RawStage>),
}

impl Shape {
    pub fn max_users(&self) -> usize {
        match self {
            Shape::Steady { users, .. } => *users,
            Shape::Stages(stages) => stages.iter().map(|s| s.users).max().unwrap_or(0),
        }
    }

    /// Users on average over the part of the run that is judged: all of it for stages
    /// (ramps count at their mean), the hold for a steady shape.
    pub fn mean_users(&self) -> f64 {
        match self {
            Shape::Steady { users, .. } => *users as f64,
            Shape::Stages(stages) => {
                let mut previous = 0.0;
                let mut user_seconds = 0.0;
                for s in stages {
                    user_seconds += (previous + s.users as f64) / 2.0 * s.seconds as f64;
                    previous = s.users as f64;
                }
                user_seconds / self.total().as_secs_f64().max(1.0)
            }
        }
    }

    /// Planned run length, ramp included.
    pub fn total(&self) -> Duration {
        match self {
            Shape::Steady { ramp, hold, .. } => *ramp + *hold,
            Shape::Stages(stages) => Duration::from_secs(stages.iter().map(|s| s.seconds).sum()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Events {
    pub batch_size: usize,
    /// A queue older than this is posted even when not full, as client SDKs do.
    pub flush_after: Duration,
    pub conversion_rate: f64,
    pub conversion_name: String,
    pub conversion_value: f64,
}

/// Where and what to scrape for each variant's resource use.
#[derive(Debug, Clone)]
pub struct Resources {
    /// Metrics URL per variant, in the order of `Profile::variants`.
    pub metrics_urls: Vec<String>,
    pub cpu: MetricSelector,
    pub memory: MetricSelector,
    pub scrape_every: Duration,
    /// Allowed relative increase of CPU per request before it is a regression.
    pub cpu_margin: f64,
    /// How `metrics_urls` is made from the deployments, kept for `--target` overrides.
    pub derive: MetricsSource,
}

/// The profile's `resources.metrics_path` and `resources.metrics_urls`.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    pub path: String,
    pub explicit: BTreeMap<String, String>,
}

impl MetricsSource {
    /// Each variant's metrics URL: its explicit one, else its deployment's base URL plus
    /// `path`.
    pub fn metrics_urls(&self, variants: &[String], base_urls: &[String]) -> Vec<String> {
        variants
            .iter()
            .zip(base_urls)
            .map(|(v, base)| {
                self.explicit
                    .get(v)
                    .cloned()
                    .unwrap_or_else(|| format!("{base}{}", self.path))
            })
            .collect()
    }
}

/// A metric name with optional label matchers, `name` or `name{label="value",...}`: the
/// samples of that name whose labels include all the given ones are summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSelector {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl MetricSelector {
    pub fn parse(field: &'static str, text: &str) -> Result<MetricSelector, ProfileError> {
        let text = text.trim();
        let (name, rest) = match text.find('{') {
            Some(i) => (&text[..i], Some(&text[i..])),
            None => (text, None),
        };
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        if name.is_empty()
            || !name.chars().all(name_ok)
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(invalid(
                field,
                format!("`{text}` is not a Prometheus metric name"),
            ));
        }
        let mut labels = Vec::new();
        if let Some(rest) = rest {
            let inner = rest
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or_else(|| {
                    invalid(field, format!("`{text}`: labels must be closed by '}}'"))
                })?;
            for pair in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| invalid(field, format!("`{pair}` is not label=\"value\"")))?;
                let v = v
                    .trim()
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or_else(|| {
                        invalid(field, format!("the value in `{pair}` must be quoted"))
                    })?;
                labels.push((k.trim().to_string(), v.to_string()));
            }
        }
        Ok(MetricSelector {
            name: name.to_string(),
            labels,
        })
    }
}

impl std::fmt::Display for MetricSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            let pairs: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            write!(f, "{{{}}}", pairs.join(","))?;
        }
        Ok(())
    }
}

/// The percentiles every comparison is made at, with their margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin {
    /// 0.50, 0.95 or 0.99.
    pub quantile: f64,
    /// Allowed relative slowdown: a ratio up to `1 + margin` is not a regression.
    pub margin: f64,
}

#[derive(Debug, Clone)]
pub struct VerdictConfig {
    /// Family-wise error rate of the verdict (Holm over variants x percentiles x endpoints).
    pub alpha: f64,
    pub margins: Vec<Margin>,
    pub endpoints: Vec<Endpoint>,
    pub replicates: usize,
    /// Bootstrap block length, as a span of time turned into a count of consecutive requests.
    pub block: Duration,
    pub srm_alpha: f64,
    pub max_error_rate: f64,
    pub min_achieved_ratio: f64,
    pub max_client_lag: Duration,
    pub seed: Option<u64>,
}

/// Command-line flags that override the profile.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub gateway: Option<String>,
    /// Every variant's deployment (`target.url` and `target.urls` alike).
    pub target: Option<String>,
    /// `(variant, base URL)`: one variant's deployment, applied after `target`.
    pub variant_urls: Vec<(String, String)>,
    pub duration_seconds: Option<u64>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let fallback_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "profile".to_string());
        Profile::parse(&text, &fallback_name).map_err(|e| match e {
            ProfileError::Parse { message, .. } => ProfileError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str, fallback_name: &str) -> Result<Profile, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: fallback_name.to_string(),
            message: e.to_string(),
        })?;
        raw.validate(fallback_name)
    }

    pub fn with_overrides(mut self, overrides: &Overrides) -> Result<Profile, ProfileError> {
        if let Some(url) = &overrides.gateway {
            self.gateway_url = check_url("gateway.url", url)?;
        }
        if let Some(url) = &overrides.target {
            let url = check_url("target.url", url)?;
            self.target.urls = vec![url; self.variants.len()];
        }
        for (variant, url) in &overrides.variant_urls {
            let v = self.variant_index(variant).ok_or_else(|| {
                invalid(
                    "target.urls",
                    format!("`{variant}` is not a variant of experiment.weights"),
                )
            })?;
            self.target.urls[v] = check_url("target.urls", url)?;
        }
        if let Some(resources) = &mut self.resources {
            resources.metrics_urls = resources
                .derive
                .metrics_urls(&self.variants, &self.target.urls);
        }
        if let Some(seconds) = overrides.duration_seconds {
            if seconds == 0 {
                return Err(invalid(
                    "load.duration_seconds",
                    "must be at least 1 second",
                ));
            }
            self.load.shape = match self.load.shape {
                Shape::Steady { users, ramp, .. } => Shape::Steady {
                    users,
                    ramp,
                    hold: Duration::from_secs(seconds),
                },
                // Stages keep their shape, stretched or squeezed to the new total.
                Shape::Stages(stages) => {
                    let total: u64 = stages.iter().map(|s| s.seconds).sum();
                    let scale = seconds as f64 / total.max(1) as f64;
                    Shape::Stages(
                        stages
                            .into_iter()
                            .map(|s| RawStage {
                                users: s.users,
                                seconds: ((s.seconds as f64 * scale).round() as u64).max(1),
                            })
                            .collect(),
                    )
                }
            };
        }
        self.check_resources()?;
        Ok(self)
    }

    /// Refuses two variants on one metrics endpoint: a process's CPU cannot be split
    /// between the variants it serves. Checked once the command line has had its say
    /// (`--target`, `--variant-url`), since those usually give the deployments.
    pub fn check_resources(&self) -> Result<(), ProfileError> {
        let (Some(resources), variants) = (&self.resources, &self.variants) else {
            return Ok(());
        };
        let urls = &resources.metrics_urls;
        for (i, a) in urls.iter().enumerate() {
            if let Some(j) = urls[..i].iter().position(|b| b == a) {
                return Err(invalid(
                    "resources",
                    format!(
                        "`{}` and `{}` would both be measured at {a}: CPU per request needs each variant on its own deployment (target.urls) or its own metrics URL (resources.metrics_urls)",
                        variants[j], variants[i]
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn control(&self) -> &str {
        &self.variants[0]
    }

    pub fn variant_index(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v == name)
    }
}

fn check_url(field: &'static str, url: &str) -> Result<String, ProfileError> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                field,
                format!("`{url}` must start with http:// or https://"),
            )
        })?;
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid(
            field,
            format!("`{url}` must be a base URL (scheme, host, port) without a path"),
        ));
    }
    Ok(trimmed.to_string())
}

fn check_fraction(field: &'static str, value: f64, lo: f64, hi: f64) -> Result<f64, ProfileError> {
    if !(value.is_finite() && value >= lo && value <= hi) {
        return Err(invalid(field, format!("{value} is not in [{lo}, {hi}]")));
    }
    Ok(value)
}

impl RawProfile {
    pub fn validate(self, fallback_name: &str) -> Result<Profile, ProfileError> {
        let gateway_url = check_url("gateway.url", &self.gateway.url)?;
        let (variants, weights) = validate_experiment(&self.experiment)?;
        if self.experiment.key.is_empty() {
            return Err(invalid("experiment.key", "must not be empty"));
        }
        let events_key = match self.experiment.events_key {
            Some(key) if key.is_empty() || key.len() > 128 => {
                return Err(invalid("experiment.events_key", "must be 1-128 bytes"));
            }
            Some(key) => key,
            None => self.experiment.key.clone(),
        };
        let target = validate_target(self.target, &variants)?;
        let resources = self
            .resources
            .map(|r| validate_resources(r, &variants, &target.urls))
            .transpose()?;
        let load = validate_load(self.load)?;
        let events = validate_events(self.events)?;
        let verdict = validate_verdict(self.verdict)?;
        Ok(Profile {
            name: self.name.unwrap_or_else(|| fallback_name.to_string()),
            gateway_url,
            log_exposure: self.gateway.log_exposure.unwrap_or(false),
            experiment: self.experiment.key,
            events_key,
            variants,
            weights,
            target,
            load,
            events,
            verdict,
            resources,
        })
    }
}

fn validate_experiment(raw: &RawExperiment) -> Result<(Vec<String>, Vec<f64>), ProfileError> {
    if raw.weights.len() < 2 {
        return Err(invalid(
            "experiment.weights",
            "needs at least two variants (the control and one to compare)",
        ));
    }
    let mut sum = 0.0;
    for (name, &weight) in &raw.weights {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if name.is_empty() || !name.chars().all(plain) {
            return Err(invalid(
                "experiment.weights",
                format!(
                    "variant name `{name}` must be made of ASCII letters, digits, '_', '-', '.'"
                ),
            ));
        }
        if !(weight.is_finite() && weight > 0.0) {
            return Err(invalid(
                "experiment.weights",
                format!("weight of `{name}` must be a positive number, got {weight}"),
            ));
        }
        sum += weight;
    }
    if (sum - 1.0).abs() > 0.01 {
        return Err(invalid(
            "experiment.weights",
            format!("weights must sum to 1 (within 0.01), they sum to {sum}"),
        ));
    }
    let control = raw.control.clone().unwrap_or_else(|| "control".to_string());
    if !raw.weights.contains_key(&control) {
        return Err(invalid(
            "experiment.control",
            format!("`{control}` is not one of the variants in experiment.weights"),
        ));
    }
    let mut variants = vec![control.clone()];
    let mut weights = vec![raw.weights[&control] / sum];
    for (name, weight) in &raw.weights {
        if *name != control {
            variants.push(name.clone());
            weights.push(weight / sum);
        }
    }
    Ok((variants, weights))
}

fn validate_target(raw: RawTarget, variants: &[String]) -> Result<Target, ProfileError> {
    let url = check_url("target.url", &raw.url)?;
    let mut urls = vec![url; variants.len()];
    for (variant, variant_url) in raw.urls.unwrap_or_default() {
        let v = variants.iter().position(|x| *x == variant).ok_or_else(|| {
            invalid(
                "target.urls",
                format!("`{variant}` is not a variant of experiment.weights"),
            )
        })?;
        urls[v] = check_url("target.urls", &variant_url)?;
    }
    let method = match raw.method.as_deref().unwrap_or("GET") {
        m if m.eq_ignore_ascii_case("GET") => Method::Get,
        m if m.eq_ignore_ascii_case("POST") => Method::Post,
        other => {
            return Err(invalid(
                "target.method",
                format!("`{other}` is not GET or POST"),
            ));
        }
    };
    let path = raw.path.unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') {
        return Err(invalid(
            "target.path",
            format!("`{path}` must start with '/'"),
        ));
    }
    let variant_in = raw.variant_in.unwrap_or(VariantIn::Header);
    let variant_key = match (variant_in, raw.variant_key) {
        (VariantIn::Path, Some(_)) => {
            return Err(invalid(
                "target.variant_key",
                "not used with variant_in = \"path\"; put {variant} in target.path",
            ));
        }
        (VariantIn::Path, None) => String::new(),
        (_, Some(key)) if key.is_empty() => {
            return Err(invalid("target.variant_key", "must not be empty"));
        }
        (_, Some(key)) => key,
        (VariantIn::Header, None) => "x-variant".to_string(),
        (VariantIn::Query, None) => "variant".to_string(),
    };
    if variant_in == VariantIn::Path && !path.contains("{variant}") {
        return Err(invalid(
            "target.path",
            "must contain {variant} when variant_in = \"path\"",
        ));
    }
    if variant_in == VariantIn::Query && path.contains('?') {
        return Err(invalid(
            "target.path",
            "must not hold a query string when variant_in = \"query\"",
        ));
    }
    if raw.body.is_some() && method == Method::Get {
        return Err(invalid("target.body", "a body needs method = \"POST\""));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(5_000);
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(invalid("target.timeout_ms", "must be 1..=600000"));
    }
    Ok(Target {
        urls,
        method,
        path,
        variant_in,
        variant_key,
        body: raw.body,
        timeout: Duration::from_millis(timeout_ms),
    })
}

fn validate_resources(
    raw: RawResources,
    variants: &[String],
    base_urls: &[String],
) -> Result<Resources, ProfileError> {
    let path = raw.metrics_path.unwrap_or_else(|| "/metrics".to_string());
    if !path.starts_with('/') {
        return Err(invalid(
            "resources.metrics_path",
            format!("`{path}` must start with '/'"),
        ));
    }
    let mut explicit = BTreeMap::new();
    for (variant, url) in raw.metrics_urls.unwrap_or_default() {
        if !variants.contains(&variant) {
            return Err(invalid(
                "resources.metrics_urls",
                format!("`{variant}` is not a variant of experiment.weights"),
            ));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "resources.metrics_urls",
                format!("`{url}` must start with http:// or https://"),
            ));
        }
        explicit.insert(variant, url);
    }
    let derive = MetricsSource { path, explicit };
    let scrape_ms = raw.scrape_ms.unwrap_or(250);
    if !(50..=60_000).contains(&scrape_ms) {
        return Err(invalid("resources.scrape_ms", "must be 50..=60000"));
    }
    Ok(Resources {
        metrics_urls: derive.metrics_urls(variants, base_urls),
        cpu: MetricSelector::parse(
            "resources.cpu_metric",
            raw.cpu_metric
                .as_deref()
                .unwrap_or("process_cpu_seconds_total"),
        )?,
        memory: MetricSelector::parse(
            "resources.memory_metric",
            raw.memory_metric
                .as_deref()
                .unwrap_or("process_resident_memory_bytes"),
        )?,
        scrape_every: Duration::from_millis(scrape_ms),
        cpu_margin: check_fraction(
            "resources.cpu_margin",
            raw.cpu_margin.unwrap_or(0.10),
            0.0,
            10.0,
        )?,
        derive,
    })
}

fn validate_load(raw: RawLoad) -> Result<Load, ProfileError> {
    let shape = match (raw.users, raw.stages) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "load.stages",
                "give either load.users or load.stages, not both",
            ));
        }
        (None, None) => return Err(invalid("load.users", "give load.users or load.stages")),
        (Some(users), None) => {
            if !(1..=10_000).contains(&users) {
                return Err(invalid("load.users", "must be 1..=10000"));
            }
            let hold = raw.duration_seconds.unwrap_or(30);
            if hold == 0 {
                return Err(invalid(
                    "load.duration_seconds",
                    "must be at least 1 second",
                ));
            }
            Shape::Steady {
                users,
                ramp: Duration::from_secs(raw.ramp_seconds.unwrap_or(1)),
                hold: Duration::from_secs(hold),
            }
        }
        (None, Some(stages)) => {
            if raw.ramp_seconds.is_some() || raw.duration_seconds.is_some() {
                return Err(invalid(
                    "load.stages",
                    "stages set their own times: drop load.ramp_seconds and load.duration_seconds",
                ));
            }
            if stages.is_empty() || stages.iter().all(|s| s.users == 0) {
                return Err(invalid(
                    "load.stages",
                    "needs at least one stage with users",
                ));
            }
            if stages.iter().any(|s| s.seconds == 0 || s.users > 10_000) {
                return Err(invalid(
                    "load.stages",
                    "every stage needs seconds >= 1 and users <= 10000",
                ));
            }
            Shape::Stages(stages)
        }
    };
    let max_users = shape.max_users() as f64;
    let rate_per_user = match (raw.rate, raw.rate_per_user) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "load.rate",
                "give load.rate or load.rate_per_user, not both",
            ));
        }
        (None, None) => return Err(invalid("load.rate", "give load.rate or load.rate_per_user")),
        (Some(rate), None) => check_fraction("load.rate", rate, 0.001, 100_000.0)? / max_users,
        (None, Some(per_user)) => check_fraction("load.rate_per_user", per_user, 0.001, 1000.0)?,
    };
    let requests_per_unit = raw.requests_per_unit.unwrap_or(5);
    if !(1..=100_000).contains(&requests_per_unit) {
        return Err(invalid("load.requests_per_unit", "must be 1..=100000"));
    }
    Ok(Load {
        shape,
        rate_per_user,
        requests_per_unit,
    })
}

fn validate_events(raw: RawEvents) -> Result<Events, ProfileError> {
    let batch_size = raw.batch_size.unwrap_or(50);
    if !(1..=10_000).contains(&batch_size) {
        return Err(invalid(
            "events.batch_size",
            "must be 1..=10000 (the gateway's limit)",
        ));
    }
    let flush_ms = raw.flush_ms.unwrap_or(1_000);
    if !(1..=600_000).contains(&flush_ms) {
        return Err(invalid("events.flush_ms", "must be 1..=600000"));
    }
    let conversion_value = raw.conversion_value.unwrap_or(19.99);
    if !conversion_value.is_finite() {
        return Err(invalid(
            "events.conversion_value",
            "must be a finite number",
        ));
    }
    let conversion_name = raw
        .conversion_name
        .unwrap_or_else(|| "purchase".to_string());
    if conversion_name.is_empty() {
        return Err(invalid("events.conversion_name", "must not be empty"));
    }
    Ok(Events {
        batch_size,
        flush_after: Duration::from_millis(flush_ms),
        conversion_rate: check_fraction(
            "events.conversion_rate",
            raw.conversion_rate.unwrap_or(0.1),
            0.0,
            1.0,
        )?,
        conversion_name,
        conversion_value,
    })
}

fn validate_verdict(raw: RawVerdict) -> Result<VerdictConfig, ProfileError> {
    let margins = raw.margins.unwrap_or(RawMargins {
        p50: 0.05,
        p95: 0.10,
        p99: 0.20,
    });
    let margins = vec![
        Margin {
            quantile: 0.50,
            margin: check_fraction("verdict.margins.p50", margins.p50, 0.0, 10.0)?,
        },
        Margin {
            quantile: 0.95,
            margin: check_fraction("verdict.margins.p95", margins.p95, 0.0, 10.0)?,
        },
        Margin {
            quantile: 0.99,
            margin: check_fraction("verdict.margins.p99", margins.p99, 0.0, 10.0)?,
        },
    ];
    let mut endpoints = raw.endpoints.unwrap_or_else(|| vec![Endpoint::Target]);
    endpoints.sort();
    endpoints.dedup();
    if endpoints.is_empty() {
        return Err(invalid("verdict.endpoints", "needs at least one endpoint"));
    }
    let replicates = raw.replicates.unwrap_or(2000);
    if !(200..=100_000).contains(&replicates) {
        return Err(invalid("verdict.replicates", "must be 200..=100000"));
    }
    let block_ms = raw.block_ms.unwrap_or(250);
    if !(1..=60_000).contains(&block_ms) {
        return Err(invalid("verdict.block_ms", "must be 1..=60000"));
    }
    let max_client_lag_ms = raw.max_client_lag_ms.unwrap_or(10.0);
    Ok(VerdictConfig {
        alpha: check_fraction("verdict.alpha", raw.alpha.unwrap_or(0.05), 1e-6, 0.5)?,
        margins,
        endpoints,
        replicates,
        block: Duration::from_millis(block_ms),
        srm_alpha: check_fraction(
            "verdict.srm_alpha",
            raw.srm_alpha.unwrap_or(0.001),
            1e-12,
            0.5,
        )?,
        max_error_rate: check_fraction(
            "verdict.max_error_rate",
            raw.max_error_rate.unwrap_or(0.01),
            0.0,
            1.0,
        )?,
        min_achieved_ratio: check_fraction(
            "verdict.min_achieved_ratio",
            raw.min_achieved_ratio.unwrap_or(0.9),
            0.0,
            1.0,
        )?,
        max_client_lag: Duration::from_secs_f64(
            check_fraction(
                "verdict.max_client_lag_ms",
                max_client_lag_ms,
                0.1,
                60_000.0,
            )? / 1000.0,
        ),
        seed: raw.seed,
    })
}

#[cfg(test)]
mod tests;
