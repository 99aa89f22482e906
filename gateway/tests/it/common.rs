//! Shared test plumbing: a real gateway on port 0, an HTTP client, and a Parquet reader.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMicrosecondType, UInt32Type};
use arrow_array::{Array, RecordBatch};
use gateway::{Config, Server};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

pub fn example_experiments() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments.example.json")
}

pub struct TestGateway {
    pub server: Server,
    pub data: tempfile::TempDir,
    pub state: tempfile::TempDir,
    pub client: reqwest::Client,
    pub base: String,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(data.path(), state.path(), &example_experiments());
        tweak(&mut config);
        let server = Server::start(config).await.unwrap();
        let base = format!("http://{}", server.addr());
        Self {
            server,
            data,
            state,
            client: reqwest::Client::new(),
            base,
        }
    }

    /// POST a body to /v1/events; returns status and JSON body.
    pub async fn post(
        &self,
        body: Vec<u8>,
        content_type: &str,
        encoding: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/events", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post_json(&self, events: &Value) -> (u16, Value) {
        self.post(
            serde_json::to_vec(events).unwrap(),
            "application/json",
            None,
        )
        .await
    }

    /// Graceful stop; returns the data dir, everything acknowledged now flushed into it.
    pub async fn stop(self) -> (tempfile::TempDir, tempfile::TempDir) {
        self.server.shutdown().await.unwrap();
        (self.data, self.state)
    }
}

/// All Parquet files under `root/table`, recursively.
pub fn parquet_files(root: &Path, table: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(table)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn read_table(root: &Path, table: &str) -> Vec<RecordBatch> {
    parquet_files(root, table)
        .into_iter()
        .flat_map(|p| {
            ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Rows of a table as JSON objects keyed by column name, so tests can compare with what was sent.
/// Timestamps become epoch microseconds.
pub fn rows(root: &Path, table: &str) -> Vec<BTreeMap<String, Value>> {
    let mut out = Vec::new();
    for batch in read_table(root, table) {
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let mut m = BTreeMap::new();
            for (i, field) in schema.fields().iter().enumerate() {
                let col = batch.column(i);
                let v = if col.is_null(row) {
                    Value::Null
                } else {
                    match field.data_type() {
                        arrow_schema::DataType::Utf8 => {
                            Value::from(col.as_string::<i32>().value(row))
                        }
                        arrow_schema::DataType::Boolean => Value::from(col.as_boolean().value(row)),
                        arrow_schema::DataType::Float64 => {
                            Value::from(col.as_primitive::<Float64Type>().value(row))
                        }
                        arrow_schema::DataType::UInt32 => {
                            Value::from(col.as_primitive::<UInt32Type>().value(row))
                        }
                        arrow_schema::DataType::Timestamp(_, _) => {
                            Value::from(col.as_primitive::<TimestampMicrosecondType>().value(row))
                        }
                        other => panic!("unexpected column type {other}"),
                    }
                };
                m.insert(field.name().clone(), v);
            }
            out.push(m);
        }
    }
    out
}

/// Rows keyed by event_id; panics on a doubled id.
pub fn by_event_id(
    rows: Vec<BTreeMap<String, Value>>,
) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for r in rows {
        let id = r["event_id"].as_str().unwrap().to_owned();
        assert!(
            out.insert(id.clone(), r).is_none(),
            "event {id} stored twice"
        );
    }
    out
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn assignment(id: &str, ts_ms: i64) -> Value {
    serde_json::json!({"event_id": id, "type": "assignment", "ts": ts_ms, "user_id": format!("u-{id}"),
        "experiment": "checkout_button", "variant": "treatment", "props": {"device": "ios", "n": 1}})
}

pub fn conversion(id: &str, ts_ms: i64) -> Value {
    serde_json::json!({"event_id": id, "type": "conversion", "ts": ts_ms, "user_id": format!("u-{id}"),
        "name": "purchase", "value": 19.99})
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn ndjson(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend(serde_json::to_vec(e).unwrap());
        out.push(b'\n');
    }
    out
}

/// Start the gateway binary; returns the process and its base URL (read from the first log line).
pub fn start_gateway(config: &Path, state: &Path) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", config.to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Recovery may log before the gateway binds; the address comes once everything is checked.
    let addr = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| Some(l.split("listening on ").nth(1)?.trim().to_owned()))
        .expect("the gateway logs its address");
    // Keep draining the log so the gateway never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}"))
}

/// SIGTERM (std only sends SIGKILL), then wait for a clean exit.
pub fn stop_gracefully(mut child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        child.wait().unwrap().success(),
        "gateway did not exit 0 after SIGTERM"
    );
}

/// How many times each event id is stored in `lake`'s assignments table.
pub fn stored_counts(lake: &Path) -> BTreeMap<String, usize> {
    let mut stored = BTreeMap::new();
    for r in rows(lake, "assignments") {
        *stored
            .entry(r["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    stored
}

/// A gauge or counter from the gateway's `/metrics`.
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// POST assignment events with these ids (timestamped now); a 503 must carry `Retry-After`.
pub async fn post_ids(client: &reqwest::Client, base: &str, ids: &[String]) -> (u16, Value) {
    let events: Vec<Value> = ids.iter().map(|id| assignment(id, now_ms())).collect();
    let r = client
        .post(format!("{base}/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 503 {
        assert_eq!(r.headers()["retry-after"], "1", "a 503 says when to retry");
    }
    (status, r.json().await.unwrap())
}

/// Poll `/readyz` until it answers `want_ready` (bounded: panics after 20 s); returns the body.
pub async fn wait_readiness(client: &reqwest::Client, base: &str, want_ready: bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            let status = r.status().as_u16();
            last = r.json().await.unwrap_or(Value::Null);
            if (status == 200) == want_ready {
                assert_eq!(last["ready"], want_ready, "status and body agree");
                return last;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/readyz never became ready={want_ready}; last answer {last}");
}

/// Just the `event_id` column of every file of a table (cheap enough for millions of rows).
pub fn event_ids(root: &Path, table: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in parquet_files(root, table) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap();
        let index = builder
            .schema()
            .index_of("event_id")
            .expect("an event_id column");
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [index]);
        for batch in builder.with_projection(mask).build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch.column(0).as_string::<i32>();
            out.extend(ids.iter().map(|v| v.unwrap().to_owned()));
        }
    }
    out
}

/// Run a Python check beside this crate's tests (`tests/{script}`) with the release gateway
/// binary as its argument; it must print `N passed, 0 failed`. Python comes from
/// `LAKE_CHECK_PYTHON`, else the workspace's `.venv`, else `python3`, and must have `modules`.
pub fn python_check(script: &str, modules: &str) {
    python_check_with(script, modules, &[env!("CARGO_BIN_EXE_gateway")]);
}

/// Run `tests/{script}` with `args`; it must exit 0 and report " passed, 0 failed".
pub fn python_check_with(script: &str, modules: &str, args: &[&str]) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = manifest.join("../.venv/bin/python");
    let python = std::env::var("LAKE_CHECK_PYTHON").unwrap_or_else(|_| {
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let probe = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "{python} lacks {modules}: run the pip install line of .ci/run"
    );
    let out = std::process::Command::new(&python)
        .arg(manifest.join("tests").join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
