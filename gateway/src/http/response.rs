//! The one place that maps errors to HTTP status codes and JSON bodies.
//!
//! Error bodies: `{"code": "payload_too_large", "message": "...", "error": {"code": ..., "message":
//! ..., ...}}` with a stable machine-readable `code` and a human sentence (at the top level too,
//! where some SDKs look for them).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

pub type Body = Full<Bytes>;

/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECS: u32 = 1;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        /// Byte offset of a JSON syntax error.
        offset: Option<usize>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A message saying what was not found (`no route for GET /x`).
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} not allowed; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("{message}")]
    Unavailable {
        reason: &'static str,
        message: String,
    },
    /// The body did not arrive in time; the connection is closed after the answer.
    #[error("{0}")]
    Timeout(String),
    /// No credentials where they are required.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials that are not valid here.
    #[error("{0}")]
    Forbidden(String),
    /// 429 with `Retry-After`: a key's rate limit (`rate_limited`), or overload answered to SDKs
    /// that retry only on 429 (the overload reason as `code`).
    #[error("{message}")]
    RateLimited {
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            offset: None,
        }
    }

    /// The memory budget refused the request.
    pub fn overloaded(e: crate::budget::OverBudget) -> Self {
        metrics::counter!(crate::metrics::OVERLOADED, "reason" => "memory").increment(1);
        ApiError::Unavailable {
            reason: "overloaded",
            message: format!("{e}; nothing from this request was accepted, retry later"),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unavailable { reason, .. } => reason,
            ApiError::Timeout(_) => "request_timeout",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { code, .. } => code,
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            offset: Option<usize>,
        }
        /// `code` and `message` also at the top level: some SDKs read only those.
        #[derive(Serialize)]
        struct Outer<'a> {
            code: &'a str,
            message: &'a str,
            error: &'a Inner<'a>,
        }
        let offset = match &self {
            ApiError::BadRequest { offset, .. } => *offset,
            _ => None,
        };
        let inner = Inner {
            code: self.code(),
            message: self.to_string(),
            offset,
        };
        let body = Outer {
            code: inner.code,
            message: &inner.message,
            error: &inner,
        };
        let mut resp = json(self.status(), &body);
        match &self {
            ApiError::Unavailable { .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Timeout(_) => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gateway\""),
                );
            }
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        resp
    }
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("response types serialize");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A plain-text response (metrics, health).
pub fn text(content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
