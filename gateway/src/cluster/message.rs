//! What gateways append to a partition and writers read back: messages holding the partition's
//! share of one or more requests, and the cut markers writers put between them.
//!
//! - An event's partition is a hash of (table, `event_id`) ([`event_key`]), so every copy of an
//!   event, whichever gateway took it, meets the others in one partition, in one writer.
//! - A request's share of a partition is a *segment*: the request's receive time, partition
//!   bounds and source (what the rows depend on besides the events), the partition's events as
//!   the JSON text the client sent, and its rejections as the gateway decided them. Writers
//!   validate the events again: the rows are the same pure function of the segment as the
//!   single-node gateway's of its log record.
//! - A segment's id is a hash of the partition and the keys of its events (and the text of its
//!   rejections), in order: a request re-sent to any gateway has the same segments.
//! - A gateway appends the segments that queued for a partition while its previous appends were
//!   in flight as one message ([`group`]): the log's cost is per message, so this is what lets
//!   the log keep up with many small requests. The message's idempotency key is a hash of its
//!   segments' ids, so a message the gateway sends again is stored once; the writers drop
//!   events seen before, whatever message carried them.
//!
//! Layout, little-endian: magic `EXB2`, u32 segment count, then per segment a u32 length and
//! the segment: `received_micros` i64, `max_past_micros` i64, `max_future_micros` i64, source
//! (u8 present, u32 length, bytes), events (u32 length, a JSON array of the event objects),
//! rejections (u32 count; each: u32 index, u8 code, u8 has id, then u32-length-prefixed id,
//! message and raw text). A cut marker is the four bytes `EXC1`.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use xxhash_rust::xxh3::{Xxh3, xxh3_64, xxh3_128_with_seed};

use crate::batch::PartitionBounds;
use crate::validate::{EventKind, RejectCode, Rejection, ValidBatch};

const BATCH_MAGIC: &[u8; 4] = b"EXB2";
const MARKER_MAGIC: &[u8; 4] = b"EXC1";

/// The dedup identity of an event in cluster mode: its table and its `event_id`.
pub fn event_key(kind: EventKind, event_id: &str) -> u128 {
    let seed = match kind {
        EventKind::Assignment => 1,
        EventKind::Conversion => 2,
    };
    xxh3_128_with_seed(event_id.as_bytes(), seed)
}

/// The partition of an event key (its high 64 bits, so partitions and hash tables, which use
/// the low bits, stay independent).
pub fn partition_of(key: u128, partitions: u32) -> u32 {
    ((key >> 64) as u64 % u64::from(partitions.max(1))) as u32
}

/// What every row of a request depends on besides its events.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    pub received_micros: i64,
    pub bounds: PartitionBounds,
    pub source: Option<&'a str>,
}

/// A request's share of one partition, to append.
#[derive(Debug)]
pub struct Outgoing {
    pub partition: u32,
    /// The segment's identity (its partition and the hash of its content's keys).
    pub id: String,
    /// The encoded segment.
    pub payload: Bytes,
    /// Valid events in it.
    pub events: usize,
}

/// Bytes a message adds to its segments: the magic and count, and a length per segment.
pub const GROUP_OVERHEAD: usize = 8;
pub const SEGMENT_OVERHEAD: usize = 4;

/// One message of `segments` (all of `partition`), and its idempotency key.
pub fn group(partition: u32, segments: &[&Outgoing]) -> (String, Bytes) {
    let mut id = Xxh3::new();
    let size: usize = segments
        .iter()
        .map(|s| s.payload.len() + SEGMENT_OVERHEAD)
        .sum();
    let mut buf = BytesMut::with_capacity(GROUP_OVERHEAD + size);
    buf.put_slice(BATCH_MAGIC);
    buf.put_u32_le(segments.len() as u32);
    for s in segments {
        debug_assert_eq!(s.partition, partition);
        id.update(&(s.id.len() as u64).to_le_bytes());
        id.update(s.id.as_bytes());
        put_str(&mut buf, &s.payload);
    }
    (format!("{partition}.{:032x}", id.digest128()), buf.freeze())
}

