//! End-to-end: the real gateway (in process, port 0), the demo target (in process, port 0)
//! and the `harness` binary as a user runs it, judged by its exit code and `summary.json`.
//!
//! Runs are short (about 6 s each) and serialized: two load tests at once on a 2-core
//! machine would measure each other. The effects tested are large next to the noise (+5 ms
//! on a sub-millisecond service; margins of 5-20 % for A/A), so the outcomes do not depend
//! on the machine's speed; the profiles relax the generator-saturation limits because the
//! harness under test is a debug build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::demo_target::{DemoConfig, DemoTarget, parse_costs};
use tempfile::TempDir;

static ONE_LOAD_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn experiments_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/experiments.example.json")
}

struct Stack {
    gateway: gateway::Server,
    target: DemoTarget,
    dir: TempDir,
}

impl Stack {
    async fn start(delays: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let config = gateway::Config::for_tests(&data, &state, &experiments_file());
        let gateway = gateway::Server::start(config).await.unwrap();
        let mut demo = DemoConfig::new("127.0.0.1:0".parse().unwrap());
        demo.delays = parse_costs(delays).unwrap();
        let target = DemoTarget::start(demo).await.unwrap();
        Stack {
            gateway,
            target,
            dir,
        }
    }

    /// Stops both servers; the returned folder (lake and state) lives as long as the caller
    /// keeps it.
    async fn stop(self) -> TempDir {
        self.target.shutdown().await;
        self.gateway.shutdown().await.unwrap();
        self.dir
    }

