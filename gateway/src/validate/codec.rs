//! Request body codecs: `Content-Encoding` gzip and zstd, decompressed under two bounds.
//!
//! - A size limit (`max_decompressed_bytes`): a body that inflates past it is refused (zip bombs).
//! - The memory budget: the output buffer's capacity is reserved before it is allocated, so many
//!   bodies inflating at once are refused with 503 rather than taking the process past its budget.
//!
//! [`Inflater`] works in steps, so the caller can inflate the first kilobytes on an async worker
//! and move the rest of a large body to the blocking pool, judged by the decompressed size.

use std::io::Read;

use bytes::Bytes;

use crate::budget::{OverBudget, Reservation};
use crate::wal::record::{ENCODING_GZIP, ENCODING_IDENTITY, ENCODING_ZSTD};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecompressError {
    #[error("body decompresses to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body is not valid for its Content-Encoding: {0}")]
    Corrupt(String),
    #[error("unknown stored encoding {0}")]
    Unknown(u8),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// The output buffer grows by doubling from this size.
const FIRST_CHUNK: usize = 64 << 10;

/// A body being decompressed; owns its input, so it can move to another thread.
pub struct Inflater {
    reader: Box<dyn Read + Send>,
    out: Vec<u8>,
    limit: usize,
    done: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("out", &self.out.len())
            .field("limit", &self.limit)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// What [`Decoding::start`] found: nothing to inflate, or work to do.
#[derive(Debug)]
pub enum Decoding {
    Plain(Bytes),
    Inflate(Inflater),
}

impl Decoding {
    /// Start decoding `body` stored with `encoding` (one of `ENCODING_*`), refusing to grow past
    /// `limit` bytes. An uncompressed body is returned as is (no copy).
    pub fn start(encoding: u8, body: &Bytes, limit: usize) -> Result<Decoding, DecompressError> {
        let input = bytes::Buf::reader(body.clone());
        let reader: Box<dyn Read + Send> = match encoding {
            ENCODING_IDENTITY => return Ok(Decoding::Plain(body.clone())),
            ENCODING_GZIP => Box::new(flate2::read::MultiGzDecoder::new(input)),
            ENCODING_ZSTD => Box::new(
                zstd::stream::read::Decoder::new(input)
                    .map_err(|e| DecompressError::Corrupt(e.to_string()))?,
            ),
            other => return Err(DecompressError::Unknown(other)),
        };
        Ok(Decoding::Inflate(Inflater {
            reader,
            out: Vec::new(),
            limit,
            done: false,
        }))
    }
}

impl Inflater {
    /// Decompress until the end, or until at least `until` bytes are out; the output buffer's
    /// capacity is reserved in `hold` before it is allocated. Returns whether the body is done.
    pub fn step(&mut self, until: usize, hold: &mut Reservation) -> Result<bool, DecompressError> {
        while !self.done && self.out.len() < until {
            if self.out.len() == self.out.capacity() {
                let cap = self.out.capacity();
                // One byte past the limit tells "exactly the limit" from "more".
                let want = (cap * 2).max(FIRST_CHUNK).min(self.limit + 1);
                if want <= cap {
                    return Err(DecompressError::TooLarge { limit: self.limit });
                }
                hold.grow(want - cap)?;
                self.out.reserve_exact(want - self.out.len());
            }
            let room = self.out.capacity() - self.out.len();
            let n = (&mut self.reader)
                .take(room as u64)
                .read_to_end(&mut self.out)
                .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
            if self.out.len() > self.limit {
                return Err(DecompressError::TooLarge { limit: self.limit });
            }
            self.done = n == 0;
        }
        Ok(self.done)
    }

    /// Bytes decompressed so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The whole body; call after [`step`](Self::step) returned `true`.
    pub fn finish(self) -> Bytes {
        debug_assert!(self.done, "finish before the end of the body");
        Bytes::from(self.out)
    }
}

/// Decompress a whole body outside the memory budget (replay of bodies already accepted).
pub fn decompress(encoding: u8, body: &Bytes, limit: usize) -> Result<Bytes, DecompressError> {
    match Decoding::start(encoding, body, limit)? {
        Decoding::Plain(b) => Ok(b),
        Decoding::Inflate(mut inflater) => {
            let budget = crate::budget::MemoryBudget::new(usize::MAX);
            let mut hold = budget.empty();
            inflater.step(usize::MAX, &mut hold)?;
            Ok(inflater.finish())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;

    fn gzip(data: &[u8]) -> Bytes {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn bodies_round_trip_at_and_refuse_past_the_limit() {
        let data = vec![b'x'; 300_000];
        for body in [
            gzip(&data),
            Bytes::from(zstd::encode_all(&data[..], 3).unwrap()),
        ] {
            let encoding = if body[0] == 0x1f {
                ENCODING_GZIP
            } else {
                ENCODING_ZSTD
            };
            assert_eq!(decompress(encoding, &body, data.len()).unwrap(), data);
            assert_eq!(
                decompress(encoding, &body, data.len() - 1),
                Err(DecompressError::TooLarge {
                    limit: data.len() - 1
                })
            );
        }
        assert!(matches!(
            decompress(ENCODING_GZIP, &Bytes::from_static(b"nope"), 10),
            Err(DecompressError::Corrupt(_))
        ));
    }

    #[test]
    fn the_output_buffer_is_reserved_before_it_grows() {
        let data = vec![b'y'; 1 << 20];
        let body = gzip(&data);
        let budget = MemoryBudget::new(512 << 10);
        let mut hold = budget.empty();
        let Decoding::Inflate(mut inflater) =
            Decoding::start(ENCODING_GZIP, &body, 4 << 20).unwrap()
        else {
            panic!("gzip inflates")
        };
        // Inline step: stops once 100 KB are out, within what it reserved.
        assert!(!inflater.step(100_000, &mut hold).unwrap());
        assert!(inflater.len() >= 100_000 && hold.bytes() >= inflater.len());
        // The rest needs more than the budget has: refused, nothing reserved beyond the limit.
        assert_eq!(
            inflater.step(usize::MAX, &mut hold),
            Err(DecompressError::OverBudget(OverBudget {
                limit_bytes: 512 << 10
            }))
        );
        assert!(budget.used_bytes() <= 512 << 10);
        drop(hold);
        assert_eq!(budget.used_bytes(), 0);
    }
}
