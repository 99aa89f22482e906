//! Cluster mode end to end, as processes on loopback ports: three NATS JetStream nodes (R3,
//! `sync_interval: always`), gateways and writers of the release binary, and s3s-fs or a local
//! folder as the lake.
//!
//! - The fault test: clients post round-robin, retry elsewhere on 5xx or timeout, re-send 5% of
//!   acknowledged batches to another gateway; a gateway, the busiest NATS node and a writer in
//!   the middle of a cut are SIGKILLed. Every acknowledged event is in the Parquet output
//!   exactly once.
//! - The log down: 503 with `Retry-After`, nothing acknowledged lost; a full partition too.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster_log::{NatsCluster, ONE_CLUSTER};
use crate::common::*;
use crate::s3::{BUCKET, S3Server};

/// A gateway or writer process; SIGKILLed on drop.
struct Proc {
    child: Child,
    base: String,
}

impl Proc {
    /// Start `gateway [role] --config ...`; its log goes to `{dir}/{name}.log`.
    fn start(role: Option<&str>, config: &Path, dir: &Path, name: &str) -> Proc {
        let state = dir.join(format!("{name}-state"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        if let Some(role) = role {
            cmd.arg(role);
        }
        let mut child = cmd
            .args(["--config", config.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--state-dir", state.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            writeln!(log, "{line}").unwrap();
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = Some(a.trim().to_owned());
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| panic!("{name} did not start; see its log"));
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
            }
        });
        Proc {
            child,
            base: format!("http://{addr}"),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(
    dir: &Path,
    storage: &str,
    options: &[(String, String)],
    extra: &str,
    urls: &[String],
) -> PathBuf {
    let mut text = format!("storage = \"{storage}\"\n");
    if !options.is_empty() {
        text.push_str("[storage_options]\n");
        for (k, v) in options {
            text.push_str(&format!("{k} = \"{v}\"\n"));
        }
    }
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    text.push_str(&format!(
        "[flush]\nmax_age_secs = 1\n[dedup]\nwindow_secs = 60\n\
         [cluster]\nurls = [{}]\nappend_timeout_secs = 2\nlease_secs = 3\n\
         retention_secs = 3600\n{extra}\n",
        urls.join(", ")
    ));
    let path = dir.join(format!(
        "cluster-{}.toml",
        xxhash_rust::xxh3::xxh3_64(extra.as_bytes())
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// A batch of 100 events, a fifth of them conversions, with ids unique to (client, batch),
/// over the last 12 hours: each cut of a partition writes many files (one per table and hour,
/// late hours included), so a writer killed as the first appears dies in the middle of a cut.
fn batch(client: usize, n: usize) -> Vec<u8> {
    let now = now_ms();
    let events: Vec<Value> = (0..100)
        .map(|i| {
            let id = format!("c{client}-b{n}-e{i}");
            let ts = now - (i as i64 % 12) * 3_600_000;
            if i % 5 == 4 {
                conversion(&id, ts)
            } else {
                assignment(&id, ts)
            }
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

fn reversed(body: &[u8]) -> Vec<u8> {
    let mut events: Vec<Value> = serde_json::from_slice(body).unwrap();
    events.reverse();
    serde_json::to_vec(&events).unwrap()
}

fn ids_of(body: &[u8]) -> Vec<(String, &'static str)> {
    let events: Vec<Value> = serde_json::from_slice(body).unwrap();
    events
        .iter()
        .map(|e| {
            let table = if e["type"] == "conversion" {
                "conversions"
            } else {
                "assignments"
            };
            (e["event_id"].as_str().unwrap().to_owned(), table)
        })
        .collect()
}

#[derive(Debug, Default)]
struct Tally {
    /// Events of acknowledged batches.
    acked: BTreeSet<(String, &'static str)>,
    batches: usize,
    resends: usize,
    resend_duplicates: usize,
    reordered: usize,
    retries: usize,
    statuses: BTreeMap<String, usize>,
}

/// Post `body` until some gateway acknowledges it, starting at `first` and moving on after a
/// 5xx or a timeout. Returns the gateway that did and its answer.
async fn post_until_acked(
    client: &reqwest::Client,
    gateways: &[String],
    first: usize,
    body: &[u8],
    tally: &Mutex<Tally>,
) -> (usize, Value) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut at = first;
    loop {
        let result = client
            .post(format!("{}/v1/events", gateways[at % gateways.len()]))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let outcome = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if status == 200 {
                    return (at % gateways.len(), resp.json().await.unwrap());
                }
                assert!(status >= 500, "a batch refused with {status}");
                if status == 503 {
                    assert!(resp.headers().contains_key("retry-after"));
                }
                status.to_string()
            }
            Err(e) if e.is_timeout() => "timeout".to_owned(),
            Err(_) => "connection".to_owned(),
        };
        {
            let mut t = tally.lock().unwrap();
            *t.statuses.entry(outcome).or_default() += 1;
            t.retries += 1;
        }
        assert!(
            Instant::now() < deadline,
            "a batch not acknowledged in 90 s"
        );
        at += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_lake(lake: &Path, acked: &BTreeSet<(String, &'static str)>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let stored = stored_ids(lake);
        let missing = acked.iter().filter(|k| !stored.contains_key(*k)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged events not in the lake after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (event_id, table) -> how many rows.
fn stored_ids(lake: &Path) -> BTreeMap<(String, &'static str), usize> {
    let mut out = BTreeMap::new();
    for table in ["assignments", "conversions"] {
        if !lake.join(table).exists() {
            continue;
        }
        for id in event_ids(lake, table) {
            *out.entry((id, table)).or_default() += 1;
        }
    }
    out
}

/// Parquet files whose names start with one of `prefixes`.
fn count_files(lake: &Path, prefixes: &[String]) -> usize {
    fn walk(p: &Path, prefixes: &[String], n: &mut usize) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, prefixes, n);
            } else if path
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| prefixes.iter().any(|p| f.starts_with(p.as_str())))
            {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    for table in ["assignments", "conversions"] {
        walk(&lake.join(table), prefixes, &mut n);
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_nats_leader_and_writer_lose_and_double_nothing_acknowledged() {
    let _one = ONE_CLUSTER.lock().await;
    let mut nats = NatsCluster::start();
    nats.wait_healthy().await;
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("s3://{BUCKET}"),
        &s3.options(),
        "partitions = 6\nreplicas = 3",
        &nats.urls(),
    );
    let lake = s3.root.path().join(BUCKET);
    let mut gateways: Vec<Proc> = (0..3)
        .map(|i| Proc::start(None, &config, dir.path(), &format!("gateway{i}")))
        .collect();
    let mut writers: Vec<Proc> = (0..2)
        .map(|i| Proc::start(Some("writer"), &config, dir.path(), &format!("writer{i}")))
        .collect();
    let bases: Arc<Vec<String>> = Arc::new(gateways.iter().map(|g| g.base.clone()).collect());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();

    const CLIENTS: usize = 4;
    const BATCHES: usize = 200;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (bases, tally, http) = (bases.clone(), tally.clone(), http.clone());
            tokio::spawn(async move {
                for n in 0..BATCHES {
                    let body = batch(c, n);
                    let first = c + n;
                    let (at, answer) = post_until_acked(&http, &bases, first, &body, &tally).await;
                    assert_eq!(answer["rejected"], json!([]));
                    {
                        let mut t = tally.lock().unwrap();
                        t.acked.extend(ids_of(&body));
                        t.batches += 1;
                    }
                    // 5% of acknowledged batches are sent again, to another gateway: half as
                    // they were (the log recognises the request), half in another order (a
                    // new request of old events, which the partitions' writers drop).
                    if (c * 7919 + n * 104_729) % 20 == 0 {
                        let same = n % 2 == 0;
                        let again = if same { body.clone() } else { reversed(&body) };
                        let (_, answer) =
                            post_until_acked(&http, &bases, at + 1, &again, &tally).await;
                        let mut t = tally.lock().unwrap();
                        t.resends += 1;
                        let duplicates = answer["duplicates"].as_u64().unwrap() as usize;
                        let accepted = answer["accepted"].as_u64().unwrap() as usize;
                        assert_eq!(accepted + duplicates, 100, "{answer}");
                        if same {
                            t.resend_duplicates += duplicates;
                        } else {
                            t.reordered += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();

    let progress = |tally: &Mutex<Tally>| tally.lock().unwrap().batches;
    let wait_batches = |n: usize| {
        let tally = tally.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while progress(&tally) < n {
                assert!(
                    Instant::now() < deadline,
                    "clients stalled before {n} batches"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    wait_batches(60).await;
    gateways[0].kill();
    println!("SIGKILLed gateway0 after {} batches", progress(&tally));

    wait_batches(140).await;
    let mut leads = [0usize; 3];
    for p in 0..6 {
        if let Some(i) = nats.leader_of(&format!("events-{p}")).await {
            leads[i] += 1;
        }
    }
    let busiest = (0..3).max_by_key(|i| leads[*i]).unwrap();
    nats.kill(busiest);
    println!(
        "SIGKILLed NATS {} (leading {} of 6 streams) after {} batches",
        nats.nodes[busiest].name,
        leads[busiest],
        progress(&tally)
    );

    // A writer in the middle of a cut: right after a new file of one of its partitions
    // appears, before the cut's other files and its progress record.
    let log = std::fs::read_to_string(dir.path().join("writer0.log")).unwrap();
    let mine: Vec<String> = log
        .lines()
        .filter(|l| l.contains("writing partition"))
        .filter_map(|l| {
            l.split("partition=")
                .nth(1)?
                .split(' ')
                .next()
                .map(str::to_owned)
        })
        .map(|p| format!("part-p{:03}-", p.parse::<u32>().unwrap()))
        .collect();
    assert!(!mine.is_empty(), "writer0 writes some partitions");
    // A cut puts its files in key order; the first is the assignments of the hour before
    // this one. Watching that one folder sees it within a millisecond.
    let first = lake.join(
        gateway::batch::PartitionKey {
            table: gateway::batch::Table::Assignments,
            hour: now_ms().div_euclid(3_600_000) - 1,
        }
        .path(),
    );
    let in_first = |first: &Path| {
        std::fs::read_dir(first)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                mine.iter().any(|p| name.starts_with(p.as_str()))
            })
            .count()
    };
    let files = in_first(&first);
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_first(&first) == files {
        assert!(Instant::now() < deadline, "no cut in 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writers[0].kill();
    println!(
        "SIGKILLed writer0 mid-cut after {} batches",
        progress(&tally)
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    nats.spawn(busiest);
    println!("restarted NATS {}", nats.nodes[busiest].name);

    for c in clients {
        c.await.unwrap();
    }
    let tally = Arc::into_inner(tally).unwrap().into_inner().unwrap();
    wait_for_lake(&lake, &tally.acked, Duration::from_secs(90)).await;
    let stored = stored_ids(&lake);
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    let unacked = stored.keys().filter(|k| !tally.acked.contains(*k)).count();
    println!(
        "{} batches acknowledged ({} events), {} re-sent ({} reordered; of the others' events \
         {} reported duplicate by the log), {} retries {:?}; lake: {} events, {} doubled, {} not \
         acknowledged, {} files",
        tally.batches,
        tally.acked.len(),
        tally.resends,
        tally.reordered,
        tally.resend_duplicates,
        tally.retries,
        tally.statuses,
        stored.len(),
        doubled.len(),
        unacked,
        count_files(&lake, &["part-p".to_owned()])
    );
    assert!(
        doubled.is_empty(),
        "doubled: {:?}",
        &doubled[..doubled.len().min(5)]
    );
    assert_eq!(
        unacked, 0,
        "every stored event was sent by the test and acknowledged"
    );
    assert_eq!(stored.len(), tally.acked.len());
    assert!(
        tally.reordered > 0 && tally.retries > 0,
        "the faults were felt"
    );
    // A request sent again as it was is recognised by the log when its segments travel alone
    // both times (requests that arrive together share messages); the writers drop the rest.
    assert!(tally.resend_duplicates <= (tally.resends - tally.reordered) * 100);
    // The survivor took over the killed writer's partitions.
    let owned = metric(&http, &writers[1].base, "gateway_writer_partitions").await;
    assert_eq!(owned, 6.0);
    drop(gateways);
    drop(writers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_down_or_full_gives_503_and_loses_nothing_acknowledged() {
    let _one = ONE_CLUSTER.lock().await;
    let mut nats = NatsCluster::start();
    nats.wait_healthy().await;
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let storage = lake.display().to_string();
    let config = write_config(dir.path(), &storage, &[], "partitions = 3", &nats.urls());
    let gateway = Proc::start(None, &config, dir.path(), "gateway");
    let writer = Proc::start(Some("writer"), &config, dir.path(), "writer");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |body: Vec<u8>| {
        let http = http.clone();
        let url = format!("{}/v1/events", gateway.base);
        async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let retry_after = resp.headers().get("retry-after").cloned();
            (
                resp.status().as_u16(),
                retry_after,
                resp.json::<Value>().await.unwrap(),
            )
        }
    };
    let mut acked = BTreeSet::new();
    for n in 0..20 {
        let body = batch(0, n);
        // New streams may still be electing their first leaders: retry a 503 for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        let answer = loop {
            let (status, _, answer) = post(body.clone()).await;
            if status == 200 {
                break answer;
            }
            assert!(status == 503 && Instant::now() < deadline, "{answer}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // A retried request's messages that made it the first time count as duplicates.
        let counted = answer["accepted"].as_u64().unwrap() + answer["duplicates"].as_u64().unwrap();
        assert_eq!(counted, 100, "{answer}");
        acked.extend(ids_of(&body));
    }
    // One client, one request at a time: each segment travels alone, so the same request sent
    // again makes the same messages, and the log says it has them.
    let (status, _, answer) = post(batch(0, 19)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicates"], 100, "{answer}");
    assert_eq!(answer["accepted"], 0, "{answer}");

    for i in 0..3 {
        nats.kill(i);
    }
    let mut refused = BTreeSet::new();
    for n in 20..25 {
        let body = batch(0, n);
        let started = Instant::now();
        let (status, retry_after, answer) = post(body.clone()).await;
        assert_eq!(status, 503, "{answer}");
        assert!(retry_after.is_some(), "503 carries Retry-After");
        assert_eq!(answer["code"], "log_unavailable", "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered within the append timeout"
        );
        refused.extend(ids_of(&body));
    }
    let ready = wait_readiness(&http, &gateway.base, false).await;
    println!("log down: {ready}");

    for i in 0..3 {
        nats.spawn(i);
    }
    nats.wait_healthy().await;
    // The first requests after the restart may still meet elections: retry until acknowledged.
    for n in 25..40 {
        let body = batch(0, n);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _, answer) = post(body.clone()).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{answer}");
            assert!(
                Instant::now() < deadline,
                "not acknowledged 60 s after the restart"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acked.extend(ids_of(&body));
    }
    wait_readiness(&http, &gateway.base, true).await;
    wait_for_lake(&lake, &acked, Duration::from_secs(60)).await;
    let stored = stored_ids(&lake);
    assert!(stored.values().all(|n| *n == 1), "nothing doubled");
    assert!(
        refused.iter().all(|k| !stored.contains_key(k)),
        "nothing of a refused request was stored"
    );
    assert_eq!(stored.len(), acked.len());
    println!(
        "{} acknowledged events stored once each; 500 refused, none stored",
        acked.len()
    );

    // A partition that is full refuses appends (the log never drops messages to make room).
    let tiny = write_config(
        dir.path(),
        &storage,
        &[],
        "partitions = 1\nstream_prefix = \"tiny\"\nmax_bytes_per_partition = 65536",
        &nats.urls(),
    );
    let small = Proc::start(None, &tiny, dir.path(), "gateway-tiny");
    let mut statuses = Vec::new();
    for n in 0..20 {
        let resp = http
            .post(format!("{}/v1/events", small.base))
            .header("content-type", "application/json")
            .body(batch(1, n))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 503 {
            assert!(resp.headers().contains_key("retry-after"));
            break;
        }
    }
    println!("a 64 KiB partition: {statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&503),
        "a full partition refuses: {statuses:?}"
    );
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 2);
    drop(writer);
}

/// The same requests to a single node and to a cluster: DuckDB reads both lakes with the same
/// tables, columns, types, Parquet schema, Hive partitions and rows (`cluster_lake_check.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_a_cluster_lake_as_a_single_node_lake() {
    let _one = ONE_CLUSTER.lock().await;
    let nats = NatsCluster::start();
    nats.wait_healthy().await;
    let dir = tempfile::tempdir().unwrap();
    let (single_lake, cluster_lake) = (dir.path().join("single"), dir.path().join("cluster"));
    let single_config = dir.path().join("single.toml");
    std::fs::write(
        &single_config,
        format!(
            "storage = \"{}\"\n[flush]\nmax_age_secs = 1\nlate_max_age_secs = 1\n\
             [dedup]\nwindow_secs = 60\n",
            single_lake.display()
        ),
    )
    .unwrap();
    let cluster_config = write_config(
        dir.path(),
        &cluster_lake.display().to_string(),
        &[],
        "partitions = 4",
        &nats.urls(),
    );
    let single = Proc::start(None, &single_config, dir.path(), "single");
    let gateway = Proc::start(None, &cluster_config, dir.path(), "gateway");
    let _writer = Proc::start(Some("writer"), &cluster_config, dir.path(), "writer");
    let http = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    for n in 0..10 {
        // Twelve hours of events (late ones among them), and one the gateways refuse.
        let mut events: Vec<Value> = serde_json::from_slice(&batch(0, n)).unwrap();
        events.insert(
            50,
            json!({"event_id": format!("bad-{n}"), "type": "assignment"}),
        );
        let body = serde_json::to_vec(&events).unwrap();
        for base in [&single.base, &gateway.base] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let resp = http
                    .post(format!("{base}/v1/events"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let answer: Value = resp.json().await.unwrap();
                if status == 200 {
                    assert_eq!(answer["accepted"], 100, "{answer}");
                    assert_eq!(answer["rejected"].as_array().unwrap().len(), 1);
                    break;
                }
                // New streams may still be electing their first leaders.
                assert!(status == 503 && Instant::now() < deadline, "{answer}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        acked.extend(ids_of(&batch(0, n)));
    }
    wait_for_lake(&single_lake, &acked, Duration::from_secs(60)).await;
    wait_for_lake(&cluster_lake, &acked, Duration::from_secs(60)).await;
    // The rejected table is cut with the rest; give its last file a moment too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&single_lake, &cluster_lake]
        .iter()
        .any(|l| !l.join("rejected").exists() || event_ids(l, "rejected").len() < 10)
    {
        assert!(Instant::now() < deadline, "rejections not in both lakes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    python_check_with(
        "cluster_lake_check.py",
        "duckdb",
        &[
            single_lake.to_str().unwrap(),
            cluster_lake.to_str().unwrap(),
        ],
    );
}
