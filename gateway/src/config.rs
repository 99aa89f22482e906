//! `RawConfig` (TOML file + command-line flags) -> validated [`Config`].
//!
//! The only place that reads configuration. Precedence: flags > file > built-in defaults. The doc
//! comment of each field is the operator documentation: unit, default, and why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{RateLimit, WriteKey};
use crate::batch::PartitionBounds;
use crate::budget::MemoryPlan;
use crate::dedup::DedupConfig;
use crate::srm::SrmConfig;
use crate::writer::FlushPolicy;

/// Command-line flags. Each overrides the config file.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "gateway",
    version,
    about = "Experiment assignment and event ingestion gateway"
)]
pub struct Flags {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (printed in the first log line).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where Parquet goes: a path, file:///abs/path, memory://, s3://bucket/prefix, gs://, az://.
    #[arg(long)]
    pub storage: Option<String>,
    /// Local state: the write-ahead log, the cut journal, the node id.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Experiments file (JSON or TOML); default: the example file built into the binary.
    #[arg(long)]
    pub experiments: Option<PathBuf>,
    /// Serve `/metrics`, `/admin/*`, `/healthz` and `/readyz` here instead of on `--listen`.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Cluster mode only: `gateway` (HTTP, the default) or `writer` (the log -> Parquet).
    #[arg(value_enum)]
    pub role: Option<Role>,
}

/// What a process does in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes HTTP traffic and appends it to the log.
    Gateway,
    /// Turns the log's partitions into Parquet.
    Writer,
}

