//! Reading a request body: bounded in size, in time, and by the memory budget.
//!
//! The bytes are reserved before they are buffered (the declared `Content-Length` at once, or
//! chunk by chunk as a chunked body grows), so a flood of large bodies is refused with 503
//! instead of being held. A body that does not arrive whole within the body timeout is answered
//! 408 and its connection closed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::response::ApiError;
use crate::budget::{MemoryBudget, Reservation};

/// A body read whole, and the memory it holds.
#[derive(Debug)]
pub struct ReadBody {
    pub bytes: Bytes,
    pub hold: Reservation,
}

pub fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Read `body` (whose head is `headers`) until `deadline`, refusing more than `max_bytes`.
pub async fn read(
    headers: &HeaderMap,
    mut body: Incoming,
    max_bytes: usize,
    deadline: Instant,
    budget: &Arc<MemoryBudget>,
) -> Result<ReadBody, ApiError> {
    let declared = content_length(headers);
    if declared.is_some_and(|len| len > max_bytes) {
        return Err(too_large(max_bytes));
    }
    let mut hold = match budget.try_reserve(declared.unwrap_or(0)) {
        Ok(hold) => hold,
        Err(e) => {
            discard(body, max_bytes, deadline).await;
            return Err(ApiError::overloaded(e));
        }
    };
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    // The common case of a body in one chunk keeps hyper's buffer (no copy).
    let mut single: Option<Bytes> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                metrics::counter!(crate::metrics::HTTP_TIMEOUTS, "kind" => "body").increment(1);
                return Err(ApiError::Timeout(
                    "the request body did not arrive within the body timeout".into(),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(
                    "unreadable_body",
                    format!("could not read the body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = buf.len() + single.as_ref().map_or(0, Bytes::len) + data.len();
        if len > max_bytes {
            return Err(too_large(max_bytes));
        }
        if len > hold.bytes()
            && let Err(e) = hold.resize(len)
        {
            drop((buf, single, hold));
            discard(body, max_bytes - len, deadline).await;
            return Err(ApiError::overloaded(e));
        }
        if buf.is_empty() && single.is_none() && declared.is_none_or(|d| d == data.len()) {
            single = Some(data);
            continue;
        }
        if let Some(first) = single.take() {
            buf.extend_from_slice(&first);
        }
        buf.extend_from_slice(&data);
    }
    let bytes = match single {
        Some(b) => b,
        None => buf.freeze(),
    };
    // hyper refuses a body shorter than its declared length, so what is held is what was read.
    Ok(ReadBody { bytes, hold })
}

/// Read and drop the rest of a body that is refused before it was read, so the client sees the
/// answer instead of a connection reset mid-send (a client that keeps sending is cut at the
/// deadline or past `max_bytes`). Holds one chunk at a time.
pub async fn discard(mut body: Incoming, max_bytes: usize, deadline: Instant) {
    let mut left = max_bytes;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        if let Ok(data) = frame.into_data() {
            match left.checked_sub(data.len()) {
                Some(l) => left = l,
                None => return,
            }
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("body is larger than {limit} bytes"))
}
