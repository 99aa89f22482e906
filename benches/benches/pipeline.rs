//! Per-event cost of each stage on the hot path, against a baseline measured in the same run:
//! serde_json deserializing the same body into derived borrowed structs (the floor for parsing).
//!
//! `cargo bench -p benches --bench pipeline`; throughput is in events.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gateway::batch::{self, PartitionBounds};
use gateway::dedup::{DedupConfig, DedupWindow};
use gateway::validate::{self, BodyFormat};
use gateway::wal::LoggedBatch;
use gateway::writer::{FileWriter, FlushPolicy, Lane};

const EVENTS: usize = 100;
const BOUNDS: PartitionBounds = PartitionBounds {
    max_past_micros: 7 * 24 * 3_600_000_000,
    max_future_micros: 3_600_000_000,
};

fn dedup() -> DedupWindow {
    DedupWindow::new(DedupConfig {
        window: Duration::from_secs(600),
        max_ids: 20_000_000,
    })
}

fn stages(c: &mut Criterion) {
    let body = benches::batch_body(EVENTS, "bench");
    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(EVENTS as u64));

    g.bench_function("baseline_serde_derive_borrowed", |b| {
        b.iter(|| serde_json::from_slice::<Vec<benches::BorrowedEvent<'_>>>(&body).unwrap())
    });
    g.bench_function("decode_validate", |b| {
        b.iter(|| validate::decode(&body, BodyFormat::JsonArray, 10_000).unwrap())
    });
    // Fresh ids every iteration (a new window each time), so dedup inserts rather than hits.
    g.bench_function("decode_validate_dedup", |b| {
        b.iter_batched(
            dedup,
            |d| {
                let valid = validate::decode(&body, BodyFormat::JsonArray, 10_000).unwrap();
                d.admit(valid, 0).accepted()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("decode_validate_dedup_arrow", |b| {
        b.iter_batched(
            dedup,
            |d| {
                let valid = validate::decode(&body, BodyFormat::JsonArray, 10_000).unwrap();
                let fresh = d.admit(valid, 0);
                batch::rows(
                    &fresh,
                    chrono::Utc::now().timestamp_micros(),
                    BOUNDS,
                    Some("bench"),
                )
            },
            BatchSize::SmallInput,
        )
    });

    // Parquet: encode the rows of one request (amortized over a 100-request file).
    let d = dedup();
    let valid = validate::decode(&body, BodyFormat::JsonArray, 10_000).unwrap();
    let rows = batch::rows(
        &d.admit(valid, 0),
        chrono::Utc::now().timestamp_micros(),
        BOUNDS,
        Some("bench"),
    );
    g.throughput(Throughput::Elements((EVENTS * 100) as u64));
    g.bench_function("parquet_encode_zstd", |b| {
        b.iter(|| {
            let mut w = FileWriter::new(
                FlushPolicy {
                    max_rows: usize::MAX,
                    max_bytes: usize::MAX,
                    max_age: Duration::from_secs(3600),
                    late_max_age: Duration::from_secs(3600),
                },
                Lane::Current,
                0,
            );
            for seq in 1..=100 {
                w.add(LoggedBatch {
                    seq,
                    rows: rows.clone(),
                    hold: None,
                })
                .unwrap();
            }
            w.cut().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
