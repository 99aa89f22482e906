//! `gateway [writer] [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--storage URL]
//! [--state-dir DIR] [--experiments FILE]`
//!
//! `writer` is the cluster mode's writer role (the config needs a `[cluster]` section).
//!
//! Exit codes: 0 after a clean stop, 1 on a runtime failure, 2 on a configuration error.

use clap::Parser;
use gateway::config::{Config, Flags};
use gateway::http::Bound;
use gateway::start::{StartError, prepare};

fn main() -> std::process::ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let config = match Config::load(Flags::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Large bodies decode on the blocking pool; a bounded pool bounds their threads' memory.
        .max_blocking_threads(64)
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            tracing::error!("gateway failed: {e:#}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

/// glibc's malloc keeps large freed buffers in its per-thread arenas, and raises its mmap
/// threshold each time one is freed, so after a burst of large request bodies the RSS stays at
/// its high-water mark whatever the memory budget admits (measured: 355-449 MiB instead of
/// about 250 for 32 clients posting 20 MiB bodies; docs/performance.md). Fix the threshold at
/// 1 MiB, so large buffers go back to the system when freed, and keep two arenas. An operator's
/// own `MALLOC_MMAP_THRESHOLD_` / `MALLOC_ARENA_MAX` win.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: mallopt only changes allocator parameters and is called before any other
            // thread exists.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
    }
}

async fn run(config: Config) -> Result<(), StartError> {
    if config
        .cluster
        .as_ref()
        .is_some_and(|c| c.role == gateway::config::Role::Writer)
    {
        return gateway::start::run_writer(config, shutdown_signal()).await;
    }
    // Everything that can be checked locally is checked before the first log line.
    let bound = Bound::bind(prepare(config).await?).await?;
    // The first log line: tests and the harness read the port from it.
    tracing::info!("listening on {}", bound.addr());
    if let Some(admin) = bound.admin_addr() {
        tracing::info!("admin routes on {admin}");
    }
    bound
        .serve(shutdown_signal())
        .await
        .map_err(StartError::Runtime)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
