//! Inputs shared by the benches: realistic request bodies and experiment files.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

/// A JSON array of `n` events (2/3 assignments with props, 1/3 conversions), ids prefixed by
/// `tag` so that bodies with different tags do not collide in the dedup window.
pub fn batch_body(n: usize, tag: &str) -> Vec<u8> {
    let ts = chrono::Utc::now().timestamp_millis();
    let events: Vec<Value> = (0..n)
        .map(|i| {
            if i % 3 == 2 {
                json!({"event_id": format!("{tag}-{i:06}-8f14e45fceea167a5a36dedd4bea2543"),
                    "type": "conversion", "ts": ts, "user_id": format!("user-{}", i * 7919 % 100_000),
                    "name": "purchase", "value": 19.99, "experiment": "checkout_button", "variant": "treatment"})
            } else {
                json!({"event_id": format!("{tag}-{i:06}-c9f0f895fb98ab9159f51fd0297e236d"),
                    "type": "assignment", "ts": ts, "user_id": format!("user-{}", i * 7919 % 100_000),
                    "experiment": "checkout_button", "variant": if i % 2 == 0 { "control" } else { "treatment" },
                    "props": {"device": "ios", "app_version": "2.3.1", "country": "US"}})
            }
        })
        .collect();
    serde_json::to_vec(&events).expect("json")
}

/// Ten running experiments exercising conditions, layers, coverage and prerequisites.
pub fn ten_experiments() -> String {
    let mut list = Vec::new();
    for i in 0..10 {
        let mut e = json!({"key": format!("exp_{i}"), "variants": ["control", "treatment"], "status": "running"});
        match i % 5 {
            1 => {
                e["condition"] =
                    json!({"country": {"$in": ["US", "CA"]}, "app_version": {"$vgte": "2.0.0"}})
            }
            2 => e["coverage"] = json!(0.5),
            3 => {
                e["layer"] =
                    json!({"name": "layer_a", "range": if i < 5 { [0.0, 0.5] } else { [0.5, 1.0] }})
            }
            4 => e["variants"] = json!(["a", "b", "c"]),
            _ => {}
        }
        list.push(e);
    }
    json!({"experiments": list}).to_string()
}

/// Where a request number goes in every event id of a [`BodyTemplate`].
const MARK: &[u8] = b"bench-";

/// Bodies differ only in a fixed-width request number spliced into every event id.
pub struct BodyTemplate {
    bytes: Vec<u8>,
    slots: Vec<usize>,
}

impl BodyTemplate {
    pub fn new(events: usize) -> Self {
        let bytes = batch_body(events, "bench-000000000000");
        let slots = bytes
            .windows(MARK.len())
            .enumerate()
            .filter(|(_, w)| *w == MARK)
            .map(|(i, _)| i + MARK.len())
            .collect();
        Self { bytes, slots }
    }

    pub fn render(&self, n: u64) -> Vec<u8> {
        let mut out = self.bytes.clone();
        let digits = format!("{n:012}");
        for &s in &self.slots {
            out[s..s + 12].copy_from_slice(digits.as_bytes());
        }
        out
    }
}

/// The middle value (the upper one of an even count); NaN for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `p` quantile of sorted latencies, in milliseconds; NaN for none.
pub fn percentile_ms(sorted: &[std::time::Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted
        .get(at)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// An event of [`batch_body`] as serde_json's derive reads it, borrowing from the body: the
/// floor for parsing that the benches compare validation with.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
pub struct BorrowedEvent<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    ts: i64,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    experiment: Option<Cow<'a, str>>,
    #[serde(borrow)]
    variant: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    value: Option<f64>,
    #[serde(borrow)]
    props: Option<&'a serde_json::value::RawValue>,
}

fn proc_file(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

/// User plus system CPU seconds a process has used (`/proc/PID/stat`, in clock ticks of
/// 1/100 s); 0 once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = proc_file(pid, "stat");
    // The fields after the command name, which is in parentheses and may hold spaces: utime
    // and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}

/// A process's peak resident set size in MiB (`VmHWM`); 0 once it is gone.
pub fn peak_rss_mib(pid: u32) -> f64 {
    proc_file(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Bytes of the files under `dir` (recursively) whose names end with `suffix` ("" for all).
pub fn tree_bytes(dir: &std::path::Path, suffix: &str) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() {
                    tree_bytes(&path, suffix)
                } else if path.to_string_lossy().ends_with(suffix) {
                    e.metadata().map_or(0, |m| m.len())
                } else {
                    0
                }
            })
            .sum()
    })
}

/// A realistic request body of `n` events, reproducible from `seed`: random UUIDv4 event ids,
/// a million users, timestamps as clients send them (the request's moment, `seed` x 10 ms
/// after a fixed start, less a few seconds of client delay; one in 20 minutes to hours late;
/// half RFC 3339 strings, half epoch milliseconds), 2/3 assignments over 10 experiments with device, version and country props,
/// 1/3 conversions of 5 kinds with prices. The figure for Parquet bytes per JSON byte comes
/// from these, not from [`batch_body`]'s near-identical events.
pub fn realistic_body(n: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    const DEVICES: [&str; 3] = ["ios", "android", "web"];
    const COUNTRIES: [&str; 12] = [
        "US", "CA", "GB", "DE", "FR", "BR", "IN", "JP", "AU", "MX", "ES", "IT",
    ];
    const CONVERSIONS: [&str; 5] = ["purchase", "signup", "add_to_cart", "checkout", "refund"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sent = chrono::Utc::now().timestamp_millis() - 3_600_000 + (seed as i64 * 10) % 3_600_000;
    let events: Vec<Value> = (0..n)
        .map(|_| {
            let id: u128 = rng.random();
            // The version and variant bits of a v4 UUID.
            let id = (id & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
            let hex = format!("{id:032x}");
            let event_id = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            let delay = if rng.random_range(0..20) == 0 {
                rng.random_range(60_000..3 * 3_600_000)
            } else {
                rng.random_range(0..5_000)
            };
            let ts_ms = sent - delay;
            let ts = if rng.random_bool(0.5) {
                json!(ts_ms)
            } else {
                let t = chrono::DateTime::from_timestamp_millis(ts_ms).expect("a time");
                json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            };
            let user_id = format!("user-{}", rng.random_range(0..1_000_000));
            let experiment = format!("exp_{}", rng.random_range(0..10));
            let variant = ["control", "treatment", "treatment_b"][rng.random_range(0..3)];
            if rng.random_range(0..3) == 2 {
                json!({"event_id": event_id, "type": "conversion", "ts": ts, "user_id": user_id,
                    "name": CONVERSIONS[rng.random_range(0..5)],
                    "value": f64::from(rng.random_range(99..20_000)) / 100.0,
                    "experiment": experiment, "variant": variant})
            } else {
                json!({"event_id": event_id, "type": "assignment", "ts": ts, "user_id": user_id,
                    "experiment": experiment, "variant": variant,
                    "props": {"device": DEVICES[rng.random_range(0..3)],
                        "app_version": format!("2.{}.{}", rng.random_range(0..5), rng.random_range(0..10)),
                        "country": COUNTRIES[rng.random_range(0..12)]}})
            }
        })
        .collect();
    serde_json::to_vec(&events).expect("json")
}
