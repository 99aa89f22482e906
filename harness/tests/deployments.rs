//! End-to-end, like `harness.rs`: the real gateway in process, demo targets as separate
//! `harness demo-target` processes (so each variant's deployment has its own process CPU and
//! memory), and the `harness` binary as a user runs it. Covers per-variant deployments,
//! resource use per variant with its CPU verdict, and `harness compare`.
//!
//! The effects are large next to the noise: 200 us of CPU per request on a service that
//! spends tens of microseconds, +5 ms on a 1 ms service, so outcomes do not hang on the
//! machine's speed. Runs are serialized: two load tests at once would measure each other.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use harness::demo_target::{DemoConfig, DemoTarget, parse_costs};
use serde_json::Value;
use tempfile::TempDir;

static ONE_LOAD_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn experiments_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/experiments.example.json")
}

/// `harness demo-target` in its own process on a free loopback port, killed on drop.
struct DemoProcess {
    child: Child,
    url: String,
}

impl DemoProcess {
    fn spawn(args: &[&str]) -> DemoProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["demo-target", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        DemoProcess {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Gateway {
    server: gateway::Server,
    dir: TempDir,
}

impl Gateway {
    async fn start() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (data, state) = (dir.path().join("data"), dir.path().join("state"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let config = gateway::Config::for_tests(&data, &state, &experiments_file());
        let server = gateway::Server::start(config).await.unwrap();
        Gateway { server, dir }
    }

    /// Runs `harness` with `args` (`{gateway}` replaced by the gateway's URL, `{dir}` by the
    /// test's folder); returns the exit code and stdout.
    async fn harness(&self, args: &[&str]) -> (i32, String) {
        let gateway = format!("http://{}", self.server.addr());
        let dir = self.dir.path().display().to_string();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{gateway}", &gateway).replace("{dir}", &dir))
            .collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_harness"))
                .args(&args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        eprintln!(
            "harness exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), stdout)
    }

    /// `harness run` of `profile` into `{dir}/<name>`; returns the exit code and summary.
    async fn run(&self, name: &str, profile: &str, extra: &[&str]) -> (i32, Value) {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, profile).unwrap();
        let path = path.display().to_string();
        let out = format!("{{dir}}/{name}");
        let mut args = vec!["run", &path, "--gateway", "{gateway}", "--out", &out];
        args.extend_from_slice(extra);
        let (code, _) = self.harness(&args).await;
        let summary = std::fs::read_to_string(self.dir.path().join(name).join("summary.json"))
            .expect("summary.json written");
        (code, serde_json::from_str(&summary).unwrap())
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// 300 target requests/s for 4 s after a 1 s ramp; `extra` goes at the end (a section).
fn profile(extra: &str) -> String {
    format!(
        r#"
name = "deployments"
[gateway]
url = "http://127.0.0.1:9"
[experiment]
key = "checkout_button"
weights = {{ control = 0.5, treatment = 0.5 }}
[target]
url = "http://127.0.0.1:9"
path = "/checkout"
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
replicates = 1000
max_client_lag_ms = 200
min_achieved_ratio = 0.5
{extra}
"#
    )
}

fn comparisons<'a>(summary: &'a Value, measure: &str) -> Vec<&'a Value> {
    summary["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["measure"] == measure)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_variant_can_have_its_own_deployment() {
    let _one = ONE_LOAD_TEST_AT_A_TIME.lock().await;
    let gateway = Gateway::start().await;
    // Both deployments answer every variant alike; only the canary is slow. The header
    // still names the variant, so only the base URL can make treatment slower.
    let stable = DemoTarget::start(DemoConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let mut slow = DemoConfig::new("127.0.0.1:0".parse().unwrap());
    slow.delays = parse_costs("control=5ms,treatment=5ms").unwrap();
    let canary = DemoTarget::start(slow).await.unwrap();
    let (control, treatment) = (
        format!("control=http://{}", stable.addr()),
        format!("treatment=http://{}", canary.addr()),
    );
    let (code, summary) = gateway
        .run(
            "urls",
            &profile(""),
            &["--variant-url", &control, "--variant-url", &treatment],
        )
        .await;
    assert_eq!(summary["verdict"]["outcome"], "regression", "{summary:#}");
    assert_eq!(code, 1);
    let p50 = comparisons(&summary, "p50")[0];
    assert_eq!(p50["variant"], "treatment");
    // Absolute numbers beside the ratio: about 5 ms more, and its interval.
    let diff = p50["difference"].as_f64().unwrap();
    assert!((4.0..8.0).contains(&diff), "{p50:#}");
    assert!(p50["difference_lower"].as_f64().unwrap() > 3.0, "{p50:#}");
    assert!(summary["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(summary["gateway_config_version"].as_str().is_some());
    assert_eq!(summary["harness_version"], env!("CARGO_PKG_VERSION"));
    stable.shutdown().await;
    canary.shutdown().await;
    gateway.server.shutdown().await.unwrap();
}

/// Two deployments (separate processes, so separate process CPU), both started with
/// `demo_args`, scraped at their `/metrics`.
fn resources_profile(margin: &str) -> String {
    profile(&format!(
        "[resources]\nscrape_ms = 200\ncpu_margin = {margin}\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_heavy_treatment_is_a_resource_regression() {
    let _one = ONE_LOAD_TEST_AT_A_TIME.lock().await;
    let gateway = Gateway::start().await;
    let stable = DemoProcess::spawn(&["--cpu", "treatment=200us"]);
    let canary = DemoProcess::spawn(&["--cpu", "treatment=200us"]);
    let urls = [
        format!("control={}", stable.url),
        format!("treatment={}", canary.url),
    ];
    let (code, summary) = gateway
        .run(
            "cpu",
            &resources_profile("0.10"),
            &["--variant-url", &urls[0], "--variant-url", &urls[1]],
        )
        .await;
    let cpu = comparisons(&summary, "cpu_per_request");
    assert_eq!(cpu.len(), 1, "{summary:#}");
    assert_eq!(cpu[0]["decision"], "regression", "{summary:#}");
    assert_eq!(code, 1);
    let regressions = summary["verdict"]["regressions"].as_array().unwrap();
    assert!(
        regressions
            .iter()
            .any(|r| r["variant"] == "treatment" && r["measure"] == "cpu_per_request"),
        "{regressions:?}"
    );
    // 200 us more per request is 0.2 CPU s more per 1,000 requests.
    let diff = cpu[0]["difference"].as_f64().unwrap();
    assert!((0.15..0.35).contains(&diff), "{:#}", cpu[0]);
    let resources = summary["resources"].as_array().unwrap();
    for r in resources {
        assert!(r["peak_memory_mib"].as_f64().unwrap() > 1.0, "{r}");
        assert!(r["requests"].as_u64().unwrap() > 300, "{r}");
    }
    gateway.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_deployments_are_not_a_cpu_regression() {
    let _one = ONE_LOAD_TEST_AT_A_TIME.lock().await;
    let gateway = Gateway::start().await;
    let stable = DemoProcess::spawn(&["--cpu", "control=50us,treatment=50us"]);
    let canary = DemoProcess::spawn(&["--cpu", "control=50us,treatment=50us"]);
    let urls = [
        format!("control={}", stable.url),
        format!("treatment={}", canary.url),
    ];
    let (code, summary) = gateway
        .run(
            "aa",
            &resources_profile("0.25"),
            &["--variant-url", &urls[0], "--variant-url", &urls[1]],
        )
        .await;
    let cpu = comparisons(&summary, "cpu_per_request");
    assert_eq!(cpu.len(), 1, "{summary:#}");
    assert_ne!(cpu[0]["decision"], "regression", "{summary:#}");
    assert_ne!(code, 1);
    let ratio = cpu[0]["ratio"].as_f64().unwrap();
    assert!((0.7..1.4).contains(&ratio), "{:#}", cpu[0]);
    gateway.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_flags_a_slower_build_and_passes_the_same_build() {
    let _one = ONE_LOAD_TEST_AT_A_TIME.lock().await;
    let gateway = Gateway::start().await;
    // Enough requests for p99 (1,000 per variant per run), and a 10 ms service: two runs
    // share no clock, so the machine's jitter between them does not cancel as it does
    // between variants of one run; on a 10 ms base it is a few per cent.
    let text = profile("").replace("rate = 300", "rate = 600").replace(
        "replicates = 1000",
        "replicates = 1000\nmargins = { p50 = 0.10, p95 = 0.25, p99 = 0.50 }",
    );
    let mut outcomes = Vec::new();
    for (name, delay) in [
        ("first", "control=10ms,treatment=10ms"),
        ("again", "control=10ms,treatment=10ms"),
        ("slower", "control=15ms,treatment=15ms"),
    ] {
        let target = DemoProcess::spawn(&["--delay", delay]);
        let (_, summary) = gateway.run(name, &text, &["--target", &target.url]).await;
        outcomes.push(summary["verdict"]["outcome"].clone());
    }
    assert!(outcomes.iter().all(|o| o != "invalid"), "{outcomes:?}");
    let first = gateway.out("first").display().to_string();
    let again = gateway.out("again").display().to_string();
    let slower = gateway.out("slower").display().to_string();

    let (code, stdout) = gateway
        .harness(&["compare", &first, &slower, "--out", "{dir}/cmp-slower"])
        .await;
    assert_eq!(code, 1, "{stdout}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(gateway.out("cmp-slower").join("compare.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["verdict"]["outcome"], "regression");
    let flagged: Vec<&Value> = report["verdict"]["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for variant in ["control", "treatment"] {
        assert!(
            flagged
                .iter()
                .any(|f| f["variant"] == variant && f["measure"] == "p50"),
            "{flagged:?}"
        );
    }
    let p50 = &report["comparisons"][0];
    let diff = p50["difference"].as_f64().unwrap();
    assert!((4.0..7.0).contains(&diff), "{p50:#}");
    assert!(gateway.out("cmp-slower").join("compare.md").exists());

    let (code, stdout) = gateway
        .harness(&["compare", &first, &again, "--out", "{dir}/cmp-same"])
        .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("compare: pass"), "{stdout}");

    // A folder that is not a run's output is refused with exit code 2.
    let (code, _) = gateway
        .harness(&["compare", "{dir}", &again, "--out", "{dir}/cmp-bad"])
        .await;
    assert_eq!(code, 2);
    gateway.server.shutdown().await.unwrap();
}
