//! `FreshBatch -> Arrow RecordBatches`, grouped by table and hourly partition.
//!
//! Owns the table schemas (the public contract in `docs/data-layout.md`) and the rule that picks
//! an event's partition. Does no I/O; the stage that turns these rows into Parquet files is
//! [`crate::writer`].
//!
//! Invariants:
//! - Rows are a pure function of (body, freshness, received time, partition bounds): a replay of
//!   the write-ahead log produces the same rows in the same partitions.
//! - Timestamps are microseconds, UTC; an event time further than the bounds from the receive
//!   time is partitioned by receive time and flagged in `ts_out_of_bounds`.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::dedup::FreshBatch;
use crate::validate::{EventKind, ValidEvent};

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The three datasets under the storage root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Assignments,
    Conversions,
    Rejected,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Assignments, Table::Conversions, Table::Rejected];

    /// Folder name under the storage root.
    pub fn dir(self) -> &'static str {
        match self {
            Table::Assignments => "assignments",
            Table::Conversions => "conversions",
            Table::Rejected => "rejected",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Assignments => ASSIGNMENTS.clone(),
            Table::Conversions => CONVERSIONS.clone(),
            Table::Rejected => REJECTED.clone(),
        }
    }
}

/// One Hive partition of one table: `{table}/date=YYYY-MM-DD/hour=HH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey {
    pub table: Table,
    /// Hours since the Unix epoch (UTC).
    pub hour: i64,
}

impl PartitionKey {
    /// `assignments/date=2025-11-29/hour=7`.
    ///
    /// The hour is not zero-padded: `hour=07` reads as a string in DuckDB's type detection (an
    /// integer never has a leading zero), so a lake's `hour` type would depend on which hours it
    /// holds. Unpadded, every reader infers an integer whatever the data.
    pub fn path(&self) -> String {
        let t = chrono::DateTime::from_timestamp(self.hour * 3600, 0).unwrap_or_default();
        format!(
            "{}/date={}/hour={}",
            self.table.dir(),
            t.format("%Y-%m-%d"),
            t.format("%-H")
        )
    }
}

/// How far an event time may be from its receive time and still choose the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionBounds {
    pub max_past_micros: i64,
    pub max_future_micros: i64,
}

impl PartitionBounds {
    /// The partition hour and whether `ts` was out of bounds.
    fn hour(&self, ts_micros: i64, received_micros: i64) -> (i64, bool) {
        let lo = received_micros.saturating_sub(self.max_past_micros);
        let hi = received_micros.saturating_add(self.max_future_micros);
        if (lo..=hi).contains(&ts_micros) {
            (ts_micros.div_euclid(MICROS_PER_HOUR), false)
        } else {
            (received_micros.div_euclid(MICROS_PER_HOUR), true)
        }
    }
}

/// Rows for one partition, ready for the writer.
#[derive(Debug, Clone)]
pub struct PartitionRows {
    pub key: PartitionKey,
    pub batch: RecordBatch,
    /// The partition is [`LATE_AFTER_HOURS`] or more before the hour the rows were received:
    /// the file writer buffers them longer, so late traffic does not make a small file in every
    /// old partition at every cut.
    pub late: bool,
}

/// Rows whose partition hour is this many hours or more before their receive hour are late:
/// the current and the previous hour are not.
pub const LATE_AFTER_HOURS: i64 = 2;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The two event tables: common columns, then the table's own, `props`, and the columns added
/// after the first release (appended, so older files stay readable by name).
fn event_schema(user_id_nullable: bool, own: Vec<Field>, added: Vec<Field>) -> SchemaRef {
    let mut fields = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("ts", ts_type(), false),
        Field::new("received_at", ts_type(), false),
        Field::new("ts_out_of_bounds", DataType::Boolean, false),
        Field::new("user_id", DataType::Utf8, user_id_nullable),
    ];
    fields.extend(own);
    fields.push(Field::new("props", DataType::Utf8, true));
    // Hardening release: readers of older files see it as null.
    fields.push(Field::new("source", DataType::Utf8, true));
    fields.extend(added);
    Arc::new(Schema::new(fields))
}

static ASSIGNMENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    event_schema(
        true,
        vec![
            Field::new("experiment", DataType::Utf8, false),
            Field::new("variant", DataType::Utf8, false),
        ],
        // Analysable-lake release.
        vec![
            Field::new("unit_attribute", DataType::Utf8, false),
            Field::new("unit_id", DataType::Utf8, false),
            Field::new("config_version", DataType::Utf8, true),
            Field::new("synthetic", DataType::Boolean, false),
        ],
    )
});

static CONVERSIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    event_schema(
        false,
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
            Field::new("experiment", DataType::Utf8, true),
            Field::new("variant", DataType::Utf8, true),
        ],
        vec![Field::new("synthetic", DataType::Boolean, false)],
    )
});

static REJECTED: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("received_at", ts_type(), false),
        Field::new("batch_index", DataType::UInt32, false),
        Field::new("event_id", DataType::Utf8, true),
        Field::new("code", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
    ]))
});

static EXPERIMENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let time = |name| Field::new(name, ts_type(), true);
    Arc::new(Schema::new(vec![
        Field::new("config_version", DataType::Utf8, false),
        Field::new("experiment", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("variant_index", DataType::Int32, false),
        Field::new("weight", DataType::Float64, false),
        Field::new("coverage", DataType::Float64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("layer", DataType::Utf8, true),
        Field::new("hash_attribute", DataType::Utf8, false),
        time("start"),
        time("end"),
        Field::new("first_served_at", ts_type(), false),
        Field::new("node_id", DataType::Utf8, false),
        // Appended after the first release of the table: files written before it lack it.
        Field::new("hash_version", DataType::Int32, true),
    ]))
});

/// The schema of the lake's `experiments` table (see `docs/data-layout.md`).
pub fn experiments_schema() -> SchemaRef {
    EXPERIMENTS.clone()
}

