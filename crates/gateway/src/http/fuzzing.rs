//! Entry points for the coverage-guided fuzz targets in the workspace's `fuzz/` directory
//! (feature `fuzzing`). Not a stable API. Each runs herd's own HTTP/1.1 code on arbitrary input:
//! the response-head parser and the body decoders the upstream reads endpoints' answers with,
//! and the request-head writer it forwards requests with. What must hold is checked here where
//! the parts are visible, and a violation comes back as an error for the target to report; a
//! panic inside is a crash the fuzzer finds as well.

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{Request, StatusCode};

use super::h1::{
    ChunkedDecoder, Decoded, Forwarding, Framing, Head, RequestFraming, end_head, parse_head,
    write_head, write_line,
};
use super::headers::{forbidden_in_trailers, is_dependency_signal, is_hop_by_hop, valid_host};
use super::upstream::{HttpUpstream, HttpUpstreamConfig, set_by_proxy};

/// The `Host` the fuzzed requests' endpoint has.
pub const ENDPOINT: &str = "127.0.0.1:9";

/// Reads `input` as an endpoint's answer to a request (`head_request`: to a `HEAD`), arriving in
/// pieces cut at the offsets `cuts` gives (each byte a piece's length, 0 read as 1): the final
/// response head as the upstream parses it, then its body as the head frames it. The same input
/// whole must read the same. Checked: the head keeps no hop-by-hop field, no dependency signal
/// but on a 5xx, at most one `Content-Length` that agrees with the framing; a chunked body's
/// data is no longer than its input, its trailers carry no forbidden field, and reading it in
/// pieces gives what reading it whole gives.
///
/// # Errors
/// The first property that failed, described.
pub fn response(input: &[u8], cuts: &[u8], head_request: bool) -> Result<(), String> {
    let whole = read_response(input, &[], head_request)?;
    let pieces = read_response(input, cuts, head_request)?;
    if whole != pieces {
        return Err(format!(
            "read whole {whole:?} but in pieces {pieces:?} (cuts {cuts:?})"
        ));
    }
    Ok(())
}

/// What reading a response gave, comparable between readings.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// The head did not parse.
    Invalid,
    /// The input ended in the head.
    Partial,
    Head {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        keep_alive: bool,
        body: Vec<u8>,
        /// The body ended (by its length or last chunk) within the input.
        ended: bool,
        body_error: bool,
        trailers: Vec<(String, Vec<u8>)>,
    },
}

/// Pieces of `input` cut as `cuts` says (the rest in one piece).
fn pieces<'a>(input: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    for &cut in cuts {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(usize::from(cut.max(1)).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

fn read_response(input: &[u8], cuts: &[u8], head_request: bool) -> Result<Read, String> {
    let mut buf = BytesMut::new();
    let mut pieces = pieces(input, cuts).into_iter();
    // The head: parsed again as each piece arrives, as the connection does. Interim 1xx heads
    // are skipped, and a 101 refused, as `Conn` does.
    let head = loop {
        match parse_head(&mut buf, head_request) {
            Err(_) => return Ok(Read::Invalid),
            Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                return Ok(Read::Invalid);
            }
            Ok(Some(head)) if head.status.is_informational() => {}
            Ok(Some(head)) => break head,
            Ok(None) => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return Ok(Read::Partial),
            },
        }
    };
    check_head(&head)?;
    let headers = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let mut body = Vec::new();
    let mut ended = false;
    let mut body_error = false;
    let mut trailers = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            let mut left = n;
            loop {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                body.extend_from_slice(&buf.split_to(take));
                left -= take as u64;
                if left == 0 {
                    ended = true;
                    break;
                }
                match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => break,
                }
            }
        }
        Framing::Chunked(mut decoder) => loop {
            match decode_available(&mut decoder, &mut buf, &mut body) {
                Err(()) => {
                    body_error = true;
                    break;
                }
                Ok(true) => {
                    ended = true;
                    for (name, value) in decoder.take_trailers().iter().flatten() {
                        if forbidden_in_trailers(name) {
                            return Err(format!("trailer {name} passed on"));
                        }
                        trailers.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
                    }
                    break;
                }
                Ok(false) => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => break,
                },
            }
        },
        Framing::Close | Framing::Done | Framing::Upgraded | Framing::Foreign => {
            body.extend_from_slice(&buf);
            for piece in pieces {
                body.extend_from_slice(piece);
            }
        }
    }
    if body.len() > input.len() {
        return Err(format!(
            "{} body bytes from {} input bytes",
            body.len(),
            input.len()
        ));
    }
    Ok(Read::Head {
        status: head.status.as_u16(),
        headers,
        keep_alive: head.keep_alive,
        body,
        ended,
        body_error,
        trailers,
    })
}

