//! `GET /api/features/{client_key}` over HTTP: the payload's ETag and `dateUpdated` follow the
//! evaluated features (reloads, start/end boundaries, restarts), encrypted payloads, client keys,
//! and CORS on the routes browsers call. That the stock SDKs evaluate the payload as
//! `/v1/assign` does is checked with the SDKs themselves (`sdk.rs`).

use std::path::Path;
use std::time::Duration;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use gateway::config::{ClientKey, CorsConfig};
use gateway::{Config, Server};
use serde_json::{Value, json};

const SECRET: [u8; 16] = *b"0123456789abcdef";

fn config(data: &Path, state: &Path, experiments: &Path) -> Config {
    let mut config = Config::for_tests(data, state, experiments);
    config.experiments_poll = None;
    config.growthbook_client_keys = vec![
        ClientKey {
            key: "sdk-plain".into(),
            decryption_key: None,
        },
        ClientKey {
            key: "sdk-secret".into(),
            decryption_key: Some(SECRET),
        },
    ];
    config.cors = CorsConfig {
        allowed_origins: vec!["https://app.example.com".into()],
        max_age_secs: 600,
    };
    config
}

fn experiments(start: DateTime<Utc>, weights: [f64; 2], description: &str) -> Value {
    json!({"experiments": [
        {"key": "always", "variants": ["a", "b"], "weights": weights, "description": description},
        {"key": "soon", "variants": ["off", "on"],
         "start": start.to_rfc3339_opts(SecondsFormat::Millis, true)},
    ]})
}

struct Payload {
    status: u16,
    etag: String,
    body: Value,
}