/// The `experiments` table rows of one config version, as first served by `node_id`: one row
/// per (experiment, variant), so SQL can join exposures to the weights they were drawn with.
pub fn experiments_rows(
    experiments: &crate::assign::Experiments,
    first_served_micros: i64,
    node_id: &str,
) -> RecordBatch {
    let mut version = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut variant = StringBuilder::new();
    let mut index = arrow_array::builder::Int32Builder::new();
    let mut weight = Float64Builder::new();
    let mut coverage = Float64Builder::new();
    let mut status = StringBuilder::new();
    let mut layer = StringBuilder::new();
    let mut attribute = StringBuilder::new();
    let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut start, mut end, mut served) = (ts(), ts(), ts());
    let mut node = StringBuilder::new();
    let mut hash_version = arrow_array::builder::Int32Builder::new();
    for e in experiments.summaries() {
        for (i, (name, w)) in e.variants.iter().zip(e.weights).enumerate() {
            version.append_value(experiments.version());
            key.append_value(&**e.key);
            variant.append_value(&**name);
            index.append_value(i32::try_from(i).unwrap_or(i32::MAX));
            weight.append_value(*w);
            coverage.append_value(e.coverage);
            status.append_value(e.status.as_str());
            layer.append_option(e.layer);
            attribute.append_value(e.hash_attribute);
            start.append_option(e.start.map(|t| t.timestamp_micros()));
            end.append_option(e.end.map(|t| t.timestamp_micros()));
            served.append_value(first_served_micros);
            node.append_value(node_id);
            hash_version.append_value(i32::from(e.hash_version.number()));
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(version.finish()),
        Arc::new(key.finish()),
        Arc::new(variant.finish()),
        Arc::new(index.finish()),
        Arc::new(weight.finish()),
        Arc::new(coverage.finish()),
        Arc::new(status.finish()),
        Arc::new(layer.finish()),
        Arc::new(attribute.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(served.finish()),
        Arc::new(node.finish()),
        Arc::new(hash_version.finish()),
    ];
    RecordBatch::try_new(EXPERIMENTS.clone(), columns).expect("columns follow the schema")
}

/// Column builders shared by the two event tables; `name`/`value` stay empty for assignments.
struct EventColumns {
    event_id: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    received_at: TimestampMicrosecondBuilder,
    out_of_bounds: BooleanBuilder,
    user_id: StringBuilder,
    name: StringBuilder,
    value: Float64Builder,
    experiment: StringBuilder,
    variant: StringBuilder,
    props: StringBuilder,
    source: StringBuilder,
    unit_attribute: StringBuilder,
    unit_id: StringBuilder,
    config_version: StringBuilder,
    synthetic: BooleanBuilder,
}

impl EventColumns {
    fn new(rows: usize) -> Self {
        let ts = || TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
        Self {
            event_id: StringBuilder::with_capacity(rows, rows * 36),
            ts: ts(),
            received_at: ts(),
            out_of_bounds: BooleanBuilder::with_capacity(rows),
            user_id: StringBuilder::with_capacity(rows, rows * 16),
            name: StringBuilder::new(),
            value: Float64Builder::new(),
            experiment: StringBuilder::with_capacity(rows, rows * 16),
            variant: StringBuilder::with_capacity(rows, rows * 8),
            props: StringBuilder::new(),
            source: StringBuilder::new(),
            unit_attribute: StringBuilder::new(),
            unit_id: StringBuilder::new(),
            config_version: StringBuilder::new(),
            synthetic: BooleanBuilder::with_capacity(rows),
        }
    }

    fn append(
        &mut self,
        e: &ValidEvent<'_>,
        received_micros: i64,
        out_of_bounds: bool,
        source: Option<&str>,
    ) {
        self.source.append_option(source);
        self.event_id.append_value(&e.event_id);
        self.ts.append_value(e.ts_micros);
        self.received_at.append_value(received_micros);
        self.out_of_bounds.append_value(out_of_bounds);
        self.user_id.append_option(e.user_id.as_deref());
        self.experiment.append_option(e.experiment.as_deref());
        self.variant.append_option(e.variant.as_deref());
        self.props.append_option(e.props);
        self.synthetic.append_value(e.synthetic);
        match e.kind {
            EventKind::Conversion => {
                self.name.append_option(e.name.as_deref());
                self.value.append_option(e.value);
            }
            EventKind::Assignment => {
                // Validation guarantees a unit: given on its own, or the user.
                let (attribute, unit) = match (&e.unit_attribute, &e.unit_id) {
                    (Some(a), Some(u)) => (a.as_ref(), u.as_ref()),
                    _ => ("user_id", e.user_id.as_deref().unwrap_or_default()),
                };
                self.unit_attribute.append_value(attribute);
                self.unit_id.append_value(unit);
                self.config_version
                    .append_option(e.config_version.as_deref());
            }
        }
    }

    fn finish(mut self, table: Table) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.out_of_bounds.finish()),
            Arc::new(self.user_id.finish()),
        ];
        if table == Table::Conversions {
            columns.push(Arc::new(self.name.finish()));
            columns.push(Arc::new(self.value.finish()));
        }
        columns.push(Arc::new(self.experiment.finish()));
        columns.push(Arc::new(self.variant.finish()));
        columns.push(Arc::new(self.props.finish()));
        columns.push(Arc::new(self.source.finish()));
        if table == Table::Assignments {
            columns.push(Arc::new(self.unit_attribute.finish()));
            columns.push(Arc::new(self.unit_id.finish()));
            columns.push(Arc::new(self.config_version.finish()));
        }
        columns.push(Arc::new(self.synthetic.finish()));
        RecordBatch::try_new(table.schema(), columns).expect("columns follow the table schema")
    }
}

