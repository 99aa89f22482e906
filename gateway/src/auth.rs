//! Who may write: write keys (each naming a source), the admin token, and per-key rate limits.
//!
//! Keys are configured as SHA-256 hashes (lowercase hex), never in the clear: a leaked config does
//! not leak keys. A presented key is hashed and compared with every configured hash in constant
//! time (no early exit, so the time taken says nothing about which key, or how much of it, matched).
//!
//! Knows nothing of HTTP beyond parsing an `Authorization` header value.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Lowercase hex SHA-256 of a key: what the config stores.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Events per second and burst of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub events_per_sec: NonZeroU32,
    pub burst: NonZeroU32,
}

/// One configured write key.
#[derive(Debug, Clone)]
pub struct WriteKey {
    /// Stored with each event this key writes (the `source` column).
    pub source: Arc<str>,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub rate_limit: Option<RateLimit>,
}

type Limiter = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

/// A caller that presented a valid write key.
#[derive(Debug, Clone)]
pub struct Writer {
    pub source: Arc<str>,
    limiter: Option<Arc<Limiter>>,
}

/// Why a batch was refused by its key's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the write key's rate limit is exhausted; retry in {retry_after:?}")]
pub struct RateLimited {
    pub retry_after: Duration,
}

impl Writer {
    /// Spend `events` from the key's budget, all or nothing.
    pub fn spend(&self, events: usize) -> Result<(), RateLimited> {
        let (Some(limiter), Some(n)) = (&self.limiter, NonZeroU32::new(events as u32)) else {
            return Ok(());
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
            // More events than the burst: config validation makes the burst at least
            // `limits.max_events`, so this is a batch the limit can never let through at once.
            Err(_) => Err(RateLimited {
                retry_after: Duration::from_secs(1),
            }),
        }
    }
}

/// The outcome of checking a request's credentials.
#[derive(Debug, Clone)]
pub enum Access {
    /// No write keys are configured (a loopback-only gateway): anyone may write.
    Open,
    Granted(Writer),
    /// No usable credentials in the request.
    Missing,
    /// Credentials that match no key.
    Denied,
}

/// The configured keys, ready to check requests against.
#[derive(Debug)]
pub struct Keys {
    write: Vec<(WriteKey, Option<Arc<Limiter>>)>,
    admin_sha256: Option<String>,
}

impl Keys {
    pub fn new(write: &[WriteKey], admin_sha256: Option<&str>) -> Self {
        let write = write
            .iter()
            .map(|k| {
                let limiter = k.rate_limit.map(|r| {
                    Arc::new(RateLimiter::direct(
                        Quota::per_second(r.events_per_sec).allow_burst(r.burst),
                    ))
                });
                (k.clone(), limiter)
            })
            .collect();
        Self {
            write,
            admin_sha256: admin_sha256.map(str::to_owned),
        }
    }

    pub fn has_write_keys(&self) -> bool {
        !self.write.is_empty()
    }

    pub fn has_admin_token(&self) -> bool {
        self.admin_sha256.is_some()
    }

    /// Check a write request's `Authorization` header value.
    pub fn writer(&self, authorization: Option<&[u8]>) -> Access {
        if self.write.is_empty() {
            return Access::Open;
        }
        let Some(key) = authorization.and_then(credential) else {
            return Access::Missing;
        };
        let presented = hash_key(&key);
        let mut found = None;
        for (i, (k, _)) in self.write.iter().enumerate() {
            let same: bool = presented.as_bytes().ct_eq(k.sha256.as_bytes()).into();
            if same && found.is_none() {
                found = Some(i);
            }
        }
        match found {
            Some(i) => {
                let (k, limiter) = &self.write[i];
                Access::Granted(Writer {
                    source: k.source.clone(),
                    limiter: limiter.clone(),
                })
            }
            None => Access::Denied,
        }
    }

    /// Check an admin request: `Some(true)` granted, `Some(false)` wrong token, `None` missing.
    pub fn admin(&self, authorization: Option<&[u8]>) -> Option<bool> {
        let expected = self.admin_sha256.as_ref()?;
        let token = authorization.and_then(credential)?;
        Some(
            hash_key(&token)
                .as_bytes()
                .ct_eq(expected.as_bytes())
                .into(),
        )
    }
}

/// The key in `Bearer KEY`, or in `Basic base64(KEY:password)` (the analytics SDKs' convention:
/// the key is the user name, the password empty or ignored).
fn credential(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let user = decoded.split_once(':').map_or(&decoded[..], |(u, _)| u);
        return (!user.is_empty()).then(|| user.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(limit: Option<RateLimit>) -> Keys {
        Keys::new(
            &[
                WriteKey {
                    source: "web".into(),
                    sha256: hash_key("k-web"),
                    rate_limit: limit,
                },
                WriteKey {
                    source: "ios".into(),
                    sha256: hash_key("k-ios"),
                    rate_limit: None,
                },
            ],
            Some(&hash_key("admin-secret")),
        )
    }

    fn source(access: Access) -> String {
        match access {
            Access::Granted(w) => w.source.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bearer_and_basic_name_the_key_and_anything_else_is_missing_or_denied() {
        let k = keys(None);
        assert_eq!(source(k.writer(Some(b"Bearer k-web"))), "web");
        assert_eq!(source(k.writer(Some(b"bearer  k-ios "))), "ios");
        // Segment's convention: base64("KEY:").
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("k-ios:")
        );
        assert_eq!(source(k.writer(Some(basic.as_bytes()))), "ios");
        assert!(matches!(k.writer(None), Access::Missing));
        assert!(matches!(k.writer(Some(b"Bearer ")), Access::Missing));
        assert!(matches!(k.writer(Some(b"Digest x")), Access::Missing));
        assert!(matches!(k.writer(Some(b"Bearer k-wrong")), Access::Denied));
        assert!(matches!(Keys::new(&[], None).writer(None), Access::Open));
    }

    #[test]
    fn the_admin_token_is_its_own_secret() {
        let k = keys(None);
        assert_eq!(k.admin(Some(b"Bearer admin-secret")), Some(true));
        assert_eq!(k.admin(Some(b"Bearer k-web")), Some(false));
        assert_eq!(k.admin(None), None);
    }

    #[test]
    fn a_key_past_its_rate_spends_nothing_and_says_when_to_retry() {
        let limit = RateLimit {
            events_per_sec: NonZeroU32::new(10).unwrap(),
            burst: NonZeroU32::new(100).unwrap(),
        };
        let k = keys(Some(limit));
        let Access::Granted(web) = k.writer(Some(b"Bearer k-web")) else {
            panic!()
        };
        web.spend(60).unwrap();
        let err = web.spend(60).unwrap_err();
        assert!(err.retry_after > Duration::from_secs(1), "{err:?}");
        web.spend(40).unwrap();
        // The other key has its own limit (here none).
        let Access::Granted(ios) = k.writer(Some(b"Bearer k-ios")) else {
            panic!()
        };
        ios.spend(10_000).unwrap();
    }
}