#[derive(Default)]
struct Building {
    events: Vec<u8>,
    count: usize,
    rejected: Vec<u8>,
    rejected_count: u32,
    id: Option<Xxh3>,
}

/// Split a validated request into one segment per partition it touches. `raws[i]` is the
/// text of element `i` ([`crate::validate::raw_elements`]).
pub fn split(
    valid: &ValidBatch<'_>,
    raws: &[&str],
    header: Header<'_>,
    partitions: u32,
) -> Vec<Outgoing> {
    let mut parts: Vec<Building> = Vec::new();
    parts.resize_with(partitions.max(1) as usize, Building::default);
    for event in &valid.events {
        let key = event_key(event.kind, &event.event_id);
        let b = &mut parts[partition_of(key, partitions) as usize];
        b.events.push(if b.count == 0 { b'[' } else { b',' });
        b.events
            .extend_from_slice(raws[event.index as usize].as_bytes());
        b.count += 1;
        b.id.get_or_insert_with(Xxh3::new)
            .update(&key.to_le_bytes());
    }
    for r in &valid.rejected {
        let p = (xxh3_64(r.raw.as_bytes()) % u64::from(partitions.max(1))) as usize;
        let b = &mut parts[p];
        put_rejection(&mut b.rejected, r);
        b.rejected_count += 1;
        let id = b.id.get_or_insert_with(Xxh3::new);
        id.update(b"\xffrejected");
        id.update(&(r.raw.len() as u64).to_le_bytes());
        id.update(r.raw.as_bytes());
    }
    parts
        .into_iter()
        .enumerate()
        .filter_map(|(p, b)| {
            let id = b.id?;
            let mut buf = BytesMut::with_capacity(64 + b.events.len() + b.rejected.len());
            buf.put_i64_le(header.received_micros);
            buf.put_i64_le(header.bounds.max_past_micros);
            buf.put_i64_le(header.bounds.max_future_micros);
            match header.source {
                Some(s) => {
                    buf.put_u8(1);
                    put_str(&mut buf, s.as_bytes());
                }
                None => buf.put_u8(0),
            }
            let events_len = if b.count == 0 { 0 } else { b.events.len() + 1 };
            buf.put_u32_le(events_len as u32);
            if b.count > 0 {
                buf.put_slice(&b.events);
                buf.put_u8(b']');
            }
            buf.put_u32_le(b.rejected_count);
            buf.put_slice(&b.rejected);
            Some(Outgoing {
                partition: p as u32,
                id: format!("{p}.{:032x}", id.digest128()),
                payload: buf.freeze(),
                events: b.count,
            })
        })
        .collect()
}

fn put_str(buf: &mut impl BufMut, s: &[u8]) {
    buf.put_u32_le(s.len() as u32);
    buf.put_slice(s);
}

fn put_rejection(buf: &mut Vec<u8>, r: &Rejection<'_>) {
    buf.put_u32_le(r.index);
    let code = RejectCode::ALL
        .iter()
        .position(|c| *c == r.code)
        .expect("every code is listed") as u8;
    buf.put_u8(code);
    match &r.event_id {
        Some(id) => {
            buf.put_u8(1);
            put_str(buf, id.as_bytes());
        }
        None => buf.put_u8(0),
    }
    put_str(buf, r.message.as_bytes());
    put_str(buf, r.raw.as_bytes());
}

/// The payload of a cut marker.
pub fn marker() -> Bytes {
    Bytes::from_static(MARKER_MAGIC)
}

/// The idempotency key of the marker that closes the range after `prev_cut`: writers racing
/// on a partition append one marker between them, not two.
pub fn marker_id(partition: u32, prev_cut: u64) -> String {
    format!("cut.{partition}.{prev_cut}")
}

