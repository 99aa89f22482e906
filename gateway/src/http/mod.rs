//! The HTTP layer: the only place that names hyper. Listeners, connection limits, routing and
//! access control, graceful shutdown.
//!
//! Two listeners: the public one (`listen`: `/v1/*`, the GrowthBook payload `/api/features/*`,
//! the PostHog routes `/batch/` and `/capture/`, and the health routes) and, when
//! `admin_listen` is set, an admin one (`/metrics`, `/admin/*`, the health routes). Without
//! `admin_listen` everything is on the public listener, admin routes behind the admin token.

mod assign;
mod body;
mod conn;
mod cors;
mod growthbook;
mod ingest;
pub mod response;
mod sdk;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::{Access, Keys, Writer};
use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::reload::ExperimentsSource;
use crate::start::{Prepared, StartError, prepare};
use conn::{Closing, ConnActivity, ConnTimeouts, GuardedIo};
use response::{ApiError, Body};

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub pipeline: PipelineHandles,
    pub metrics: PrometheusHandle,
    pub experiments: Arc<ExperimentsSource>,
    pub keys: Keys,
    /// What requests in flight may hold (the budget's request share).
    pub budget: Arc<MemoryBudget>,
    /// Distinct exposed units per variant and the live sample-ratio test.
    pub exposures: Arc<crate::srm::ExposureHealth>,
    /// The GrowthBook SDK payload, built once per change.
    pub payloads: growthbook::Payloads,
}

/// The parts of the pipeline handlers use.
#[derive(Debug, Clone)]
pub struct PipelineHandles {
    pub wal: crate::wal::WalHandle,
    pub dedup: Arc<crate::dedup::DedupWindow>,
    pub bounds: crate::batch::PartitionBounds,
    pub health: Arc<crate::health::Health>,
    /// Cluster mode: requests go to the replicated log instead of `wal`.
    pub cluster: Option<Arc<crate::cluster::ingest::Appender<crate::cluster::nats::NatsLog>>>,
}

/// Who is calling a write route.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// `None` when no write keys are configured.
    pub writer: Option<Writer>,
}

impl Caller {
    pub fn source(&self) -> Option<&Arc<str>> {
        self.writer.as_ref().map(|w| &w.source)
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// `/v1/*` and health, when admin routes have their own listener.
    Public,
    /// Admin routes and health: the dedicated `admin_listen`.
    Admin,
    /// Everything: `listen` when no `admin_listen` is set.
    Both,
}

impl Listener {
    fn serves_public(self) -> bool {
        matches!(self, Listener::Public | Listener::Both)
    }

