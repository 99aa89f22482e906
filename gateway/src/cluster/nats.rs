//! The partitioned log on NATS JetStream, through `async-nats`.
//!
//! - Partition `p` is the stream `{prefix}-{p}` on subject `{prefix}.{p}`: file storage,
//!   `replicas` copies, limits retention (`retention`), and a duplicate window (`dedup_window`)
//!   in which a second message with the same `Nats-Msg-Id` is acknowledged as a duplicate of
//!   the first and not stored.
//! - An append waits for JetStream's ack: the message is stored by a quorum of the stream's
//!   replicas, and, with the servers run with `sync_interval: always`, synced to disk first.
//! - A partition is read in order by an ordered consumer from a start sequence; it recreates
//!   itself after a leader change or a server restart, from the last sequence it delivered.
//!
//! - Progress and leases are two KV buckets, `{prefix}-progress` (replicated like the streams)
//!   and `{prefix}-leases` (whose entries lapse `lease` after their last write). Both are
//!   updated with compare-and-set on the entry's revision.
//!
//! Errors: no responders (which is also what a stream without a leader answers during an
//! election, for a few seconds after its leader dies), timeouts and broken connections are
//! [`LogError::Unavailable`], retryable; an oversized message and a refused stream config are
//! not.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context, kv, stream};
use bytes::Bytes;
use futures::StreamExt;

use super::{
    Appended, LogConfig, LogError, LogMessage, PartitionReader, PartitionedLog, Progress, ReadFrom,
};

/// A connection to the cluster and the partitions' streams.
#[derive(Clone)]
pub struct NatsLog {
    js: jetstream::Context,
    config: LogConfig,
    progress: kv::Store,
    leases: kv::Store,
}

impl std::fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLog")
            .field("urls", &self.config.urls)
            .field("prefix", &self.config.prefix)
            .field("partitions", &self.config.partitions)
            .finish()
    }
}

impl NatsLog {
    /// Connect (retrying in the background while no server answers) and make sure every
    /// partition's stream exists with the configured settings.
    pub async fn connect(config: LogConfig) -> Result<NatsLog, LogError> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            .connect(config.urls.clone())
            .await
            .map_err(|e| {
                LogError::Unavailable(format!("cannot connect to {:?}: {e}", config.urls))
            })?;
        let js = context::ContextBuilder::new()
            .timeout(config.timeout)
            .build(client);
        for p in 0..config.partitions {
            ensure_stream(&js, &config, p).await?;
        }
        let bucket = |name: &str, max_age: Duration| kv::Config {
            bucket: format!("{}-{name}", config.prefix),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let progress = ensure_bucket(&js, bucket("progress", Duration::ZERO)).await?;
        let leases = ensure_bucket(&js, bucket("leases", config.lease)).await?;
        Ok(NatsLog {
            js,
            config,
            progress,
            leases,
        })
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn stream_name(&self, partition: u32) -> String {
        stream_name(&self.config, partition)
    }

    fn subject(&self, partition: u32) -> String {
        subject(&self.config, partition)
    }

    /// Append `payload` to `partition` under the idempotency key `id`, and wait for the ack.
    pub async fn append(
        &self,
        partition: u32,
        id: &str,
        payload: Bytes,
    ) -> Result<Appended, LogError> {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let classify = |e: async_nats::jetstream::context::PublishError| match e.kind() {
            K::TimedOut | K::StreamNotFound | K::BrokenPipe | K::MaxAckPending => {
                LogError::Unavailable(e.to_string())
            }
            K::MaxPayloadExceeded => LogError::TooLarge(e.to_string()),
            _ => LogError::Other(e.to_string()),
        };
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id);
        let ack = self
            .js
            .send_publish(self.subject(partition), publish)
            .await
            .map_err(classify)?
            .await
            .map_err(classify)?;
        Ok(Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Read `partition` in order from `from_seq` (1 is the first message).
    pub async fn reader(&self, partition: u32, from_seq: u64) -> Result<NatsReader, LogError> {
        self.open_reader(partition, ReadFrom::Seq(from_seq)).await
    }

    async fn open_reader(&self, partition: u32, from: ReadFrom) -> Result<NatsReader, LogError> {
        let stream = self
            .js
            .get_stream(self.stream_name(partition))
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: match from {
                    ReadFrom::Seq(seq) => consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: seq.max(1),
                    },
                    ReadFrom::Time(start_time) => {
                        consumer::DeliverPolicy::ByStartTime { start_time }
                    }
                },
                ..Default::default()
            })
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(NatsReader { messages })
    }
}

fn stream_name(config: &LogConfig, partition: u32) -> String {
    format!("{}-{partition}", config.prefix)
}

fn subject(config: &LogConfig, partition: u32) -> String {
    format!("{}.{partition}", config.prefix)
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: &LogConfig,
    partition: u32,
) -> Result<(), LogError> {
    let name = stream_name(config, partition);
    let stream_config = stream::Config {
        name: name.clone(),
        subjects: vec![subject(config, partition)],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        retention: stream::RetentionPolicy::Limits,
        // Full is full: appends are refused (the gateways answer 503), nothing is dropped.
        discard: stream::DiscardPolicy::New,
        max_bytes: config
            .max_bytes
            .map_or(-1, |b| b.min(i64::MAX as u64) as i64),
        max_age: config.retention,
        duplicate_window: config.dedup_window,
        ..Default::default()
    };
    js.get_or_create_stream(stream_config)
        .await
        .map(drop)
        .map_err(|e| {
            use async_nats::jetstream::context::CreateStreamErrorKind as K;
            match e.kind() {
                K::JetStreamUnavailable | K::TimedOut => LogError::Unavailable(e.to_string()),
                _ => LogError::Config(format!("stream {name}: {e}")),
            }
        })
}