async fn fetch(client: &reqwest::Client, base: &str, key: &str) -> Payload {
    let resp = client
        .get(format!("{base}/api/features/{key}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.json().await.unwrap_or(Value::Null);
    Payload { status, etag, body }
}

async fn reload(client: &reqwest::Client, base: &str) {
    let resp = client
        .post(format!("{base}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

fn rules(p: &Payload, feature: &str) -> usize {
    p.body["features"][feature]["rules"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn etag_and_date_updated_change_when_and_only_when_the_features_do() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("experiments.json");
    // Whole milliseconds, as the payload writes them, 2.5 s from now.
    let start = DateTime::from_timestamp_millis(Utc::now().timestamp_millis() + 2_500).unwrap();
    let write = |weights, description| {
        std::fs::write(&file, experiments(start, weights, description).to_string()).unwrap()
    };
    write([0.5, 0.5], "first");
    let server = Server::start(config(data.path(), state.path(), &file))
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::new();

    let first = fetch(&client, &base, "sdk-plain").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], 200);
    assert_eq!(rules(&first, "always"), 1);
    assert_eq!(rules(&first, "soon"), 0, "not started: no experiment rule");
    let date = first.body["dateUpdated"].as_str().unwrap().to_owned();

    // Unchanged: the same answer, and 304 to a client that has it.
    let again = fetch(&client, &base, "sdk-plain").await;
    assert_eq!((&again.etag, &again.body), (&first.etag, &first.body));
    let not_modified = client
        .get(format!("{base}/api/features/sdk-plain"))
        .header("if-none-match", &first.etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(not_modified.headers()["etag"], first.etag.as_str());

    // A reload that changes only a description: a new config version, the same features.
    write([0.5, 0.5], "second");
    reload(&client, &base).await;
    let described = fetch(&client, &base, "sdk-plain").await;
    assert_eq!(
        (&described.etag, &described.body),
        (&first.etag, &first.body)
    );

    // The start passes: the experiment rule appears, dated at the boundary itself.
    tokio::time::sleep_until(
        tokio::time::Instant::now()
            + (start - Utc::now()).to_std().unwrap_or_default()
            + Duration::from_millis(100),
    )
    .await;
    let started = fetch(&client, &base, "sdk-plain").await;
    assert_ne!(started.etag, first.etag);
    assert_eq!(rules(&started, "soon"), 1);
    assert_eq!(
        started.body["dateUpdated"],
        start.to_rfc3339_opts(SecondsFormat::Millis, true)
    );

    // A reload that changes weights: new features, dated now.
    write([0.2, 0.8], "second");
    reload(&client, &base).await;
    let reweighted = fetch(&client, &base, "sdk-plain").await;
    assert_ne!(reweighted.etag, started.etag);
    assert_eq!(
        reweighted.body["features"]["always"]["rules"][0]["weights"],
        json!([0.2, 0.8])
    );
    let reweighted_date = reweighted.body["dateUpdated"].as_str().unwrap().to_owned();
    assert!(reweighted_date.as_str() > started.body["dateUpdated"].as_str().unwrap());
    assert!(reweighted_date > date);

    // A restart serving the same features keeps both.
    server.shutdown().await.unwrap();
    let server = Server::start(config(data.path(), state.path(), &file))
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    let restarted = fetch(&client, &base, "sdk-plain").await;
    assert_eq!(
        (&restarted.etag, &restarted.body),
        (&reweighted.etag, &reweighted.body)
    );

    // Unknown client keys are 404, with the error's code at the top level too.
    let unknown = fetch(&client, &base, "sdk-nope").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["code"], "not_found");
    assert_eq!(unknown.body["error"]["code"], "not_found");
    server.shutdown().await.unwrap();
}

/// A gateway on the example file; keep the directories alive while it runs.
async fn start_on_the_example() -> (Server, String, reqwest::Client, [tempfile::TempDir; 2]) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let experiments = crate::common::example_experiments();
    let server = Server::start(config(dirs[0].path(), dirs[1].path(), &experiments))
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    (server, base, reqwest::Client::new(), dirs)
}

#[tokio::test]
async fn an_encrypted_payload_decrypts_to_the_plain_features() {
    let (server, base, client, _dirs) = start_on_the_example().await;
    let plain = fetch(&client, &base, "sdk-plain").await;
    let secret = fetch(&client, &base, "sdk-secret").await;
    assert_eq!(secret.status, 200);
    assert_eq!(
        secret.etag, plain.etag,
        "the ETag names the features, not the ciphertext"
    );
    assert_eq!(secret.body["features"], json!({}));
    assert_eq!(secret.body["dateUpdated"], plain.body["dateUpdated"]);
    let encrypted = secret.body["encryptedFeatures"].as_str().unwrap();
    let (iv, cipher) = encrypted.split_once('.').unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let iv: [u8; 16] = b64.decode(iv).unwrap().try_into().unwrap();
    let mut cipher = b64.decode(cipher).unwrap();
    let decrypted = cbc::Decryptor::<aes::Aes128>::new(&SECRET.into(), &iv.into())
        .decrypt_padded_mut::<Pkcs7>(&mut cipher)
        .unwrap();
    let features: Value = serde_json::from_slice(decrypted).unwrap();
    assert_eq!(features, plain.body["features"]);
    assert!(features["checkout_button"]["rules"].is_array());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn cors_answers_preflights_and_marks_answers_for_allowed_origins_only() {
    let (server, base, client, _dirs) = start_on_the_example().await;
    let allowed = "https://app.example.com";
    for path in ["/v1/assign", "/api/features/sdk-plain"] {
        let preflight = client
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", allowed)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204, "{path}");
        let h = preflight.headers();
        assert_eq!(h["access-control-allow-origin"], allowed);
        assert!(
            h["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("GET")
        );
        assert!(
            h["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("content-type")
        );
        assert_eq!(h["access-control-max-age"], "600");

        let refused = client
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{path}");
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
    let get = |origin: Option<&'static str>| {
        let mut req = client.get(format!("{base}/v1/assign?user_id=u-1"));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let from_app = get(Some(allowed)).await.unwrap();
    assert_eq!(from_app.status(), 200);
    assert_eq!(from_app.headers()["access-control-allow-origin"], allowed);
    assert!(
        from_app.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("origin")
    );
    let from_elsewhere = get(Some("https://evil.example")).await.unwrap();
    assert!(
        from_elsewhere
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let no_origin = get(None).await.unwrap();
    assert!(
        no_origin
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // Not a browser route: no CORS headers even for an allowed origin.
    let events = client
        .post(format!("{base}/v1/events"))
        .header("origin", allowed)
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert!(
        events
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(events.headers().get("vary").is_none());
    server.shutdown().await.unwrap();
}
