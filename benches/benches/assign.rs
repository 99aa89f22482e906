//! Evaluating 10 running experiments for one unit, against one GrowthBook hash in the same run.
//!
//! `cargo bench -p benches --bench assign`

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::assign::{Experiments, FileFormat, Unit, hash_v2};
use serde_json::json;

fn assign(c: &mut Criterion) {
    let experiments = Experiments::parse(&benches::ten_experiments(), FileFormat::Json).unwrap();
    let attributes = json!({"user_id": "user-12345", "country": "US", "app_version": "2.3.1"});
    let attributes = attributes.as_object().unwrap();
    let now = chrono::Utc::now();
    let mut g = c.benchmark_group("assign");
    g.bench_function("baseline_one_hash_v2", |b| {
        b.iter(|| hash_v2("exp_0", "user-12345"))
    });
    g.bench_function("ten_experiments_one_unit", |b| {
        b.iter(|| experiments.assign(&Unit::new(attributes), None, now))
    });
    g.finish();
}

criterion_group!(benches, assign);
criterion_main!(benches);
