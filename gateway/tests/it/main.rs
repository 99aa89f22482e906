//! Integration tests: the real gateway on port 0, spoken to over HTTP.

mod assign;
mod cluster;
mod cluster_log;
mod common;
mod crash;
mod growthbook;
mod hardening;
mod ingest;
mod lake;
mod memory;
mod metrics;
mod outage;
mod readiness;
mod s3;
mod sdk;
mod sdk_routes;
mod srm;
