//! Session ids and the store keys derived from them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use rand::rngs::{StdRng, SysRng};
use rand::{Rng as _, SeedableRng as _, TryRng as _};
use sha2::{Digest as _, Sha256};

use crate::error::SessionError;

/// Bytes of entropy in a session id: 256 bits, twice what OWASP asks for (128).
const ID_BYTES: usize = 32;
/// Length of an id in its text form: unpadded base64url of [`ID_BYTES`].
pub(crate) const ID_TEXT_LEN: usize = 43;

/// A session id: 256 random bits, shown as 43 characters of unpadded base64url.
///
/// The id only ever travels inside the signed cookie; stores see its [`StoreKey`]
/// (a SHA-256 hash), so a leaked list of store keys cannot be replayed as cookies.
/// `Debug` prints only a short prefix so that ids do not end up whole in logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_BYTES]);

impl SessionId {
    /// The id's text form (unpadded base64url), as carried in the cookie.
    pub fn to_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses the text form; `None` unless it is exactly 43 base64url characters.
    pub fn parse(text: &str) -> Option<Self> {
        decode_43(text.as_bytes()).map(Self)
    }

    /// [`parse`](Self::parse) of the raw bytes of a header.
    pub(crate) fn parse_bytes(text: &[u8]) -> Option<Self> {
        decode_43(text).map(Self)
    }

    /// The key a store files this session under: SHA-256 of the id.
    pub fn store_key(&self) -> StoreKey {
        StoreKey(Sha256::digest(self.0).into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_text();
        write!(f, "SessionId({}…)", text.get(..6).unwrap_or(""))
    }
}

/// Base64url character values shifted into place for each of the four characters of a
/// group (`DECODE[i]` for the `i`-th character: 18, 12, 6 or 0 bits up), `INVALID` for every
/// other byte. Four lookups ORed together give a group's 24 bits, and one test of the
/// accumulated ORs at the end catches any invalid character.
static DECODE: [[u32; 256]; 4] = [
    decode_table(18),
    decode_table(12),
    decode_table(6),
    decode_table(0),
];
/// Above every valid 24-bit group.
const INVALID: u32 = 1 << 31;

const fn decode_table(shift: u32) -> [u32; 256] {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = (i as u32) << shift;
        i += 1;
    }
    table
}

/// The 24 bits of up to four characters (missing ones count as zero bits).
fn decode_group(chars: &[u8]) -> u32 {
    chars
        .iter()
        .zip(&DECODE)
        .fold(0, |bits, (&c, table)| bits | table[usize::from(c)])
}

/// Decodes the 43 characters of unpadded base64url that carry 32 bytes (an id or an
/// HMAC-SHA256 tag). Strict: any other length or character, or a last character whose two
/// unused bits are not zero (a non-canonical spelling of the same bytes), gives `None`.
///
/// Written out instead of calling the `base64` crate's general decoder: it runs twice on
/// every request (id and signature), and this fixed-size form (one lookup and one OR per
/// character, one validity test at the end) costs a fraction of it.
pub(crate) fn decode_43(text: &[u8]) -> Option<[u8; 32]> {
    let text: &[u8; ID_TEXT_LEN] = text.try_into().ok()?;
    let (groups, tail) = text.split_at(40);
    let mut out = [0_u8; 32];
    let (body, last) = out.split_at_mut(30);
    // ORed over every group: the invalid bit shows if any character was invalid.
    let mut seen = 0_u32;
    // Four characters carry three bytes.
    for (chars, bytes) in groups.chunks_exact(4).zip(body.chunks_exact_mut(3)) {
        let bits = decode_group(chars);
        seen |= bits;
        if let Some(three) = bits.to_be_bytes().get(1..) {
            bytes.copy_from_slice(three);
        }
    }
    // The last three carry 18 bits: two bytes and two bits that must be zero.
    let bits = decode_group(tail);
    if (seen | bits) & INVALID != 0 || bits & 0xc0 != 0 {
        return None;
    }
    if let Some(two) = bits.to_be_bytes().get(1..3) {
        last.copy_from_slice(two);
    }
    Some(out)
}

/// Where a store keeps a session: the SHA-256 hash of its [`SessionId`].
///
/// `Display` gives the 64-character lower-case hex form that the Redis store puts after its
/// key prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl std::hash::Hash for StoreKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // A SHA-256 output: any 8 of its bytes are already uniformly distributed.
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

