//! `GET /api/features/{client_key}`: the experiments as a GrowthBook SDK payload.
//!
//! The payload is built once per change and cached: when the experiments config changes (a
//! reload) or a start/end boundary passes. Its `ETag` is a hash of the evaluated `features`, and
//! `dateUpdated` is when those features first appeared: the reload, or the boundary itself. Both
//! are kept in `growthbook-payload.json` in the state directory, so a restart serving the same
//! features keeps them. Encrypted payloads (`encryptedFeatures`, AES-128-CBC with a random IV
//! and PKCS#7 padding, `base64(iv).base64(ciphertext)`) are encrypted once per change and key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::response::{ApiError, Body};
use crate::assign::Experiments;
use crate::assign::growthbook::date_updated;
use crate::config::ClientKey;

/// The route's prefix; the rest of the path is the client key.
pub const PREFIX: &str = "/api/features/";

/// The payload in force, built for one config version and valid until the next boundary.
#[derive(Debug)]
struct Built {
    config_version: String,
    valid_until: Option<DateTime<Utc>>,
    /// The serialized `features` object.
    features: Arc<str>,
    etag: String,
    date_updated: DateTime<Utc>,
    /// `encryptedFeatures` per client key, made on first use.
    encrypted: HashMap<String, Arc<str>>,
}

/// What survives a restart: the features' hash and when they first appeared.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    etag: String,
    date_updated: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Payloads {
    built: Mutex<Option<Built>>,
    memory: PathBuf,
}

impl Payloads {
    pub fn new(state_dir: &Path) -> Self {
        Payloads {
            built: Mutex::new(None),
            memory: state_dir.join("growthbook-payload.json"),
        }
    }

    /// The body for `client` at `now`, with its ETag.
    fn body(
        &self,
        experiments: &Experiments,
        client: &ClientKey,
        now: DateTime<Utc>,
    ) -> (Bytes, String) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let stale = built.as_ref().is_none_or(|b| {
            b.config_version != experiments.version() || b.valid_until.is_some_and(|t| now >= t)
        });
        if stale {
            *built = Some(self.rebuild(built.take(), experiments, now));
        }
        let b = built.as_mut().expect("built above");
        let date = date_updated(b.date_updated);
        let body = match client.decryption_key {
            None => format!(
                r#"{{"status":200,"features":{},"dateUpdated":"{date}"}}"#,
                b.features
            ),
            Some(key) => {
                let encrypted = b
                    .encrypted
                    .entry(client.key.clone())
                    .or_insert_with(|| encrypt(&key, b.features.as_bytes()).into());
                format!(
                    r#"{{"status":200,"features":{{}},"encryptedFeatures":"{encrypted}","dateUpdated":"{date}"}}"#
                )
            }
        };
        (Bytes::from(body), b.etag.clone())
    }

    fn rebuild(&self, old: Option<Built>, experiments: &Experiments, now: DateTime<Utc>) -> Built {
        let payload = experiments.growthbook_features(now);
        let features: Arc<str> = serde_json::to_string(&payload.features)
            .expect("JSON values serialize")
            .into();
        let etag = format!(
            "\"{:016x}\"",
            xxhash_rust::xxh3::xxh3_64(features.as_bytes())
        );
        let date_updated = match old {
            // Same features (a reload that changed only descriptions): same date, same ciphertexts.
            Some(old) if old.etag == etag => {
                return Built {
                    config_version: experiments.version().to_owned(),
                    valid_until: payload.next_change,
                    ..old
                };
            }
            // The same config, so a start or end has passed: the features changed at that boundary.
            Some(old) if old.config_version == experiments.version() => {
                payload.last_change.unwrap_or(now)
            }
            _ => match self.remembered() {
                Some(r) if r.etag == etag => r.date_updated,
                _ => now,
            },
        };
        self.remember(&Remembered {
            etag: etag.clone(),
            date_updated,
        });
        Built {
            config_version: experiments.version().to_owned(),
            valid_until: payload.next_change,
            features,
            etag,
            date_updated,
            encrypted: HashMap::new(),
        }
    }

    fn remembered(&self) -> Option<Remembered> {
        let text = std::fs::read(&self.memory).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Best effort: losing it only means a new `dateUpdated` after the next restart.
    fn remember(&self, r: &Remembered) {
        let tmp = self.memory.with_extension("json.tmp");
        let json = serde_json::to_vec(r).expect("serializes");
        let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.memory));
        if let Err(e) = written {
            tracing::warn!(path = %self.memory.display(), error = %e, "cannot remember the GrowthBook payload's date");
        }
    }
}

/// `base64(iv).base64(AES-128-CBC(key, iv, PKCS#7(plain)))`, GrowthBook's `encryptedFeatures`.
pub fn encrypt(key: &[u8; 16], plain: &[u8]) -> String {
    let iv: [u8; 16] = rand::random();
    let cipher = cbc::Encryptor::<aes::Aes128>::new(key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("{}.{}", b64.encode(iv), b64.encode(cipher))
}

pub fn get(state: &AppState, path: &str, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let key = &path[PREFIX.len()..];
    let Some(client) = state
        .config
        .growthbook_client_keys
        .iter()
        .find(|c| c.key == key)
    else {
        return Err(ApiError::NotFound(format!(
            "no GrowthBook client key {key:?} is configured here (growthbook.client_keys)"
        )));
    };
    let (body, etag) = state
        .payloads
        .body(&state.experiments.current(), client, Utc::now());
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if unchanged {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex in quotes"),
    );
    // Cache, but ask again each time: a reload must reach clients on their next refresh.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
