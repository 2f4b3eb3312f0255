//! A test app served by axum on 127.0.0.1:0 and a small HTTP client that keeps the cookie.
#![allow(dead_code, unreachable_pub)]

pub mod scenarios;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use bytes::Bytes;
use herd_session::{Key, Session, SessionError, SessionLayer, SigningKeys};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Mutex, Notify};

/// The keys every test instance shares (like a cluster reading them from configuration).
pub fn keys() -> SigningKeys {
    SigningKeys::new(Key::from_bytes(&[42; 32]).unwrap())
}

/// Requests parked inside a handler until the test releases them.
#[derive(Default)]
pub struct Holds {
    loaded: Mutex<HashMap<String, Arc<Notify>>>,
    release: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Holds {
    pub async fn pair(&self, name: &str) -> (Arc<Notify>, Arc<Notify>) {
        let loaded = self
            .loaded
            .lock()
            .await
            .entry(name.into())
            .or_default()
            .clone();
        let release = self
            .release
            .lock()
            .await
            .entry(name.into())
            .or_default()
            .clone();
        (loaded, release)
    }

    /// Waits until the held request `name` has loaded its session.
    pub async fn wait_loaded(&self, name: &str) {
        self.pair(name).await.0.notified().await;
    }

    /// Lets the held request `name` continue.
    pub async fn release(&self, name: &str) {
        self.pair(name).await.1.notify_one();
    }
}

async fn count(session: Session) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    session.insert("n", n).await?;
    Ok(n.to_string())
}

async fn peek(session: Session) -> Result<String, SessionError> {
    let n: Option<u64> = session.get("n").await?;
    Ok(n.map_or("none".into(), |n| n.to_string()))
}

async fn login(session: Session, Path(user): Path<String>) -> Result<String, SessionError> {
    session.cycle_id().await?;
    session.insert("user", &user).await?;
    Ok(user)
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session
        .get::<String>("user")
        .await?
        .unwrap_or_else(|| "anonymous".into()))
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("bye")
}

async fn set_field(
    session: Session,
    Path(field): Path<String>,
) -> Result<&'static str, SessionError> {
    session.insert(&field, true).await?;
    Ok("set")
}

async fn fields(session: Session) -> Result<String, SessionError> {
    Ok(session.fields().await?.join(","))
}

async fn big(
    session: Session,
    Path((field, bytes)): Path<(String, usize)>,
) -> Result<&'static str, SessionError> {
    session.insert(&field, "x".repeat(bytes)).await?;
    Ok("stored")
}

/// Loads the session, parks until released, then sets `field` to `value`.
async fn hold(
    State(holds): State<Arc<Holds>>,
    session: Session,
    Path((name, field, value)): Path<(String, String, String)>,
) -> Result<&'static str, SessionError> {
    let (loaded, release) = holds.pair(&name).await;
    let _: Option<String> = session.get(&field).await?;
    loaded.notify_one();
    release.notified().await;
    session.insert(&field, value).await?;
    Ok("held")
}

async fn get_field(session: Session, Path(field): Path<String>) -> Result<String, SessionError> {
    let value: Option<serde_json::Value> = session.get(&field).await?;
    Ok(value.map_or("none".into(), |v| v.to_string()))
}

async fn untouched() -> &'static str {
    "no session used"
}

/// The test app: every route uses the session differently.
pub fn app(layer: SessionLayer, holds: Arc<Holds>) -> Router {
    Router::new()
        .route("/count", post(count))
        .route("/peek", get(peek))
        .route("/login/{user}", post(login))
        .route("/whoami", get(whoami))
        .route("/logout", post(logout))
        .route("/set/{field}", post(set_field))
        .route("/fields", get(fields))
        .route("/big/{field}/{bytes}", post(big))
        .route("/hold/{name}/{field}/{value}", post(hold))
        .route("/untouched", get(untouched))
        .route("/get/{field}", get(get_field))
        .with_state(holds)
        .layer(layer)
}

/// Serves `router` on 127.0.0.1 with a free port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A reply with what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Reply {
    /// The value the reply sets for cookie `name` (`Some("")` for a removal).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|header| {
            let pair = header.split(';').next()?;
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
    }

    /// The whole Set-Cookie header for cookie `name`.
    pub fn set_cookie_header(&self, name: &str) -> Option<&str> {
        self.set_cookies
            .iter()
            .find(|h| h.starts_with(&format!("{name}=")))
            .map(String::as_str)
    }
}

/// An HTTP client that remembers the session cookie like a browser would.
#[derive(Clone)]
pub struct Browser {
    http: Client<HttpConnector, Full<Bytes>>,
    pub cookie: Arc<std::sync::Mutex<Option<String>>>,
    pub name: String,
}

impl Browser {
    pub fn new() -> Self {
        Self::named("sid")
    }

    pub fn named(name: &str) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            cookie: Arc::default(),
            name: name.to_owned(),
        }
    }

    pub fn cookie_value(&self) -> Option<String> {
        self.cookie.lock().unwrap().clone()
    }

    pub fn set_cookie_value(&self, value: Option<String>) {
        *self.cookie.lock().unwrap() = value;
    }

    /// Sends a request to `addr` with the current cookie and applies any Set-Cookie.
    pub async fn send(&self, method: &str, addr: SocketAddr, path: &str) -> Reply {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(value) = self.cookie_value() {
            request = request.header("cookie", format!("{}={value}", self.name));
        }
        let response = self
            .http
            .request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let reply = Reply {
            status,
            set_cookies,
            body: String::from_utf8(body.to_vec()).unwrap(),
        };
        if let Some(value) = reply.cookie(&self.name) {
            self.set_cookie_value((!value.is_empty()).then_some(value));
        }
        reply
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Reply {
        self.send("GET", addr, path).await
    }

    pub async fn post(&self, addr: SocketAddr, path: &str) -> Reply {
        self.send("POST", addr, path).await
    }
}
