//! Failure is visible: a permanent storage error stops uploads and turns `/readyz` to 503 with
//! the reason; fixing it and restarting loses nothing. Start-up refuses bad configuration with
//! exit code 2 before it binds, and a locked state dir with exit code 1.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use crate::s3::{BUCKET, S3Server};

fn s3_config(dir: &Path, s3: &S3Server, secret: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    let mut toml = format!("storage = \"s3://{BUCKET}/ready\"\n[storage_options]\n");
    for (k, v) in s3.options() {
        let v = if k == "aws_secret_access_key" {
            secret.to_owned()
        } else {
            v
        };
        toml.push_str(&format!("{k} = \"{v}\"\n"));
    }
    toml.push_str("[flush]\nmax_age_secs = 1\n[upload]\nretry_max_backoff_secs = 1\n");
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_storage_error_is_reported_and_nothing_is_lost_once_fixed() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let client = reqwest::Client::new();

    // Wrong credentials: S3 answers 403 to every request.
    let config = s3_config(dir.path(), &s3, "not-the-secret");
    let (child, base) = start_gateway(&config, &state);
    let ids: Vec<String> = (0..200).map(|i| format!("perm-{i}")).collect();
    for chunk in ids.chunks(50) {
        let (status, body) = post_ids(&client, &base, chunk).await;
        assert_eq!(status, 200, "the log accepts while storage refuses: {body}");
    }
    // The storage probe and the first upload both meet the 403: readiness names the refusal at
    // once, and the stopped uploader as soon as its first cut is tried.
    let mut reasons = String::new();
    for _ in 0..100 {
        reasons = wait_readiness(&client, &base, false).await["reasons"].to_string();
        if reasons.contains("uploader stopped") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        reasons.contains("permanent") && reasons.contains("403"),
        "{reasons}"
    );
    assert!(reasons.contains("uploader stopped"), "{reasons}");
    let up = metric(&client, &base, "gateway_stage_up{stage=\"uploader\"}").await;
    assert_eq!(up, 0.0);
    stop_gracefully(child);
    assert!(stored_counts(&s3.root.path().join(BUCKET).join("ready")).is_empty());

    // Fixed and restarted: the log is replayed and everything goes up, once.
    let config = s3_config(dir.path(), &s3, crate::s3::SECRET);
    let (child, base) = start_gateway(&config, &state);
    wait_readiness(&client, &base, true).await;
    stop_gracefully(child);
    let stored = stored_counts(&s3.root.path().join(BUCKET).join("ready"));
    assert_eq!(stored.len(), ids.len());
    assert!(stored.values().all(|&n| n == 1), "an event stored twice");
    assert!(ids.iter().all(|id| stored.contains_key(id)));
}

#[tokio::test]
async fn readiness_says_ok_when_every_check_passes() {
    let gw = TestGateway::start().await;
    let ready = wait_readiness(&gw.client, &gw.base, true).await;
    assert_eq!(ready["reasons"], serde_json::json!([]));
    gw.stop().await;
}

/// Run the binary with `args`; returns its exit code and everything it printed.
fn run_gateway(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn configuration_errors_exit_2_naming_the_field_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let missing = dir.path().join("nope.json");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--listen", "127.0.0.1:0", "--storage", "s4://x"],
            "storage",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--experiments",
                missing.to_str().unwrap(),
            ],
            "experiments",
        ),
        // Without write keys, only loopback.
        (&["--listen", "0.0.0.0:0"], "listen"),
    ];
    for (args, field) in cases {
        let mut all = vec!["--state-dir", state];
        all.extend_from_slice(args);
        let (code, out) = run_gateway(&all);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(
            out.contains(&format!("config field {field}")),
            "{args:?}: {out}"
        );
        assert!(
            !out.contains("listening on"),
            "{args:?} bound before checking: {out}"
        );
    }
}

#[test]
fn a_state_dir_in_use_exits_1_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, format!("storage = \"{}\"\n", data.display())).unwrap();
    let state = dir.path().join("state");
    let (first, _) = start_gateway(&config, &state);
    let (code, out) = run_gateway(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("in use by another gateway"), "{out}");
    assert!(!out.contains("listening on"), "{out}");
    stop_gracefully(first);
}