    fn serves_admin(self) -> bool {
        matches!(self, Listener::Admin | Listener::Both)
    }
}

/// Connections the admin listener takes at once.
const ADMIN_CONNECTIONS: usize = 64;
/// How often every experiment's sample ratio is re-tested (gauges, warnings).
const SRM_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// A prepared gateway with its sockets bound: the addresses are known, nothing served yet.
#[derive(Debug)]
pub struct Bound {
    public: TcpListener,
    admin: Option<TcpListener>,
    prepared: Prepared,
}

impl Bound {
    /// Bind the public and (if configured) admin listeners.
    pub async fn bind(prepared: Prepared) -> Result<Bound, StartError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
        };
        let listeners = async {
            let public = bind(prepared.config.listen).await?;
            let admin = match prepared.config.admin_listen {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            };
            Ok::<_, anyhow::Error>((public, admin))
        };
        match listeners.await {
            Ok((public, admin)) => Ok(Bound {
                public,
                admin,
                prepared,
            }),
            Err(e) => {
                let timeout = prepared.config.shutdown_timeout;
                let _ = prepared.pipeline.shutdown(timeout).await;
                Err(StartError::Runtime(e))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` resolves, then stop accepting, finish in-flight requests, flush
    /// every buffered event to storage and return.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        serve_with(self, shutdown).await
    }
}

/// Prepare, bind and serve `config` until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let bound = Bound::bind(prepare(config).await?).await?;
    bound.serve(shutdown).await.map_err(StartError::Runtime)
}

async fn serve_with(bound: Bound, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Bound {
        public,
        admin,
        prepared:
            Prepared {
                config,
                experiments,
                pipeline,
                cluster,
            },
    } = bound;
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
    let exposures = Arc::new(crate::srm::ExposureHealth::new(
        config.srm,
        &experiments.current(),
    ));
    let srm_checks = tokio::spawn({
        let (exposures, experiments) = (exposures.clone(), experiments.clone());
        async move {
            let mut tick = tokio::time::interval(SRM_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                exposures.refresh(&experiments.current());
            }
        }
    });
    let plan = config.memory;
    tracing::info!(
        total_mib = plan.total_bytes >> 20,
        requests_mib = plan.requests_bytes >> 20,
        dedup_mib = plan.dedup_bytes >> 20,
        parquet_mib = plan.writer_bytes >> 20,
        connections_mib = plan.connection_bytes >> 20,
        "memory budget"
    );
    if config.auth.write_keys.is_empty() {
        tracing::warn!(
            listen = %config.listen,
            "no write keys configured: anyone on this machine may write; serving loopback only"
        );
    }
    let state = Arc::new(AppState {
        keys: Keys::new(
            &config.auth.write_keys,
            config.auth.admin_token_sha256.as_deref(),
        ),
        budget: MemoryBudget::new(config.memory.requests_bytes),
        pipeline: PipelineHandles {
            wal: pipeline.wal.clone(),
            dedup: pipeline.dedup.clone(),
            bounds: pipeline.bounds,
            health: pipeline.health.clone(),
            cluster,
        },
        exposures: exposures.clone(),
        payloads: growthbook::Payloads::new(&config.state_dir),
        config,
        metrics,
        experiments,
    });
    let graceful = Arc::new(GracefulShutdown::new());
    let closing = Arc::new(Closing::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut loops = vec![tokio::spawn(accept_loop(
        public,
        if admin.is_some() {
            Listener::Public
        } else {
            Listener::Both
        },
        state.config.http.max_connections,
        state.clone(),
        graceful.clone(),
        closing.clone(),
        stop_rx.clone(),
    ))];
    if let Some(admin) = admin {
        loops.push(tokio::spawn(accept_loop(
            admin,
            Listener::Admin,
            ADMIN_CONNECTIONS,
            state.clone(),
            graceful.clone(),
            closing.clone(),
            stop_rx,
        )));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    watcher.abort();
    hangup.abort();
    srm_checks.abort();
    tracing::info!("shutting down: finishing in-flight requests");
    closing.start();
    let graceful = Arc::into_inner(graceful).expect("the accept loops have ended");
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

/// Accept connections until `stop`, at most `max_connections` open at once (accept pauses
/// past it; new connections wait in the kernel's backlog).
async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    max_connections: usize,
    state: Arc<AppState>,
    graceful: Arc<GracefulShutdown>,
    closing: Arc<Closing>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let timeouts = ConnTimeouts {
        header_read: state.config.http.header_read_timeout,
        idle: state.config.http.idle_timeout,
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(state.config.http.max_header_bytes);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stop.changed() => return,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(ConnActivity::default());
        let io = GuardedIo::new(stream, activity.clone(), closing.clone(), timeouts);
        let state = state.clone();
        let service = service_fn(move |req| {
            let (state, activity) = (state.clone(), activity.clone());
            async move {
                let _request = activity.request_started();
                Ok::<_, Infallible>(route(&state, kind, req).await)
            }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            metrics::gauge!(crate::metrics::HTTP_CONNECTIONS).increment(1.0);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics::gauge!(crate::metrics::HTTP_CONNECTIONS).decrement(1.0);
            drop(slot);
        });
    }
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

async fn route(state: &AppState, listener: Listener, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let browser_route = cors::applies(req.uri().path());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let (name, result) = dispatch(state, listener, req).await;
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    if browser_route {
        cors::decorate(&state.config.cors, origin.as_ref(), &mut resp);
    }
    let status = resp.status().as_u16().to_string();
    metrics::counter!(crate::metrics::REQUESTS, "route" => name, "status" => status).increment(1);
    metrics::histogram!(crate::metrics::REQUEST_SECONDS, "route" => name)
        .record(started.elapsed().as_secs_f64());
    metrics::gauge!(crate::metrics::MEMORY_RESERVED).set(state.budget.used_bytes() as f64);
    resp
}

async fn dispatch(
    state: &AppState,
    listener: Listener,
    req: Request<Incoming>,
) -> (&'static str, Result<Response<Body>, ApiError>) {
    let deadline = tokio::time::Instant::now() + state.config.http.body_timeout;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let not_allowed = |allow: &'static str| {
        Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow,
        })
    };
    let public = listener.serves_public();
    let admin = listener.serves_admin();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let writer = || writer(state, authorization.as_deref());
    let admin_check =
        |name: &'static str| admin_allowed(state, listener, name, authorization.as_deref());
    match path.as_str() {
        "/v1/events" if public => (
            "events",
            match method {
                Method::POST => match writer() {
                    Ok(caller) => ingest::handle(state, &caller, req, deadline).await,
                    Err(e) => {
                        let max = state.config.limits.max_body_bytes;
                        body::discard(req.into_body(), max, deadline).await;
                        Err(e)
                    }
                },
                _ => not_allowed("POST"),
            },
        ),
        "/v1/assign" if public => (
            "assign",
            match (&method, (method != Method::OPTIONS).then(writer)) {
                (&Method::OPTIONS, _) => {
                    cors::preflight(&state.config.cors, req.headers(), "GET, POST, OPTIONS")
                }
                (&Method::POST, Some(Ok(caller))) => {
                    assign::post(state, &caller, req, deadline).await
                }
                (&Method::GET, Some(Ok(caller))) => assign::get(state, &caller, req).await,
                (&Method::POST | &Method::GET, Some(Err(e))) => Err(e),
                _ => not_allowed("GET, POST, OPTIONS"),
            },
        ),
        p if public && p.starts_with(growthbook::PREFIX) => (
            "growthbook_payload",
            match method {
                Method::GET | Method::HEAD => growthbook::get(state, p, req.headers()),
                Method::OPTIONS => {
                    cors::preflight(&state.config.cors, req.headers(), "GET, OPTIONS")
                }
                _ => not_allowed("GET, OPTIONS"),
            },
        ),
        "/v1/batch" | "/v1/track" | "/batch" | "/batch/" | "/capture" | "/capture/" if public => {
            let api = sdk::Api::for_path(&path);
            (
                api.route_name(),
                match method {
                    Method::POST => {
                        sdk::handle(state, api, authorization.as_deref(), req, deadline).await
                    }
                    _ => not_allowed("POST"),
                },
            )
        }
        p if public && p.starts_with(assign::HEALTH_PREFIX) => (
            "experiment_health",
            match (&method, writer()) {
                (&Method::GET, Ok(_)) => assign::health(state, p),
                (&Method::GET, Err(e)) => Err(e),
                _ => not_allowed("GET"),
            },
        ),
        "/admin/reload" if admin => (
            "reload",
            match method {
                Method::POST => match admin_check("reload") {
                    Ok(()) => assign::reload(state).await,
                    Err(e) => Err(e),
                },
                _ => not_allowed("POST"),
            },
        ),
        "/metrics" if admin => (
            "metrics",
            match method {
                Method::GET => admin_check("metrics")
                    .map(|()| response::text("text/plain; version=0.0.4", state.metrics.render())),
                _ => not_allowed("GET"),
            },
        ),
        "/healthz" => ("health", Ok(response::text("text/plain", "ok\n"))),
        "/readyz" => ("ready", Ok(readiness(&state.pipeline.health))),
        _ => (
            "unknown",
            Err(ApiError::NotFound(format!("no route for {method} {path}"))),
        ),
    }
}

/// Check the write key of a `/v1/*` request.
fn writer(state: &AppState, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
    let refused = |e: ApiError| {
        metrics::counter!(crate::metrics::AUTH_FAILURES, "route" => "write").increment(1);
        Err(e)
    };
    match state.keys.writer(authorization) {
        Access::Open => Ok(Caller::default()),
        Access::Granted(writer) => Ok(Caller {
            writer: Some(writer),
        }),
        Access::Missing => refused(ApiError::Unauthorized(
            "a write key is required: send Authorization: Bearer KEY (or HTTP Basic with the \
             key as user name)"
                .into(),
        )),
        Access::Denied => refused(ApiError::Forbidden(
            "the write key is not valid for this gateway".into(),
        )),
    }
}

/// Admin routes (`/admin/*`, and `/metrics` on the public listener) need the admin token when
/// one is configured; without one they are open only on a dedicated (loopback) admin listener
/// or on a gateway without write keys (which binds loopback only).
fn admin_allowed(
    state: &AppState,
    listener: Listener,
    route: &'static str,
    authorization: Option<&[u8]>,
) -> Result<(), ApiError> {
    let dedicated = listener == Listener::Admin;
    if route == "metrics" && dedicated {
        return Ok(());
    }
    let refused = |e: ApiError| {
        metrics::counter!(crate::metrics::AUTH_FAILURES, "route" => route).increment(1);
        Err(e)
    };
    match state.keys.admin(authorization) {
        Some(true) => Ok(()),
        Some(false) => refused(ApiError::Forbidden("the admin token is not valid".into())),
        None if state.keys.has_admin_token() => refused(ApiError::Unauthorized(
            "the admin token is required: send Authorization: Bearer TOKEN".into(),
        )),
        None if dedicated || !state.keys.has_write_keys() => Ok(()),
        None => refused(ApiError::Forbidden(
            "admin routes on the public listener need auth.admin_token_sha256 to be configured"
                .into(),
        )),
    }
}

/// `/readyz`: 200 when every check passes, else 503 with the reasons.
fn readiness(health: &crate::health::Health) -> Response<Body> {
    #[derive(serde::Serialize)]
    struct Ready {
        ready: bool,
        reasons: Vec<String>,
    }
    let reasons = health.not_ready();
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response::json(
        status,
        &Ready {
            ready: reasons.is_empty(),
            reasons,
        },
    )
}

/// A running gateway: for tests and embedding. Binds first, so `addr()` is known at once.
/// The writer role's HTTP: `/healthz`, `/readyz` and `/metrics` on `listener`.
pub async fn serve_status(
    listener: TcpListener,
    health: Arc<crate::health::Health>,
    metrics: PrometheusHandle,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/healthz") => response::text("text/plain", "ok\n"),
                    (&Method::GET, "/readyz") => readiness(&health),
                    (&Method::GET, "/metrics") => {
                        response::text("text/plain; version=0.0.4", metrics.render())
                    }
                    (method, path) => {
                        ApiError::NotFound(format!("no route for {method} {path}")).into_response()
                    }
                };
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let bound = Bound::bind(prepare(config).await?).await?;
        let (addr, admin_addr) = (bound.addr(), bound.admin_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = stopped.await;
        }));
        Ok(Server {
            addr,
            admin_addr,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Graceful stop: everything acknowledged is flushed to storage before this returns.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await?
    }
}
