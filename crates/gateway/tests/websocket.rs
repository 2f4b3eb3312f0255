//! WebSocket (HTTP/1.1 `Upgrade`) passthrough: a real axum instance with axum's `ws` echoes
//! what a tokio-tungstenite client sends through a gateway (`HttpUpstream` served by axum,
//! which hands the client's connection over after the `101`), over plain HTTP/1.1 (the fast
//! path's own connection) and over HTTPS (hyper's client). The endpoint's in-flight count holds
//! the open connection and returns to 0 after the close handshake; a refusal of the upgrade
//! (426, 400) is relayed as it came.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::routing::get;
use futures_util::{SinkExt as _, StreamExt as _};
use herd_gateway::http::{HttpUpstream, HttpUpstreamConfig, UpstreamProtocol, UpstreamScheme};
use herd_lb_core::EndpointConfig;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tower::ServiceExt as _;

/// An axum app on its own task, aborted on drop (its connections with it).
struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` with upgrades (axum's server), handing it the peer address.
async fn serve(app: Router) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Served { addr, task }
}

/// Serves `app` over TLS (HTTP/1.1, with upgrades) with the certificate of `pki`.
async fn serve_tls(
    app: Router,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
) -> Served {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        #[expect(deprecated, reason = "ring is the workspace's provider")]
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, PrivateKeyDer::Pkcs8(key))
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            let acceptor = acceptor.clone();
            connections.spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Served { addr, task }
}

/// The instance: `/ws` echoes every message (and says `bye` before answering a close),
/// `/refuse` answers 426 and `/plain` 400 to any upgrade.
fn instance() -> Router {
    Router::new()
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move { ws.on_upgrade(echo) }),
        )
        .route(
            "/refuse",
            get(|| async {
                (
                    StatusCode::UPGRADE_REQUIRED,
                    [("upgrade", "chat.v2"), ("x-instance", "refused")],
                    "use chat.v2\n",
                )
            }),
        )
        .route(
            "/ws-headers",
            get(
                |ws: WebSocketUpgrade, headers: axum::http::HeaderMap| async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .map(|v| v.to_str().unwrap_or("?").to_owned())
                            .unwrap_or_default()
                    };
                    let seen = format!(
                        "host={}|xff={}|real={}|proto={}|fhost={}|secret={}",
                        h("host"),
                        h("x-forwarded-for"),
                        h("x-real-ip"),
                        h("x-forwarded-proto"),
                        h("x-forwarded-host"),
                        h("x-secret"),
                    );
                    ws.on_upgrade(move |mut socket: WebSocket| async move {
                        if socket.send(WsMessage::Text(seen.into())).await.is_ok() {
                            echo(socket).await;
                        }
                    })
                },
            ),
        )
        .route(
            "/seen",
            get(|headers: axum::http::HeaderMap| async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .map(|v| v.to_str().unwrap_or("?").to_owned())
                        .unwrap_or_default()
                };
                format!("upgrade={}|connection={}", h("upgrade"), h("connection"))
            }),
        )
        .route(
            "/plain",
            get(|| async { (StatusCode::BAD_REQUEST, "no upgrades here\n") }),
        )
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            WsMessage::Text(text) => WsMessage::Text(text),
            WsMessage::Binary(data) => WsMessage::Binary(data),
            // tungstenite queues the close reply; the next read sends it and ends the loop.
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

/// A gateway in front of `config`'s endpoints, served by axum (which hands over upgraded
/// connections).
async fn gateway(config: &HttpUpstreamConfig) -> (Served, HttpUpstream) {
    let upstream = HttpUpstream::from_config(config).unwrap();
    let service = upstream.clone();
    let app =
        Router::new().fallback_service(service.map_request(|req: Request| req.map(Body::new)));
    (serve(app).await, upstream)
}

fn config(addr: SocketAddr) -> HttpUpstreamConfig {
    let mut config = HttpUpstreamConfig::default();
    config.balancer.endpoints = vec![EndpointConfig {
        address: addr.to_string(),
        weight: 1.0,
        max_in_flight: None,
    }];
    config.balancer.seed = Some(3);
    config
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Many messages both ways and the close handshake, through `gateway`; the endpoint's in-flight
/// count is 1 while the WebSocket is open and 0 after it closed.
async fn echo_through(gateway: SocketAddr, upstream: &HttpUpstream) {
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{gateway}/ws"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        upstream.endpoints()[0].in_flight,
        1,
        "the open WebSocket holds its slot"
    );
    // Sent ahead of the replies (pipelined both ways), then read back in order.
    for i in 0..500 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        if i % 50 == 0 {
            ws.send(Message::binary(vec![i as u8; 70_000]))
                .await
                .unwrap();
        }
    }
    for i in 0..500 {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("message {i}"))
        );
        if i % 50 == 0 {
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::binary(vec![i as u8; 70_000])
            );
        }
    }
    assert_eq!(upstream.endpoints()[0].in_flight, 1);
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    // The instance's close frame comes back, then the stream ends.
    match ws.next().await {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("expected the close handshake, got {other:?}"),
    }
    while let Some(msg) = ws.next().await {
        assert!(
            matches!(
                msg,
                Err(tungstenite::Error::ConnectionClosed) | Ok(Message::Close(_))
            ),
            "{msg:?}"
        );
    }
    wait_for("in-flight back to 0", || {
        upstream.endpoints()[0].in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn websockets_pass_through_and_free_their_slot_after_the_close_handshake() {
    let instance = serve(instance()).await;
    let (gateway, upstream) = gateway(&config(instance.addr)).await;
    echo_through(gateway.addr, &upstream).await;
    // And again on a fresh connection: nothing of the first was left behind.
    echo_through(gateway.addr, &upstream).await;
    let info = &upstream.endpoints()[0];
    assert_eq!(info.failures, 0);
}

#[tokio::test]
async fn websockets_pass_to_https_instances() {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let ca_file = TempFile::new("ws-ca.pem", &ca.pem());
    let instance = serve_tls(
        instance(),
        vec![cert.der().clone()],
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
    .await;
    let mut config = config(instance.addr);
    config.scheme = UpstreamScheme::Https;
    config.protocol = UpstreamProtocol::Http1;
    config.tls.ca_file = Some(ca_file.0.clone());
    let (gateway, upstream) = gateway(&config).await;
    echo_through(gateway.addr, &upstream).await;
}

#[tokio::test]
async fn the_upgrade_request_carries_the_forwarding_headers_and_not_the_clients_hop_by_hop_ones() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let instance = serve(instance()).await;
    let (gateway, _upstream) = gateway(&config(instance.addr)).await;
    let mut req = format!("ws://{}/ws-headers", gateway.addr)
        .into_client_request()
        .unwrap();
    let headers = req.headers_mut();
    headers.insert("x-forwarded-proto", "forged".parse().unwrap());
    headers.insert("x-secret", "hop".parse().unwrap());
    // `Connection` names x-secret too: a hop-by-hop header of the client's hop.
    headers.insert("connection", "Upgrade, x-secret".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let seen = ws.next().await.unwrap().unwrap();
    assert_eq!(
        seen,
        Message::text(format!(
            "host={}|xff=127.0.0.1|real=127.0.0.1|proto=http|fhost={}|secret=",
            instance.addr, gateway.addr
        ))
    );
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
}

#[tokio::test]
async fn a_refused_upgrade_is_relayed_unchanged() {
    let instance = serve(instance()).await;
    let (gateway, upstream) = gateway(&config(instance.addr)).await;
    for (path, status, body) in [
        ("/refuse", StatusCode::UPGRADE_REQUIRED, "use chat.v2\n"),
        ("/plain", StatusCode::BAD_REQUEST, "no upgrades here\n"),
    ] {
        match tokio_tungstenite::connect_async(format!("ws://{}{path}", gateway.addr)).await {
            Err(tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), status, "{path}");
                let got = res.body().as_deref().map(String::from_utf8_lossy);
                assert_eq!(got.as_deref(), Some(body), "{path}");
                if status == StatusCode::UPGRADE_REQUIRED {
                    assert_eq!(res.headers()["x-instance"], "refused");
                }
            }
            other => panic!("{path}: expected the instance's answer, got {other:?}"),
        }
    }
    wait_for("in-flight back to 0", || {
        upstream.endpoints()[0].in_flight == 0
    })
    .await;
    let info = &upstream.endpoints()[0];
    assert_eq!(
        (info.requests, info.failures),
        (2, 0),
        "4xx are no failure of the endpoint"
    );
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_idle_timeout() {
    let instance = serve(instance()).await;
    let mut config = config(instance.addr);
    config.upgrade_idle_timeout = Duration::from_millis(300);
    let (gateway, upstream) = gateway(&config).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    // Then nothing: the gateway closes both sides, and the stream ends without a close frame.
    let ended = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    match ended {
        Ok(None | Some(Err(_))) => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    wait_for("in-flight back to 0", || {
        upstream.endpoints()[0].in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn an_upgrade_to_a_dead_endpoint_is_retried_elsewhere_before_it_is_sent() {
    let instance = serve(instance()).await;
    // A port with nothing listening: connect refused.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut config = config(instance.addr);
    config.balancer.endpoints.push(EndpointConfig {
        address: dead_addr.to_string(),
        weight: 1.0,
        max_in_flight: None,
    });
    let (gateway, upstream) = gateway(&config).await;
    for _ in 0..6 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr))
            .await
            .unwrap();
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    }
    wait_for("in-flight back to 0", || {
        upstream.endpoints().iter().all(|e| e.in_flight == 0)
    })
    .await;
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_tunnelled_but_forwarded_as_a_plain_request() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let instance = serve(instance()).await;
    let (gateway, _upstream) = gateway(&config(instance.addr)).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"GET /seen HTTP/1.1\r\nhost: gateway.example\r\n\
              connection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\n\
              http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("upgrade=|connection="), "{answer}");
}

/// A file removed when dropped (also when the test fails).
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("herd-websocket-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
