//! A hostile network: stalled connections are closed within their timeouts while a normal
//! client is served, shutdown does not wait on silent clients, and only key holders write.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// Read until the server closes the connection (or resets it); returns what it sent. Fails the
/// test if the connection is still open after `bound` (far past every configured timeout).
async fn wait_closed(mut s: TcpStream, bound: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after {bound:?}");
    String::from_utf8_lossy(&got).into_owned()
}

fn short_timeouts(c: &mut gateway::Config) {
    c.http.header_read_timeout = Duration::from_secs(1);
    c.http.idle_timeout = Duration::from_secs(2);
    c.http.body_timeout = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_within_their_timeouts_while_others_are_served() {
    let gw = TestGateway::start_with(short_timeouts).await;
    let addr = gw.server.addr();
    let connect = || TcpStream::connect(addr);

    // Connects and never sends a byte.
    let idle = connect().await.unwrap();
    // Slow loris: a head trickled a byte at a time, never finished.
    let mut loris = connect().await.unwrap();
    let trickle = tokio::spawn(async move {
        loris
            .write_all(b"POST /v1/events HTTP/1.1\r\n")
            .await
            .unwrap();
        for b in b"x-slow: ".iter().cycle() {
            if loris.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loris
    });
    // A body that stops half-way.
    let mut half = connect().await.unwrap();
    half.write_all(
        b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n[{\"event_id\":",
    )
    .await
    .unwrap();
    // A chunked body that never ends.
    let mut endless = connect().await.unwrap();
    endless
        .write_all(
            b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\n1\r\n[\r\n",
        )
        .await
        .unwrap();
    let drip = tokio::spawn(async move {
        loop {
            if endless.write_all(b"1\r\n \r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // Meanwhile a normal client is served.
    let events: Vec<Value> = (0..10)
        .map(|i| assignment(&format!("ok-{i}"), now_ms()))
        .collect();
    let (status, body) = gw.post_json(&Value::Array(events)).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(10)));

    let bound = Duration::from_secs(10);
    let (idle_out, half_out) = tokio::join!(wait_closed(idle, bound), wait_closed(half, bound));
    assert_eq!(
        idle_out, "",
        "an idle connection is closed without an answer"
    );
    assert!(half_out.starts_with("HTTP/1.1 408"), "{half_out}");
    assert!(half_out.contains("request_timeout"), "{half_out}");
    let loris = tokio::time::timeout(bound, trickle)
        .await
        .expect("the slow-loris connection is cut")
        .unwrap();
    assert_eq!(wait_closed(loris, bound).await, "");
    tokio::time::timeout(bound, drip)
        .await
        .expect("the endless chunked body is cut")
        .unwrap();

    let metrics = gw.client.get(format!("{}/metrics", gw.base)).send().await;
    let text = metrics.unwrap().text().await.unwrap();
    for kind in ["idle", "header", "body"] {
        let line = format!("gateway_http_timeouts_total{{kind=\"{kind}\"}}");
        assert!(text.contains(&line), "no {line} in metrics");
    }
    let (data, _state) = gw.stop().await;
    assert_eq!(rows(data.path(), "assignments").len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_does_not_wait_on_clients_that_send_nothing() {
    let gw = TestGateway::start_with(|c| {
        c.http.idle_timeout = Duration::from_secs(600);
        c.http.header_read_timeout = Duration::from_secs(600);
        c.shutdown_timeout = Duration::from_secs(600);
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(gw.server.addr()).await.unwrap());
    }
    // And one that sent half a request head, then nothing.
    let mut half = TcpStream::connect(gw.server.addr()).await.unwrap();
    half.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    silent.push(half);
    // One keep-alive connection that made a request and then went quiet.
    let kept = reqwest::Client::new();
    let health = kept
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let stopped = tokio::time::timeout(Duration::from_secs(20), gw.server.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "shutdown waited on silent connections (their timeouts are 600 s)"
    );
    stopped.unwrap().unwrap();
    for s in silent {
        assert_eq!(wait_closed(s, Duration::from_secs(5)).await, "");
    }
}

#[tokio::test]
async fn a_request_head_over_the_header_limit_is_refused() {
    let gw = TestGateway::start_with(|c| c.http.max_header_bytes = 8 << 10).await;
    let mut s = TcpStream::connect(gw.server.addr()).await.unwrap();
    let big = "a".repeat(16 << 10);
    s.write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let out = wait_closed(s, Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}

const WEB_KEY: &str = "wk_web_0123456789";
const IOS_KEY: &str = "wk_ios_abcdefghij";
const ADMIN: &str = "adm_secret_token";

fn with_keys(c: &mut gateway::Config) {
    use gateway::auth::{RateLimit, WriteKey, hash_key};
    use std::num::NonZeroU32;
    c.limits.max_events = 10;
    c.auth.write_keys = vec![
        WriteKey {
            source: "web".into(),
            sha256: hash_key(WEB_KEY),
            rate_limit: None,
        },
        WriteKey {
            source: "ios".into(),
            sha256: hash_key(IOS_KEY),
            rate_limit: Some(RateLimit {
                events_per_sec: NonZeroU32::new(1).unwrap(),
                burst: NonZeroU32::new(10).unwrap(),
            }),
        },
    ];
    c.auth.admin_token_sha256 = Some(hash_key(ADMIN));
}

async fn post_with(
    gw: &TestGateway,
    auth: Option<&str>,
    events: &[Value],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = gw
        .client
        .post(format!("{}/v1/events", gw.base))
        .json(events);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().await.unwrap(), headers)
}

#[tokio::test]
async fn write_keys_gate_ingestion_and_name_the_source_of_each_event() {
    let gw = TestGateway::start_with(with_keys).await;
    let ev = |id: &str| vec![assignment(id, now_ms())];

    let (status, body, headers) = post_with(&gw, None, &ev("none")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(headers.contains_key("www-authenticate"));
    let (status, body, _) = post_with(&gw, Some("Bearer wk_nope"), &ev("wrong")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let bearer = format!("Bearer {WEB_KEY}");
    let (status, body, _) = post_with(&gw, Some(&bearer), &ev("from-web")).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)));
    // Analytics SDKs send the key as the HTTP Basic user name.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{IOS_KEY}:"))
    );
    let (status, _, _) = post_with(&gw, Some(&basic), &ev("from-ios")).await;
    assert_eq!(status, 200);
    // assign is a write route too (it can log exposures).
    let r = gw
        .client
        .get(format!("{}/v1/assign?user_id=u-1", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let (data, _state) = gw.stop().await;
    let stored = by_event_id(rows(data.path(), "assignments"));
    assert_eq!(stored.len(), 2, "refused requests stored nothing");
    assert_eq!(stored["from-web"]["source"], "web");
    assert_eq!(stored["from-ios"]["source"], "ios");
}

#[tokio::test]
async fn a_key_past_its_rate_limit_gets_429_with_retry_after_and_others_are_unaffected() {
    let gw = TestGateway::start_with(with_keys).await;
    let batch = |p: &str| -> Vec<Value> {
        (0..10)
            .map(|i| assignment(&format!("{p}-{i}"), now_ms()))
            .collect()
    };
    let ios = format!("Bearer {IOS_KEY}");
    let (status, _, _) = post_with(&gw, Some(&ios), &batch("a")).await;
    assert_eq!(status, 200, "the burst admits one full batch");
    let (status, body, headers) = post_with(&gw, Some(&ios), &batch("b")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    let web = format!("Bearer {WEB_KEY}");
    let (status, _, _) = post_with(&gw, Some(&web), &batch("c")).await;
    assert_eq!(status, 200, "another key has its own limit");
    let (data, _state) = gw.stop().await;
    let stored = by_event_id(rows(data.path(), "assignments"));
    assert!(
        stored.keys().all(|k| !k.starts_with("b-")),
        "a 429 stores nothing"
    );
    assert_eq!(stored.len(), 20);
}

#[tokio::test]
async fn admin_routes_need_the_admin_token_and_write_keys_are_not_it() {
    let gw = TestGateway::start_with(with_keys).await;
    let reload = |auth: Option<String>| {
        let mut r = gw.client.post(format!("{}/admin/reload", gw.base));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(reload(None).await, 401);
    assert_eq!(reload(Some(format!("Bearer {WEB_KEY}"))).await, 403);
    assert_eq!(reload(Some(format!("Bearer {ADMIN}"))).await, 200);
    let metrics = gw.client.get(format!("{}/metrics", gw.base)).send().await;
    assert_eq!(metrics.unwrap().status(), 401);
    // Health stays open: load balancers probe it without credentials.
    let ready = gw.client.get(format!("{}/healthz", gw.base)).send().await;
    assert_eq!(ready.unwrap().status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_admin_listener_takes_metrics_and_admin_off_the_public_port() {
    let gw = TestGateway::start_with(|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = format!("http://{}", gw.server.admin_addr().unwrap());
    let get = |url: String| {
        let client = gw.client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(format!("{}/metrics", gw.base)).await, 404);
    assert_eq!(get(format!("{admin}/metrics")).await, 200);
    wait_readiness(&gw.client, &admin, true).await;
    let post = gw
        .client
        .post(format!("{admin}/v1/events"))
        .body("[]")
        .send()
        .await;
    assert_eq!(
        post.unwrap().status(),
        404,
        "the admin port takes no events"
    );
    let reload = gw.client.post(format!("{admin}/admin/reload")).send().await;
    assert_eq!(reload.unwrap().status(), 200);
    gw.stop().await;
}
