//! The reference target: a small hyper service whose latency and CPU cost per variant are
//! set on the command line (`--delay control=0ms,treatment=5ms --cpu treatment=200us`), so
//! the whole harness loop runs out of the box and in tests.
//!
//! It reads the variant from, in order: the header `--variant-header` (default `x-variant`),
//! the query parameter `--variant-query` (default `variant`), or any path segment equal to a
//! variant it has a cost for, so it serves profiles of all three `variant_in` kinds. An
//! unknown or missing variant costs nothing. Answers 200 `{"variant": "..."}` to any path
//! but `GET /metrics`, which gives the process's CPU seconds and resident memory in the
//! Prometheus text format (`process_cpu_seconds_total`, `process_resident_memory_bytes`, the
//! names of the standard process collector), so the harness can measure resource use per
//! variant when each variant has its own demo target.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub listen: SocketAddr,
    /// Added latency per variant: a sleep, costing no CPU.
    pub delays: HashMap<String, Duration>,
    /// CPU burnt per request per variant: a busy loop on the serving thread.
    pub cpu: HashMap<String, Duration>,
    pub variant_header: String,
    pub variant_query: String,
}

impl DemoConfig {
    pub fn new(listen: SocketAddr) -> Self {
        DemoConfig {
            listen,
            delays: HashMap::new(),
            cpu: HashMap::new(),
            variant_header: "x-variant".to_string(),
            variant_query: "variant".to_string(),
        }
    }
}

/// A running demo target; dropping it leaves it running until the runtime ends.
#[derive(Debug)]
pub struct DemoTarget {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoTarget {
    pub async fn start(config: DemoConfig) -> std::io::Result<DemoTarget> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let config = Arc::new(config);
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        // Out of file descriptors and the like: keep serving the others.
                        Err(_) => continue,
                    },
                };
                let _ = stream.set_nodelay(true);
                let config = config.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(config.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(DemoTarget {
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn variant_of(config: &DemoConfig, req: &Request<Incoming>) -> Option<String> {
    if let Some(v) = req.headers().get(config.variant_header.as_str()) {
        return v.to_str().ok().map(str::to_string);
    }
    let from_query = req.uri().query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == config.variant_query).then(|| v.to_string())
        })
    });
    if from_query.is_some() {
        return from_query;
    }
    req.uri()
        .path()
        .split('/')
        .find(|seg| config.delays.contains_key(*seg) || config.cpu.contains_key(*seg))
        .map(str::to_string)
}

/// CPU seconds (user + system) of this process, from `getrusage` (microsecond resolution,
/// where `/proc/self/stat` counts 10 ms ticks).
pub fn process_cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// Resident set size of this process in bytes, from `VmRSS` in `/proc/self/status`.
pub fn process_resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: f64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024.0)
}

fn metrics_text() -> String {
    let mut out = String::new();
    if let Some(cpu) = process_cpu_seconds() {
        out.push_str(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n",
        );
        out.push_str("# TYPE process_cpu_seconds_total counter\n");
        out.push_str(&format!("process_cpu_seconds_total {cpu}\n"));
    }
    if let Some(rss) = process_resident_bytes() {
        out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n");
        out.push_str("# TYPE process_resident_memory_bytes gauge\n");
        out.push_str(&format!("process_resident_memory_bytes {rss}\n"));
    }
    out
}

async fn handle(
    config: Arc<DemoConfig>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
        let response = Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics_text())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
        return Ok(response);
    }
    let variant = variant_of(&config, &req);
    if let Some(v) = &variant {
        if let Some(&cpu) = config.cpu.get(v) {
            // Deliberately on the serving thread: CPU cost competes like real handler work.
            let end = Instant::now() + cpu;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
        }
        if let Some(&delay) = config.delays.get(v).filter(|d| !d.is_zero()) {
            // tokio's timer rounds up to whole milliseconds; a blocking-pool thread sleeps to
            // within tens of microseconds, which sub-millisecond slowdowns need.
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
        }
    }
    let body = serde_json::json!({ "variant": variant }).to_string();
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(response)
}

