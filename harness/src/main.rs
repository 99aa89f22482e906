//! `harness run PROFILE [--gateway URL] [--target URL] [--variant-url VARIANT=URL]...
//! [--duration SECONDS] [--out DIR]`, `harness compare OLD_RUN NEW_RUN [--out DIR]` and
//! `harness demo-target [--listen ADDR] [--delay SPEC] [--cpu SPEC]`.
//!
//! Exit codes: 0 pass, 1 regression, 2 inconclusive, invalid, or no verdict at all (a bad
//! profile, an unreachable gateway): anything but 0 and 1 means "do not trust this run".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harness::demo_target::{self, DemoConfig, DemoTarget};
use harness::{Overrides, Profile};

#[derive(Debug, Parser)]
#[command(
    name = "harness",
    version,
    about = "Per-variant latency and a statistical verdict before a launch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a launch profile against the gateway and the target, then judge the variants.
    Run {
        /// Profile file, such as loadtests/launch.toml.
        profile: PathBuf,
        /// Gateway base URL, overriding gateway.url.
        #[arg(long, value_name = "URL")]
        gateway: Option<String>,
        /// Target base URL for every variant, overriding target.url and target.urls.
        #[arg(long, value_name = "URL")]
        target: Option<String>,
        /// One variant's deployment, such as treatment=http://127.0.0.1:8091 (repeatable;
        /// applied after --target).
        #[arg(long = "variant-url", value_name = "VARIANT=URL", value_parser = parse_variant_url)]
        variant_urls: Vec<(String, String)>,
        /// Seconds at full load (after the ramp), overriding load.duration_seconds; a staged
        /// profile is stretched or squeezed to this total.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
        /// Where the reports go.
        #[arg(long, value_name = "DIR", default_value = "harness-out")]
        out: PathBuf,
    },
    /// Judge a new run against an earlier one from their recorded samples ("did this
    /// release get slower than the last one?"); same statistics and exit codes as `run`.
    Compare {
        /// Output directory of the earlier run (the baseline).
        old_run: PathBuf,
        /// Output directory of the new run.
        new_run: PathBuf,
        /// Where compare.json and compare.md go.
        #[arg(long, value_name = "DIR", default_value = "harness-compare")]
        out: PathBuf,
        /// Bootstrap seed (random if not given; always written to compare.json).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Serve the reference target with per-variant latency and CPU cost.
    DemoTarget {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Added latency per variant, such as control=0ms,treatment=5ms.
        #[arg(long, value_name = "SPEC", default_value = "", value_parser = demo_target::parse_costs)]
        delay: std::collections::HashMap<String, std::time::Duration>,
        /// CPU burnt per request per variant, such as treatment=200us.
        #[arg(long, value_name = "SPEC", default_value = "", value_parser = demo_target::parse_costs)]
        cpu: std::collections::HashMap<String, std::time::Duration>,
        /// Header the variant is read from.
        #[arg(long, value_name = "NAME", default_value = "x-variant")]
        variant_header: String,
        /// Query parameter the variant is read from.
        #[arg(long, value_name = "NAME", default_value = "variant")]
        variant_query: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("harness: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match cli.command {
        Command::Run {
            profile,
            gateway,
            target,
            variant_urls,
            duration,
            out,
        } => runtime.block_on(run(
            profile,
            Overrides {
                gateway,
                target,
                variant_urls,
                duration_seconds: duration,
            },
            out,
        )),
        Command::Compare {
            old_run,
            new_run,
            out,
            seed,
        } => compare(&old_run, &new_run, &out, seed),
        Command::DemoTarget {
            listen,
            delay,
            cpu,
            variant_header,
            variant_query,
        } => {
            let config = DemoConfig {
                listen,
                delays: delay,
                cpu,
                variant_header,
                variant_query,
            };
            runtime.block_on(serve_demo(config))
        }
    };
    ExitCode::from(code)
}

async fn run(profile: PathBuf, overrides: Overrides, out: PathBuf) -> u8 {
    let profile = match Profile::load(&profile).and_then(|p| p.with_overrides(&overrides)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("harness: {e}");
            return 2;
        }
    };
    match harness::run(profile, &out).await {
        Ok(outcome) => {
            let verdict = &outcome.summary.verdict;
            println!("verdict: {}", verdict.outcome.as_str());
            for reason in &verdict.reasons {
                println!("  - {reason}");
            }
            println!("reports in {}", out.display());
            outcome.exit_code as u8
        }
        Err(e) => {
            eprintln!("harness: {e:#}");
            2
        }
    }
}

fn parse_variant_url(text: &str) -> Result<(String, String), String> {
    let (variant, url) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not VARIANT=URL"))?;
    if variant.is_empty() {
        return Err(format!("`{text}` has no variant name"));
    }
    Ok((variant.to_string(), url.to_string()))
}

fn compare(old: &Path, new: &Path, out: &Path, seed: Option<u64>) -> u8 {
    let load = |dir: &Path| harness::compare::StoredRun::load(dir);
    let (old, new) = match (load(old), load(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("harness compare: {e:#}");
            return 2;
        }
    };
    let seed = seed.unwrap_or_else(rand::random);
    let summary = harness::compare::compare(&old, &new, seed);
    if let Err(e) = harness::compare::write(out, &summary) {
        eprintln!("harness compare: {e:#}");
        return 2;
    }
    let verdict = &summary.verdict;
    println!("compare: {}", verdict.outcome.as_str());
    for reason in &verdict.reasons {
        println!("  - {reason}");
    }
    println!("reports in {}", out.display());
    verdict.outcome.exit_code() as u8
}

async fn serve_demo(config: DemoConfig) -> u8 {
    let target = match DemoTarget::start(config).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("harness demo-target: cannot listen: {e}");
            return 2;
        }
    };
    println!("listening on {}", target.addr());
    wait_for_signal().await;
    target.shutdown().await;
    0
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
