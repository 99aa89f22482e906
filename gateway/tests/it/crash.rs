//! Crash safety: a client posts continuously while the gateway is SIGKILLed at random moments
//! and restarted; in the end every acknowledged event is in the Parquet output exactly once.
//!
//! Storage is a real S3-compatible server over HTTP, so uploads take real time and some kills
//! land while a cut is half uploaded (counted from the cut journal and printed).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::*;
use crate::s3::{BUCKET, S3Server};

const KILLS: usize = 24;

/// Whether a lane's cut journal (`cuts.log`, `late-cuts.log`) ends with a cut that was started
/// but not finished.
fn journal_pending(state: &Path, journal: &str) -> bool {
    let text = std::fs::read_to_string(state.join(journal)).unwrap_or_default();
    let mut started = BTreeSet::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("cut", n)) => {
                started.insert(n.to_owned());
            }
            Some(("done", n)) => {
                started.remove(n);
            }
            _ => {}
        }
    }
    !started.is_empty()
}

fn cut_pending(state: &Path) -> bool {
    journal_pending(state, "cuts.log") || journal_pending(state, "late-cuts.log")
}

/// Every fifth event is late (2 to 31 hours old), so the late lane's cuts meet the kills too.
fn event(id: &str, index: usize, t: i64) -> Value {
    let back = if index.is_multiple_of(5) {
        (2 + (index as i64 / 5) % 30) * 3_600_000
    } else {
        0
    };
    assignment(id, t - back)
}

#[derive(Default)]
struct Ledger {
    acked: BTreeSet<String>,
    /// Batches sent without an answer: re-sent after the restart.
    unanswered: Vec<Vec<String>>,
    requests: usize,
}

async fn post_until_error(
    base: String,
    ledger: Arc<Mutex<Ledger>>,
    mut next_id: impl FnMut() -> String,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let t = now_ms();
    loop {
        let ids: Vec<String> = {
            let mut l = ledger.lock().unwrap();
            l.unanswered
                .pop()
                .unwrap_or_else(|| (0..50).map(|_| next_id()).collect())
        };
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| event(id, i, t))
            .collect();
        let resp = client
            .post(format!("{base}/v1/events"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
            .await;
        let mut l = ledger.lock().unwrap();
        l.requests += 1;
        match resp {
            Ok(r) if r.status().is_success() => l.acked.extend(ids),
            Ok(r) if r.status().as_u16() == 503 => l.unanswered.push(ids),
            Ok(r) => panic!("unexpected status {}", r.status()),
            Err(_) => {
                l.unanswered.push(ids);
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_exactly_once() {
    let s3 = S3Server::start();
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("gateway.toml");
    let mut toml = format!("storage = \"s3://{BUCKET}/crash\"\n[storage_options]\n");
    for (k, v) in s3.options() {
        toml.push_str(&format!("{k} = \"{v}\"\n"));
    }
    // Cut often and roll segments often, so kills meet cuts, uploads and retirement.
    toml.push_str(
        "[flush]\nmax_age_secs = 1\nlate_max_age_secs = 2\nmax_rows = 20000\n\
         [wal]\nsegment_bytes = 65536\n",
    );
    toml.push_str("[upload]\nmultipart_threshold_bytes = 8192\n");
    let state_dir = state.path().join("state");
    std::fs::write(&config, toml).unwrap();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut counter = 0u64;
    let mut kills_during_cut = 0;
    for round in 0..KILLS {
        let (mut child, base) = start_gateway(&config, &state_dir);
        let poster = {
            let ledger = ledger.clone();
            let start = counter;
            counter += 1_000_000;
            let mut n = start;
            tokio::spawn(post_until_error(base, ledger, move || {
                n += 1;
                format!("r{round}-e{n}")
            }))
        };
        if round % 3 == 0 {
            // Aim: kill the moment a cut is journaled but not yet done, i.e. mid-upload.
            for _ in 0..3000 {
                if cut_pending(&state_dir) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if cut_pending(&state_dir) {
            kills_during_cut += 1;
        }
        poster.await.unwrap();
    }

    // A last run: re-send what was never answered, then stop gracefully so everything drains.
    let (child, base) = start_gateway(&config, &state_dir);
    let client = reqwest::Client::new();
    let unanswered = std::mem::take(&mut ledger.lock().unwrap().unanswered);
    for ids in unanswered {
        assert_eq!(post_ids(&client, &base, &ids).await.0, 200);
        ledger.lock().unwrap().acked.extend(ids);
    }
    stop_gracefully(child);

    let stored = stored_counts(&s3.root.path().join(BUCKET).join("crash"));
    let ledger = ledger.lock().unwrap();
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<_> = ledger
        .acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    println!(
        "crash test: {KILLS} SIGKILLs ({kills_during_cut} during an unfinished cut), {} requests, \
         {} events acknowledged, {} stored, {} lost, {} doubled",
        ledger.requests,
        ledger.acked.len(),
        stored.len(),
        lost.len(),
        doubled.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but not stored: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        doubled.is_empty(),
        "stored more than once: {:?}",
        &doubled[..doubled.len().min(10)]
    );
    assert!(ledger.acked.len() > 10_000, "the client barely got through");
    let lake = s3.root.path().join(BUCKET).join("crash");
    let files = parquet_files(&lake, "assignments");
    let late = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("-late.parquet"))
        .count();
    println!(
        "crash test: {} files, {late} from the late lane",
        files.len()
    );
    assert!(late > 0 && late < files.len(), "both lanes were exercised");
}
