//! `SealedFile -> object storage`. The only module that names `object_store`.
//!
//! Owns the storage URL schemes, object naming and upload retries.
//!
//! Invariants:
//! - Object names are deterministic: `{table}/date=D/hour=H/part-{node_id}-{cut_seq:020}.parquet`.
//!   `node_id` is unique per state directory (so per gateway), `cut_seq` is unique per cut, so a
//!   replay of a cut writes the same names again and several gateways never collide.
//! - Small files are written with `PutMode::Create`; `AlreadyExists` means an earlier attempt (before
//!   a crash or a lost response) succeeded, which is success. Large files go up as multipart
//!   uploads, which overwrite with identical rows.
//! - Failed uploads are classified ([`SinkError::is_retryable`]): transient ones (network, 5xx,
//!   throttling) are retried with exponential backoff and full jitter until they succeed;
//!   permanent ones (credentials, permissions, a missing bucket) are returned at once, since
//!   retrying cannot fix them. Nothing is dropped here: the rows stay in the write-ahead log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use crate::batch::PartitionKey;
use crate::health::Health;
use crate::writer::{Lane, SealedFile};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Storage answered, and refused in a way a retry cannot change.
    #[error("storage refused {path}: {source}")]
    Refused {
        path: String,
        source: object_store::Error,
    },
    #[error("invalid storage URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("storage option {key:?}: {reason}")]
    Option { key: String, reason: String },
    #[error("object storage error: {0}")]
    Store(#[from] object_store::Error),
    #[error("cannot create local storage folder {path}: {source}")]
    LocalDir {
        path: String,
        source: std::io::Error,
    },
}

impl SinkError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Refused { .. } | SinkError::Url { .. } | SinkError::Option { .. } => false,
            SinkError::Store(e) => !is_permanent(e),
            SinkError::LocalDir { source, .. } => !io_is_permanent(source),
        }
    }
}

/// Store errors no retry can fix: credentials, permissions, a missing bucket or container,
/// an unsupported operation, a bad path or option.
fn is_permanent(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => true,
        // On a put, "not found" is the bucket or container.
        E::NotFound { .. } => true,
        // The local file system wraps its io errors: look for one that will not go away.
        E::Generic { source, .. } => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(c) = cause {
                if let Some(io) = c.downcast_ref::<std::io::Error>() {
                    return io_is_permanent(io);
                }
                cause = c.source();
            }
            false
        }
        _ => false,
    }
}

fn io_is_permanent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::PermissionDenied | K::ReadOnlyFilesystem | K::NotADirectory | K::IsADirectory
    )
}

/// Retries inside one request (by `object_store`), before our own backoff loop takes over.
fn client_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    }
}

/// Open the store for `url`: `file:///abs`, a plain path, `memory://`, `s3://bucket/prefix`,
/// `gs://bucket/prefix`, `az://container/prefix`. Cloud credentials, region and endpoint come
/// from the usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), read by the builders.
/// Apply URL, retries and `options` to a cloud store builder (each has its own key type).
macro_rules! with_options {
    ($builder:expr, $url:expr, $options:expr) => {{
        let mut b = $builder.with_url($url).with_retry(client_retry());
        for (k, v) in $options {
            let key = k.parse().map_err(|e| SinkError::Option {
                key: k.clone(),
                reason: format!("{e}"),
            })?;
            b = b.with_config(key, v);
        }
        b
    }};
}

/// `options` override the environment, with keys as `object_store` names them.
pub fn open_store(
    url: &str,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, Path), SinkError> {
    let bad = |reason: String| SinkError::Url {
        url: url.to_owned(),
        reason,
    };
    let Some((scheme, _)) = url.split_once("://") else {
        return open_local(std::path::Path::new(url));
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let prefix = Path::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
    let store: Arc<dyn ObjectStore> = match scheme {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| bad("file URLs need an absolute path".into()))?;
            return open_local(&path);
        }
        "memory" => Arc::new(InMemory::new()),
        "s3" | "s3a" => Arc::new(with_options!(AmazonS3Builder::from_env(), url, options).build()?),
        "gs" => {
            Arc::new(with_options!(GoogleCloudStorageBuilder::from_env(), url, options).build()?)
        }
        "az" | "abfs" | "abfss" | "azure" => {
            Arc::new(with_options!(MicrosoftAzureBuilder::from_env(), url, options).build()?)
        }
        other => return Err(bad(format!("unsupported scheme {other:?}"))),
    };
    Ok((store, prefix))
}

