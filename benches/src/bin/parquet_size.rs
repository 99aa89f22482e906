//! Parquet bytes per byte of request JSON for a realistic mix ([`benches::realistic_body`]),
//! through the gateway's own validation, rows and file writer, with the bytes of each column.
//!
//! `cargo run --release -p benches --bin parquet_size -- [REQUESTS] [EVENTS_PER_REQUEST]`

use std::collections::BTreeMap;
use std::time::Duration;

use gateway::batch::{self, PartitionBounds};
use gateway::dedup::{DedupConfig, DedupWindow};
use gateway::validate::{self, BodyFormat};
use gateway::wal::LoggedBatch;
use gateway::writer::{FileWriter, FlushPolicy, Lane};
use parquet::file::reader::{FileReader, SerializedFileReader};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let requests: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2_000);
    let events: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let bounds = PartitionBounds {
        max_past_micros: 7 * 24 * 3_600_000_000,
        max_future_micros: 3_600_000_000,
    };
    let dedup = DedupWindow::new(DedupConfig {
        window: Duration::from_secs(600),
        max_ids: 4 * requests as usize * events,
    });
    let policy = FlushPolicy {
        max_rows: usize::MAX,
        max_bytes: usize::MAX,
        max_age: Duration::from_secs(3600),
        late_max_age: Duration::from_secs(3600),
    };
    // Both lanes, as the gateway writes them: late rows go to files of their own.
    let mut lanes = [
        FileWriter::new(policy, Lane::Current, 0),
        FileWriter::new(policy, Lane::Late, 0),
    ];
    let (mut json_bytes, mut rows_in) = (0usize, 0usize);
    for seq in 1..=requests {
        let body = benches::realistic_body(events, seq);
        json_bytes += body.len();
        let valid = validate::decode(&body, BodyFormat::JsonArray, 100_000)?;
        anyhow::ensure!(
            valid.rejected.is_empty(),
            "the generator made invalid events"
        );
        rows_in += valid.events.len();
        let fresh = dedup.admit(valid, 0);
        let rows = batch::rows(&fresh, chrono::Utc::now().timestamp_micros(), bounds, None);
        for lane in &mut lanes {
            lane.add(LoggedBatch {
                seq,
                rows: rows.clone(),
                hold: None,
            })?;
        }
    }
    let mut files = Vec::new();
    for lane in &mut lanes {
        files.extend(lane.cut()?.and_then(|c| c.files).unwrap_or_default());
    }
    let file_rows: usize = files.iter().map(|f| f.rows).sum();
    anyhow::ensure!(
        file_rows == rows_in,
        "{file_rows} rows in files for {rows_in} events"
    );
    let mut parquet_bytes = 0;
    let mut columns: BTreeMap<String, i64> = BTreeMap::new();
    for file in &files {
        parquet_bytes += file.bytes.len();
        let reader = SerializedFileReader::new(file.bytes.clone())?;
        for rg in reader.metadata().row_groups() {
            for c in rg.columns() {
                *columns.entry(c.column_path().string()).or_default() += c.compressed_size();
            }
        }
    }
    println!(
        "{requests} requests of {events} events: {rows_in} rows, {json_bytes} JSON bytes \
         ({:.0} per event), {parquet_bytes} Parquet bytes in {} files: **{:.3} of the JSON** \
         ({:.1} bytes per event)\n",
        json_bytes as f64 / rows_in as f64,
        files.len(),
        parquet_bytes as f64 / json_bytes as f64,
        parquet_bytes as f64 / rows_in as f64,
    );
    println!("| column (both tables) | bytes | per event | share |\n|---|---:|---:|---:|");
    let total: i64 = columns.values().sum();
    let mut sorted: Vec<_> = columns.into_iter().collect();
    sorted.sort_by_key(|(_, b)| -b);
    for (name, bytes) in sorted {
        println!(
            "| {name} | {bytes} | {:.2} | {:.1}% |",
            bytes as f64 / rows_in as f64,
            100.0 * bytes as f64 / total as f64
        );
    }
    Ok(())
}
