//! One log record: the framing (length + CRC32C) and the batch payload.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::PartitionBounds;
use crate::validate::BodyFormat;

/// Bytes of framing before each payload: length then checksum.
pub const FRAME_HEADER: usize = 8;
const VERSION: u8 = 1;
const FIXED_PAYLOAD: usize = 1 + 8 + 8 + 8 + 8 + 1 + 1 + 4;
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
}

impl BatchRecord {
    /// Payload bytes, without the frame; the body is copied once here.
    pub fn encode_payload(&self, out: &mut BytesMut) {
        out.reserve(FIXED_PAYLOAD + self.fresh.len().div_ceil(8) + self.body.len());
        out.put_u8(VERSION);
        out.put_u64_le(self.seq);
        out.put_i64_le(self.received_micros);
        out.put_i64_le(self.bounds.max_past_micros);
        out.put_i64_le(self.bounds.max_future_micros);
        out.put_u8(self.format.tag());
        out.put_u8(self.encoding);
        out.put_u32_le(self.fresh.len() as u32);
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
        if p[0] != VERSION {
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
        let bitmap_end = FIXED_PAYLOAD + fresh_len.div_ceil(8);
        if bitmap_end > p.len() {
            return Err(RecordError::Bitmap);
        }
        let bitmap = &p[FIXED_PAYLOAD..bitmap_end];
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
