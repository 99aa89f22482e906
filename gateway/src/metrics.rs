//! Metric names, described once at start-up, and the Prometheus recorder.
//!
//! Every metric the gateway emits is named here; code elsewhere refers to these constants.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const EVENTS_ACCEPTED: &str = "gateway_events_accepted_total";
pub const EVENTS_DUPLICATE: &str = "gateway_events_duplicate_total";
pub const EVENTS_REJECTED: &str = "gateway_events_rejected_total";
pub const REQUESTS: &str = "gateway_http_requests_total";
pub const REQUEST_SECONDS: &str = "gateway_http_request_duration_seconds";
pub const OVERLOADED: &str = "gateway_overloaded_total";
pub const DEDUP_IDS: &str = "gateway_dedup_ids";
pub const DEDUP_EARLY_ROTATIONS: &str = "gateway_dedup_early_rotations_total";
pub const WAL_RECORDS: &str = "gateway_wal_records_total";
pub const WAL_BYTES: &str = "gateway_wal_bytes";
pub const WAL_SYNC_SECONDS: &str = "gateway_wal_sync_duration_seconds";
pub const WAL_ERRORS: &str = "gateway_wal_errors_total";
pub const CUTS: &str = "gateway_cuts_total";
pub const CUTS_DEHYDRATED: &str = "gateway_cuts_dehydrated_total";
pub const DURABLE_SEQ: &str = "gateway_durable_seq";
pub const UPLOAD_SECONDS: &str = "gateway_upload_duration_seconds";
pub const UPLOADED_BYTES: &str = "gateway_uploaded_bytes_total";
pub const UPLOADED_ROWS: &str = "gateway_uploaded_rows_total";
pub const UPLOAD_ERRORS: &str = "gateway_upload_errors_total";
pub const ASSIGNMENTS: &str = "gateway_assignments_total";
pub const CONFIG_RELOADS: &str = "gateway_experiments_reloads_total";
pub const STAGE_UP: &str = "gateway_stage_up";
pub const HTTP_TIMEOUTS: &str = "gateway_http_timeouts_total";
pub const HTTP_CONNECTIONS: &str = "gateway_http_connections";
pub const BUDGET_REFUSALS: &str = "gateway_memory_refusals_total";
pub const MEMORY_RESERVED: &str = "gateway_memory_reserved_bytes";
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
pub const STORAGE_ERRORS: &str = "gateway_storage_errors_total";
pub const ASSIGNMENTS_BY_VARIANT: &str = "gateway_assignments_by_variant_total";
pub const CONFIG_VERSION: &str = "gateway_experiments_config";
pub const EXPOSED_UNITS: &str = "gateway_experiment_exposed_units";
pub const SRM_P_VALUE: &str = "gateway_experiment_srm_p_value";
pub const SRM_DETECTED: &str = "gateway_experiment_srm";
pub const SDK_CALLS_SKIPPED: &str = "gateway_sdk_calls_skipped_total";
pub const CLUSTER_APPENDS: &str = "gateway_cluster_appends_total";
pub const CLUSTER_SEGMENTS: &str = "gateway_cluster_segments_total";
pub const CLUSTER_APPEND_SECONDS: &str = "gateway_cluster_append_duration_seconds";
pub const WRITER_PARTITIONS: &str = "gateway_writer_partitions";
pub const WRITER_EVENTS: &str = "gateway_writer_events_total";

/// Latency buckets (seconds) of every histogram: rendered as Prometheus histograms, not
/// summaries, so quantiles can be aggregated across gateways.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Install the global Prometheus recorder (once per process) and describe every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            register();
            handle
        })
        .clone()
}

/// Create every series whose labels are known up front at zero, so `/metrics` lists them from
/// the start (an alert on `rate(...)` needs the series before the first event).
fn register() {
    use metrics::{counter, gauge};
    for name in [
        EVENTS_ACCEPTED,
        EVENTS_DUPLICATE,
        DEDUP_EARLY_ROTATIONS,
        WAL_RECORDS,
        WAL_ERRORS,
        CUTS,
        CUTS_DEHYDRATED,
        UPLOADED_BYTES,
        UPLOADED_ROWS,
        UPLOAD_ERRORS,
        BUDGET_REFUSALS,
        RATE_LIMITED,
    ] {
        counter!(name).absolute(0);
    }
    for name in [
        DEDUP_IDS,
        WAL_BYTES,
        DURABLE_SEQ,
        HTTP_CONNECTIONS,
        MEMORY_RESERVED,
    ] {
        gauge!(name).set(0.0);
    }
    for code in crate::validate::RejectCode::ALL {
        counter!(EVENTS_REJECTED, "code" => code.as_str()).absolute(0);
    }
    for reason in [
        "memory",
        "overloaded",
        "log_full",
        "log_unwritable",
        "shutting_down",
    ] {
        counter!(OVERLOADED, "reason" => reason).absolute(0);
    }
    for kind in ["idle", "header", "body"] {
        counter!(HTTP_TIMEOUTS, "kind" => kind).absolute(0);
    }
    for class in ["transient", "permanent"] {
        counter!(STORAGE_ERRORS, "class" => class).absolute(0);
    }
    for reason in crate::assign::Reason::ALL {
        counter!(ASSIGNMENTS, "reason" => reason.as_str()).absolute(0);
    }
    for outcome in ["ok", "refused"] {
        counter!(CONFIG_RELOADS, "outcome" => outcome).absolute(0);
    }
}

