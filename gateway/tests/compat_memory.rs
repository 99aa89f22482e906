//! What translating an analytics SDK body allocates, measured with a peak-tracking allocator
//! rather than estimated: at most [`Batch::translation_bytes`], the share of the memory budget
//! the SDK routes reserve for it, on realistic batches and on bodies built to blow up a parser
//! that builds a tree (many tiny calls, huge flat and nested properties).
//!
//! Its own test binary, so the allocator sees nothing else. A global allocator is an unsafe
//! trait: this one only forwards to `System` and counts, hence the one `allow` below.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use gateway::compat::{Batch, OUTPUT_BYTES_PER_CALL, Protocol};
use serde_json::{Value, json};

/// Counts bytes held and the most held since the last reset (stats_alloc counts totals, not
/// peaks, and the peak inside one call is what the reservation must cover).
struct Peak;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// Peak bytes held above the level at the start of `f`.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = HELD.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

fn segment_batch(calls: usize) -> Value {
    let batch: Vec<Value> = (0..calls)
        .map(|i| {
            json!({
                "type": if i % 10 == 0 { "identify" } else { "track" },
                "messageId": format!("{i:08x}-6a1f-4c55-9a4e-3d1c0f5b8e21"),
                "userId": format!("user-{i}"), "anonymousId": null,
                "event": if i % 5 == 0 { "Experiment Viewed" } else { "Order Completed" },
                "timestamp": "2026-12-02T07:30:00.123+00:00",
                "properties": {"experimentId": "checkout_button", "variationId": "treatment",
                               "revenue": 19.99, "currency": "EUR", "coupon": null,
                               "items": [{"sku": "a", "qty": 2}], "first_order": true},
                "context": {"library": {"name": "analytics-python", "version": "2.4.0"},
                            "ip": "10.0.0.1", "traits": {"plan": "pro"}},
                "integrations": {}
            })
        })
        .collect();
    json!({"batch": batch, "sentAt": "2026-12-02T07:30:01Z", "writeKey": "wk"})
}

fn check(name: &str, protocol: Protocol, body: &[u8]) {
    let received = chrono::Utc::now();
    let (batch, parse_peak) = peak_during(|| Batch::parse(body, 100_000).unwrap());
    let reserved = batch.translation_bytes();
    let calls = batch.len();
    let (translated, peak) = peak_during(|| batch.translate(protocol, received));
    println!(
        "{name}: {} body bytes, {calls} calls: parse {parse_peak} B, translate peak {peak} B, \
         reserved {reserved} B, output {} B",
        body.len(),
        translated.events.len()
    );
    assert!(
        translated.events.len() <= body.len() + 2 + calls * OUTPUT_BYTES_PER_CALL,
        "{name}: output over its bound"
    );
    assert!(
        peak <= reserved,
        "{name}: translating took {peak} B, {reserved} B reserved"
    );
    // The calls are slices of the body: parsing holds 16 bytes per call, not a tree.
    assert!(
        parse_peak <= 64 + 32 * calls,
        "{name}: parsing took {parse_peak} B"
    );
    let (refused, refusing_peak) =
        peak_during(|| Batch::parse(body, calls.saturating_sub(1)).map(|b| b.len()));
    if calls > 1 {
        assert!(refused.is_err(), "{name}: one call too many is refused");
        assert!(
            refusing_peak <= 64 + 32 * calls,
            "{name}: refusing took {refusing_peak} B"
        );
    }
    serde_json::from_slice::<Value>(&translated.events).expect("the output is JSON");
}

#[test]
fn translation_stays_within_what_the_sdk_routes_reserve() {
    let realistic = segment_batch(100).to_string();
    check(
        "segment batch of 100",
        Protocol::Segment,
        realistic.as_bytes(),
    );
    let posthog: Vec<Value> = (0..500)
        .map(|i| {
            json!({"event": if i % 7 == 0 { "$pageview" } else { "purchase" },
                   "uuid": format!("0190{i:04}-aaaa-7bbb-8ccc-dddddddddddd"),
                   "distinct_id": format!("u{i}"), "timestamp": "2026-12-02T07:00:00+00:00",
                   "properties": {"$lib": "posthog-python", "$lib_version": "7.91.1",
                                  "$geoip_disable": true, "value": i, "sku": "x"}})
        })
        .collect();
    let posthog = json!({"api_key": "phc", "batch": posthog}).to_string();
    check(
        "posthog batch of 500",
        Protocol::PostHog,
        posthog.as_bytes(),
    );

    // Adversarial shapes: a tree would take 10-30x their bytes.
    let tiny_calls = format!("{{\"batch\":[{}]}}", vec!["{}"; 100_000].join(","));
    check(
        "100,000 empty calls",
        Protocol::Segment,
        tiny_calls.as_bytes(),
    );
    let flat: Vec<String> = (0..200_000).map(|i| format!("\"k{i}\":1")).collect();
    let wide = format!(
        "{{\"type\":\"track\",\"messageId\":\"m\",\"userId\":\"u\",\"event\":\"e\",\"properties\":{{{}}}}}",
        flat.join(",")
    );
    check(
        "one call with 200,000 properties",
        Protocol::Segment,
        wide.as_bytes(),
    );
    let numbers = format!(
        "{{\"batch\":[{{\"event\":\"e\",\"uuid\":\"u\",\"distinct_id\":\"d\",\"properties\":{{\"a\":[{}]}}}}]}}",
        vec!["0"; 1_000_000].join(",")
    );
    check(
        "an array of 1,000,000 numbers",
        Protocol::PostHog,
        numbers.as_bytes(),
    );
}