async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, LogError> {
    let name = config.bucket.clone();
    match js.get_key_value(&name).await {
        Ok(store) => return Ok(store),
        Err(e) if e.kind() == context::KeyValueErrorKind::GetBucket => {}
        Err(e) => return Err(LogError::Unavailable(format!("bucket {name}: {e}"))),
    }
    js.create_key_value(config)
        .await
        .map_err(|e| LogError::Unavailable(format!("creating bucket {name}: {e}")))
}

fn unavailable(what: &str) -> impl Fn(&dyn std::fmt::Display) -> LogError + '_ {
    move |e| LogError::Unavailable(format!("{what}: {e}"))
}

impl PartitionedLog for NatsLog {
    type Reader = NatsReader;

    fn partitions(&self) -> u32 {
        self.config.partitions
    }

    fn max_message_bytes(&self) -> usize {
        match self.js.client().server_info().max_payload {
            0 => 1 << 20, // not connected yet: NATS's default
            n => n,
        }
    }

    async fn append(&self, partition: u32, id: &str, payload: Bytes) -> Result<Appended, LogError> {
        NatsLog::append(self, partition, id, payload).await
    }

    async fn read(&self, partition: u32, from: ReadFrom) -> Result<NatsReader, LogError> {
        self.open_reader(partition, from).await
    }

    async fn progress(&self, partition: u32) -> Result<Option<Progress>, LogError> {
        let entry = self
            .progress
            .entry(format!("p{partition}"))
            .await
            .map_err(|e| unavailable("reading progress")(&e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => serde_json::from_slice(&e.value)
                .map(Some)
                .map_err(|e| LogError::Other(format!("progress of partition {partition}: {e}"))),
            _ => Ok(None),
        }
    }

    async fn advance(&self, partition: u32, progress: Progress) -> Result<(), LogError> {
        let key = format!("p{partition}");
        let value = Bytes::from(serde_json::to_vec(&progress).expect("plain struct"));
        loop {
            let entry = self
                .progress
                .entry(&key)
                .await
                .map_err(|e| unavailable("reading progress")(&e))?;
            let written = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let current: Progress = serde_json::from_slice(&e.value).map_err(|err| {
                        LogError::Other(format!("progress of partition {partition}: {err}"))
                    })?;
                    if current.seq >= progress.seq {
                        return Ok(());
                    }
                    self.progress
                        .update(&key, value.clone(), e.revision)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
                _ => self
                    .progress
                    .create(&key, value.clone())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(()) => return Ok(()),
                // Someone else moved it meanwhile: look again.
                Err(e) => tracing::debug!(partition, error = %e, "progress changed; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn claim(&self, partition: u32, owner: &str) -> Result<bool, LogError> {
        let key = format!("owner.p{partition}");
        let entry = self
            .leases
            .entry(&key)
            .await
            .map_err(|e| unavailable("reading a lease")(&e))?;
        let taken = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                if e.value != owner.as_bytes() {
                    return Ok(false);
                }
                self.leases
                    .update(&key, Bytes::copy_from_slice(owner.as_bytes()), e.revision)
                    .await
                    .is_ok()
            }
            _ => self
                .leases
                .create(&key, Bytes::copy_from_slice(owner.as_bytes()))
                .await
                .is_ok(),
        };
        Ok(taken)
    }

    async fn release(&self, partition: u32, owner: &str) -> Result<(), LogError> {
        let key = format!("owner.p{partition}");
        let entry = self
            .leases
            .entry(&key)
            .await
            .map_err(|e| unavailable("reading a lease")(&e))?;
        if let Some(e) = entry
            && e.operation == kv::Operation::Put
            && e.value == owner.as_bytes()
        {
            // A lost race (the lease lapsed and was taken) leaves it with its new owner.
            let _ = self
                .leases
                .delete_expect_revision(&key, Some(e.revision))
                .await;
        }
        Ok(())
    }

    async fn heartbeat(&self, owner: &str) -> Result<usize, LogError> {
        self.leases
            .put(format!("member.{owner}"), Bytes::new())
            .await
            .map_err(|e| unavailable("renewing membership")(&e))?;
        let mut keys = self
            .leases
            .keys()
            .await
            .map_err(|e| unavailable("listing writers")(&e))?;
        let mut live = 0;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable("listing writers")(&e))?;
            live += usize::from(key.starts_with("member."));
        }
        Ok(live.max(1))
    }
}

/// One partition being read in order.
pub struct NatsReader {
    messages: consumer::pull::Ordered,
}

impl std::fmt::Debug for NatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsReader")
    }
}

impl PartitionReader for NatsReader {
    async fn next(&mut self, wait: Duration) -> Result<Option<LogMessage>, LogError> {
        NatsReader::next(self, wait).await
    }
}

impl NatsReader {
    /// The next message, or `None` if none arrived within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<LogMessage>, LogError> {
        let message = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(LogError::Unavailable("the consumer ended".into())),
            Ok(Some(Err(e))) => return Err(LogError::Unavailable(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        let info = message
            .info()
            .map_err(|e| LogError::Other(format!("a message without stream metadata: {e}")))?;
        let (seq, stored_at) = (info.stream_sequence, info.published);
        Ok(Some(LogMessage {
            seq,
            stored_at,
            payload: message.message.payload.clone(),
        }))
    }
}