fn describe() {
    describe_counter!(EVENTS_ACCEPTED, "Events accepted and logged.");
    describe_counter!(
        EVENTS_DUPLICATE,
        "Events dropped as duplicates of a recent event_id."
    );
    describe_counter!(EVENTS_REJECTED, "Events refused by validation, by code.");
    describe_counter!(
        SDK_CALLS_SKIPPED,
        "Analytics SDK calls that are not events here (identify, page, PostHog $ events), by route."
    );
    describe_counter!(
        CLUSTER_APPENDS,
        "Cluster mode: messages appended to the log, by outcome (stored, duplicate, retryable, permanent)."
    );
    describe_counter!(
        CLUSTER_SEGMENTS,
        "Cluster mode: requests' partition segments in the messages appended (over the messages: how many requests share one)."
    );
    describe_histogram!(
        CLUSTER_APPEND_SECONDS,
        Unit::Seconds,
        "Cluster mode: time from a request's first append to its last ack."
    );
    describe_gauge!(
        WRITER_PARTITIONS,
        "Cluster writer: partitions this writer holds the lease of."
    );
    describe_counter!(
        WRITER_EVENTS,
        "Cluster writer: events read from the log, by outcome (fresh, duplicate)."
    );
    describe_counter!(REQUESTS, "HTTP requests, by route and status.");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency, by route."
    );
    describe_counter!(OVERLOADED, "Requests answered 503, by reason.");
    describe_gauge!(DEDUP_IDS, "Event ids remembered by the dedup window.");
    describe_counter!(
        DEDUP_EARLY_ROTATIONS,
        "Dedup generations rotated early to stay within max_ids."
    );
    describe_counter!(WAL_RECORDS, "Records appended to the write-ahead log.");
    describe_gauge!(WAL_BYTES, Unit::Bytes, "Bytes of write-ahead log on disk.");
    describe_histogram!(
        WAL_SYNC_SECONDS,
        Unit::Seconds,
        "Write + fdatasync time of one group commit."
    );
    describe_counter!(WAL_ERRORS, "Failed write-ahead log appends.");
    describe_counter!(CUTS, "Cuts of buffered rows into Parquet files.");
    describe_counter!(
        CUTS_DEHYDRATED,
        "Cuts whose file bytes were dropped while the uploader was behind, to be rebuilt from \
         the write-ahead log when uploaded."
    );
    describe_gauge!(
        DURABLE_SEQ,
        "Highest log sequence whose rows are all in object storage."
    );
    describe_histogram!(
        UPLOAD_SECONDS,
        Unit::Seconds,
        "Time to upload one Parquet file."
    );
    describe_counter!(UPLOADED_BYTES, Unit::Bytes, "Parquet bytes uploaded.");
    describe_counter!(UPLOADED_ROWS, "Rows uploaded in Parquet files.");
    describe_counter!(UPLOAD_ERRORS, "Failed upload attempts (each is retried).");
    describe_counter!(ASSIGNMENTS, "Assignments evaluated, by reason.");
    describe_counter!(CONFIG_RELOADS, "Experiments file reloads, by outcome.");
    describe_gauge!(
        STAGE_UP,
        "1 while a pipeline stage runs, 0 once it stopped on an error (see /readyz)."
    );
    describe_counter!(
        HTTP_TIMEOUTS,
        "Connections closed or requests answered 408 for stalling, by kind (idle, header, body)."
    );
    describe_gauge!(HTTP_CONNECTIONS, "Open HTTP connections.");
    describe_counter!(
        BUDGET_REFUSALS,
        "Reservations refused by the memory budget (answered 503 overloaded)."
    );
    describe_gauge!(
        MEMORY_RESERVED,
        Unit::Bytes,
        "Bytes reserved by requests in flight against the memory budget."
    );
    describe_counter!(AUTH_FAILURES, "Requests refused 401 or 403, by route.");
    describe_counter!(
        RATE_LIMITED,
        "Requests refused 429 by a write key's rate limit."
    );
    describe_counter!(
        ASSIGNMENTS_BY_VARIANT,
        "Units assigned into an experiment (hashed or forced), by experiment and variant; label \
         values come from the experiments file only."
    );
    describe_gauge!(
        CONFIG_VERSION,
        "1 for the experiments config version in force (label version), 0 for earlier ones."
    );
    describe_gauge!(
        EXPOSED_UNITS,
        "Distinct units exposed, by experiment and variant, since start or the experiment's last \
         split change; exact up to [srm] exact_units_per_variant, then a HyperLogLog estimate \
         (0.41% relative standard error)."
    );
    describe_gauge!(
        SRM_P_VALUE,
        "Chi-square sample-ratio p-value of the exposed units against the configured weights, by \
         experiment (1 until there are enough units)."
    );
    describe_gauge!(
        SRM_DETECTED,
        "1 when an experiment's sample-ratio p-value is below [srm] p_value_threshold, else 0."
    );
    describe_counter!(
        STORAGE_ERRORS,
        "Storage errors, by class (transient: retried; permanent: uploads stopped)."
    );
}