/// Decodes what `buf` holds; `Ok(true)` at the body's end.
fn decode_available(
    decoder: &mut ChunkedDecoder,
    buf: &mut BytesMut,
    body: &mut Vec<u8>,
) -> Result<bool, ()> {
    loop {
        match decoder.decode(buf) {
            Err(_) => return Err(()),
            Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
            Ok(Decoded::NeedMore) => return Ok(false),
            Ok(Decoded::Done) => return Ok(true),
        }
    }
}

fn check_head(head: &Head) -> Result<(), String> {
    let mut lengths = 0;
    for (name, value) in &head.headers {
        // A `101` keeps the protocol it switches to, for the client's own `101`.
        let switched = *name == http::header::UPGRADE && head.status == 101;
        if is_hop_by_hop(name) && !switched {
            return Err(format!("hop-by-hop {name} kept"));
        }
        if is_dependency_signal(name) && !head.status.is_server_error() {
            return Err(format!("dependency signal kept on a {}", head.status));
        }
        if *name == CONTENT_LENGTH {
            lengths += 1;
            let framed = match head.framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            let said = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            // A bodiless answer (HEAD, 204, 304) keeps the length it would have had.
            let bodiless = matches!(head.framing, Framing::Length(0));
            if said.is_none() || (said != framed && !bodiless) {
                return Err(format!("Content-Length {value:?} with {:?}", head.framing));
            }
        }
    }
    if lengths > 1 {
        return Err(format!("{lengths} Content-Length fields forwarded"));
    }
    Ok(())
}

/// An upstream with no endpoints: its request-head writer needs nothing else. (The default
/// configuration has no endpoints, no active health and nothing to refuse.)
fn upstream() -> Option<&'static HttpUpstream> {
    static UPSTREAM: OnceLock<Option<HttpUpstream>> = OnceLock::new();
    UPSTREAM
        .get_or_init(|| HttpUpstream::from_config(&HttpUpstreamConfig::default()).ok())
        .as_ref()
}

/// The head [`HttpUpstream`] sends to an endpoint at [`ENDPOINT`] for `req` (with a body of
/// `body_len` bytes, `None` for one of unknown length), from `peer` over TLS or not: the head
/// written before the pick and the endpoint's part, as a request without retries goes out.
///
/// # Errors
/// The `reason` label of a request refused for its `Host` (answered 400), or `no upstream` if
/// the default configuration were refused.
pub fn request_head(
    req: &mut Request<()>,
    peer: Option<SocketAddr>,
    tls: bool,
    body_len: Option<u64>,
) -> Result<Vec<u8>, &'static str> {
    let mut upstream = upstream().ok_or("no upstream")?.clone().with_tls(tls);
    if let Some(peer) = peer {
        upstream = upstream.with_peer(peer);
    }
    let prefix = upstream.prefix(req).map_err(|e| e.describe())?;
    let mut out = prefix.bytes.to_vec();
    if !prefix.has_host {
        write_line(&mut out, b"host", ENDPOINT.as_bytes());
    }
    end_head(&mut out, RequestFraming::new(req.method(), body_len));
    Ok(out)
}

/// The head written for a request sent to an endpoint directly (without a head written before
/// the pick), with the forwarding headers an endpoint at [`ENDPOINT`] sets.
pub fn direct_request_head(req: &Request<()>, body_len: Option<u64>) -> Vec<u8> {
    let client_host = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(HeaderValue::as_bytes)
        })
        .filter(|host| valid_host(host));
    let forwarding = Forwarding {
        host: Some(ENDPOINT.as_bytes()),
        proto: b"http",
        forwarded_host: client_host,
    };
    let mut out = Vec::new();
    write_head(
        &mut out,
        req.method(),
        req.uri(),
        req.headers(),
        &forwarding,
    );
    end_head(&mut out, RequestFraming::new(req.method(), body_len));
    out
}

/// Whether [`request_head`] drops the client's `name` (it sets its own, frames the message
/// itself, or the field is hop-by-hop or meant for the proxy); fields the client's `Connection`
/// names are dropped too.
pub fn dropped_from_requests(name: &HeaderName) -> bool {
    set_by_proxy(name)
}

/// Whether `value` passes herd's `Host` check.
pub fn host_is_valid(value: &[u8]) -> bool {
    valid_host(value)
}
