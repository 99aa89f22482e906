//! `RawConfig` (TOML file + command-line flags) -> validated [`Config`].
//!
//! The only place that reads configuration. Precedence: flags > file > built-in defaults. The doc
//! comment of each field is the operator documentation: unit, default, and why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::batch::PartitionBounds;
use crate::dedup::DedupConfig;
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
}

/// The config file, as written. Every field is optional; see [`Config`] for meanings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<SocketAddr>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
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
    /// Body as sent (compressed or not). Default 5 MiB.
    pub max_body_bytes: usize,
    /// Body after decompression. Default 20 MiB; bounds zip bombs.
    pub max_decompressed_bytes: usize,
    /// Events in one request. Default 10,000.
    pub max_events: usize,
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
    /// Default 127.0.0.1:8080.
    pub listen: SocketAddr,
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
    /// Default window 10 minutes, at most 20 million ids (about 400-800 MB).
    pub dedup: DedupConfig,
    /// Default 1,000,000 rows, 64 MiB encoded, 60 s: files of tens of MB, no event waits longer.
    pub flush: FlushPolicy,
    /// Default: events up to 7 days old or 1 hour ahead are partitioned by their own time.
    pub partition: PartitionBounds,
    pub wal: WalConfig,
    pub upload: UploadConfig,
    /// How long shutdown waits for the last uploads before leaving them to the log. Default 30 s.
    pub shutdown_timeout: Duration,
    /// Default `durable`.
    pub ack: AckMode,
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

impl Config {
    /// Flags, then the file they name (if any), then defaults.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let raw = match &flags.config {
            Some(path) => read_file(path)?,
            None => RawConfig::default(),
        };
        let raw = RawConfig {
            listen: flags.listen.or(raw.listen),
            storage: flags.storage.or(raw.storage),
            state_dir: flags.state_dir.or(raw.state_dir),
            experiments: flags.experiments.or(raw.experiments),
            ..raw
        };
        raw.validate()
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
            max_ids: positive("dedup.max_ids", self.dedup.max_ids.unwrap_or(20_000_000))?,
        };
        let flush = FlushPolicy {
            max_rows: positive("flush.max_rows", self.flush.max_rows.unwrap_or(1_000_000))?,
            max_bytes: positive("flush.max_bytes", self.flush.max_bytes.unwrap_or(64 << 20))?,
            max_age: Duration::from_secs(positive(
                "flush.max_age_secs",
                self.flush.max_age_secs.unwrap_or(60),
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
        Ok(Config {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
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
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs.unwrap_or(30)),
            ack: self.ack.unwrap_or(AckMode::Durable),
        })
    }
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
    fn unknown_fields_and_bad_values_are_refused_by_name() {
        let err = toml::from_str::<RawConfig>("[flush]\nmax_rowz = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_rowz"), "{err}");
        let raw: RawConfig = toml::from_str("[flush]\nmax_rows = 0\n").unwrap();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("flush.max_rows"), "{err}");
    }
}
