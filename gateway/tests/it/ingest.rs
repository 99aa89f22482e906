//! POST /v1/events over HTTP, then the Parquet output read back and compared row by row.

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn both_content_types_and_both_encodings_round_trip_row_by_row() {
    let gw = TestGateway::start().await;
    let t = now_ms();
    let mut sent = Vec::new();
    let batches: Vec<Vec<Value>> = (0..4)
        .map(|b| {
            (0..25)
                .map(|i| {
                    let id = format!("b{b}-e{i}");
                    if i % 3 == 0 {
                        conversion(&id, t - i)
                    } else {
                        assignment(&id, t - i)
                    }
                })
                .collect()
        })
        .collect();
    let bodies = [
        (
            serde_json::to_vec(&batches[0]).unwrap(),
            "application/json",
            None,
        ),
        (
            gzip(&ndjson(&batches[1])),
            "application/x-ndjson",
            Some("gzip"),
        ),
        (
            zstd(&serde_json::to_vec(&batches[2]).unwrap()),
            "application/json; charset=utf-8",
            Some("zstd"),
        ),
        (ndjson(&batches[3]), "application/x-ndjson", None),
    ];
    for (i, (body, ct, enc)) in bodies.into_iter().enumerate() {
        let (status, resp) = gw.post(body, ct, enc).await;
        assert_eq!(status, 200, "batch {i}: {resp}");
        assert_eq!(
            resp,
            json!({"accepted": 25, "duplicates": 0, "rejected": []})
        );
        sent.extend(batches[i].clone());
    }
    let (data, _state) = gw.stop().await;

    let assignments = by_event_id(rows(data.path(), "assignments"));
    let conversions = by_event_id(rows(data.path(), "conversions"));
    assert_eq!(assignments.len() + conversions.len(), sent.len());
    for e in &sent {
        let id = e["event_id"].as_str().unwrap();
        let row = if e["type"] == "assignment" {
            &assignments[id]
        } else {
            &conversions[id]
        };
        assert_eq!(row["user_id"], e["user_id"]);
        assert_eq!(row["ts"], json!(e["ts"].as_i64().unwrap() * 1000), "{id}");
        assert_eq!(row["ts_out_of_bounds"], json!(false));
        assert!(row["received_at"].as_i64().unwrap() >= t * 1000);
        if e["type"] == "assignment" {
            assert_eq!(row["experiment"], "checkout_button");
            assert_eq!(row["variant"], "treatment");
            let props: Value = serde_json::from_str(row["props"].as_str().unwrap()).unwrap();
            assert_eq!(props, e["props"]);
        } else {
            assert_eq!(row["name"], "purchase");
            assert_eq!(row["value"], json!(19.99));
            assert_eq!(row["props"], Value::Null);
        }
    }
}

