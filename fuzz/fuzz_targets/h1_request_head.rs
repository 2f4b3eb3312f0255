//! The upstream's request-head writer: an arbitrary `http::Request` (method, URI, version and
//! headers built from the fuzzer's bytes, kept where `http` accepts them) is written as
//! `HttpUpstream` writes it for an endpoint, then parsed back with `httparse`. It must parse
//! whole, with no CR or LF inside a line; carry the method, the origin-form target and every
//! header the client sent that a proxy keeps, in order and unchanged; carry the headers the
//! proxy sets exactly once (`Host`, `X-Forwarded-Proto` from the connection) and never
//! `Forwarded` or `Proxy-Authorization`; and be refused (400) exactly when RFC 9112 §3.2 says,
//! by a `Host` check written here again from the RFC's grammar. The head written for a request
//! sent to an endpoint directly is parsed back too.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use herd_gateway::http::fuzzing;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use libfuzzer_sys::fuzz_target;

/// Header names worth meeting often; any other comes as raw bytes.
const NAMES: &[&str] = &[
    "host",
    "connection",
    "forwarded",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "content-length",
    "transfer-encoding",
    "te",
    "keep-alive",
    "upgrade",
    "expect",
    "trailer",
    "proxy-connection",
    "cookie",
    "authorization",
    "accept",
    "x-custom",
];

#[derive(Debug, Arbitrary)]
enum Name<'a> {
    Known(u8),
    Raw(&'a [u8]),
}

#[derive(Debug, Arbitrary)]
enum MethodIn<'a> {
    Known(u8),
    Raw(&'a [u8]),
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    method: MethodIn<'a>,
    uri: &'a [u8],
    version: u8,
    headers: Vec<(Name<'a>, &'a [u8])>,
    peer: Option<([u8; 4], u16)>,
    tls: bool,
    body_len: Option<u64>,
}

fn build(input: &Input<'_>) -> Request<()> {
    let method = match input.method {
        MethodIn::Known(i) => [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ][usize::from(i) % 9]
            .clone(),
        MethodIn::Raw(bytes) => Method::from_bytes(bytes).unwrap_or(Method::GET),
    };
    let uri = Uri::try_from(input.uri).unwrap_or_else(|_| Uri::from_static("/"));
    let version = [
        Version::HTTP_09,
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_11,
        Version::HTTP_2,
    ][usize::from(input.version) % 5];
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    for (name, value) in &input.headers {
        let name = match name {
            Name::Known(i) => HeaderName::from_static(NAMES[usize::from(*i) % NAMES.len()]),
            Name::Raw(bytes) => match HeaderName::from_bytes(bytes) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    req
}

// ---- RFC 9112 §3.2 and RFC 3986 §3.2.2, written again -----------------------------------------

fn reg_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c)) {
            return false;
        }
        i += 1;
    }
    true
}

fn port_ok(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65_535)
}

fn ip_future(literal: &str) -> bool {
    let Some(rest) = literal.strip_prefix(['v', 'V']) else {
        return false;
    };
    let Some((version, tail)) = rest.split_once('.') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && !tail.is_empty()
        && tail
            .bytes()
            .all(|c| c == b':' || c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c))
}

fn reference_valid_host(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<Ipv6Addr>().is_err() && !ip_future(literal) {
            return false;
        }
        return after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
    }
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    !host.is_empty() && reg_name(host) && port.is_none_or(port_ok)
}

/// The refusal RFC 9112 §3.2 asks for, and the host the proxy acts on otherwise.
fn expected_host(req: &Request<()>) -> Result<Option<Vec<u8>>, &'static str> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all("host").iter().collect();
    if hosts.len() > 1 {
        return Err("host_repeated");
    }
    let header = hosts.first().map(|h| h.as_bytes());
    if header.is_some_and(|h| !reference_valid_host(h)) {
        return Err("host_invalid");
    }
    if let Some(authority) = req.uri().authority() {
        if !reference_valid_host(authority.as_str().as_bytes()) {
            return Err("host_invalid");
        }
        if header.is_none() && req.version() == Version::HTTP_11 {
            return Err("host_missing");
        }
        return Ok(Some(authority.as_str().as_bytes().to_vec()));
    }
    match header {
        Some(h) => Ok(Some(h.to_vec())),
        None if req.version() == Version::HTTP_11 => Err("host_missing"),
        None => Ok(None),
    }
}

// ---- parsing back ----------------------------------------------------------------------------

/// A written head parsed back: method, target, and every field in order.
struct Parsed {
    method: String,
    path: String,
    fields: Vec<(String, Vec<u8>)>,
}

fn parse_back(head: &[u8]) -> Parsed {
    // No CR or LF but in each line's CRLF.
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(head.get(i + 1), Some(&b'\n'), "bare CR at {i}: {head:?}"),
            b'\n' => assert!(i > 0 && head[i - 1] == b'\r', "bare LF at {i}: {head:?}"),
            _ => {}
        }
    }
    let mut slots = vec![httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut slots);
    let status = req
        .parse(head)
        .unwrap_or_else(|e| panic!("written head does not parse ({e}): {head:?}"));
    let httparse::Status::Complete(len) = status else {
        panic!("written head incomplete: {head:?}");
    };
    assert_eq!(len, head.len(), "bytes after the head: {head:?}");
    assert_eq!(req.version, Some(1), "not HTTP/1.1: {head:?}");
    Parsed {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        fields: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    }
}

