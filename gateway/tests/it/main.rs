//! Integration tests: the real gateway on port 0, spoken to over HTTP.

mod assign;
mod common;
mod ingest;
mod s3;
