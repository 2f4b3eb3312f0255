//! The gateway's checks of the ids a client sends (`herd_gateway::observe`): the W3C
//! `traceparent` and the request id. Whatever the bytes, they answer without panicking, and
//! what they accept is what may be passed on: a traceparent of the recommendation's shape
//! (lowercase hex fields, dashes where they belong, ids not all zeros), a request id of at most
//! 128 characters none of which could break a log line.
#![no_main]

use herd_gateway::observe::{MAX_REQUEST_ID_LEN, valid_request_id, valid_traceparent};
use libfuzzer_sys::fuzz_target;

fn lower_hex(field: &[u8]) -> bool {
    field
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fuzz_target!(|data: &[u8]| {
    if valid_traceparent(data) {
        assert!(data.len() >= 55, "too short: {data:?}");
        assert!(data.len() == 55 || data[55] == b'-', "{data:?}");
        assert_ne!(&data[..2], b"ff");
        assert!(data[..2] != *b"00" || data.len() == 55, "{data:?}");
        for (at, len) in [(0, 2), (3, 32), (36, 16), (53, 2)] {
            assert!(lower_hex(&data[at..at + len]), "{data:?}");
        }
        assert!(data[3..35].iter().any(|&b| b != b'0'));
        assert!(data[36..52].iter().any(|&b| b != b'0'));
    }
    if valid_request_id(data) {
        assert!(!data.is_empty() && data.len() <= MAX_REQUEST_ID_LEN);
        assert!(http::HeaderValue::from_bytes(data).is_ok());
        assert!(
            data.iter()
                .all(|b| b.is_ascii_graphic() && !b"\"\\'<>".contains(b))
        );
    }
});
