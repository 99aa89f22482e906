//! Object storage goes down mid-run: the gateway keeps accepting into its log until the disk
//! budget, then answers 503 `log_full`; when storage is back everything drains, exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::s3::{BUCKET, S3Server};

const BUDGET: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_is_absorbed_by_the_log_up_to_its_budget_then_drains() {
    let mut s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let mut toml = format!(
        "storage = \"s3://{BUCKET}/outage\"\nshutdown_timeout_secs = 60\n[storage_options]\n"
    );
    for (k, v) in s3.options() {
        toml.push_str(&format!("{k} = \"{v}\"\n"));
    }
    toml.push_str(&format!(
        "[flush]\nmax_age_secs = 1\n[wal]\nsegment_bytes = 65536\ndisk_budget_bytes = {BUDGET}\n\
         [upload]\nretry_max_backoff_secs = 1\n"
    ));
    std::fs::write(&config, toml).unwrap();
    let state = dir.path().join("state");
    let (child, base) = start_gateway(&config, &state);
    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let mut n = 0;
    let mut batch = || {
        n += 1;
        (0..100)
            .map(|i| format!("o{n}-{i}-{}", "p".repeat(60)))
            .collect::<Vec<_>>()
    };

    for _ in 0..5 {
        let ids = batch();
        assert_eq!(post_ids(&client, &base, &ids).await.0, 200);
        acked.extend(ids);
    }
    s3.stop();

    let (mut accepted_during_outage, mut refused) = (0, 0);
    for _ in 0..2000 {
        let ids = batch();
        let (status, body) = post_ids(&client, &base, &ids).await;
        match status {
            200 => {
                accepted_during_outage += 1;
                acked.extend(ids);
                // Slow enough that several cuts (one a second) queue up behind the outage.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            503 => {
                assert_eq!(body["error"]["code"], "log_full", "{body}");
                let bytes = metric(&client, &base, "gateway_wal_bytes").await as u64;
                assert!(bytes >= BUDGET, "503 with only {bytes} bytes of log");
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
            other => panic!("status {other}: {body}"),
        }
    }
    assert!(refused == 20, "the budget was never reached");
    assert!(
        accepted_during_outage > 10,
        "only {accepted_during_outage} requests taken during the outage"
    );

    assert!(
        metric(&client, &base, "gateway_cuts_dehydrated_total").await > 0.0,
        "no cut was dehydrated: the rebuild-from-log path went untested"
    );
    s3.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = batch();
        if post_ids(&client, &base, &ids).await.0 == 200 {
            acked.extend(ids);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log never drained after storage came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_gracefully(child);
    let stored = stored_counts(&s3.root.path().join(BUCKET).join("outage"));
    println!(
        "outage test: {} acknowledged ({accepted_during_outage} requests during the outage), \
         {refused} refused past the budget, {} stored",
        acked.len(),
        stored.len()
    );
    assert!(
        stored.values().all(|&c| c == 1),
        "an event was stored twice"
    );
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "{} acknowledged events lost", lost.len());
}
