//! End-to-end ingest over loopback HTTP: events/s and acknowledgement latency at batch sizes
//! 1, 100 and 1,000, with `ack = "durable"` (answer after the log's fsync) and `"buffered"`
//! (answer after queueing), each run several times; medians are printed as a table.
//!
//! `cargo run --release -p benches --bin ingest_e2e -- [SECONDS_PER_RUN] [RUNS]`
//!
//! The load generator runs in the same process and shares the machine's cores with the gateway,
//! so the figures are a floor for what the gateway alone can do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{BodyTemplate, median, percentile_ms};
use gateway::config::AckMode;
use gateway::{Config, Server};

struct RunResult {
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(ack: AckMode, batch: usize, seconds: u64) -> anyhow::Result<RunResult> {
    let data = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let experiments = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/experiments.example.json");
    let mut config = Config::for_tests(data.path(), state.path(), &experiments);
    config.ack = ack;
    config.flush.max_age = Duration::from_secs(60);
    let server = Server::start(config).await?;
    let url = format!("http://{}/v1/events", server.addr());
    let clients = match batch {
        1 => 64,
        100 => 32,
        _ => 8,
    };
    let template = Arc::new(BodyTemplate::new(batch));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, template) = (url.clone(), template.clone());
        let http = reqwest::Client::new();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut events = 0usize;
            let mut n = c as u64 * 1_000_000_000;
            while Instant::now() < deadline {
                n += 1;
                let body = template.render(n);
                let started = Instant::now();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let ok = matches!(&resp, Ok(r) if r.status().is_success());
                if let Ok(r) = resp {
                    let _ = r.bytes().await;
                }
                if ok {
                    latencies.push(started.elapsed());
                    events += batch;
                }
            }
            (events, latencies)
        }));
    }
    let started = Instant::now();
    let mut events = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (e, l) = t.await?;
        events += e;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    server.shutdown().await?;
    latencies.sort();
    Ok(RunResult {
        events_per_sec: events as f64 / elapsed,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let runs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    println!(
        "| ack | batch | events/s | p50 ack ms | p99 ack ms | (median of {runs} runs of {seconds} s) |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for batch in [1usize, 100, 1000] {
        for ack in [AckMode::Durable, AckMode::Buffered] {
            let mut eps = Vec::new();
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            for _ in 0..runs {
                let r = run(ack, batch, seconds).await?;
                eps.push(r.events_per_sec);
                p50.push(r.p50_ms);
                p99.push(r.p99_ms);
            }
            println!(
                "| {ack:?} | {batch} | {:.0} | {:.2} | {:.2} | runs: {} |",
                median(eps.clone()),
                median(p50),
                median(p99),
                eps.iter()
                    .map(|e| format!("{e:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}
