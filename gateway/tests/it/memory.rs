//! The memory budget holds under load: the gateway binary runs with its default 512 MiB budget
//! while many clients post at once, its peak RSS (the kernel's `VmHWM`) is sampled until it
//! exits, and what it acknowledged is in the output exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

/// The default `limits.memory_budget_bytes`.
const BUDGET_BYTES: u64 = 512 << 20;

/// Samples a process's peak RSS until told to stop (or the process is gone).
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn vm_hwm_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl PeakRss {
    fn watch(pid: u32) -> Self {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match vm_hwm_bytes(pid) {
                        Some(b) => {
                            peak.fetch_max(b, Ordering::Relaxed);
                        }
                        None => return,
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    let data = dir.join("data");
    std::fs::write(
        &path,
        format!(
            "storage = \"{}\"\nshutdown_timeout_secs = 120\n{extra}",
            data.display()
        ),
    )
    .unwrap();
    path
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Stop the gateway with SIGTERM and wait for it, sampling its peak RSS to the end.
fn stop_and_peak(child: std::process::Child, rss: PeakRss) -> u64 {
    // The sampler reads /proc until the process is reaped, so the flush at shutdown counts too.
    stop_gracefully(child);
    rss.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bodies_inflating_to_the_limit_at_once_are_refused_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (child, base) = start_gateway(&config, &dir.path().join("state"));
    let rss = PeakRss::watch(child.id());

    // A valid body of one event padded with whitespace to just under the 20 MiB decompressed
    // limit: a few KB of zstd on the wire.
    let event = serde_json::to_string(&assignment("bomb", now_ms())).unwrap();
    let pad = (20 << 20) - event.len() - 16;
    let plain = format!("[{event}{}]", " ".repeat(pad));
    let body = bytes::Bytes::from(zstd(plain.as_bytes()));
    assert!(body.len() < 64 << 10, "{} bytes on the wire", body.len());

    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (client, base, body) = (client.clone(), base.clone(), body.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..3 {
                    let r = client
                        .post(format!("{base}/v1/events"))
                        .header("content-type", "application/json")
                        .header("content-encoding", "zstd")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    if status == 503 {
                        assert_eq!(r.headers()["retry-after"], "1");
                        let v: serde_json::Value = r.json().await.unwrap();
                        assert_eq!(v["error"]["code"], "overloaded");
                    }
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        for s in t.await.unwrap() {
            *counts.entry(s).or_default() += 1;
        }
    }
    let peak = stop_and_peak(child, rss);
    println!(
        "inflation flood: statuses {counts:?}, peak RSS {:.0} MiB",
        mib(peak)
    );
    assert!(
        counts.keys().all(|s| [200, 503].contains(s)),
        "only accepted or overloaded: {counts:?}"
    );
    assert!(counts.get(&503).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(counts.get(&200).copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(
        peak < BUDGET_BYTES,
        "peak RSS {:.0} MiB over the {:.0} MiB budget",
        mib(peak),
        mib(BUDGET_BYTES)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_of_large_batches_stays_in_budget_and_loses_nothing() {
    const CLIENTS: usize = 128;
    const EVENTS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[flush]\nmax_age_secs = 2\n");
    let (child, base) = start_gateway(&config, &dir.path().join("state"));
    let rss = PeakRss::watch(child.id());

    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(8);
    let ts = now_ms();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let (mut acked, mut refused) = (Vec::new(), 0usize);
                let mut r = 0usize;
                // Bounded in time and in count.
                while Instant::now() < until && r < 10_000 {
                    let mut body = String::with_capacity(EVENTS * 200);
                    body.push('[');
                    for i in 0..EVENTS {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&format!(
                            r#"{{"event_id":"m{c}-{r}-{i}","type":"assignment","ts":{ts},"user_id":"u-{c}-{i}","experiment":"checkout_button","variant":"treatment","props":{{"device":"ios"}}}}"#
                        ));
                    }
                    body.push(']');
                    let resp = client
                        .post(format!("{base}/v1/events"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    match resp.status().as_u16() {
                        200 => {
                            let v: serde_json::Value = resp.json().await.unwrap();
                            assert_eq!(v["accepted"], EVENTS);
                            acked.push(r);
                        }
                        503 => {
                            assert_eq!(resp.headers()["retry-after"], "1");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                    r += 1;
                }
                (c, acked, refused)
            })
        })
        .collect();
    let mut acked_batches = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (c, acked, n) = t.await.unwrap();
        refused += n;
        acked_batches.extend(acked.into_iter().map(|r| (c, r)));
    }
    let peak = stop_and_peak(child, rss);
    let acked_events = acked_batches.len() * EVENTS;
    println!(
        "overload: {} batches acknowledged ({acked_events} events), {refused} answered 503, \
         peak RSS {:.0} MiB",
        acked_batches.len(),
        mib(peak)
    );
    assert!(acked_events > 0);

    let mut stored: HashMap<String, u32> = HashMap::with_capacity(acked_events);
    for id in event_ids(&dir.path().join("data"), "assignments") {
        *stored.entry(id).or_default() += 1;
    }
    let doubled = stored.values().filter(|&&n| n > 1).count();
    assert_eq!(doubled, 0, "events stored twice");
    let mut missing = 0;
    for (c, r) in &acked_batches {
        for i in 0..EVENTS {
            if !stored.contains_key(&format!("m{c}-{r}-{i}")) {
                missing += 1;
            }
        }
    }
    assert_eq!(missing, 0, "acknowledged events missing from the output");
    assert_eq!(
        stored.len(),
        acked_events,
        "only acknowledged events are stored"
    );
    assert!(
        peak < BUDGET_BYTES,
        "peak RSS {:.0} MiB over the {:.0} MiB budget",
        mib(peak),
        mib(BUDGET_BYTES)
    );
}