/// Turn the fresh events and the rejections of one request into rows per partition; `source`
/// names the write key that sent them.
pub fn rows(
    fresh: &FreshBatch<'_>,
    received_micros: i64,
    bounds: PartitionBounds,
    source: Option<&str>,
) -> Vec<PartitionRows> {
    let mut rows = RowsBuilder::new(fresh.accepted());
    rows.add(fresh, received_micros, bounds, source);
    rows.finish()
}

/// Rows of several requests at once, each with its own receive time, bounds and source: one
/// Arrow batch per partition for all of them, which is what a cluster writer wants for the
/// many small segments of one log message. Rows keep their requests' order.
///
/// Typical requests touch one or two partitions, so the groups are a short list, not a map.
#[derive(Default)]
pub struct RowsBuilder {
    /// By partition and whether the rows are late.
    groups: Vec<((PartitionKey, bool), EventColumns)>,
    rejected: Vec<PartitionRows>,
    capacity: usize,
}

impl std::fmt::Debug for RowsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowsBuilder")
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl RowsBuilder {
    /// `capacity`: about how many rows a partition's arrays should make room for.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ..Self::default()
        }
    }

    pub fn add(
        &mut self,
        fresh: &FreshBatch<'_>,
        received_micros: i64,
        bounds: PartitionBounds,
        source: Option<&str>,
    ) {
        let late_before = received_micros.div_euclid(MICROS_PER_HOUR) - LATE_AFTER_HOURS;
        for (event, _) in fresh
            .valid
            .events
            .iter()
            .zip(&fresh.fresh)
            .filter(|(_, f)| **f)
        {
            let (hour, out_of_bounds) = bounds.hour(event.ts_micros, received_micros);
            let table = match event.kind {
                EventKind::Assignment => Table::Assignments,
                EventKind::Conversion => Table::Conversions,
            };
            let key = (PartitionKey { table, hour }, hour <= late_before);
            let columns = match self.groups.iter().position(|(k, _)| *k == key) {
                Some(i) => &mut self.groups[i].1,
                None => {
                    self.groups.push((key, EventColumns::new(self.capacity)));
                    &mut self.groups.last_mut().expect("just pushed").1
                }
            };
            columns.append(event, received_micros, out_of_bounds, source);
        }
        if !fresh.valid.rejected.is_empty() {
            self.rejected
                .push(rejected_rows(fresh, received_micros, source));
        }
    }

    pub fn finish(self) -> Vec<PartitionRows> {
        let mut out: Vec<PartitionRows> = self
            .groups
            .into_iter()
            .map(|((key, late), columns)| PartitionRows {
                key,
                batch: columns.finish(key.table),
                late,
            })
            .collect();
        out.extend(self.rejected);
        out
    }
}

