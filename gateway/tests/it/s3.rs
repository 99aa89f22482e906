//! The S3 path against a real S3-compatible server (s3s-fs) over HTTP.
//!
//! The server binary comes from `S3S_FS_BIN`, else `s3s-fs` on the PATH or in ~/.cargo/bin;
//! `.ci/run` installs it. Without it these tests fail: the S3 path must not go untested.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde_json::{Value, json};

use crate::common::*;

pub const KEY: &str = "test-access-key";
pub const SECRET: &str = "test-secret-key";
pub const BUCKET: &str = "lake";

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("S3S_FS_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([PathBuf::from(home).join(".cargo/bin")])
        .map(|d| d.join("s3s-fs"))
        .collect::<Vec<_>>();
    candidates.into_iter().find(|p| p.exists()).expect(
        "s3s-fs not found: cargo install s3s-fs --version 0.14.1 --features binary (or set S3S_FS_BIN)",
    )
}

/// A running s3s-fs with one bucket; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub root: tempfile::TempDir,
}

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self {
            child: None,
            port,
            root,
        };
        s.resume();
        s
    }

    /// Start (again) on the same port and folder.
    pub fn resume(&mut self) {
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("s3s-fs did not start listening on {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", KEY.into()),
            ("aws_secret_access_key", SECRET.into()),
            ("aws_region", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn events_land_in_s3_as_parquet_including_multipart_uploads() {
    let s3 = S3Server::start();
    let options = s3.options();
    let gw = TestGateway::start_with(|c| {
        c.storage = format!("s3://{BUCKET}/events");
        c.storage_options = options.clone();
        // The assignments file (~100 KB) goes up in parts, the small ones in one put.
        c.upload.multipart_threshold_bytes = 16 << 10;
    })
    .await;
    let t = now_ms();
    let mut sent = 0;
    for b in 0..20 {
        let events: Vec<Value> = (0..500)
            .map(|i| assignment(&format!("s3-{b}-{i}-{}", "x".repeat(40)), t))
            .collect();
        let (status, resp) = gw.post_json(&Value::Array(events)).await;
        assert_eq!(status, 200, "{resp}");
        sent += 500;
    }
    let (status, _) = gw
        .post_json(&json!([conversion("s3-conv", t), {"event_id": "bad"}]))
        .await;
    assert_eq!(status, 200);
    gw.stop().await;

    let (store, _) = gateway::sink::open_store(&format!("s3://{BUCKET}"), &options).unwrap();
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    let names: Vec<String> = objects.iter().map(|o| o.location.to_string()).collect();
    // A file per event table, and the experiments table of the served config.
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("events/") && n.ends_with(".parquet"))
    );
    assert_eq!(
        names.iter().filter(|n| n.contains("/date=")).count(),
        3,
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("events/experiments/")),
        "{names:?}"
    );
    let mut rows_read = 0;
    for o in &objects {
        let bytes = store.get(&o.location).await.unwrap().bytes().await.unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        if o.location.to_string().contains("assignments/") {
            assert!(
                o.size > 16 << 10,
                "assignments file should be multipart-sized: {}",
                o.size
            );
            rows_read += n;
        }
    }
    assert_eq!(rows_read, sent);
    // s3s-fs keeps objects as plain files: the same bytes are on its disk.
    assert!(parquet_files(&s3.root.path().join(BUCKET).join("events"), "assignments").len() == 1);
}

#[tokio::test]
async fn a_repeated_upload_of_a_cut_is_a_conditional_put_that_keeps_the_first() {
    let s3 = S3Server::start();
    let (store, prefix) =
        gateway::sink::open_store(&format!("s3://{BUCKET}/p"), &s3.options()).unwrap();
    let sink = gateway::sink::Sink::new(store.clone(), prefix, "node".into());
    let file = |bytes: &'static [u8]| gateway::writer::SealedFile {
        key: gateway::batch::PartitionKey {
            table: gateway::batch::Table::Assignments,
            hour: 490_116,
        },
        rows: 1,
        bytes: bytes::Bytes::from_static(bytes),
    };
    let health = gateway::health::Health::new();
    sink.put(&file(b"first"), 7, gateway::writer::Lane::Current, &health)
        .await
        .unwrap();
    // A replay of the same cut: If-None-Match makes it a no-op, not an error and not a copy.
    sink.put(&file(b"second"), 7, gateway::writer::Lane::Current, &health)
        .await
        .unwrap();
    let path = sink.object_path(&file(b"").key, 7, gateway::writer::Lane::Current);
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"first");
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert_eq!(objects.len(), 1);
}