    /// Writes `profile` and runs `harness run` on it; returns the exit code, the parsed
    /// `summary.json` (if written) and the output directory.
    async fn run(&self, profile: &str) -> (i32, Option<serde_json::Value>, PathBuf) {
        let profile_path = self.dir.path().join("profile.toml");
        std::fs::write(&profile_path, profile).unwrap();
        let out = self.dir.path().join("out");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
        cmd.arg("run")
            .arg(&profile_path)
            .args(["--gateway", &format!("http://{}", self.gateway.addr())])
            .args(["--target", &format!("http://{}", self.target.addr())])
            .arg("--out")
            .arg(&out);
        // The gateway and the target live in this test's runtime: wait without blocking it.
        let output = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let code = output.status.code().unwrap_or(-1);
        eprintln!(
            "harness exit {code}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let summary = std::fs::read_to_string(out.join("summary.json"))
            .ok()
            .map(|s| serde_json::from_str(&s).unwrap());
        (code, summary, out)
    }
}

/// A short profile: 300 target requests/s for 4 s after a 1 s ramp.
fn profile(variant_in: &str) -> String {
    let target = match variant_in {
        "query" => "path = \"/checkout\"\nvariant_in = \"query\"",
        "path" => "path = \"/checkout/{variant}\"\nvariant_in = \"path\"",
        _ => "path = \"/checkout\"\nvariant_in = \"header\"",
    };
    format!(
        r#"
name = "test"
[gateway]
url = "http://127.0.0.1:9"
[experiment]
key = "checkout_button"
weights = {{ control = 0.5, treatment = 0.5 }}
[target]
url = "http://127.0.0.1:9"
{target}
[load]
users = 12
rate = 300
ramp_seconds = 1
duration_seconds = 4
requests_per_unit = 4
[events]
batch_size = 20
flush_ms = 500
[verdict]
margins = {{ p50 = 0.05, p95 = 0.10, p99 = 0.20 }}
replicates = 1000
max_client_lag_ms = 200
min_achieved_ratio = 0.5
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_ms_on_treatment_is_a_regression_naming_treatment() {
    let _one = ONE_LOAD_TEST_AT_A_TIME.lock().await;
    let stack = Stack::start("control=0ms,treatment=5ms").await;
    let (code, summary, out) = stack.run(&profile("header")).await;
    let summary = summary.expect("summary.json written");
    assert_eq!(summary["verdict"]["outcome"], "regression", "{summary:#}");
    assert_eq!(code, 1);
    let regressions = summary["verdict"]["regressions"].as_array().unwrap();
    assert!(!regressions.is_empty());
    assert!(regressions.iter().all(|r| r["variant"] == "treatment"));
    assert!(regressions.iter().any(|r| r["measure"] == "p50"));
    // The outputs a person reads are all there, goose's report broken down by variant.
    for file in [
        "summary.md",
        "latency-target.svg",
        "verdict.svg",
        "report.html",
        "goose-report.md",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let goose = std::fs::read_to_string(out.join("goose-report.md")).unwrap();
    assert!(goose.contains("target:treatment") && goose.contains("target:control"));
    assert!(goose.contains("assign:treatment") && goose.contains("events:control"));
    // The harness's own page: the verdict, the comparison table and the charts inline.
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("REGRESSION</h1>"), "{report}");
    assert!(report.contains(">ratio</th>") && report.contains("<td>treatment</td>"));
    assert!(
        report.matches("<svg").count() >= 4,
        "verdict and 3 latency charts"
    );
    assert!(report.contains(r#"<a href="goose-report.md">"#));
    assert!(!report.contains("http://") && !report.contains("https://"));
    // The gateway took the events the users posted.
    let events = &summary["events"];
    assert!(events["accepted"].as_u64().unwrap() > 0, "{events}");
    assert_eq!(events["rejected"], 0);
    let _dir = stack.stop().await;
    // Opened offline in a real browser, the page fetches nothing and draws its charts.
    report_check(&out.join("report.html"));
}

/// Runs `tests/report_check.py` on `report`: headless Chromium behind a recording proxy
/// must see no request, and its screenshot must show the charts' colours. Python comes from
/// `LAKE_CHECK_PYTHON`, else the workspace's `.venv`, else `python3` (standard library only).
fn report_check(report: &Path) {
    let chromium = Command::new("chromium").arg("--version").output();
    assert!(
        chromium.is_ok_and(|o| o.status.success()),
        "chromium is not on PATH: apt-get install chromium (as .ci/run does)"
    );
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = manifest.join("../.venv/bin/python");
    let python = std::env::var("LAKE_CHECK_PYTHON").unwrap_or_else(|_| {
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let out = Command::new(&python)
        .arg(manifest.join("tests/report_check.py"))
        .arg(report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "report_check.py failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a_a_run_is_not_a_regression() {
    let _one = ONE_LOAD_TEST_AT_A_TIME.lock().await;
    let stack = Stack::start("control=1ms,treatment=1ms").await;
    let (code, summary, _) = stack.run(&profile("query")).await;
    let summary = summary.expect("summary.json written");
    assert_ne!(summary["verdict"]["outcome"], "regression", "{summary:#}");
    assert_ne!(code, 1);
    assert!(
        summary["verdict"]["regressions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Both variants were exercised through the query parameter and judged.
    let target = &summary["endpoints"][1];
    assert_eq!(target["endpoint"], "target");
    for v in target["variants"].as_array().unwrap() {
        assert!(v["requests"].as_u64().unwrap() > 100, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
    }
    assert_eq!(summary["comparisons"].as_array().unwrap().len(), 3);
    let dir = stack.stop().await;
    let data = dir.path().join("data");
    // Everything the harness wrote is marked as load-test traffic, so readouts leave it out.
    let mut rows = 0;
    for table in ["assignments", "conversions"] {
        for (n, synthetic) in synthetic_column(&data.join(table)) {
            assert!(
                synthetic,
                "{table}: a harness event without synthetic = true"
            );
            rows += n;
        }
    }
    assert!(rows > 100, "{rows}");
}

/// (rows, all synthetic) of every Parquet file under `dir`.
fn synthetic_column(dir: &std::path::Path) -> Vec<(usize, bool)> {
    use arrow_array::cast::AsArray;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let col = batch.column_by_name("synthetic").unwrap().as_boolean();
                    out.push((batch.num_rows(), col.true_count() == batch.num_rows()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_variant_can_travel_in_the_path() {
    let _one = ONE_LOAD_TEST_AT_A_TIME.lock().await;
    let stack = Stack::start("control=0ms,treatment=5ms").await;
    let mut short = profile("path").replace("duration_seconds = 4", "duration_seconds = 2");
    short = short.replace("rate = 300", "rate = 200");
    let (code, summary, _) = stack.run(&short).await;
    let summary = summary.expect("summary.json written");
    assert_eq!(summary["verdict"]["outcome"], "regression", "{summary:#}");
    assert_eq!(code, 1);
    stack.stop().await;
}

#[tokio::test]
async fn an_unreachable_gateway_fails_fast_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    // Port 9 (discard) on loopback: nothing listens there.
    std::fs::write(&path, profile("header")).unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_harness"))
                .arg("run")
                .arg(&path)
                .arg("--out")
                .arg(dir.path().join("out"))
                .output()
                .unwrap()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway not reachable"), "{stderr}");
}

#[test]
fn a_bad_profile_names_the_field_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, profile("header").replace("rate = 300", "rate = -3")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_harness"))
        .arg("run")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("load.rate"));
}
