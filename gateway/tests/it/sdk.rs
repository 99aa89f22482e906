//! The real, unmodified SDKs teams already run, pointed at the release gateway on loopback:
//! GrowthBook's (PyPI `growthbook`, npm `@growthbook/growthbook`) evaluating its payload, and the
//! analytics SDKs (`segment-analytics-python`, `rudder-sdk-python`, `posthog`,
//! `@segment/analytics-node`) posting to its Segment and PostHog routes. The checks are the
//! scripts in `tests/sdk/`; see their docstrings for what each proves.
//!
//! Needs the pip packages and `npm ci --prefix gateway/tests/sdk` of `.ci/run`; without them
//! these tests fail rather than skip.

use std::path::Path;

use crate::common::python_check;

fn node_modules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/node_modules/@growthbook");
    assert!(
        dir.exists(),
        "{} is missing: run `npm ci --prefix gateway/tests/sdk` (as .ci/run does)",
        dir.display()
    );
}

#[test]
fn growthbook_sdks_evaluate_the_payload_as_the_gateway_assigns() {
    node_modules();
    python_check(
        "sdk/growthbook_check.py",
        "growthbook, segment.analytics, duckdb",
    );
}

#[test]
fn analytics_sdks_land_their_calls_in_the_tables() {
    node_modules();
    python_check(
        "sdk/analytics_check.py",
        "segment.analytics, rudderstack.analytics, posthog, duckdb",
    );
}