/// The config file, as written. Every field is optional; see [`Config`] for meanings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub storage: Option<String>,
    /// Extra settings for the object store builder (e.g. `aws_endpoint`, `aws_allow_http`).
    #[serde(default)]
    pub storage_options: std::collections::BTreeMap<String, String>,
    pub state_dir: Option<PathBuf>,
    pub experiments: Option<PathBuf>,
    pub experiments_poll_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
    pub ack: Option<AckMode>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub dedup: RawDedup,
    #[serde(default)]
    pub flush: RawFlush,
    #[serde(default)]
    pub partition: RawPartition,
    #[serde(default)]
    pub wal: RawWal,
    #[serde(default)]
    pub upload: RawUpload,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub srm: RawSrm,
    #[serde(default)]
    pub growthbook: RawGrowthbook,
    #[serde(default)]
    pub cors: RawCors,
    pub cluster: Option<RawCluster>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub urls: Vec<String>,
    pub stream_prefix: Option<String>,
    pub partitions: Option<u32>,
    pub replicas: Option<usize>,
    pub role: Option<Role>,
    pub append_timeout_secs: Option<u64>,
    pub retention_secs: Option<u64>,
    pub max_bytes_per_partition: Option<u64>,
    pub msg_id_window_secs: Option<u64>,
    pub lease_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrowthbook {
    #[serde(default)]
    pub client_keys: Vec<RawClientKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientKey {
    pub key: String,
    pub decryption_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSrm {
    pub p_value_threshold: Option<f64>,
    pub exact_units_per_variant: Option<usize>,
    pub min_units: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub write_keys: Vec<RawWriteKey>,
    pub admin_token_sha256: Option<String>,
    /// Default rate limit of keys that set none.
    pub events_per_sec: Option<u32>,
    pub burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWriteKey {
    pub source: String,
    pub sha256: String,
    pub events_per_sec: Option<u32>,
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub memory_budget_bytes: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_decompressed_bytes: Option<usize>,
    pub max_events: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedup {
    pub window_secs: Option<u64>,
    pub max_ids: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlush {
    pub max_rows: Option<usize>,
    pub max_bytes: Option<usize>,
    pub max_age_secs: Option<u64>,
    pub late_max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartition {
    pub max_past_hours: Option<u64>,
    pub max_future_minutes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWal {
    pub segment_bytes: Option<u64>,
    pub disk_budget_bytes: Option<u64>,
    pub queue_len: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpload {
    pub concurrency: Option<usize>,
    pub multipart_threshold_bytes: Option<usize>,
    pub retry_max_backoff_secs: Option<u64>,
}

/// When `POST /v1/events` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the fsync that covers the request: a 200 survives `kill -9` and power loss.
    Durable,
    /// After the request is queued for the log: lower latency, but events acknowledged in the
    /// last moments before a crash (or a failed write) are lost. See docs/performance.md.
    Buffered,
}

/// Request size limits of `POST /v1/events`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory for everything the process holds: see [`crate::budget`]. Default 512 MiB. Requests
    /// that would take more get 503 `overloaded`.
    pub memory_budget_bytes: usize,
    /// Body as sent (compressed or not). Default 5 MiB.
    pub max_body_bytes: usize,
    /// Body after decompression. Default 20 MiB; bounds zip bombs.
    pub max_decompressed_bytes: usize,
    /// Events in one request. Default 10,000.
    pub max_events: usize,
}

/// Access control: see [`crate::auth`].
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Keys allowed to write, as SHA-256 hashes. None: the gateway binds loopback only and
    /// anyone who can reach it may write.
    pub write_keys: Vec<WriteKey>,
    /// SHA-256 of the token `/admin/*` requires. None: admin routes are served only where no
    /// write key is required (a loopback gateway) or on a loopback `admin_listen`.
    pub admin_token_sha256: Option<String>,
}

/// Connection limits and timeouts of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// From the first byte of a request head to its end. Default 10 s; cuts slow-loris heads.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no bytes moving is closed after this (also
    /// one that never sends its first byte). Default 60 s.
    pub idle_timeout: Duration,
    /// From the request head to the last byte of its body. Default 30 s: 5 MiB at 1.4 Mbit/s.
    pub body_timeout: Duration,
    /// Connections open at once; past it the gateway stops accepting until one closes (new ones
    /// wait in the kernel's backlog). Default 1024.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger gets 431. Default 16 KiB.
    pub max_header_bytes: usize,
}

/// Write-ahead log settings.
#[derive(Debug, Clone, Copy)]
pub struct WalConfig {
    /// A new segment starts past this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Above this much log on disk (e.g. while storage is down) requests get 503. Default 8 GiB.
    pub disk_budget_bytes: u64,
    /// Requests waiting for the log writer before new ones get 503. Default 4096.
    pub queue_len: usize,
}

/// One GrowthBook SDK client key: `GET /api/features/{key}` serves the experiments as a
/// GrowthBook payload. Client keys are public (browsers send them), so they are stored as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub key: String,
    /// AES-128 key (16 bytes, given base64 as GrowthBook shows it): the payload is served as
    /// `encryptedFeatures` instead of `features`.
    pub decryption_key: Option<[u8; 16]>,
}

/// Which browser origins may call the assign and payload routes (CORS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `*` for any. Empty (the default): no CORS
    /// headers, browsers on other origins cannot read the answers.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer. Default 600 s.
    pub max_age_secs: u64,
}

impl CorsConfig {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    pub fn allow<'a>(&'a self, origin: &'a str) -> Option<&'a str> {
        self.allowed_origins
            .iter()
            .find(|o| *o == "*" || o.as_str() == origin)
            .map(|o| if o == "*" { "*" } else { origin })
    }
}

/// Upload settings.
#[derive(Debug, Clone, Copy)]
pub struct UploadConfig {
    /// Files of one cut uploaded at once. Default 4.
    pub concurrency: usize,
    /// Files at least this big use multipart upload. Default 16 MiB.
    pub multipart_threshold_bytes: usize,
    /// Cap of the exponential backoff between failed attempts. Default 10 s.
    pub retry_max_backoff: Duration,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Default 127.0.0.1:8080. Must be loopback unless write keys are configured.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/admin/*` and the health routes are served; `None`: on `listen`.
    pub admin_listen: Option<SocketAddr>,
    pub auth: AuthConfig,
    /// Default `./data`.
    pub storage: String,
    /// Settings passed to the object store builder, over the environment's (`AWS_*` and so on):
    /// keys as `object_store` names them, e.g. `aws_endpoint`, `aws_allow_http`, `aws_region`.
    pub storage_options: Vec<(String, String)>,
    /// Default `./state`.
    pub state_dir: PathBuf,
    /// `None`: the example file built into the binary (no reload).
    pub experiments: Option<PathBuf>,
    /// How often the experiments file is checked for changes; `None` (set 0): only on SIGHUP or
    /// `POST /admin/reload`. Default 1 s.
    pub experiments_poll: Option<Duration>,
    pub limits: Limits,
    /// Default window 10 minutes, at most 3,670,016 ids (68 MiB, allocated at start).
    pub dedup: DedupConfig,
    /// Default 1,000,000 rows, 32 MiB in memory, 60 s: files of tens of MB, no event waits
    /// longer.
    pub flush: FlushPolicy,
    /// Default: events up to 7 days old or 1 hour ahead are partitioned by their own time.
    pub partition: PartitionBounds,
    pub wal: WalConfig,
    pub upload: UploadConfig,
    pub http: HttpConfig,
    /// How the memory budget is split (derived from the settings above).
    pub memory: MemoryPlan,
    /// How long shutdown waits for the last uploads before leaving them to the log. Default 30 s.
    pub shutdown_timeout: Duration,
    /// Default `durable`.
    pub ack: AckMode,
    /// Live sample-ratio checks: p < 0.001 is a mismatch; 8,192 units per variant counted
    /// exactly, then estimated; no verdict under 100 units.
    pub srm: SrmConfig,
    /// GrowthBook SDK client keys (`GET /api/features/{key}`); none by default.
    pub growthbook_client_keys: Vec<ClientKey>,
    pub cors: CorsConfig,
    /// Cluster mode (`[cluster]`); `None`: the single-node gateway.
    pub cluster: Option<ClusterConfig>,
}

/// Cluster mode: the log's settings and this process's role. See `docs/cluster.md`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub role: Role,
    /// `urls` (required), `stream_prefix` (default `events`), `partitions` (default 8),
    /// `replicas` (default 3), `append_timeout_secs` (default 5: past it the request gets 503),
    /// `retention_secs` (default 7 days: messages older are deleted even if no writer has
    /// stored them; at least the dedup window plus 2 minutes), `max_bytes_per_partition`
    /// (default none: past it appends are refused, 503), `msg_id_window_secs` (how long the
    /// log recognises a re-sent request, default 120, at most the dedup window), `lease_secs`
    /// (default 10).
    pub log: crate::cluster::LogConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;
/// Default `dedup.max_ids`: two generations of 1,835,008 ids, each exactly 7/8 of a 2^21-bucket
/// table (34 MiB), so no memory is lost to the power-of-two rounding.
pub const DEFAULT_MAX_IDS: usize = 3_670_016;
/// hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
/// Most units counted exactly per variant (about 2 MiB of hashes each).
const MAX_EXACT_UNITS: usize = 1 << 17;
const MIN_HEADER_BYTES: usize = 8 << 10;
const MAX_HEADER_BYTES: usize = 1 << 20;

fn auth_config(raw: RawAuth, limits: &Limits) -> Result<AuthConfig, ConfigError> {
    let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
    let rate = |field: &'static str,
                per_sec: Option<u32>,
                burst: Option<u32>|
     -> Result<Option<RateLimit>, ConfigError> {
        let Some(per_sec) = per_sec else {
            return match burst {
                Some(_) => Err(invalid(field, "burst is set without events_per_sec".into())),
                None => Ok(None),
            };
        };
        let per_sec = std::num::NonZeroU32::new(per_sec)
            .ok_or_else(|| invalid(field, "events_per_sec must be greater than 0".into()))?;
        let max_events = limits.max_events.min(u32::MAX as usize) as u32;
        let burst = burst.unwrap_or(per_sec.get().max(max_events));
        if (burst as usize) < limits.max_events {
            return Err(invalid(
                field,
                format!(
                    "burst {burst} is below limits.max_events ({}): a full batch could never pass",
                    limits.max_events
                ),
            ));
        }
        Ok(Some(RateLimit {
            events_per_sec: per_sec,
            burst: std::num::NonZeroU32::new(burst).expect("burst >= max_events > 0"),
        }))
    };
    let default_rate = rate("auth.events_per_sec", raw.events_per_sec, raw.burst)?;
    let mut write_keys = Vec::with_capacity(raw.write_keys.len());
    for k in raw.write_keys {
        let valid_source = !k.source.is_empty()
            && k.source.len() <= 64
            && k.source
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid_source {
            return Err(invalid(
                "auth.write_keys.source",
                format!("{:?}: 1-64 characters of A-Z a-z 0-9 . _ -", k.source),
            ));
        }
        let rate_limit = match rate("auth.write_keys.events_per_sec", k.events_per_sec, k.burst)? {
            Some(r) => Some(r),
            None => default_rate,
        };
        write_keys.push(WriteKey {
            sha256: sha256_hex("auth.write_keys.sha256", &k.sha256)?,
            source: k.source.into(),
            rate_limit,
        });
    }
    let admin_token_sha256 = raw
        .admin_token_sha256
        .as_deref()
        .map(|h| sha256_hex("auth.admin_token_sha256", h))
        .transpose()?;
    Ok(AuthConfig {
        write_keys,
        admin_token_sha256,
    })
}

/// A SHA-256 in hex (`printf %s KEY | sha256sum`), normalised to lowercase.
fn sha256_hex(field: &'static str, hex: &str) -> Result<String, ConfigError> {
    let hex = hex.trim().to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(ConfigError::Invalid {
            field,
            reason: "must be the 64 hex digits of a SHA-256 (printf %s KEY | sha256sum)".into(),
        })
    }
}

/// Split the memory budget; the fixed parts must leave room for the largest request.
fn memory_plan(
    limits: &Limits,
    dedup: &DedupConfig,
    flush: &FlushPolicy,
    http: &HttpConfig,
) -> Result<MemoryPlan, ConfigError> {
    let group = crate::wal::MAX_GROUP_BYTES + limits.max_body_bytes;
    let plan = MemoryPlan::new(
        limits.memory_budget_bytes,
        dedup.memory_bytes(),
        flush.max_bytes,
        group,
        http.max_connections,
        http.max_header_bytes,
    );
    // The largest request: its body as sent, decompressed, decoded and as rows.
    let largest = limits.max_body_bytes + 3 * limits.max_decompressed_bytes;
    match plan {
        Some(plan) if plan.requests_bytes >= largest => Ok(plan),
        _ => Err(ConfigError::Invalid {
            field: "limits.memory_budget_bytes",
            reason: format!(
                "{} bytes cannot hold the fixed parts (dedup window {} for dedup.max_ids, \
                 Parquet files 4.5 x flush.max_bytes, {} connections) and one request of \
                 limits.max_decompressed_bytes ({largest} in flight); raise it or lower those",
                limits.memory_budget_bytes,
                dedup.memory_bytes(),
                http.max_connections,
            ),
        }),
    }
}

impl Config {
    /// Flags, then the file they name (if any), then defaults.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let raw = match &flags.config {
            Some(path) => read_file(path)?,
            None => RawConfig::default(),
        };
        let raw = RawConfig {
            listen: flags.listen.or(raw.listen),
            admin_listen: flags.admin_listen.or(raw.admin_listen),
            storage: flags.storage.or(raw.storage),
            state_dir: flags.state_dir.or(raw.state_dir),
            experiments: flags.experiments.or(raw.experiments),
            ..raw
        };
        let mut config = raw.validate()?;
        if let Some(role) = flags.role {
            match &mut config.cluster {
                Some(c) => c.role = role,
                None => {
                    return Err(ConfigError::Invalid {
                        field: "cluster",
                        reason: format!(
                            "the {role:?} role needs a [cluster] section in the config file"
                        ),
                    });
                }
            }
        }
        Ok(config)
    }

    /// Defaults with everything local and quick to flush: for tests and embedding.
    pub fn for_tests(data_dir: &Path, state_dir: &Path, experiments: &Path) -> Config {
        let mut config = RawConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            storage: Some(data_dir.display().to_string()),
            state_dir: Some(state_dir.to_owned()),
            experiments: Some(experiments.to_owned()),
            ..RawConfig::default()
        }
        .validate()
        .expect("test config is valid");
        config.flush.max_age = Duration::from_secs(1);
        config
    }
}

fn cluster_config(raw: RawCluster, dedup_window: Duration) -> Result<ClusterConfig, ConfigError> {
    let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
    if raw.urls.is_empty() {
        return Err(invalid(
            "cluster.urls",
            "list the NATS servers, e.g. [\"nats://127.0.0.1:4222\"]".into(),
        ));
    }
    let prefix = raw.stream_prefix.unwrap_or_else(|| "events".into());
    if prefix.is_empty()
        || prefix.len() > 32
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(invalid(
            "cluster.stream_prefix",
            format!("{prefix:?}: 1-32 characters of A-Z a-z 0-9 _"),
        ));
    }
    let partitions = positive("cluster.partitions", raw.partitions.unwrap_or(8))?;
    if partitions > 1024 {
        return Err(invalid(
            "cluster.partitions",
            format!("at most 1024, got {partitions}"),
        ));
    }
    let replicas = raw.replicas.unwrap_or(3);
    if !(1..=5).contains(&replicas) {
        return Err(invalid(
            "cluster.replicas",
            format!("JetStream replicates 1 to 5 times, got {replicas}"),
        ));
    }
    let secs = |field: &'static str, v: Option<u64>, default: u64| {
        positive(field, v.unwrap_or(default)).map(Duration::from_secs)
    };
    let retention = secs("cluster.retention_secs", raw.retention_secs, 7 * 24 * 3600)?;
    let rebuild = dedup_window + 2 * crate::cluster::writer::CLOCK_SLACK;
    if retention < rebuild {
        return Err(invalid(
            "cluster.retention_secs",
            format!(
                "must be at least the dedup window plus 2 minutes ({} s): a writer taking \
                 over re-reads that much of a partition",
                rebuild.as_secs()
            ),
        ));
    }
    let msg_id_window = secs(
        "cluster.msg_id_window_secs",
        raw.msg_id_window_secs,
        120.min(dedup_window.as_secs()),
    )?;
    if msg_id_window > dedup_window {
        return Err(invalid(
            "cluster.msg_id_window_secs",
            "must be at most dedup.window_secs".into(),
        ));
    }
    Ok(ClusterConfig {
        role: raw.role.unwrap_or(Role::Gateway),
        log: crate::cluster::LogConfig {
            urls: raw.urls,
            prefix,
            partitions,
            replicas,
            dedup_window: msg_id_window,
            retention,
            timeout: secs("cluster.append_timeout_secs", raw.append_timeout_secs, 5)?,
            max_bytes: raw.max_bytes_per_partition,
            lease: secs("cluster.lease_secs", raw.lease_secs, 10)?,
        },
    })
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source: Box::new(source),
    })
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(
    field: &'static str,
    v: T,
) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            field,
            reason: format!("must be greater than 0, got {v}"),
        })
    }
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let limits = Limits {
            memory_budget_bytes: positive(
                "limits.memory_budget_bytes",
                self.limits.memory_budget_bytes.unwrap_or(512 << 20),
            )?,
            max_body_bytes: positive(
                "limits.max_body_bytes",
                self.limits.max_body_bytes.unwrap_or(5 << 20),
            )?,
            max_decompressed_bytes: positive(
                "limits.max_decompressed_bytes",
                self.limits.max_decompressed_bytes.unwrap_or(20 << 20),
            )?,
            max_events: positive(
                "limits.max_events",
                self.limits.max_events.unwrap_or(10_000),
            )?,
        };
        let dedup = DedupConfig {
            window: Duration::from_secs(positive(
                "dedup.window_secs",
                self.dedup.window_secs.unwrap_or(600),
            )?),
            max_ids: positive(
                "dedup.max_ids",
                self.dedup.max_ids.unwrap_or(DEFAULT_MAX_IDS),
            )?,
        };
        let flush = FlushPolicy {
            max_rows: positive("flush.max_rows", self.flush.max_rows.unwrap_or(1_000_000))?,
            max_bytes: positive("flush.max_bytes", self.flush.max_bytes.unwrap_or(32 << 20))?,
            max_age: Duration::from_secs(positive(
                "flush.max_age_secs",
                self.flush.max_age_secs.unwrap_or(60),
            )?),
            late_max_age: Duration::from_secs(positive(
                "flush.late_max_age_secs",
                self.flush.late_max_age_secs.unwrap_or(3600),
            )?),
        };
        let partition = PartitionBounds {
            max_past_micros: self.partition.max_past_hours.unwrap_or(7 * 24) as i64
                * MICROS_PER_HOUR,
            max_future_micros: self.partition.max_future_minutes.unwrap_or(60) as i64 * 60_000_000,
        };
        let wal = WalConfig {
            segment_bytes: positive(
                "wal.segment_bytes",
                self.wal.segment_bytes.unwrap_or(64 << 20),
            )?,
            disk_budget_bytes: positive(
                "wal.disk_budget_bytes",
                self.wal.disk_budget_bytes.unwrap_or(8 << 30),
            )?,
            queue_len: positive("wal.queue_len", self.wal.queue_len.unwrap_or(4096))?,
        };
        let upload = UploadConfig {
            concurrency: positive("upload.concurrency", self.upload.concurrency.unwrap_or(4))?,
            multipart_threshold_bytes: positive(
                "upload.multipart_threshold_bytes",
                self.upload.multipart_threshold_bytes.unwrap_or(16 << 20),
            )?,
            retry_max_backoff: Duration::from_secs(positive(
                "upload.retry_max_backoff_secs",
                self.upload.retry_max_backoff_secs.unwrap_or(10),
            )?),
        };
        if limits.max_decompressed_bytes < limits.max_body_bytes {
            return Err(ConfigError::Invalid {
                field: "limits.max_decompressed_bytes",
                reason: "must be at least limits.max_body_bytes".into(),
            });
        }
        let secs = |field: &'static str, v: Option<u64>, default: u64| {
            positive(field, v.unwrap_or(default)).map(Duration::from_secs)
        };
        let http = HttpConfig {
            header_read_timeout: secs(
                "http.header_read_timeout_secs",
                self.http.header_read_timeout_secs,
                10,
            )?,
            idle_timeout: secs("http.idle_timeout_secs", self.http.idle_timeout_secs, 60)?,
            body_timeout: secs("http.body_timeout_secs", self.http.body_timeout_secs, 30)?,
            max_connections: positive(
                "http.max_connections",
                self.http.max_connections.unwrap_or(1024),
            )?,
            max_header_bytes: self.http.max_header_bytes.unwrap_or(16 << 10),
        };
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&http.max_header_bytes) {
            return Err(ConfigError::Invalid {
                field: "http.max_header_bytes",
                reason: format!(
                    "must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}, got {}",
                    http.max_header_bytes
                ),
            });
        }
        let defaults = SrmConfig::default();
        let srm = SrmConfig {
            p_value_threshold: self
                .srm
                .p_value_threshold
                .unwrap_or(defaults.p_value_threshold),
            exact_units_per_variant: self
                .srm
                .exact_units_per_variant
                .unwrap_or(defaults.exact_units_per_variant),
            min_units: self.srm.min_units.unwrap_or(defaults.min_units),
        };
        if !(srm.p_value_threshold > 0.0 && srm.p_value_threshold < 1.0) {
            return Err(ConfigError::Invalid {
                field: "srm.p_value_threshold",
                reason: format!("must be between 0 and 1, got {}", srm.p_value_threshold),
            });
        }
        if srm.exact_units_per_variant > MAX_EXACT_UNITS {
            return Err(ConfigError::Invalid {
                field: "srm.exact_units_per_variant",
                reason: format!(
                    "must be at most {MAX_EXACT_UNITS} (past it, a sketch counts in 64 KiB)"
                ),
            });
        }
        let memory = memory_plan(&limits, &dedup, &flush, &http)?;
        let auth = auth_config(self.auth, &limits)?;
        let growthbook_client_keys = client_keys(self.growthbook)?;
        let cors = cors_config(self.cors)?;
        let cluster = self
            .cluster
            .map(|c| cluster_config(c, dedup.window))
            .transpose()?;
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        if auth.write_keys.is_empty() && !listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                field: "listen",
                reason: format!(
                    "{listen} is not a loopback address and no [[auth.write_keys]] are \
                     configured: without keys the gateway only serves this machine"
                ),
            });
        }
        if let Some(admin) = self.admin_listen
            && auth.admin_token_sha256.is_none()
            && !admin.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                field: "admin_listen",
                reason: format!(
                    "{admin} is not a loopback address and auth.admin_token_sha256 is not set"
                ),
            });
        }
        Ok(Config {
            listen,
            admin_listen: self.admin_listen,
            auth,
            storage: self.storage.unwrap_or_else(|| "./data".into()),
            storage_options: self.storage_options.into_iter().collect(),
            state_dir: self.state_dir.unwrap_or_else(|| "./state".into()),
            experiments: self.experiments,
            experiments_poll: match self.experiments_poll_secs.unwrap_or(1) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            limits,
            dedup,
            flush,
            partition,
            wal,
            upload,
            http,
            memory,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs.unwrap_or(30)),
            ack: self.ack.unwrap_or(AckMode::Durable),
            srm,
            growthbook_client_keys,
            cors,
            cluster,
        })
    }
}

fn client_keys(raw: RawGrowthbook) -> Result<Vec<ClientKey>, ConfigError> {
    let invalid = |field, reason| Err(ConfigError::Invalid { field, reason });
    let mut keys: Vec<ClientKey> = Vec::with_capacity(raw.client_keys.len());
    for k in raw.client_keys {
        let usable = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if k.key.is_empty() || k.key.len() > 128 || !k.key.chars().all(usable) {
            return invalid(
                "growthbook.client_keys.key",
                format!("{:?} must be 1 to 128 of A-Z a-z 0-9 - _ .", k.key),
            );
        }
        if keys.iter().any(|other| other.key == k.key) {
            return invalid(
                "growthbook.client_keys.key",
                format!("{:?} is listed twice", k.key),
            );
        }
        let decryption_key = match k.decryption_key {
            None => None,
            Some(b64) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .ok()
                    .and_then(|b| <[u8; 16]>::try_from(b).ok());
                match bytes {
                    Some(key) => Some(key),
                    None => {
                        return invalid(
                            "growthbook.client_keys.decryption_key",
                            format!(
                                "the key of client {:?} must be 16 bytes in base64 (an AES-128 \
                                 key, as `openssl rand -base64 16` prints)",
                                k.key
                            ),
                        );
                    }
                }
            }
        };
        keys.push(ClientKey {
            key: k.key,
            decryption_key,
        });
    }
    Ok(keys)
}

fn cors_config(raw: RawCors) -> Result<CorsConfig, ConfigError> {
    for origin in &raw.allowed_origins {
        let scheme = origin.starts_with("http://") || origin.starts_with("https://");
        if origin != "*"
            && (!scheme || origin.ends_with('/') || origin.contains(char::is_whitespace))
        {
            return Err(ConfigError::Invalid {
                field: "cors.allowed_origins",
                reason: format!(
                    "{origin:?} is not an origin: write scheme://host[:port] with no path, \
                     or \"*\""
                ),
            });
        }
    }
    Ok(CorsConfig {
        allowed_origins: raw.allowed_origins,
        max_age_secs: raw.max_age_secs.unwrap_or(600),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "storage = \"s3://b/p\"\nlisten = \"127.0.0.1:9000\"\n[dedup]\nwindow_secs = 30\n",
        )
        .unwrap();
        let config = Config::load(Flags {
            config: Some(path),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.storage, "s3://b/p");
        assert_eq!(config.dedup.window, Duration::from_secs(30));
        assert_eq!(config.limits.max_events, 10_000);
        assert_eq!(config.state_dir, PathBuf::from("./state"));
    }

    #[test]
    fn write_keys_are_hashes_with_sources_and_their_rate_limits_fit_a_batch() {
        let hash = crate::auth::hash_key("k");
        let raw: RawConfig = toml::from_str(&format!(
            "listen = \"0.0.0.0:8080\"\n[auth]\nevents_per_sec = 500\n\
             [[auth.write_keys]]\nsource = \"web\"\nsha256 = \"{}\"\n",
            hash.to_uppercase()
        ))
        .unwrap();
        let config = raw.validate().unwrap();
        let key = &config.auth.write_keys[0];
        assert_eq!((&*key.source, key.sha256.as_str()), ("web", hash.as_str()));
        let limit = key.rate_limit.unwrap();
        assert_eq!(limit.events_per_sec.get(), 500);
        assert_eq!(
            limit.burst.get(),
            10_000,
            "the burst defaults to a full batch"
        );

        let refused = |toml: &str| {
            toml::from_str::<RawConfig>(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        let err = refused("[[auth.write_keys]]\nsource = \"web\"\nsha256 = \"abc\"\n");
        assert!(err.contains("auth.write_keys.sha256"), "{err}");
        let err = refused(&format!(
            "[[auth.write_keys]]\nsource = \"a b\"\nsha256 = \"{hash}\"\n"
        ));
        assert!(err.contains("auth.write_keys.source"), "{err}");
        let err = refused(&format!(
            "[[auth.write_keys]]\nsource = \"w\"\nsha256 = \"{hash}\"\n\
             events_per_sec = 10\nburst = 100\n"
        ));
        assert!(err.contains("below limits.max_events"), "{err}");
        let err = refused("listen = \"0.0.0.0:8080\"\n");
        assert!(err.contains("config field listen"), "{err}");
        let err = refused("admin_listen = \"0.0.0.0:9090\"\n");
        assert!(err.contains("config field admin_listen"), "{err}");
    }

    #[test]
    fn the_memory_budget_must_hold_its_fixed_parts_and_one_large_request() {
        let config = RawConfig::default().validate().unwrap();
        let plan = config.memory;
        assert_eq!(plan.total_bytes, 512 << 20);
        assert_eq!(plan.dedup_bytes, config.dedup.memory_bytes());
        assert!(
            plan.requests_bytes >= (5 << 20) + 3 * (20 << 20),
            "{plan:?}"
        );
        let raw: RawConfig = toml::from_str("[limits]\nmemory_budget_bytes = 268435456\n").unwrap();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("limits.memory_budget_bytes"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_by_name() {
        let err = toml::from_str::<RawConfig>("[flush]\nmax_rowz = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_rowz"), "{err}");
        let raw: RawConfig = toml::from_str("[flush]\nmax_rows = 0\n").unwrap();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("flush.max_rows"), "{err}");
    }
}
