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

use std::any::{Any, TypeId};
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

/// [`decode`] for bytes the caller owns: a `Vec<u8>` value is taken out of them in place.
///
/// serde has no byte-string specialisation for `Vec<u8>`, so postcard hands it over one element
/// at a time (about 16 instructions a byte, half the client-side cost of a 100-byte GET). The
/// encoding is the same as a byte string (varint length, then the bytes), so a `Vec<u8>` is
/// read here directly; every other type goes through serde.
pub(crate) fn decode_owned<T: DeserializeOwned + 'static>(
    mut bytes: Vec<u8>,
) -> Result<(Header, Option<T>), DecodeError> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let header = decode_header(&bytes)?;
        if header.negative {
            return Ok((header, None));
        }
        let payload = bytes.get(HEADER_LEN..).ok_or(DecodeError::Foreign)?;
        let (len, used) = read_varint(payload).ok_or(DecodeError::Payload)?;
        let start = HEADER_LEN + used;
        let end = start.checked_add(len).ok_or(DecodeError::Payload)?;
        if end > bytes.len() {
            return Err(DecodeError::Payload);
        }
        bytes.truncate(end);
        bytes.drain(..start);
        let mut as_bytes = Some(bytes);
        let value = (&mut as_bytes as &mut dyn Any)
            .downcast_mut::<Option<T>>()
            .and_then(Option::take);
        return Ok((header, value));
    }
    decode(&bytes)
}

/// postcard's `usize` varint (LEB128, at most 10 bytes): the value and the bytes it used.
fn read_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().take(10).enumerate() {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && byte > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some((usize::try_from(value).ok()?, i + 1));
        }
    }
    None
}

/// An identity of one stored value (header and payload): equal bytes, equal fingerprints.
///
/// An invalidation names the fingerprint of the value its write stored, so an instance whose
/// L1 already holds that very value (it read it from Redis after the write, before the message
/// came) keeps it. foldhash with a fixed seed: the same on every instance built with the same
/// foldhash; where two instances compute different ones (another foldhash version during an
/// upgrade), the entry is dropped, as every invalidation did before. Not a security boundary:
/// whoever can publish invalidations can already drop every entry.
pub(crate) fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Any constant: it only has to be the same everywhere.
    const SEED: u64 = 0x6865_7264_6361_6368; // "herdcach"
    let mut hasher = foldhash::fast::FixedState::with_seed(SEED).build_hasher();
    hasher.write(bytes);
    hasher.finish()
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
    fn byte_vectors_decode_in_place_like_postcard() {
        let header = Header::new(false, Duration::from_secs(60), Duration::ZERO);
        for len in [0usize, 1, 100, 127, 128, 300, 16_383, 16_384, 70_000] {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = encode(Some(&value), header).unwrap();
            let fast = decode_owned::<Vec<u8>>(bytes.clone()).unwrap();
            assert_eq!(fast, decode::<Vec<u8>>(&bytes).unwrap());
            assert_eq!(fast, (header, Some(value)));
            // Trailing bytes are ignored, as postcard does; missing ones are an error.
            let mut longer = bytes.clone();
            longer.push(9);
            assert_eq!(decode_owned::<Vec<u8>>(longer).unwrap().1, fast.1);
            if len > 0 {
                assert_eq!(
                    decode_owned::<Vec<u8>>(bytes[..bytes.len() - 1].to_vec()),
                    Err(DecodeError::Payload)
                );
            }
        }
        let negative = encode::<Vec<u8>>(None, Header::new(true, Duration::ZERO, Duration::ZERO));
        assert_eq!(decode_owned::<Vec<u8>>(negative.unwrap()).unwrap().1, None);
        assert_eq!(
            decode_owned::<Vec<u8>>(b"not ours".to_vec()),
            Err(DecodeError::Foreign)
        );
        // An overlong length is an error, not a huge allocation.
        let mut overlong = encode(Some(&Vec::<u8>::new()), header).unwrap();
        overlong.truncate(HEADER_LEN);
        overlong.extend_from_slice(&[0xff; 10]);
        assert_eq!(decode_owned::<Vec<u8>>(overlong), Err(DecodeError::Payload));
        // Other types still go through serde.
        let bytes = encode(Some(&"text".to_owned()), header).unwrap();
        assert_eq!(
            decode_owned::<String>(bytes).unwrap().1.as_deref(),
            Some("text")
        );
    }

    #[test]
    fn fingerprints_tell_stored_values_apart() {
        let header = Header::new(false, Duration::from_secs(60), Duration::ZERO);
        let one = encode(Some(&1u32), header).unwrap();
        let two = encode(Some(&2u32), header).unwrap();
        assert_eq!(fingerprint(&one), fingerprint(&one.clone()));
        assert_ne!(fingerprint(&one), fingerprint(&two));
        // The same value written again (a later expiry) is another write.
        let later = Header {
            fresh_until_ms: header.fresh_until_ms + 1,
            ..header
        };
        assert_ne!(
            fingerprint(&one),
            fingerprint(&encode(Some(&1u32), later).unwrap())
        );
        // The same in every process and run (pinned for this foldhash version: instances
        // built with another compute other fingerprints, and drop entries on each other's
        // invalidations as before).
        assert_eq!(fingerprint(b"herd"), 8_001_203_175_419_703_135);
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
