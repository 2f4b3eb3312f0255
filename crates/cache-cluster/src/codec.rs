//! Stored value format: a 16-byte header, then the value in postcard (compact serde binary).
//!
//! ```text
//! 0..2   magic b"HC"
//! 2      format version (1)
//! 3      kind: 0 = value, 1 = cached `None` (negative entry)
//! 4..12  fresh until, unix milliseconds, little endian
//! 12..16 last load duration in milliseconds (XFetch's delta), little endian
//! 16..   postcard payload (empty for a negative entry)
//! ```
//! Anything else under a cache key (another format, another program's value, truncation) decodes
//! to [`DecodeError`], which the cache turns into a miss plus a metric.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

const MAGIC: &[u8; 2] = b"HC";
const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 16;
const KIND_VALUE: u8 = 0;
const KIND_NONE: u8 = 1;

/// Metadata stored in front of every value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// `true` when the entry caches a loader's `None`.
    pub(crate) negative: bool,
    /// Unix milliseconds after which the value is stale.
    pub(crate) fresh_until_ms: u64,
    /// How long the load that produced the value took, in milliseconds.
    pub(crate) delta_ms: u32,
}

/// Why stored bytes are not a value of this cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Too short, wrong magic, unknown format version or kind.
    Foreign,
    /// The header is ours, the payload does not deserialize as the requested type.
    Payload,
}

impl Header {
    pub(crate) fn new(negative: bool, ttl: Duration, load_time: Duration) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            negative,
            fresh_until_ms: now_ms().saturating_add(ttl_ms),
            delta_ms: u32::try_from(load_time.as_millis()).unwrap_or(u32::MAX),
        }
    }

    /// Time left until the value is stale (zero when it already is).
    pub(crate) fn remaining(&self) -> Duration {
        Duration::from_millis(self.fresh_until_ms.saturating_sub(now_ms()))
    }

    pub(crate) fn is_fresh(&self) -> bool {
        now_ms() < self.fresh_until_ms
    }
}

/// Encodes `value` (or a negative entry when `value` is `None`).
pub(crate) fn encode<T: Serialize>(
    value: Option<&T>,
    header: Header,
) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(if header.negative {
        KIND_NONE
    } else {
        KIND_VALUE
    });
    out.extend_from_slice(&header.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&header.delta_ms.to_le_bytes());
    match value {
        Some(value) => postcard::to_io(value, out),
        None => Ok(out),
    }
}

/// Reads the header only.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let header = bytes.get(..HEADER_LEN).ok_or(DecodeError::Foreign)?;
    let (magic, rest) = header.split_at(2);
    let (&[version, kind], rest) = rest.split_first_chunk::<2>().ok_or(DecodeError::Foreign)?;
    if magic != MAGIC || version != FORMAT_VERSION {
        return Err(DecodeError::Foreign);
    }
    let negative = match kind {
        KIND_VALUE => false,
        KIND_NONE => true,
        _ => return Err(DecodeError::Foreign),
    };
    let (fresh, delta) = rest.split_first_chunk::<8>().ok_or(DecodeError::Foreign)?;
    let delta: [u8; 4] = delta.try_into().map_err(|_| DecodeError::Foreign)?;
    Ok(Header {
        negative,
        fresh_until_ms: u64::from_le_bytes(*fresh),
        delta_ms: u32::from_le_bytes(delta),
    })
}

/// Decodes a whole entry: the header and, unless negative, the value.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(Header, Option<T>), DecodeError> {
    let header = decode_header(bytes)?;
    if header.negative {
        return Ok((header, None));
    }
    let payload = bytes.get(HEADER_LEN..).ok_or(DecodeError::Foreign)?;
    let value = postcard::from_bytes(payload).map_err(|_| DecodeError::Payload)?;
    Ok((header, Some(value)))
}

/// Unix milliseconds (coarse: see [`crate::clock`]).
pub(crate) fn now_ms() -> u64 {
    crate::clock::unix_now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
    }

    #[test]
    fn round_trips_values_and_negative_entries() {
        let user = User {
            id: 7,
            name: "ada".into(),
        };
        let header = Header::new(false, Duration::from_secs(60), Duration::from_millis(12));
        let bytes = encode(Some(&user), header).unwrap();
        let (h, v) = decode::<User>(&bytes).unwrap();
        assert_eq!(h, header);
        assert_eq!(v, Some(user));
        assert!(h.is_fresh());
        assert!(h.remaining() > Duration::from_secs(59));

        let header = Header::new(true, Duration::from_secs(1), Duration::ZERO);
        let bytes = encode::<User>(None, header).unwrap();
        assert_eq!(decode::<User>(&bytes).unwrap(), (header, None));
    }

    #[test]
    fn foreign_or_corrupt_bytes_are_errors_not_panics() {
        assert_eq!(decode::<u64>(b""), Err(DecodeError::Foreign));
        assert_eq!(
            decode::<u64>(b"hello world, not ours"),
            Err(DecodeError::Foreign)
        );
        let good = encode(
            Some(&5u64),
            Header::new(false, Duration::from_secs(1), Duration::ZERO),
        )
        .unwrap();
        let mut other_version = good.clone();
        other_version[2] = 9;
        assert_eq!(decode::<u64>(&other_version), Err(DecodeError::Foreign));
        let mut other_kind = good.clone();
        other_kind[3] = 7;
        assert_eq!(decode::<u64>(&other_kind), Err(DecodeError::Foreign));
        // Our header, a payload of another type.
        assert_eq!(
            decode::<String>(&good[..HEADER_LEN + 1]).map(|(_, v)| v),
            Err(DecodeError::Payload)
        );
        let truncated = encode(
            Some(&"long string".to_owned()),
            Header::new(false, Duration::ZERO, Duration::ZERO),
        )
        .unwrap();
        assert_eq!(
            decode::<String>(&truncated[..truncated.len() - 3]).map(|(_, v)| v),
            Err(DecodeError::Payload)
        );
    }
}