#[tokio::test]
async fn each_rejection_code_is_answered_and_kept_raw_in_the_rejected_table() {
    let gw = TestGateway::start().await;
    let t = now_ms();
    let body = format!(
        "[{},{},{},{},{},{},{}]",
        r#"{"type":"conversion","ts":1,"user_id":"u","name":"n"}"#,
        r#"{"event_id":"r1","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","colour":"red"}"#,
        r#"{"event_id":"r2","event_id":"r2","type":"conversion","ts":1764419696789,"user_id":"u","name":"n"}"#,
        r#"{"event_id":"r3","type":"conversion","ts":1764419696789,"user_id":5,"name":"n"}"#,
        r#"{"event_id":"r4","type":"conversion","ts":"noon","user_id":"u","name":"n"}"#,
        r#"{"event_id":"r5","type":"conversion","ts":1764419696789,"user_id":"u","name":"n","props":{"a":[1]}}"#,
        serde_json::to_string(&conversion("ok-1", t)).unwrap(),
    );
    let (status, resp) = gw.post(body.into_bytes(), "application/json", None).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["accepted"], 1);
    let codes: Vec<&str> = resp["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "missing_field",
            "unknown_field",
            "duplicate_field",
            "invalid_type",
            "invalid_value",
            "invalid_props"
        ]
    );
    assert_eq!(resp["rejected"][1]["event_id"], "r1");
    assert_eq!(resp["rejected"][1]["index"], 1);
    assert!(
        resp["rejected"][1]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    // A malformed NDJSON line is rejected alone.
    let lines = format!(
        "{}\n{{oops\n",
        serde_json::to_string(&conversion("ok-2", t)).unwrap()
    );
    let (status, resp) = gw
        .post(lines.into_bytes(), "application/x-ndjson", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(resp["rejected"][0]["code"], "malformed_json");

    let (data, _state) = gw.stop().await;
    let rejected = rows(data.path(), "rejected");
    assert_eq!(rejected.len(), 7);
    let r1 = rejected.iter().find(|r| r["event_id"] == "r1").unwrap();
    assert_eq!(r1["code"], "unknown_field");
    assert_eq!(r1["batch_index"], 1);
    assert!(r1["raw"].as_str().unwrap().contains(r#""colour":"red""#));
    assert!(rejected.iter().any(|r| r["raw"] == "{oops"));
    assert_eq!(rows(data.path(), "conversions").len(), 2);
}

#[tokio::test]
async fn duplicates_within_and_across_batches_are_counted_and_written_once() {
    let gw = TestGateway::start().await;
    let t = now_ms();
    let first = json!([assignment("a", t), assignment("b", t), assignment("a", t)]);
    let (_, resp) = gw.post_json(&first).await;
    assert_eq!(
        (resp["accepted"].as_u64(), resp["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    let second = json!([assignment("b", t), conversion("c", t)]);
    let (_, resp) = gw.post_json(&second).await;
    assert_eq!(
        (resp["accepted"].as_u64(), resp["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let (data, _state) = gw.stop().await;
    let stored = by_event_id(rows(data.path(), "assignments"));
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(rows(data.path(), "conversions").len(), 1);
}

#[tokio::test]
async fn limits_and_unreadable_requests_get_json_errors_and_lose_nothing_accepted() {
    let gw = TestGateway::start_with(|c| {
        c.limits.max_body_bytes = 2000;
        c.limits.max_decompressed_bytes = 4000;
        c.limits.max_events = 5;
    })
    .await;
    let t = now_ms();
    let (status, _) = gw.post_json(&json!([assignment("kept", t)])).await;
    assert_eq!(status, 200);

    let six: Vec<Value> = (0..6).map(|i| assignment(&format!("x{i}"), t)).collect();
    let (status, resp) = gw.post_json(&Value::Array(six)).await;
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"]["code"], "payload_too_large");

    let big = vec![b' '; 3000];
    let (status, _) = gw.post(big.clone(), "application/json", None).await;
    assert_eq!(status, 413);
    let mut bomb = b"[".to_vec();
    bomb.extend(vec![b' '; 10_000]);
    bomb.push(b']');
    let (status, resp) = gw.post(gzip(&bomb), "application/json", Some("gzip")).await;
    assert_eq!(status, 413, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("decompresses")
    );

    let (status, resp) = gw
        .post(b"[{\"a\":".to_vec(), "application/json", None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(resp["error"]["code"], "invalid_json");
    assert_eq!(resp["error"]["offset"], 6);
    let (status, _) = gw
        .post(b"not gzip".to_vec(), "application/json", Some("gzip"))
        .await;
    assert_eq!(status, 400);
    let (status, resp) = gw.post(b"[]".to_vec(), "text/plain", None).await;
    assert_eq!(status, 415);
    assert_eq!(resp["error"]["code"], "unsupported_media_type");
    let (status, _) = gw
        .post(b"[]".to_vec(), "application/json", Some("br"))
        .await;
    assert_eq!(status, 415);

    let resp = gw
        .client
        .get(format!("{}/v1/events", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let resp = gw
        .client
        .get(format!("{}/nope", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let (data, _state) = gw.stop().await;
    let stored = by_event_id(rows(data.path(), "assignments"));
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["kept"]);
}

#[tokio::test]
async fn graceful_shutdown_flushes_everything_buffered() {
    // Nothing would flush by policy during the test: only the shutdown can write these files.
    let gw =
        TestGateway::start_with(|c| c.flush.max_age = std::time::Duration::from_secs(3600)).await;
    let t = now_ms();
    for b in 0..10 {
        let events: Vec<Value> = (0..10)
            .map(|i| assignment(&format!("g{b}-{i}"), t))
            .collect();
        assert_eq!(gw.post_json(&Value::Array(events)).await.0, 200);
    }
    assert!(
        parquet_files(gw.data.path(), "assignments").is_empty(),
        "flushed before shutdown"
    );
    let (data, _state) = gw.stop().await;
    assert_eq!(by_event_id(rows(data.path(), "assignments")).len(), 100);
}

#[tokio::test]
async fn a_bad_client_clock_goes_to_the_receive_hour_and_is_flagged() {
    let gw = TestGateway::start().await;
    let (status, _) = gw
        .post_json(&json!([assignment("old", 946_684_800_000 + 1000)]))
        .await;
    assert_eq!(status, 200);
    let (data, _state) = gw.stop().await;
    let files = parquet_files(data.path(), "assignments");
    let today = chrono::Utc::now().format("date=%Y-%m-%d").to_string();
    assert!(files[0].to_str().unwrap().contains(&today), "{files:?}");
    assert_eq!(
        rows(data.path(), "assignments")[0]["ts_out_of_bounds"],
        json!(true)
    );
}

#[tokio::test]
async fn a_restart_replays_the_log_and_keeps_the_dedup_window() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = |shutdown_secs: u64| {
        let mut c = gateway::Config::for_tests(data.path(), state.path(), &example_experiments());
        c.flush.max_age = std::time::Duration::from_secs(3600);
        c.shutdown_timeout = std::time::Duration::from_secs(shutdown_secs);
        c
    };
    let t = now_ms();
    // First run: the stop gives up on uploads at once, leaving them to the log.
    let server = gateway::Server::start(config(0)).await.unwrap();
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&json!([assignment("r-1", t), assignment("r-2", t)])).unwrap();
    let post = |addr: std::net::SocketAddr, body: Vec<u8>| {
        let client = client.clone();
        async move {
            let resp = client
                .post(format!("http://{addr}/v1/events"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(post(server.addr(), body.clone()).await["accepted"], 2);
    server.shutdown().await.unwrap();

    let server = gateway::Server::start(config(30)).await.unwrap();
    let resp = post(server.addr(), body).await;
    assert_eq!(
        (resp["accepted"].as_u64(), resp["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    // The replayed rows went to the uploader at start; a normal stop waits for them.
    server.shutdown().await.unwrap();
    let stored = by_event_id(rows(data.path(), "assignments"));
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn large_batches_decoded_off_the_async_workers_are_stored_whole() {
    let gw = TestGateway::start().await;
    let t = now_ms();
    let mut events: Vec<Value> = (0..5000)
        .map(|i| assignment(&format!("big-{i}"), t))
        .collect();
    events.push(json!({"event_id": "big-bad", "type": "assignment"}));
    let body = serde_json::to_vec(&events).unwrap();
    assert!(
        body.len() > 512 << 10,
        "{} bytes is not a large body",
        body.len()
    );
    let (status, resp) = gw.post(body.clone(), "application/json", None).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        (
            resp["accepted"].as_u64(),
            resp["rejected"][0]["index"].as_u64()
        ),
        (Some(5000), Some(5000))
    );
    // The same events again, gzipped: all duplicates.
    let (status, resp) = gw.post(gzip(&body), "application/json", Some("gzip")).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["duplicates"], 5000);
    let (data, _state) = gw.stop().await;
    assert_eq!(by_event_id(rows(data.path(), "assignments")).len(), 5000);
    assert_eq!(rows(data.path(), "rejected").len(), 2);
}