fn rejected_rows(
    fresh: &FreshBatch<'_>,
    received_micros: i64,
    source: Option<&str>,
) -> PartitionRows {
    let rejected = &fresh.valid.rejected;
    let n = rejected.len();
    let mut received_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut index = UInt32Builder::with_capacity(n);
    let mut event_id = StringBuilder::new();
    let mut code = StringBuilder::new();
    let mut message = StringBuilder::new();
    let mut raw = StringBuilder::new();
    let mut sources = StringBuilder::new();
    for r in rejected {
        sources.append_option(source);
        received_at.append_value(received_micros);
        index.append_value(r.index);
        event_id.append_option(r.event_id.as_deref());
        code.append_value(r.code.as_str());
        message.append_value(&r.message);
        raw.append_value(&r.raw);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(received_at.finish()),
        Arc::new(index.finish()),
        Arc::new(event_id.finish()),
        Arc::new(code.finish()),
        Arc::new(message.finish()),
        Arc::new(raw.finish()),
        Arc::new(sources.finish()),
    ];
    PartitionRows {
        key: PartitionKey {
            table: Table::Rejected,
            hour: received_micros.div_euclid(MICROS_PER_HOUR),
        },
        batch: RecordBatch::try_new(Table::Rejected.schema(), columns)
            .expect("columns follow the rejected schema"),
        late: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{DedupConfig, DedupWindow};
    use crate::validate::{BodyFormat, decode};
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    use std::time::Duration;

    const HOUR: i64 = MICROS_PER_HOUR;
    const BOUNDS: PartitionBounds = PartitionBounds {
        max_past_micros: 48 * HOUR,
        max_future_micros: HOUR,
    };

    fn rows_of(body: &str, received: i64) -> Vec<PartitionRows> {
        let valid = decode(body.as_bytes(), BodyFormat::JsonArray, 100).unwrap();
        let dedup = DedupWindow::new(DedupConfig {
            window: Duration::from_secs(60),
            max_ids: 100,
        });
        rows(
            &dedup.admit(valid, received / 1000),
            received,
            BOUNDS,
            Some("web"),
        )
    }

    #[test]
    fn events_are_grouped_by_table_and_hour_with_typed_columns() {
        let received = 1_764_419_696_789_000; // 2025-11-29T12:34:56.789Z
        let body = r#"[
          {"event_id":"a","type":"assignment","ts":1764419696789,"user_id":"u","experiment":"e","variant":"v"},
          {"event_id":"b","type":"conversion","ts":"2025-11-29T11:00:00Z","user_id":"u","name":"buy","value":2.5},
          {"event_id":"c","type":"conversion","ts":1764419696789,"user_id":"u","name":"buy","props":{"k":"v"}},
          {"event_id":"d","type":"oops"}
        ]"#;
        let out = rows_of(body, received);
        let keys: Vec<String> = out.iter().map(|r| r.key.path()).collect();
        assert_eq!(
            keys,
            [
                "assignments/date=2025-11-29/hour=12",
                "conversions/date=2025-11-29/hour=11",
                "conversions/date=2025-11-29/hour=12",
                "rejected/date=2025-11-29/hour=12"
            ]
        );
        let conv = &out[2].batch;
        assert_eq!(conv.schema(), Table::Conversions.schema());
        for part in &out {
            let source = part
                .batch
                .column_by_name("source")
                .unwrap()
                .as_string::<i32>();
            assert!(source.iter().all(|s| s == Some("web")), "{:?}", part.key);
        }
        assert_eq!(
            conv.column_by_name("props")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            r#"{"k":"v"}"#
        );
        let ts = out[0]
            .batch
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_764_419_696_789_000);
        let value = out[1]
            .batch
            .column_by_name("value")
            .unwrap()
            .as_primitive::<arrow_array::types::Float64Type>();
        assert_eq!(value.value(0), 2.5);
        let rejected = &out[3].batch;
        assert_eq!(
            rejected
                .column_by_name("code")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "invalid_value"
        );
        assert_eq!(
            rejected
                .column_by_name("batch_index")
                .unwrap()
                .as_primitive::<arrow_array::types::UInt32Type>()
                .value(0),
            3
        );
    }

    #[test]
    fn a_bad_client_clock_is_partitioned_by_receive_time_and_flagged() {
        let received = 1_764_419_696_789_000;
        let body = r#"[{"event_id":"a","type":"assignment","ts":"2021-01-01T00:00:00Z","user_id":"u","experiment":"e","variant":"v"}]"#;
        let out = rows_of(body, received);
        assert_eq!(out[0].key.path(), "assignments/date=2025-11-29/hour=12");
        let flag = out[0]
            .batch
            .column_by_name("ts_out_of_bounds")
            .unwrap()
            .as_boolean();
        assert!(flag.value(0));
    }

    #[test]
    fn assignments_carry_their_unit_user_config_version_and_traffic_kind() {
        let received = 1_764_419_696_789_000;
        let body = r#"[
          {"event_id":"a","type":"assignment","ts":1764419696789,"user_id":"u","experiment":"e","variant":"v"},
          {"event_id":"b","type":"assignment","ts":1764419696789,"unit_attribute":"device_id","unit_id":"d","config_version":"c1","experiment":"e","variant":"v","synthetic":true},
          {"event_id":"c","type":"conversion","ts":1764419696789,"user_id":"u","name":"buy","synthetic":true}
        ]"#;
        let out = rows_of(body, received);
        let a = &out[0].batch;
        let text = |name: &str| -> Vec<Option<String>> {
            a.column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.map(str::to_owned))
                .collect()
        };
        let some = |s: &str| Some(s.to_owned());
        // Without unit fields the unit is the user.
        assert_eq!(text("unit_attribute"), [some("user_id"), some("device_id")]);
        assert_eq!(text("unit_id"), [some("u"), some("d")]);
        assert_eq!(text("user_id"), [some("u"), None]);
        assert_eq!(text("config_version"), [None, some("c1")]);
        let synthetic = |b: &RecordBatch| -> Vec<bool> {
            let col = b.column_by_name("synthetic").unwrap().as_boolean();
            (0..col.len()).map(|i| col.value(i)).collect()
        };
        assert_eq!(synthetic(a), [false, true]);
        assert_eq!(synthetic(&out[1].batch), [true]);
        assert_eq!(out[1].batch.schema(), Table::Conversions.schema());
    }

    #[test]
    fn partition_hours_are_unpadded_integers() {
        let key = |hour| PartitionKey {
            table: Table::Assignments,
            hour,
        };
        // 2025-11-29T07:00Z and T00:00Z.
        assert_eq!(key(490_111).path(), "assignments/date=2025-11-29/hour=7");
        assert_eq!(key(490_104).path(), "assignments/date=2025-11-29/hour=0");
        assert_eq!(key(490_127).path(), "assignments/date=2025-11-29/hour=23");
    }

    #[test]
    fn the_experiments_table_has_a_row_per_variant_with_normalized_weights() {
        let config = crate::assign::Experiments::parse(
            r#"{"experiments": [
              {"key": "a", "variants": ["c", "t"], "weights": [0.2, 0.8], "coverage": 0.5,
               "layer": {"name": "L", "range": [0, 0.5]}},
              {"key": "b", "variants": ["x", "y", "z"], "status": "killed", "hash_attribute": "device_id",
               "hash_version": 1}
            ]}"#,
            crate::assign::FileFormat::Json,
        )
        .unwrap();
        let batch = experiments_rows(&config, 1_764_419_696_789_000, "n1");
        assert_eq!(batch.num_rows(), 5);
        let text = |name: &str, i: usize| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .value(i)
                .to_owned()
        };
        let float = |name: &str, i: usize| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<arrow_array::types::Float64Type>()
                .value(i)
        };
        assert_eq!(text("config_version", 0), config.version());
        assert_eq!(
            (text("experiment", 1), text("variant", 1)),
            ("a".into(), "t".into())
        );
        assert_eq!(float("weight", 1), 0.8);
        assert_eq!(float("coverage", 0), 0.5);
        assert_eq!(text("layer", 0), "L");
        assert_eq!(text("status", 4), "killed");
        assert_eq!(text("hash_attribute", 4), "device_id");
        assert!((float("weight", 2) - 1.0 / 3.0).abs() < 1e-12);
        assert!(batch.column_by_name("layer").unwrap().is_null(3));
        let version = |i| {
            batch
                .column_by_name("hash_version")
                .unwrap()
                .as_primitive::<arrow_array::types::Int32Type>()
                .value(i)
        };
        assert_eq!((version(0), version(4)), (2, 1));
    }

    #[test]
    fn duplicates_produce_no_rows() {
        let received = 1_764_419_696_789_000;
        let body = r#"[
          {"event_id":"a","type":"assignment","ts":1764419696789,"user_id":"u","experiment":"e","variant":"v"},
          {"event_id":"a","type":"assignment","ts":1764419696789,"user_id":"u","experiment":"e","variant":"v"}
        ]"#;
        let out = rows_of(body, received);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].batch.num_rows(), 1);
    }
}
