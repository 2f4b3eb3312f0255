//! herd-session's cookie parsing and signature check, through its public layer: requests with
//! arbitrary `Cookie` headers (and the session cookie of a real session, cut and spliced with
//! the fuzzer's bytes) go through a `SessionLayer` over a `MemoryStore` and one over the
//! encrypted cookie store, to a handler that reads the session. No request may fail or panic,
//! and a session's data may only be read by a request that carries that session's cookie
//! exactly as it was issued: a forged, altered or truncated one gives a fresh, empty session.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use herd_session::{Key, MemoryStore, Session, SessionLayer, SigningKeys};
use http::header::{COOKIE, HeaderValue, SET_COOKIE};
use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt, service_fn};

/// The handler: reads field `n` of the session (loading it, which parses and verifies the
/// cookie), and on request sets it.
async fn handler(req: Request<()>) -> Result<Response<String>, Infallible> {
    let Some(session) = req.extensions().get::<Session>().cloned() else {
        return Ok(Response::new("no session layer".into()));
    };
    let n = match session.get::<u64>("n").await {
        Ok(n) => n,
        Err(e) => {
            let mut res = Response::new(format!("session error: {e}"));
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return Ok(res);
        }
    };
    if req.headers().contains_key("x-set") {
        let _ = session.insert("n", 7_u64).await;
    }
    Ok(Response::new(format!("{n:?}")))
}

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<String>, Infallible>;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    /// One service per store, and the `name=value` of a session each issued.
    stores: Vec<(Svc, String)>,
}

fn keys() -> SigningKeys {
    let key = Key::from_bytes(&[7_u8; 64]).unwrap_or_else(|e| panic!("fixed key refused: {e}"));
    SigningKeys::new(key)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let layers = [
            SessionLayer::builder(MemoryStore::new(), keys())
                .build()
                .unwrap_or_else(|e| panic!("memory layer: {e}")),
            SessionLayer::cookie_store_builder(keys())
                .build()
                .unwrap_or_else(|e| panic!("cookie store layer: {e}")),
        ];
        let stores = layers
            .into_iter()
            .map(|layer| {
                let svc: Svc =
                    tower::util::BoxCloneSyncService::new(layer.layer(service_fn(handler)));
                // A real session with n = 7, and its cookie.
                let mut req = Request::new(());
                req.headers_mut()
                    .insert("x-set", HeaderValue::from_static("1"));
                let res = runtime
                    .block_on(svc.clone().oneshot(req))
                    .unwrap_or_else(|never| match never {});
                let cookie = res
                    .headers()
                    .get(SET_COOKIE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .unwrap_or_else(|| panic!("no session cookie issued"))
                    .to_owned();
                (svc, cookie)
            })
            .collect();
        Fixture { runtime, stores }
    })
}

#[derive(Debug, Arbitrary)]
enum CookieIn<'a> {
    /// Bytes as they come.
    Raw(&'a [u8]),
    /// The issued cookie with bytes put in at a place, some cut out after it.
    Spliced { at: u16, cut: u8, insert: &'a [u8] },
    /// The issued cookie, unchanged.
    Issued,
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    store: bool,
    /// Each a `Cookie` header.
    cookies: Vec<CookieIn<'a>>,
}

fuzz_target!(|input: Input<'_>| {
    let fixture = fixture();
    let (svc, issued) = &fixture.stores[usize::from(input.store)];
    let mut req = Request::new(());
    for cookie in &input.cookies {
        let bytes = match cookie {
            CookieIn::Raw(bytes) => bytes.to_vec(),
            CookieIn::Issued => issued.as_bytes().to_vec(),
            CookieIn::Spliced { at, cut, insert } => {
                let mut bytes = issued.as_bytes().to_vec();
                let at = usize::from(*at) % (bytes.len() + 1);
                let end = (at + usize::from(*cut)).min(bytes.len());
                bytes.splice(at..end, insert.iter().copied());
                bytes
            }
        };
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            req.headers_mut().append(COOKIE, value);
        }
    }
    // The issued `name=value` pair, with the whitespace RFC 6265 §5.2 trims around a name and
    // a value allowed: the same token either way.
    let (issued_name, issued_value) = issued.split_once('=').unwrap_or((issued.as_str(), ""));
    let presented = req.headers().get_all(COOKIE).iter().any(|v| {
        v.as_bytes().split(|b| *b == b';').any(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = parts.next().unwrap_or_default().trim_ascii();
            let value = parts.next().unwrap_or_default().trim_ascii();
            name == issued_name.as_bytes() && value == issued_value.as_bytes()
        })
    });
    let res = fixture
        .runtime
        .block_on(svc.clone().oneshot(req))
        .unwrap_or_else(|never| match never {});
    assert_eq!(res.status(), StatusCode::OK, "{}", res.body());
    if res.body() == "Some(7)" {
        assert!(
            presented,
            "a session's data read without its cookie: {:?}",
            input.cookies
        );
    }
});
