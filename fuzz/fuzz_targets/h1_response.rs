//! The upstream's HTTP/1.1 response reader: the response-head parser (`httparse` and herd's
//! framing rules) and the length and chunked body decoders, on an endpoint's arbitrary answer.
//! Input: one flag byte (bit 0: the request was `HEAD`; bits 4..8: how many cut bytes follow),
//! the cut bytes (lengths of the pieces the answer arrives in), then the answer. Reading it in
//! pieces must give what reading it whole gives, and the head and trailers must keep nothing
//! the proxy drops (see `herd_gateway::http::fuzzing::response`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let cut_count = usize::from(flags >> 4).min(rest.len());
    let (cuts, input) = rest.split_at(cut_count);
    if let Err(violation) = herd_gateway::http::fuzzing::response(input, cuts, head_request) {
        panic!("{violation}");
    }
});
