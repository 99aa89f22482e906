//! The release gateway against the baselines it should be close to, in one run and the same
//! way: the server pinned to core 0, wrk (64 connections, one thread) pinned to core 1, every
//! event id unique, medians of several runs.
//!
//! - `POST /v1/events` at 1, 100 and 1,000 events per request: the gateway (durable acks,
//!   Parquet in a local folder) against `baseline discard` (reads the body) and `baseline
//!   parse` (serde_json into borrowed structs). Then the gateway again at half its median rate
//!   (wrk's per-connection delay), for the latency a service sees short of saturation.
//! - `GET /v1/assign` for the 10 experiments of [`benches::ten_experiments`] against `baseline
//!   trivial` (a fixed answer).
//!
//! ```sh
//! cargo build --release -p gateway -p benches
//! target/release/vs_baselines [SECONDS] [RUNS] [SIZES]     # 10 3 1,100,1000; `-`: assign only
//! ```
//!
//! Needs `wrk` (Debian: `apt-get install wrk`) and `taskset`; the gateway and `baseline` binaries
//! are taken from the directory of this one. Everything listens on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use benches::{cpu_seconds, median, peak_rss_mib, tree_bytes};

const CONNECTIONS: usize = 64;
/// The 12-digit request number spliced into every event id (see [`benches::BodyTemplate`]).
const SLOT: &str = "bench-000000000000";

/// What wrk reported for one run (its `done` hook prints it).
#[derive(Debug, Clone, Copy, Default)]
struct Wrk {
    requests: f64,
    seconds: f64,
    /// Answers that were not 2xx, plus socket errors.
    failed: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    wrk: Wrk,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    /// Parquet bytes in the event tables per byte of the accepted request bodies.
    parquet_ratio: Option<f64>,
}

/// A server under test, pinned to core 0, SIGKILLed on drop.
struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
    lake: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

fn command(core: usize, program: &Path) -> Command {
    if pinned() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .context("the bench's directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: cargo build --release -p gateway -p benches",
            path.display()
        );
    }
    Ok(path)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Gateway,
    Discard,
    Parse,
    Trivial,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Gateway => "gateway",
            Target::Discard => "discard (read the body)",
            Target::Parse => "parse (serde_json, borrowed)",
            Target::Trivial => "trivial handler",
        }
    }
}

fn start(target: Target) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut lake = None;
    let mut cmd = match target {
        Target::Gateway => {
            let experiments = dir.path().join("experiments.json");
            std::fs::write(&experiments, benches::ten_experiments())?;
            let data = dir.path().join("lake");
            let mut c = command(0, &sibling("gateway")?);
            c.arg("--storage")
                .arg(&data)
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .arg("--experiments")
                .arg(&experiments)
                .args(["--listen", "127.0.0.1:0"])
                .env("RUST_LOG", "warn,gateway=info");
            lake = Some(data);
            c
        }
        other => {
            let mut c = command(0, &sibling("baseline")?);
            c.arg(match other {
                Target::Discard => "discard",
                Target::Parse => "parse",
                _ => "trivial",
            });
            c
        }
    };
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("listening on ").nth(1).map(|a| a.trim().to_owned()));
    std::thread::spawn(move || for _ in lines {});
    let Some(addr) = addr else {
        let _ = child.kill();
        bail!("{} did not start", target.name());
    };
    Ok(Server {
        child,
        base: format!("http://{addr}"),
        _dir: dir,
        lake,
    })
}