/// A segment read back.
#[derive(Debug)]
pub struct Segment<'a> {
    pub header: Header<'a>,
    /// A JSON array of the events (empty when there are none).
    pub events: &'a [u8],
    pub rejected: Vec<Rejection<'a>>,
}

/// A message read back.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// Segments in the order they were appended.
    Batch(Vec<Segment<'a>>),
    Marker,
}

/// A message that is not one of ours, or is cut short.
#[derive(Debug, thiserror::Error)]
#[error("malformed log message: {0}")]
pub struct MalformedMessage(&'static str);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedMessage> {
        if self.0.len() < n {
            return Err(MalformedMessage("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MalformedMessage> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, MalformedMessage> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, MalformedMessage> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], MalformedMessage> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, MalformedMessage> {
        std::str::from_utf8(self.bytes()?).map_err(|_| MalformedMessage("text is not UTF-8"))
    }
}

pub fn decode(payload: &[u8]) -> Result<Decoded<'_>, MalformedMessage> {
    let mut r = Reader(payload);
    let magic = r.take(4)?;
    if magic == MARKER_MAGIC {
        return Ok(Decoded::Marker);
    }
    if magic != BATCH_MAGIC {
        return Err(MalformedMessage("unknown magic"));
    }
    let n = r.u32()?;
    let mut segments = Vec::with_capacity(n.min(10_000) as usize);
    for _ in 0..n {
        segments.push(segment(r.bytes()?)?);
    }
    if !r.0.is_empty() {
        return Err(MalformedMessage("trailing bytes"));
    }
    Ok(Decoded::Batch(segments))
}

fn segment(bytes: &[u8]) -> Result<Segment<'_>, MalformedMessage> {
    let mut r = Reader(bytes);
    let received_micros = r.i64()?;
    let bounds = PartitionBounds {
        max_past_micros: r.i64()?,
        max_future_micros: r.i64()?,
    };
    let source = match r.u8()? {
        0 => None,
        _ => Some(r.str()?),
    };
    let events = r.bytes()?;
    let n = r.u32()?;
    let mut rejected = Vec::with_capacity(n.min(10_000) as usize);
    for _ in 0..n {
        let index = r.u32()?;
        let code = *RejectCode::ALL
            .get(r.u8()? as usize)
            .ok_or(MalformedMessage("unknown rejection code"))?;
        let event_id = match r.u8()? {
            0 => None,
            _ => Some(Cow::Borrowed(r.str()?)),
        };
        let message = r.str()?.to_owned();
        let raw = Cow::Borrowed(r.str()?);
        rejected.push(Rejection {
            index,
            event_id,
            code,
            message,
            raw,
        });
    }
    if !r.0.is_empty() {
        return Err(MalformedMessage("trailing bytes in a segment"));
    }
    Ok(Segment {
        header: Header {
            received_micros,
            bounds,
            source,
        },
        events,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{BodyFormat, decode as validate, raw_elements};

    const BODY: &str = r#"[
        {"event_id": "a1", "type": "assignment", "ts": "2026-12-01T10:00:00Z", "user_id": "u1",
         "experiment": "checkout", "variant": "control"},
        {"event_id": "c1", "type": "conversion", "ts": "2026-12-01T10:00:01Z", "user_id": "u1",
         "name": "purchase", "value": 12.5},
        {"event_id": "bad"},
        {"event_id": "a2", "type": "assignment", "ts": "2026-12-01T10:00:02Z", "user_id": "u2",
         "experiment": "checkout", "variant": "treatment"}
    ]"#;

    fn header() -> Header<'static> {
        Header {
            received_micros: 1_800_000_000_000_000,
            bounds: PartitionBounds {
                max_past_micros: 7,
                max_future_micros: 9,
            },
            source: Some("web"),
        }
    }

    fn messages(body: &str, partitions: u32) -> Vec<Outgoing> {
        let valid = validate(body.as_bytes(), BodyFormat::JsonArray, 100).unwrap();
        let raws = raw_elements(body.as_bytes(), BodyFormat::JsonArray).unwrap();
        split(&valid, &raws, header(), partitions)
    }

    #[test]
    fn every_element_lands_once_and_decodes_to_what_was_sent() {
        for partitions in [1, 2, 7] {
            let out = messages(BODY, partitions);
            let (mut ids, mut rejected) = (Vec::new(), Vec::new());
            for m in &out {
                assert!(m.id.starts_with(&format!("{}.", m.partition)));
                let (_, payload) = group(m.partition, &[m]);
                let Decoded::Batch(mut segments) = decode(&payload).unwrap() else {
                    panic!("a batch")
                };
                assert_eq!(segments.len(), 1);
                let Segment {
                    header: h,
                    events,
                    rejected: r,
                } = segments.remove(0);
                assert_eq!(h.received_micros, header().received_micros);
                assert_eq!(h.bounds, header().bounds);
                assert_eq!(h.source, Some("web"));
                if !events.is_empty() {
                    let v = validate(events, BodyFormat::JsonArray, 100).unwrap();
                    assert!(v.rejected.is_empty());
                    assert_eq!(v.events.len(), m.events);
                    for e in &v.events {
                        let key = event_key(e.kind, &e.event_id);
                        assert_eq!(partition_of(key, partitions), m.partition);
                        ids.push(e.event_id.to_string());
                    }
                }
                rejected.extend(r.iter().map(|r| (r.index, r.code, r.raw.to_string())));
            }
            ids.sort();
            assert_eq!(ids, ["a1", "a2", "c1"]);
            assert_eq!(rejected.len(), 1);
            assert_eq!(rejected[0].0, 2);
            assert_eq!(rejected[0].2, r#"{"event_id": "bad"}"#);
        }
    }

    #[test]
    fn a_resent_request_has_the_same_ids_and_other_events_other_ids() {
        let first: Vec<_> = messages(BODY, 3).into_iter().map(|m| m.id).collect();
        let again: Vec<_> = messages(BODY, 3).into_iter().map(|m| m.id).collect();
        assert_eq!(first, again);
        let other = BODY.replace("\"a2\"", "\"a3\"");
        let other: Vec<_> = messages(&other, 3).into_iter().map(|m| m.id).collect();
        assert_ne!(first, other);
    }

    #[test]
    fn a_group_holds_its_segments_in_order_and_is_named_by_them() {
        let first = messages(BODY, 1).remove(0);
        let other = messages(&BODY.replace("\"a2\"", "\"a3\""), 1).remove(0);
        let (id, payload) = group(0, &[&first, &other]);
        let Decoded::Batch(segments) = decode(&payload).unwrap() else {
            panic!("a batch")
        };
        let ids: Vec<Vec<String>> = segments
            .iter()
            .map(|s| {
                validate(s.events, BodyFormat::JsonArray, 100)
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.event_id.to_string())
                    .collect()
            })
            .collect();
        assert_eq!(ids, [["a1", "c1", "a2"], ["a1", "c1", "a3"]]);
        assert_eq!(segments[1].rejected.len(), 1);
        assert_eq!(
            group(0, &[&first, &other]).0,
            id,
            "the same segments, the same key"
        );
        assert_ne!(group(0, &[&other, &first]).0, id);
        assert_ne!(group(0, &[&first]).0, id);
    }

    #[test]
    fn the_table_is_part_of_the_key() {
        assert_ne!(
            event_key(EventKind::Assignment, "x"),
            event_key(EventKind::Conversion, "x")
        );
    }

    #[test]
    fn markers_and_garbage() {
        assert!(matches!(decode(&marker()).unwrap(), Decoded::Marker));
        assert!(decode(b"nope").is_err());
        let m = messages(BODY, 1).remove(0);
        let (_, payload) = group(0, &[&m]);
        assert!(decode(&payload).is_ok());
        assert!(decode(&payload[..payload.len() - 1]).is_err());
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