fn open_local(path: &std::path::Path) -> Result<(Arc<dyn ObjectStore>, Path), SinkError> {
    std::fs::create_dir_all(path).map_err(|source| SinkError::LocalDir {
        path: path.display().to_string(),
        source,
    })?;
    let store = LocalFileSystem::new_with_prefix(path)?;
    Ok((Arc::new(store), Path::default()))
}

/// Backoff between failed attempts: exponential, capped, with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        cap.mul_f64(rand::random::<f64>())
    }
}

#[derive(Debug, Clone)]
pub struct Sink {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    node_id: String,
    multipart_threshold_bytes: usize,
    part_bytes: usize,
    backoff: Backoff,
}

impl Sink {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, node_id: String) -> Self {
        Self {
            store,
            prefix,
            node_id,
            multipart_threshold_bytes: 16 << 20,
            part_bytes: 8 << 20,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_multipart(mut self, threshold_bytes: usize, part_bytes: usize) -> Self {
        self.multipart_threshold_bytes = threshold_bytes;
        self.part_bytes = part_bytes.max(5 << 20);
        self
    }

    /// The same store under another node id (a cluster writer names files by partition).
    pub fn with_node_id(mut self, node_id: String) -> Self {
        self.node_id = node_id;
        self
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `part-{node_id}-{cut_seq:020}.parquet`, and `...-late.parquet` for the late lane's cuts
    /// (the two lanes cut independently, so one sequence may name a cut of each).
    pub fn object_path(&self, key: &PartitionKey, cut_seq: u64, lane: Lane) -> Path {
        let suffix = match lane {
            Lane::Current => "",
            Lane::Late => "-late",
        };
        let name = format!(
            "{}/part-{}-{cut_seq:020}{suffix}.parquet",
            key.path(),
            self.node_id
        );
        if self.prefix.as_ref().is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    /// `experiments/{config_version}-{node_id}.parquet`: the experiments table file of one
    /// config version as this gateway first served it.
    pub fn experiments_path(&self, config_version: &str) -> Path {
        let name = format!("experiments/{config_version}-{}.parquet", self.node_id);
        if self.prefix.as_ref().is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Upload one file, retrying transient errors until it is stored; a permanent error is
    /// returned at once. Every outcome is reported to `health`.
    pub async fn put(
        &self,
        file: &SealedFile,
        cut_seq: u64,
        lane: Lane,
        health: &Health,
    ) -> Result<(), SinkError> {
        let path = self.object_path(&file.key, cut_seq, lane);
        self.put_retrying(&path, &file.bytes, file.rows, health)
            .await
    }

    /// Store `bytes` at `path` unless an object is there already (create-only, like every put
    /// here), with the same retries and reporting as [`Sink::put`].
    pub async fn put_retrying(
        &self,
        path: &Path,
        bytes: &Bytes,
        rows: usize,
        health: &Health,
    ) -> Result<(), SinkError> {
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            match self.put_once(path, bytes).await {
                Ok(()) => {
                    health.storage_ok();
                    metrics::histogram!(crate::metrics::UPLOAD_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!(crate::metrics::UPLOADED_BYTES).increment(bytes.len() as u64);
                    metrics::counter!(crate::metrics::UPLOADED_ROWS).increment(rows as u64);
                    return Ok(());
                }
                Err(e) if is_permanent(&e) => {
                    metrics::counter!(crate::metrics::UPLOAD_ERRORS).increment(1);
                    metrics::counter!(crate::metrics::STORAGE_ERRORS, "class" => "permanent")
                        .increment(1);
                    let e = SinkError::Refused {
                        path: path.to_string(),
                        source: e,
                    };
                    health.storage_failed(e.to_string(), true);
                    return Err(e);
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::UPLOAD_ERRORS).increment(1);
                    metrics::counter!(crate::metrics::STORAGE_ERRORS, "class" => "transient")
                        .increment(1);
                    health.storage_failed(e.to_string(), false);
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(%path, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "upload failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// One cheap request that tells whether storage answers and lets us in: a `HEAD` of an
    /// object that need not exist (not found is success). Reported to `health`.
    pub async fn probe(&self, health: &Health) -> Result<(), SinkError> {
        let path = if self.prefix.as_ref().is_empty() {
            Path::from("_gateway_probe")
        } else {
            Path::from(format!("{}/_gateway_probe", self.prefix))
        };
        match self.store.head(&path).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                health.storage_ok();
                Ok(())
            }
            Err(e) => {
                let permanent = is_permanent(&e);
                let class = if permanent { "permanent" } else { "transient" };
                metrics::counter!(crate::metrics::STORAGE_ERRORS, "class" => class).increment(1);
                health.storage_failed(e.to_string(), permanent);
                Err(SinkError::Store(e))
            }
        }
    }

    async fn put_once(&self, path: &Path, bytes: &Bytes) -> Result<(), object_store::Error> {
        if bytes.len() < self.multipart_threshold_bytes {
            let opts = PutOptions::from(PutMode::Create);
            return match self
                .store
                .put_opts(path, PutPayload::from_bytes(bytes.clone()), opts)
                .await
            {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let upload = self.store.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
        writer.put(bytes.clone());
        match writer.finish().await {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Table;
    use bytes::Bytes;

    fn file(bytes: usize) -> SealedFile {
        SealedFile {
            key: PartitionKey {
                table: Table::Conversions,
                hour: 490_116, // 2025-11-29T12:00Z
            },
            rows: 1,
            bytes: Bytes::from(vec![7u8; bytes]),
        }
    }

    #[test]
    fn object_names_are_hive_partitioned_and_derived_from_the_cut() {
        let (store, prefix) = open_store("memory:///lake/events", &[]).unwrap();
        let sink = Sink::new(store, prefix, "n1".into());
        let path = sink.object_path(&file(1).key, 42, Lane::Current);
        assert_eq!(
            path.as_ref(),
            "lake/events/conversions/date=2025-11-29/hour=12/part-n1-00000000000000000042.parquet"
        );
    }

    #[tokio::test]
    async fn a_repeated_put_of_the_same_cut_is_not_an_error_and_keeps_one_object() {
        let (store, prefix) = open_store("memory://", &[]).unwrap();
        let sink = Sink::new(store.clone(), prefix, "n1".into());
        let health = Health::new();
        sink.put(&file(10), 1, Lane::Current, &health)
            .await
            .unwrap();
        sink.put(&file(10), 1, Lane::Current, &health)
            .await
            .unwrap();
        let listed: Vec<_> = futures::StreamExt::collect::<Vec<_>>(store.list(None)).await;
        assert_eq!(listed.len(), 1);
    }

    #[tokio::test]
    async fn large_files_go_up_as_multipart_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let (store, prefix) = open_store(dir.path().to_str().unwrap(), &[]).unwrap();
        let sink = Sink::new(store.clone(), prefix, "n1".into()).with_multipart(1 << 20, 5 << 20);
        let f = file(11 << 20);
        sink.put(&f, 3, Lane::Current, &Health::new())
            .await
            .unwrap();
        let got = store
            .get(&sink.object_path(&f.key, 3, Lane::Current))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got, f.bytes);
    }

    #[test]
    fn credentials_and_permissions_are_permanent_and_network_errors_are_not() {
        let source = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        let denied = object_store::Error::PermissionDenied {
            path: "p".into(),
            source: source(),
        };
        assert!(is_permanent(&denied));
        let local = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert!(is_permanent(&local));
        let network = object_store::Error::Generic {
            store: "S3",
            source: source(),
        };
        assert!(!is_permanent(&network));
        let full = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        };
        assert!(!is_permanent(&full), "a full disk can be freed");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..30 {
            assert!(b.delay(attempt) <= Duration::from_secs(1));
        }
        let late: Duration = (0..200).map(|_| b.delay(10)).sum();
        let early: Duration = (0..200).map(|_| b.delay(0)).sum();
        assert!(late > early * 3, "late {late:?} early {early:?}");
    }
}