/// A wrk script posting `events`-event bodies with a fresh request number in every event id,
/// or asking `/v1/assign` for a fresh unit each time; `delay_ms` between a connection's
/// requests (0: as fast as answers come).
fn script(dir: &Path, events: Option<usize>, delay_ms: u64) -> anyhow::Result<(PathBuf, usize)> {
    let mut lua = String::from("local n = 0\n");
    let mut body_len = 0;
    match events {
        Some(events) => {
            let body = String::from_utf8(benches::batch_body(events, SLOT))?;
            body_len = body.len();
            let pieces: Vec<&str> = body.split(SLOT).collect();
            lua.push_str("local pieces = {\n");
            for p in &pieces {
                lua.push_str(&format!("[==[{p}]==],\n"));
            }
            lua.push_str(
                "}\nlocal headers = {[\"content-type\"] = \"application/json\"}\n\
                 request = function()\n  n = n + 1\n  local id = string.format(\"bench-%012d\", n)\n\
                 \x20 local parts = {}\n  for i = 1, #pieces - 1 do\n    parts[2 * i - 1] = pieces[i]\n\
                 \x20   parts[2 * i] = id\n  end\n  parts[2 * #pieces - 1] = pieces[#pieces]\n\
                 \x20 return wrk.format(\"POST\", \"/v1/events\", headers, table.concat(parts))\nend\n",
            );
        }
        None => lua.push_str(
            "request = function()\n  n = n + 1\n  return wrk.format(\"GET\", \
             \"/v1/assign?user_id=u\" .. n .. \"&attr.country=US&attr.app_version=2.3.1\")\nend\n",
        ),
    }
    if delay_ms > 0 {
        lua.push_str(&format!("delay = function() return {delay_ms} end\n"));
    }
    lua.push_str(
        "done = function(s, latency, requests)\n  local e = s.errors\n  io.write(string.format(\
         \"RESULT %d %d %d %d %d\\n\", s.requests, s.duration, e.status + e.connect + e.read + \
         e.write + e.timeout, latency:percentile(50), latency:percentile(99)))\nend\n",
    );
    let path = dir.join(format!("load-{}-{delay_ms}.lua", events.unwrap_or(0)));
    std::fs::write(&path, lua)?;
    Ok((path, body_len))
}

fn wrk(base: &str, script: &Path, seconds: u64) -> anyhow::Result<Wrk> {
    let out = command(1, Path::new("wrk"))
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s")])
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(script)
        .arg(base)
        .output()
        .context("running wrk (Debian: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("wrk printed no result: {text}"))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    Ok(Wrk {
        requests: v[0],
        seconds: v[1] / 1e6,
        failed: v[2],
        p50_ms: v[3] / 1000.0,
        p99_ms: v[4] / 1000.0,
    })
}

fn parquet_bytes(lake: &Path) -> u64 {
    tree_bytes(&lake.join("assignments"), ".parquet")
        + tree_bytes(&lake.join("conversions"), ".parquet")
}

/// One run: a fresh server, one wrk load, then (the gateway) SIGTERM so it flushes its Parquet.
fn run(
    target: Target,
    dir: &Path,
    events: Option<usize>,
    seconds: u64,
    delay_ms: u64,
) -> anyhow::Result<Run> {
    let mut server = start(target)?;
    let (script, body_len) = script(dir, events, delay_ms)?;
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    let wrk = wrk(&server.base, &script, seconds)?;
    let cpu = cpu_seconds(pid) - before;
    let peak = peak_rss_mib(pid);
    let mut parquet_ratio = None;
    if let (Some(lake), Some(_)) = (server.lake.clone(), events) {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the gateway did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let accepted_bytes = (wrk.requests - wrk.failed) * body_len as f64;
        parquet_ratio = Some(parquet_bytes(&lake) as f64 / accepted_bytes);
    }
    Ok(Run {
        wrk,
        cpu_seconds: cpu,
        peak_rss_mib: peak,
        parquet_ratio,
    })
}

struct Row {
    label: String,
    events_per_request: usize,
    runs: Vec<Run>,
}

impl Row {
    fn m(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect())
    }

    fn requests_per_sec(&self) -> f64 {
        self.m(|r| (r.wrk.requests - r.wrk.failed) / r.wrk.seconds)
    }

    fn events_per_sec(&self) -> f64 {
        self.requests_per_sec() * self.events_per_request as f64
    }
}

