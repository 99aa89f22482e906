//! One log record: the framing (length + CRC32C) and the batch payload.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::PartitionBounds;
use crate::validate::BodyFormat;

/// Bytes of framing before each payload: length then checksum.
pub const FRAME_HEADER: usize = 8;
/// Version 2 adds the writer's source; version 1 records (without it) are still read.
const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
const FIXED_PAYLOAD: usize = 1 + 8 + 8 + 8 + 8 + 1 + 1 + 4;
/// Longest source name (the config allows 64 bytes).
pub const MAX_SOURCE_BYTES: usize = u8::MAX as usize;
/// Largest payload accepted on read; guards against reading a garbage length.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Content-Encoding of the stored body.
pub const ENCODING_IDENTITY: u8 = 0;
pub const ENCODING_GZIP: u8 = 1;
pub const ENCODING_ZSTD: u8 = 2;

/// An accepted request, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    pub seq: u64,
    pub received_micros: i64,
    pub bounds: PartitionBounds,
    pub format: BodyFormat,
    /// One of the `ENCODING_*` constants: the body is stored as it came over the wire.
    pub encoding: u8,
    /// Freshness of each valid event, in order (duplicates are `false`).
    pub fresh: Vec<bool>,
    /// The write key's source that sent the body (`None`: no keys configured, or a v1 record).
    pub source: Option<std::sync::Arc<str>>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record shorter than its header")]
    Short,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown body format {0}")]
    Format(u8),
    #[error("freshness bitmap longer than the record")]
    Bitmap,
    #[error("source longer than the record, or not UTF-8")]
    Source,
}

impl BatchRecord {
    /// Payload bytes, without the frame; the body is copied once here.
    pub fn encode_payload(&self, out: &mut BytesMut) {
        let source = self.source.as_deref().unwrap_or("").as_bytes();
        let source = &source[..source.len().min(MAX_SOURCE_BYTES)];
        out.reserve(
            FIXED_PAYLOAD + 1 + source.len() + self.fresh.len().div_ceil(8) + self.body.len(),
        );
        out.put_u8(VERSION);
        out.put_u64_le(self.seq);
        out.put_i64_le(self.received_micros);
        out.put_i64_le(self.bounds.max_past_micros);
        out.put_i64_le(self.bounds.max_future_micros);
        out.put_u8(self.format.tag());
        out.put_u8(self.encoding);
        out.put_u32_le(self.fresh.len() as u32);
        out.put_u8(source.len() as u8);
        out.put_slice(source);
        for chunk in self.fresh.chunks(8) {
            let byte = chunk
                .iter()
                .enumerate()
                .fold(0u8, |acc, (i, &f)| acc | ((f as u8) << i));
            out.put_u8(byte);
        }
        out.put_slice(&self.body);
    }

    pub fn decode_payload(payload: Bytes) -> Result<Self, RecordError> {
        if payload.len() < FIXED_PAYLOAD {
            return Err(RecordError::Short);
        }
        let p = &payload[..];
        let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        if p[0] != VERSION && p[0] != VERSION_1 {
            return Err(RecordError::Version(p[0]));
        }
        let seq = u64_at(1);
        let received_micros = u64_at(9) as i64;
        let bounds = PartitionBounds {
            max_past_micros: u64_at(17) as i64,
            max_future_micros: u64_at(25) as i64,
        };
        let format = BodyFormat::from_tag(p[33]).ok_or(RecordError::Format(p[33]))?;
        let encoding = p[34];
        let fresh_len = u32::from_le_bytes(p[35..39].try_into().expect("4 bytes")) as usize;
        let (source, bitmap_start) = if p[0] == VERSION_1 {
            (None, FIXED_PAYLOAD)
        } else {
            let len = *p.get(FIXED_PAYLOAD).ok_or(RecordError::Source)? as usize;
            let start = FIXED_PAYLOAD + 1;
            let bytes = p.get(start..start + len).ok_or(RecordError::Source)?;
            let text = std::str::from_utf8(bytes).map_err(|_| RecordError::Source)?;
            ((!text.is_empty()).then(|| text.into()), start + len)
        };
        let bitmap_end = bitmap_start + fresh_len.div_ceil(8);
        if bitmap_end > p.len() {
            return Err(RecordError::Bitmap);
        }
        let bitmap = &p[bitmap_start..bitmap_end];
        let fresh = (0..fresh_len)
            .map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
            .collect();
        Ok(BatchRecord {
            seq,
            received_micros,
            bounds,
            format,
            encoding,
            fresh,
            source,
            body: payload.slice(bitmap_end..),
        })
    }

    /// The full framed record.
    pub fn encode_framed(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u64_le(0); // placeholder for len + crc
        self.encode_payload(out);
        let payload = &out[start + FRAME_HEADER..];
        let len = payload.len() as u32;
        let crc = crc32c::crc32c(payload);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(fresh: Vec<bool>, body: Vec<u8>) -> BatchRecord {
        BatchRecord {
            seq: 42,
            received_micros: 1_764_419_696_789_000,
            bounds: PartitionBounds {
                max_past_micros: 7,
                max_future_micros: 9,
            },
            format: BodyFormat::NdJson,
            encoding: ENCODING_GZIP,
            fresh,
            source: Some("web".into()),
            body: Bytes::from(body),
        }
    }

    proptest! {
        #[test]
        fn payload_round_trips(fresh in proptest::collection::vec(any::<bool>(), 0..100),
                               body in proptest::collection::vec(any::<u8>(), 0..500)) {
            let r = record(fresh, body);
            let mut buf = BytesMut::new();
            r.encode_framed(&mut buf);
            let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
            prop_assert_eq!(len, buf.len() - FRAME_HEADER);
            prop_assert_eq!(crc, crc32c::crc32c(&buf[FRAME_HEADER..]));
            let back = BatchRecord::decode_payload(buf.freeze().slice(FRAME_HEADER..)).unwrap();
            prop_assert_eq!(back, r);
        }
    }

    #[test]
    fn version_1_records_are_read_without_a_source() {
        let v2 = record(vec![true, false, true], b"[1]".to_vec());
        // Version 1: the same fields without the source length and bytes.
        let mut buf = BytesMut::new();
        BatchRecord {
            source: None,
            ..v2.clone()
        }
        .encode_payload(&mut buf);
        let mut v1 = buf.to_vec();
        v1[0] = VERSION_1;
        v1.remove(FIXED_PAYLOAD); // the zero source length
        let back = BatchRecord::decode_payload(Bytes::from(v1)).unwrap();
        assert_eq!(back, BatchRecord { source: None, ..v2 });
    }

    #[test]
    fn rejects_unknown_version_and_short_payloads() {
        let mut buf = BytesMut::new();
        record(vec![true], b"[]".to_vec()).encode_payload(&mut buf);
        let mut bad = buf.to_vec();
        bad[0] = 9;
        assert_eq!(
            BatchRecord::decode_payload(Bytes::from(bad)),
            Err(RecordError::Version(9))
        );
        assert_eq!(
            BatchRecord::decode_payload(buf.freeze().slice(..10)),
            Err(RecordError::Short)
        );
    }
}
