//! The HTTP layer: the only place that names hyper. Accept loop, routing, graceful shutdown.

mod assign;
mod ingest;
pub mod response;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::pipeline::{self, Pipeline};
use crate::reload::ExperimentsSource;
use response::{ApiError, Body};

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub pipeline: PipelineHandles,
    pub metrics: PrometheusHandle,
    pub experiments: Arc<ExperimentsSource>,
}

/// The parts of the pipeline handlers use.
#[derive(Debug, Clone)]
pub struct PipelineHandles {
    pub wal: crate::wal::WalHandle,
    pub dedup: Arc<crate::dedup::DedupWindow>,
    pub bounds: crate::batch::PartitionBounds,
}

/// Serve until `shutdown` resolves, then stop accepting, finish in-flight requests, flush every
/// buffered event to storage and return.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (experiments, pipeline) = prepare(&config).await?;
    serve_with(listener, config, experiments, pipeline, shutdown).await
}

/// Everything that can fail at start-up, before the first request is taken.
async fn prepare(config: &Config) -> anyhow::Result<(Arc<ExperimentsSource>, Pipeline)> {
    let experiments = ExperimentsSource::open(config.experiments.as_deref())?;
    let pipeline = pipeline::start(config).await?;
    Ok((Arc::new(experiments), pipeline))
}

async fn serve_with(
    listener: TcpListener,
    config: Config,
    experiments: Arc<ExperimentsSource>,
    pipeline: Pipeline,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = crate::metrics::install();
    let timeout = config.shutdown_timeout;
    let watcher = tokio::spawn({
        let (experiments, poll) = (experiments.clone(), config.experiments_poll);
        async move {
            if let Some(every) = poll {
                experiments.watch(every).await;
            }
        }
    });
    let hangup = tokio::spawn(reload_on_sighup(experiments.clone()));
    let state = Arc::new(AppState {
        config,
        pipeline: PipelineHandles {
            wal: pipeline.wal.clone(),
            dedup: pipeline.dedup.clone(),
            bounds: pipeline.bounds,
        },
        metrics,
        experiments,
    });
    let graceful = GracefulShutdown::new();
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&state, req).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    watcher.abort();
    hangup.abort();
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open at the shutdown timeout");
    }
    drop(state);
    tracing::info!("flushing buffered events to storage");
    pipeline.shutdown(timeout).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn reload_on_sighup(experiments: Arc<ExperimentsSource>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload by file change or POST /admin/reload");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading experiments");
        let _ = experiments.reload();
    }
}

async fn route(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (name, result) = dispatch(state, req).await;
    let resp = result.unwrap_or_else(ApiError::into_response);
    let status = resp.status().as_u16().to_string();
    metrics::counter!(crate::metrics::REQUESTS, "route" => name, "status" => status).increment(1);
    metrics::histogram!(crate::metrics::REQUEST_SECONDS, "route" => name)
        .record(started.elapsed().as_secs_f64());
    resp
}

async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
) -> (&'static str, Result<Response<Body>, ApiError>) {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let not_allowed = |allow: &'static str| {
        Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow,
        })
    };
    match path.as_str() {
        "/v1/events" => (
            "events",
            match method {
                Method::POST => ingest::handle(state, req).await,
                _ => not_allowed("POST"),
            },
        ),
        "/v1/assign" => (
            "assign",
            match method {
                Method::POST => assign::post(state, req).await,
                Method::GET => assign::get(state, req).await,
                _ => not_allowed("GET, POST"),
            },
        ),
        "/admin/reload" => (
            "reload",
            match method {
                Method::POST => assign::reload(state).await,
                _ => not_allowed("POST"),
            },
        ),
        "/metrics" => (
            "metrics",
            match method {
                Method::GET => Ok(response::text(
                    "text/plain; version=0.0.4",
                    state.metrics.render(),
                )),
                _ => not_allowed("GET"),
            },
        ),
        "/healthz" => ("health", Ok(response::text("text/plain", "ok\n"))),
        _ => (
            "unknown",
            Err(ApiError::NotFound(format!("{method} {path}"))),
        ),
    }
}

/// A running gateway: for tests and embedding. Binds first, so `addr()` is known at once.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (experiments, pipeline) = prepare(&config).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, config, experiments, pipeline, async {
            let _ = stopped.await;
        }));
        Ok(Server {
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful stop: everything acknowledged is flushed to storage before this returns.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}