fn print_table(title: &str, rows: &[Row], baselines: &[&Row]) {
    println!("\n{title}\n");
    let ratios: String = baselines
        .iter()
        .map(|b| format!(" vs {} |", b.label))
        .collect();
    println!(
        "| server | events/s | requests/s | failed | p50 | p99 | CPU s per M events | peak RSS MiB | Parquet / JSON bytes |{ratios} runs (events/s) |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|{}---|",
        "---:|".repeat(baselines.len())
    );
    for row in rows {
        let eps = row.events_per_sec();
        let cpu = row.m(|r| {
            r.cpu_seconds / ((r.wrk.requests - r.wrk.failed) * row.events_per_request as f64 / 1e6)
        });
        let parquet = row
            .runs
            .iter()
            .filter_map(|r| r.parquet_ratio)
            .collect::<Vec<_>>();
        let ratios: String = baselines
            .iter()
            .map(|b| format!(" {:.2} |", eps / b.events_per_sec()))
            .collect();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.0} | {} |{ratios} {} |",
            row.label,
            eps,
            row.requests_per_sec(),
            row.m(|r| r.wrk.failed),
            row.m(|r| r.wrk.p50_ms),
            row.m(|r| r.wrk.p99_ms),
            cpu,
            row.m(|r| r.peak_rss_mib),
            if parquet.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.3}", median(parquet))
            },
            row.runs
                .iter()
                .map(|r| format!(
                    "{:.0}",
                    (r.wrk.requests - r.wrk.failed) / r.wrk.seconds * row.events_per_request as f64
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let sizes: Vec<usize> = args
        .get(3)
        .map_or("1,100,1000", String::as_str)
        .split(',')
        .filter(|s| *s != "-")
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("SIZES: comma-separated events per request")?;
    let dir = tempfile::tempdir()?;
    if !pinned() {
        eprintln!("one core only: servers and load are not pinned apart");
    }
    for &events in &sizes {
        let mut rows: Vec<Row> = [Target::Discard, Target::Parse, Target::Gateway]
            .into_iter()
            .map(|t| Row {
                label: t.name().to_owned(),
                events_per_request: events,
                runs: Vec::new(),
            })
            .collect();
        // Alternate the servers run by run, so a noisy stretch of the machine hits all three.
        for i in 0..runs {
            for (row, target) in
                rows.iter_mut()
                    .zip([Target::Discard, Target::Parse, Target::Gateway])
            {
                let r = run(target, dir.path(), Some(events), seconds, 0)?;
                eprintln!(
                    "{events} events/request, {}, run {}: {:.0} requests/s, {} failed",
                    row.label,
                    i + 1,
                    r.wrk.requests / r.wrk.seconds,
                    r.wrk.failed
                );
                row.runs.push(r);
            }
        }
        // Half the gateway's rate: each connection waits between requests.
        let half = rows[2].requests_per_sec() / 2.0;
        let delay_ms = ((CONNECTIONS as f64 / half) * 1000.0).round().max(1.0) as u64;
        let mut half_row = Row {
            label: format!("gateway, {delay_ms} ms between a connection's requests"),
            events_per_request: events,
            runs: Vec::new(),
        };
        for _ in 0..runs {
            half_row.runs.push(run(
                Target::Gateway,
                dir.path(),
                Some(events),
                seconds,
                delay_ms,
            )?);
        }
        let (baselines, gateway) = rows.split_at(2);
        let mut all: Vec<Row> = Vec::new();
        all.extend(gateway.iter().map(|r| Row {
            label: r.label.clone(),
            events_per_request: r.events_per_request,
            runs: r.runs.clone(),
        }));
        all.push(half_row);
        print_table(
            &format!(
                "POST /v1/events, {events} events per request, {CONNECTIONS} connections, \
                 median of {runs} runs of {seconds} s"
            ),
            &all,
            &baselines.iter().collect::<Vec<_>>(),
        );
        print_table(
            "baselines",
            baselines,
            &baselines.iter().collect::<Vec<_>>(),
        );
    }
    // GET /v1/assign against a fixed answer.
    let mut assign: Vec<Row> = [Target::Trivial, Target::Gateway]
        .into_iter()
        .map(|t| Row {
            label: t.name().to_owned(),
            events_per_request: 1,
            runs: Vec::new(),
        })
        .collect();
    for _ in 0..runs {
        for (row, target) in assign.iter_mut().zip([Target::Trivial, Target::Gateway]) {
            row.runs.push(run(target, dir.path(), None, seconds, 0)?);
        }
    }
    let half = assign[1].requests_per_sec() / 2.0;
    let delay_ms = ((CONNECTIONS as f64 / half) * 1000.0).round().max(1.0) as u64;
    let mut half_row = Row {
        label: format!("gateway, {delay_ms} ms between a connection's requests"),
        events_per_request: 1,
        runs: Vec::new(),
    };
    for _ in 0..runs {
        half_row
            .runs
            .push(run(Target::Gateway, dir.path(), None, seconds, delay_ms)?);
    }
    assign.push(half_row);
    let trivial = Row {
        label: assign[0].label.clone(),
        events_per_request: 1,
        runs: assign[0].runs.clone(),
    };
    print_table(
        &format!(
            "GET /v1/assign, 10 experiments, {CONNECTIONS} connections, median of {runs} runs of \
             {seconds} s (an \"event\" is a request)"
        ),
        &assign,
        &[&trivial],
    );
    Ok(())
}