/// Parses `control=0ms,treatment=5ms` (units `s`, `ms`, `us`; decimals allowed).
pub fn parse_costs(spec: &str) -> Result<HashMap<String, Duration>, String> {
    let mut out = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (variant, value) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not variant=duration"))?;
        let variant = variant.trim();
        if variant.is_empty() {
            return Err(format!("`{item}` has no variant name"));
        }
        out.insert(variant.to_string(), parse_duration(value.trim())?);
    }
    Ok(out)
}

/// Parses `5ms`, `250us`, `1.5s` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("`{text}` needs a unit: s, ms or us"));
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number with a unit"))?;
    if !(value.is_finite() && (0.0..=60.0 / scale).contains(&value)) {
        return Err(format!("`{text}` must be between 0 and 60 s"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cost_lists() {
        let costs = parse_costs("control=0ms, treatment=5ms,b=250us,c=1.5s").unwrap();
        assert_eq!(costs["control"], Duration::ZERO);
        assert_eq!(costs["treatment"], Duration::from_millis(5));
        assert_eq!(costs["b"], Duration::from_micros(250));
        assert_eq!(costs["c"], Duration::from_millis(1500));
        assert!(parse_costs("treatment").is_err());
        assert!(parse_costs("treatment=5").is_err());
        assert!(parse_costs("=5ms").is_err());
        assert!(parse_costs("t=-1ms").is_err());
        assert!(parse_costs("").unwrap().is_empty());
    }

    async fn get(addr: SocketAddr, path: &str, header: Option<&str>) -> (Duration, String) {
        let client = reqwest::Client::new();
        let mut req = client.get(format!("http://{addr}{path}"));
        if let Some(v) = header {
            req = req.header("x-variant", v);
        }
        let started = Instant::now();
        let body = req.send().await.unwrap().text().await.unwrap();
        (started.elapsed(), body)
    }

    #[tokio::test]
    async fn reads_the_variant_from_header_query_or_path() {
        let mut config = DemoConfig::new("127.0.0.1:0".parse().unwrap());
        config.delays = parse_costs("control=0ms,treatment=30ms").unwrap();
        let target = DemoTarget::start(config).await.unwrap();
        let addr = target.addr();

        let (_, body) = get(addr, "/checkout", Some("control")).await;
        assert_eq!(body, r#"{"variant":"control"}"#);
        let (slow, body) = get(addr, "/checkout", Some("treatment")).await;
        assert_eq!(body, r#"{"variant":"treatment"}"#);
        // A lower bound only: the sleep happened (never an upper bound on timing).
        assert!(slow >= Duration::from_millis(30));
        let (_, body) = get(addr, "/checkout?a=1&variant=treatment", None).await;
        assert_eq!(body, r#"{"variant":"treatment"}"#);
        let (_, body) = get(addr, "/checkout/treatment/pay", None).await;
        assert_eq!(body, r#"{"variant":"treatment"}"#);
        let (_, body) = get(addr, "/checkout", None).await;
        assert_eq!(body, r#"{"variant":null}"#);
        target.shutdown().await;
    }

    #[tokio::test]
    async fn metrics_count_the_cpu_a_variant_burns() {
        let mut config = DemoConfig::new("127.0.0.1:0".parse().unwrap());
        config.cpu = parse_costs("treatment=2ms").unwrap();
        let target = DemoTarget::start(config).await.unwrap();
        let addr = target.addr();
        let cpu = |text: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
                .expect("cpu sample")
                .parse()
                .unwrap()
        };
        let (_, before) = get(addr, "/metrics", None).await;
        assert!(before.contains("# TYPE process_cpu_seconds_total counter"));
        let rss: f64 = before
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .expect("memory sample")
            .parse()
            .unwrap();
        assert!(rss > 1e6, "{rss}");
        for _ in 0..50 {
            get(addr, "/checkout", Some("treatment")).await;
        }
        let (_, after) = get(addr, "/metrics", None).await;
        // 50 requests x 2 ms of busy loop: at least 0.1 s more CPU (a lower bound only).
        assert!(cpu(&after) - cpu(&before) >= 0.1, "{before}\n{after}");
        target.shutdown().await;
    }
}