fn trimmed(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let Some(start) = start else {
        return &[];
    };
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &value[start..end]
}

fn count(parsed: &Parsed, name: &str) -> usize {
    parsed.fields.iter().filter(|(n, _)| n == name).count()
}

fn origin_form(uri: &Uri) -> String {
    let mut target = match uri.path() {
        "" => "/".to_owned(),
        path => path.to_owned(),
    };
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    target
}

/// The fields the proxy writes itself.
const SET_BY_PROXY: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "content-length",
    "transfer-encoding",
];

fn check_framing(parsed: &Parsed, method: &Method, body_len: Option<u64>) {
    let lengths: Vec<&Vec<u8>> = parsed
        .fields
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v)
        .collect();
    let chunked = count(parsed, "transfer-encoding");
    match body_len {
        None => assert!(
            lengths.is_empty() && chunked == 1,
            "unsized body not chunked"
        ),
        Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            assert!(lengths.is_empty() && chunked == 0, "empty body framed");
        }
        Some(n) => {
            assert_eq!(chunked, 0, "sized body chunked");
            assert_eq!(lengths, [&n.to_string().into_bytes()], "Content-Length");
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let mut req = build(&input);
    let peer = input
        .peer
        .map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port));
    let expected = expected_host(&req);
    for value in req.headers().get_all("host") {
        assert_eq!(
            fuzzing::host_is_valid(value.as_bytes()),
            reference_valid_host(value.as_bytes()),
            "Host {value:?}"
        );
    }
    let original = req.clone();

    // The request sent to an endpoint directly: it parses back, with one Host and neither
    // Forwarded nor Proxy-Authorization.
    let direct = fuzzing::direct_request_head(&original, input.body_len);
    let parsed = parse_back(&direct);
    assert_eq!(count(&parsed, "host"), 1, "{direct:?}");
    assert_eq!(count(&parsed, "forwarded"), 0, "{direct:?}");
    assert_eq!(count(&parsed, "proxy-authorization"), 0, "{direct:?}");
    check_framing(&parsed, original.method(), input.body_len);

    let written = fuzzing::request_head(&mut req, peer, input.tls, input.body_len);
    let head = match (written, expected) {
        (Err(reason), Err(want)) => {
            assert_eq!(reason, want, "{original:?}");
            return;
        }
        (Ok(head), Ok(host)) => (head, host),
        (written, want) => panic!("wrote {written:?}, RFC 9112 says {want:?}: {original:?}"),
    };
    let (head, client_host) = head;
    let parsed = parse_back(&head);
    assert_eq!(parsed.method, original.method().as_str());
    assert_eq!(parsed.path, origin_form(original.uri()));

    // Every header a proxy keeps, in order and unchanged.
    let named: Vec<HeaderName> = original
        .headers()
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|n| HeaderName::from_bytes(trimmed(n)).ok())
        .collect();
    let kept: Vec<(String, Vec<u8>)> = original
        .headers()
        .iter()
        .filter(|(n, _)| !fuzzing::dropped_from_requests(n) && !named.contains(n))
        .map(|(n, v)| (n.as_str().to_owned(), trimmed(v.as_bytes()).to_vec()))
        .collect();
    let sent: Vec<(String, Vec<u8>)> = parsed
        .fields
        .iter()
        .filter(|(n, _)| !SET_BY_PROXY.contains(&n.as_str()))
        .map(|(n, v)| (n.clone(), trimmed(v).to_vec()))
        .collect();
    assert_eq!(sent, kept, "{head:?}");

    // What the proxy sets, once each, from what it knows.
    assert_eq!(count(&parsed, "host"), 1, "{head:?}");
    assert_eq!(count(&parsed, "forwarded"), 0);
    assert_eq!(count(&parsed, "proxy-authorization"), 0);
    let proto: Vec<&[u8]> = parsed
        .fields
        .iter()
        .filter(|(n, _)| n == "x-forwarded-proto")
        .map(|(_, v)| v.as_slice())
        .collect();
    let want: &[u8] = if input.tls { b"https" } else { b"http" };
    assert_eq!(proto, [want], "{head:?}");
    let forwarded_host: Vec<&[u8]> = parsed
        .fields
        .iter()
        .filter(|(n, _)| n == "x-forwarded-host")
        .map(|(_, v)| v.as_slice())
        .collect();
    match &client_host {
        Some(host) => assert_eq!(forwarded_host, [host.as_slice()], "{head:?}"),
        None => assert!(forwarded_host.is_empty(), "{head:?}"),
    }
    assert!(count(&parsed, "x-real-ip") <= 1);
    if peer.is_some() {
        assert_eq!(count(&parsed, "x-forwarded-for"), 1, "{head:?}");
    }
    check_framing(&parsed, original.method(), input.body_len);
});