impl StoreKey {
    /// The raw 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({self})")
    }
}

/// Makes new session ids.
///
/// [`new`](Self::new) reads every id straight from the operating system's CSPRNG; that is
/// what production must use. [`seeded`](Self::seeded) gives a reproducible sequence
/// for tests and benchmarks only: anyone who knows the seed can predict every id.
#[derive(Debug)]
pub struct SessionIdGenerator {
    source: IdSource,
}

#[derive(Debug)]
enum IdSource {
    Os,
    Seeded(Box<Mutex<StdRng>>),
}

impl SessionIdGenerator {
    /// Ids from the OS CSPRNG (`getrandom`).
    pub fn new() -> Self {
        Self {
            source: IdSource::Os,
        }
    }

    /// A deterministic generator (ChaCha12 seeded with `seed`) for tests and benchmarks.
    pub fn seeded(seed: u64) -> Self {
        Self {
            source: IdSource::Seeded(Box::new(Mutex::new(StdRng::seed_from_u64(seed)))),
        }
    }

    /// A new id; fails only if the operating system's random source does.
    pub fn generate(&self) -> Result<SessionId, SessionError> {
        let mut bytes = [0_u8; ID_BYTES];
        match &self.source {
            IdSource::Os => SysRng
                .try_fill_bytes(&mut bytes)
                .map_err(|error| SessionError::Random(error.to_string()))?,
            IdSource::Seeded(rng) => rng.lock().fill_bytes(&mut bytes),
        }
        Ok(SessionId(bytes))
    }
}

impl Default for SessionIdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_url_safe() {
        let id = SessionIdGenerator::new().generate().unwrap();
        let text = id.to_text();
        assert_eq!(text.len(), ID_TEXT_LEN);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(SessionId::parse(&text), Some(id));
    }

    #[test]
    fn parse_rejects_wrong_length_and_alphabet() {
        assert_eq!(SessionId::parse(""), None);
        assert_eq!(SessionId::parse(&"A".repeat(42)), None);
        assert_eq!(SessionId::parse(&"A".repeat(44)), None);
        assert_eq!(SessionId::parse(&format!("{}+", "A".repeat(42))), None);
        assert_eq!(SessionId::parse(&format!("{}.", "A".repeat(42))), None);
    }

    #[test]
    fn decode_43_matches_the_base64_crate() {
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..200 {
            let mut bytes = [0_u8; 32];
            rng.fill_bytes(&mut bytes);
            let text = URL_SAFE_NO_PAD.encode(bytes);
            assert_eq!(decode_43(text.as_bytes()), Some(bytes), "{text}");
            // A low bit set in the last character spells the same bytes non-canonically.
            let mut noncanonical = text.into_bytes();
            let last = noncanonical.len() - 1;
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let value = alphabet
                .iter()
                .position(|c| *c == noncanonical[last])
                .unwrap();
            noncanonical[last] = alphabet[value | 1];
            assert_eq!(decode_43(&noncanonical), None);
        }
        for bad in [&b"+"[..], b"/", b"=", b".", b" ", &[0x80]] {
            let mut text = *b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
            for position in [0, 17, 39, 40, 42] {
                let mut copy = text;
                copy[position] = bad[0];
                assert_eq!(decode_43(&copy), None);
            }
            text[0] = b'A';
            assert!(decode_43(&text).is_some());
        }
    }

    #[test]
    fn os_ids_differ_and_seeded_ids_repeat() {
        let os = SessionIdGenerator::new();
        assert_ne!(os.generate().unwrap(), os.generate().unwrap());
        let a = SessionIdGenerator::seeded(7);
        let b = SessionIdGenerator::seeded(7);
        let first = a.generate().unwrap();
        assert_eq!(first, b.generate().unwrap());
        assert_ne!(first, a.generate().unwrap());
    }

    #[test]
    fn store_key_is_sha256_of_the_id_not_the_id() {
        let id = SessionIdGenerator::seeded(1).generate().unwrap();
        let key = id.store_key().to_string();
        assert_eq!(key.len(), 64);
        assert!(!key.contains(&id.to_text()));
        let expected: [u8; 32] = Sha256::digest(id.0).into();
        assert_eq!(id.store_key().as_bytes(), &expected);
    }

    #[test]
    fn debug_does_not_print_the_whole_id() {
        let id = SessionIdGenerator::seeded(3).generate().unwrap();
        assert!(!format!("{id:?}").contains(&id.to_text()));
    }
}
