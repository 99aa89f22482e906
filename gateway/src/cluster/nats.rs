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
//! Errors: no responders (which is also what a stream without a leader answers during an
//! election, for a few seconds after its leader dies), timeouts and broken connections are
//! [`LogError::Unavailable`], retryable; an oversized message and a refused stream config are
//! not.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context, stream};
use bytes::Bytes;
use futures::StreamExt;

use super::{Appended, LogConfig, LogError, LogMessage};

/// A connection to the cluster and the partitions' streams.
#[derive(Clone)]
pub struct NatsLog {
    js: jetstream::Context,
    config: LogConfig,
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
        let log = NatsLog { js, config };
        for p in 0..log.config.partitions {
            log.ensure_stream(p).await?;
        }
        Ok(log)
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn stream_name(&self, partition: u32) -> String {
        format!("{}-{partition}", self.config.prefix)
    }

    fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.config.prefix)
    }

    async fn ensure_stream(&self, partition: u32) -> Result<(), LogError> {
        let config = stream::Config {
            name: self.stream_name(partition),
            subjects: vec![self.subject(partition)],
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: self.config.retention,
            duplicate_window: self.config.dedup_window,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map(drop)
            .map_err(|e| {
                use async_nats::jetstream::context::CreateStreamErrorKind as K;
                match e.kind() {
                    K::JetStreamUnavailable | K::TimedOut => LogError::Unavailable(e.to_string()),
                    _ => LogError::Config(format!("stream {}: {e}", self.stream_name(partition))),
                }
            })
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
    pub async fn reader(&self, partition: u32, from_seq: u64) -> Result<PartitionReader, LogError> {
        let stream = self
            .js
            .get_stream(self.stream_name(partition))
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(PartitionReader { messages })
    }
}

/// One partition being read in order.
pub struct PartitionReader {
    messages: consumer::pull::Ordered,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartitionReader")
    }
}

impl PartitionReader {
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
