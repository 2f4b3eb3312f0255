//! SHA-256 and HMAC-SHA256 straight over the compression function, for the short messages
//! hashed on every request (the store key, the cookie's signature): one or two blocks each,
//! where the `digest` traits' buffering, finalizing and state copies cost about as much as the
//! blocks themselves. Checked against the `sha2` and `hmac` crates in the tests.

use sha2::block_api::compress256;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK_LEN: usize = 64;
/// Where the message length goes in the last block.
const LENGTH_AT: usize = BLOCK_LEN - 8;

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    finish(IV, 0, parts)
}

/// Hashes `parts` on from `state` (which has absorbed `absorbed` bytes, a whole number of
/// blocks), pads, and returns the digest.
fn finish(mut state: [u32; 8], absorbed: u64, parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0_u8; BLOCK_LEN];
    let mut filled = 0;
    let mut total = absorbed;
    for part in parts {
        total = total.wrapping_add(part.len() as u64);
        let mut rest = *part;
        while !rest.is_empty() {
            let free = block.get_mut(filled..).unwrap_or_default();
            let take = free.len().min(rest.len());
            let (now, later) = rest.split_at(take);
            if let Some(target) = free.get_mut(..take) {
                target.copy_from_slice(now);
            }
            rest = later;
            filled += take;
            if filled == BLOCK_LEN {
                compress256(&mut state, &[block]);
                filled = 0;
            }
        }
    }
    // `filled` < 64 here: the 0x80 byte fits, the rest of the block is zeroed.
    if let Some((marker, tail)) = block.get_mut(filled..).and_then(|b| b.split_first_mut()) {
        *marker = 0x80;
        tail.fill(0);
    }
    if filled >= LENGTH_AT {
        // No room for the length: it goes into a block of its own.
        compress256(&mut state, &[block]);
        block = [0; BLOCK_LEN];
    }
    if let Some(length) = block.get_mut(LENGTH_AT..) {
        length.copy_from_slice(&total.wrapping_mul(8).to_be_bytes());
    }
    compress256(&mut state, &[block]);
    let mut digest = [0_u8; 32];
    for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

/// An HMAC-SHA256 key (RFC 2104) with its inner and outer padded key blocks already absorbed,
/// so a MAC costs only the message's blocks and the outer block.
#[derive(Clone)]
pub(crate) struct HmacKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl HmacKey {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let mut key = [0_u8; BLOCK_LEN];
        if secret.len() > BLOCK_LEN {
            // Longer keys are hashed first.
            let digest = sha256(&[secret]);
            if let Some(start) = key.get_mut(..digest.len()) {
                start.copy_from_slice(&digest);
            }
        } else if let Some(start) = key.get_mut(..secret.len()) {
            start.copy_from_slice(secret);
        }
        let (mut inner, mut outer) = (IV, IV);
        compress256(&mut inner, &[key.map(|b| b ^ 0x36)]);
        compress256(&mut outer, &[key.map(|b| b ^ 0x5c)]);
        Self { inner, outer }
    }

    /// The MAC of the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let inner = finish(self.inner, BLOCK_LEN as u64, parts);
        finish(self.outer, BLOCK_LEN as u64, &[&inner])
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, KeyInit as _, Mac as _};
    use sha2::{Digest as _, Sha256};

    use super::*;

    /// Bytes that differ from position to position.
    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn sha256_matches_the_sha2_crate_at_every_length_around_the_block_edges() {
        for len in 0..200 {
            let message = bytes(len, 7);
            let expected: [u8; 32] = Sha256::digest(&message).into();
            assert_eq!(sha256(&[&message]), expected, "length {len}");
            // Split anywhere: the same digest.
            for split in [0, len / 3, len / 2, len] {
                let (a, b) = message.split_at(split);
                assert_eq!(sha256(&[a, b]), expected, "length {len} split {split}");
            }
        }
        // FIPS 180-2 example: "abc".
        assert_eq!(
            sha256(&[b"abc"])[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "known answer"
        );
    }

    #[test]
    fn hmac_matches_the_hmac_crate_for_short_and_long_keys_and_messages() {
        for key_len in [32, 48, 63, 64, 65, 100, 200] {
            let secret = bytes(key_len, 3);
            let key = HmacKey::new(&secret);
            for len in [0, 1, 3, 47, 55, 56, 63, 64, 65, 119, 120, 200] {
                let message = bytes(len, 11);
                let mut reference = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
                reference.update(&message);
                let expected: [u8; 32] = reference.finalize().into_bytes().into();
                let (a, b) = message.split_at(len / 2);
                assert_eq!(key.mac(&[a, b]), expected, "key {key_len} message {len}");
            }
        }
    }

    #[test]
    fn hmac_rfc_4231_test_case_2() {
        let key = HmacKey::new(b"Jefe");
        let mac = key.mac(&[b"what do ya want ", b"for nothing?"]);
        assert_eq!(mac[..8], [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e]);
    }
}
