//! Integration tests: the real gateway on port 0, spoken to over HTTP.

mod assign;
mod common;
mod crash;
mod ingest;
mod lake;
mod outage;
mod s3;
