//! The gateway from one TOML file: every file in `examples/configs/` loads (library parse and
//! `herd-gateway --check`), two of them run against real axum instances (addresses given as
//! `${VAR}`s), errors name the key and the problem, routes go to the right group, header rules
//! and the body size limit apply (a 413 reaches no instance), TLS listeners terminate with the
//! file's certificate and a plain listener can redirect to them.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use bytes::Bytes;
use herd_gateway::config::{FileConfig, Gateway};
use herd_gateway::server::ServerThread;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// A real axum instance answering `NAME PATH` and echoing the `x-echo-*` and `x-drop-me`
/// headers it received, one per line; it counts its requests (not the gateway's health checks,
/// whose paths hold `health`).
struct Instance {
    server: ServerThread,
    hits: Arc<AtomicUsize>,
}

impl Instance {
    async fn start(name: &'static str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = Router::new().fallback(any(move |req: Request| {
            let counter = Arc::clone(&counter);
            async move {
                if !req.uri().path().contains("health") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let mut out = format!("{name} {}\n", req.uri().path());
                for (header, value) in req.headers() {
                    if header.as_str().starts_with("x-echo-")
                        || header == "x-drop-me"
                        || header == "x-forwarded-proto"
                    {
                        out.push_str(&format!("{header}: {}\n", value.to_str().unwrap()));
                    }
                }
                let body = req.into_body().collect().await.unwrap().to_bytes();
                out.push_str(&format!("body {}\n", body.len()));
                ([("x-instance-secret", "yes")], out)
            }
        }));
        let server = ServerThread::start(name, "127.0.0.1:0".parse().unwrap(), move || async {
            Ok(app)
        })
        .await
        .unwrap();
        Self { server, hits }
    }

    fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A keep-alive HTTP/1.1 client connection.
struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> (http::StatusCode, http::HeaderMap, String) {
        self.sender.ready().await.unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn get(&mut self, path: &str) -> (http::StatusCode, http::HeaderMap, String) {
        self.send(
            http::Request::get(path)
                .header("host", "test.local")
                .body(Full::default())
                .unwrap(),
        )
        .await
    }
}

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/configs")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Parses `text` with only `vars` for `${...}` (defaults elsewhere).
fn parse(text: &str, vars: &HashMap<&str, String>) -> FileConfig {
    FileConfig::parse_with_vars(text, |name| vars.get(name).cloned()).unwrap()
}

fn parse_err(text: &str) -> String {
    FileConfig::parse_with_vars(text, |_| None)
        .expect_err("the config should be refused")
        .to_string()
}

#[tokio::test]
async fn every_example_file_loads_and_builds() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for seed in [
        "mcads.toml",
        "fastnext.toml",
        "backend-pool.toml",
        "multi-node.toml",
        "cinemahint.toml",
    ] {
        assert!(names.iter().any(|n| n == seed), "{seed} missing: {names:?}");
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let config = FileConfig::parse_with_vars(&text, |_| None)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Gateway::check(&config)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!config.summary().is_empty());
    }
}

#[test]
fn the_binary_checks_every_example_file() {
    for file in example_files() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd-gateway"))
            .arg("--check")
            .arg("--config")
            .arg(&file)
            .env_clear()
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout}{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("configuration OK"), "{stdout}");
        assert!(stdout.contains("upstream "), "{stdout}");
    }
}

#[test]
fn the_binary_check_fails_on_a_bad_file_and_names_the_key() {
    let dir = std::env::temp_dir().join(format!("herd-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveDir(dir.clone());
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[[listen]]\naddress = \"127.0.0.1:0\"\n[upstreams.api]\nservers = [{ address = \"127.0.0.1:9\" }]\nkeepalive_timeout = \"soon\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd-gateway"))
        .args(["--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keepalive_timeout") && stderr.contains("line 5"),
        "{stderr}"
    );
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BASE: &str = r#"
[[listen]]
address = "127.0.0.1:0"
[upstreams.api]
servers = [{ address = "127.0.0.1:9" }]
"#;

#[test]
fn errors_name_the_key_and_the_problem() {
    let cases: &[(&str, &[&str])] = &[
        // a typo in a group: toml names the key, the line and what was expected
        (
            "[upstreams.web]\npolcy = \"least_conn\"\nservers = [{ address = \"127.0.0.1:9\" }]",
            &["unknown field `polcy`", "policy", "line"],
        ),
        // a typo at the top
        ("[[route]]\nprefix = \"/\"", &["unknown field `route`"]),
        // an unknown policy
        (
            "[upstreams.web]\npolicy = \"fastest\"\nservers = [{ address = \"127.0.0.1:9\" }]",
            &["unknown variant `fastest`", "least_conn"],
        ),
        // a group defined twice
        (
            "[upstreams.api]\nservers = [{ address = \"127.0.0.1:8\" }]",
            &["duplicate key", "api"],
        ),
        // a route to a group that does not exist
        (
            "[[routes]]\nprefix = \"/\"\nupstream = \"apii\"",
            &["routes[0].upstream", "no upstream group \"apii\"", "api"],
        ),
        // a prefix that is not a path
        (
            "[[routes]]\nprefix = \"api\"\nupstream = \"api\"",
            &["routes[0].prefix", "must start with `/`"],
        ),
        // the same prefix twice
        (
            "[[routes]]\nprefix = \"/a\"\nupstream = \"api\"\n[[routes]]\nprefix = \"/a\"\nupstream = \"api\"",
            &["routes[1].prefix", "also the prefix of routes[0]"],
        ),
        // an unknown zone
        (
            "[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nlimit_req = \"login\"",
            &["routes[0].limit_req", "no [limit_req_zones.login]"],
        ),
        // a bad rate
        (
            "[limit_req_zones.login]\nrate = \"5 per minute\"",
            &["limit_req_zones.login.rate", "5r/m"],
        ),
        // nginx's delaying limit_req is not there
        (
            "[limit_req_zones.login]\nrate = \"5r/m\"\nnodelay = false",
            &["limit_req_zones.login.nodelay", "not supported"],
        ),
        // a backup server with hashing (nginx refuses it too)
        (
            "[upstreams.b]\nservers = [{ address = \"127.0.0.1:8\" }, { address = \"127.0.0.1:9\", backup = true }]\npolicy = \"ip_hash\"",
            &["upstreams.b.servers[1].backup", "ip_hash"],
        ),
        // nginx's per-server max_fails, which herd keeps per group, disagreeing
        (
            "[upstreams.b]\nservers = [{ address = \"127.0.0.1:8\", max_fails = 3 }, { address = \"127.0.0.1:9\", max_fails = 2 }]",
            &[
                "upstreams.b.servers[1].max_fails",
                "one max_fails per group",
            ],
        ),
        // a scheme the upstream does not speak
        (
            "[upstreams.b]\nservers = [{ address = \"127.0.0.1:9\" }]\nscheme = \"ftp\"",
            &["unknown variant `ftp`", "https"],
        ),
        // an address without a port
        (
            "[upstreams.b]\nservers = [{ address = \"backend\" }]",
            &["upstreams.b.servers[0].address", "host:port"],
        ),
        // a size that is not one
        (
            "[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nclient_max_body_size = \"10 megs\"",
            &["client_max_body_size", "line"],
        ),
        // a header name with a space
        (
            "[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nrequest_headers = { set = { \"X Bad\" = \"1\" } }",
            &["routes[0].request_headers.set", "not a header name"],
        ),
        // neither upstream nor return
        (
            "[[routes]]\nprefix = \"/\"",
            &["routes[0]", "neither upstream nor return"],
        ),
        // a route without a zone under one with a zone
        (
            "[limit_req_zones.z]\nrate = \"1r/s\"\n[[routes]]\nprefix = \"/api\"\nupstream = \"api\"\nlimit_req = \"z\"\n[[routes]]\nprefix = \"/api/public\"\nupstream = \"api\"",
            &["routes[1].limit_req", "\"/api\""],
        ),
        // next_upstream values nginx has but herd does not
        (
            "[upstreams.b]\nservers = [{ address = \"127.0.0.1:9\" }]\nnext_upstream = [\"non_idempotent\"]",
            &["upstreams.b.next_upstream", "non_idempotent"],
        ),
    ];
    for (extra, expected) in cases {
        let text = format!("{BASE}{extra}\n");
        let err = parse_err(&text);
        for part in *expected {
            assert!(err.contains(part), "{extra:?}: {err:?} lacks {part:?}");
        }
    }
    // No listener, no group, several groups without routes.
    assert!(
        parse_err("[upstreams.a]\nservers = [{ address = \"127.0.0.1:9\" }]").contains("listen")
    );
    assert!(parse_err("[[listen]]\naddress = \"127.0.0.1:0\"").contains("upstreams"));
    let two = format!("{BASE}[upstreams.b]\nservers = [{{ address = \"127.0.0.1:9\" }}]\n");
    assert!(parse_err(&two).contains("routes: none given"));
    // Shared limits without nodes are refused when built.
    let text = format!(
        "{BASE}[limit_req_zones.z]\nrate = \"1r/s\"\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\nlimit_req = \"z\"\n[rate_limit]\nshared = {{ nodes = [] }}\n"
    );
    let config = FileConfig::parse_with_vars(&text, |_| None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime
        .block_on(Gateway::check(&config))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rate_limit.shared"), "{err}");
    // A missing environment variable names itself and its line.
    let err = parse_err("[[listen]]\naddress = \"${NO_SUCH_LISTEN}\"");
    assert!(
        err.contains("line 2") && err.contains("NO_SUCH_LISTEN"),
        "{err}"
    );
}

/// Two groups, routes with header rules, a body limit and a fixed answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_headers_and_body_limits() {
    let api = Instance::start("api").await;
    let web = Instance::start("web").await;
    let text = format!(
        r#"
workers = 1
[[listen]]
address = "127.0.0.1:0"

[upstreams.api]
servers = [{{ address = "{api}" }}]
[upstreams.web]
servers = [{{ address = "{web}" }}]

[[routes]]
prefix = "/"
upstream = "web"

[[routes]]
prefix = "/api/"
upstream = "api"
client_max_body_size = "1k"
request_headers = {{ set = {{ "X-Echo-Set" = "from-gateway" }}, add = {{ "X-Echo-Add" = "added" }}, remove = ["X-Drop-Me"] }}
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }}, remove = ["X-Instance-Secret"] }}

[[routes]]
prefix = "/api/ping"
return = {{ status = 200, body = "pong\n" }}

[proxy_cache_zones.pages]
default_ttl = "1m"

[observe]
request_id_header = "x-request-id"

[[routes]]
prefix = "/stats"
upstream = "web"
proxy_cache = "pages"
response_headers = {{ set = {{ "X-Route" = "stats" }} }}
"#,
        api = api.addr(),
        web = web.addr()
    );
    let config = parse(&text, &HashMap::new());
    let mut gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.addrs()[0];
    let mut client = Client::connect(addr).await;

    // Routes: the longest prefix wins.
    let (status, headers, body) = client.get("/index.html").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("web /index.html"), "{body}");
    assert_eq!(headers["x-instance-secret"], "yes");
    // [observe]: every answer carries a request id.
    assert!(!headers["x-request-id"].is_empty());
    let (status, headers, body) = client.get("/api/users").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("api /api/users"), "{body}");
    // Response rules: set and remove.
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(!headers.contains_key("x-instance-secret"));
    let (status, _, body) = client.get("/api/ping").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "pong\n"));
    assert_eq!((api.hits(), web.hits()), (1, 1));

    // Request rules: a client's value replaced, one added beside the client's, one removed.
    let (_, _, body) = client
        .send(
            http::Request::get("/api/echo")
                .header("host", "test.local")
                .header("x-echo-set", "from-client")
                .header("x-echo-add", "client")
                .header("x-drop-me", "secret")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert!(body.contains("x-echo-set: from-gateway\n"), "{body}");
    assert!(!body.contains("from-client"), "{body}");
    assert!(body.contains("x-echo-add: client\n") && body.contains("x-echo-add: added\n"));
    assert!(!body.contains("x-drop-me"), "{body}");
    assert_eq!(api.hits(), 2);

    // A cached route: the instance is asked once, and the route's header rules apply to both.
    for _ in 0..2 {
        let (status, headers, body) = client.get("/stats").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("web /stats"), "{body}");
        assert_eq!(headers["x-route"], "stats");
    }
    assert_eq!(web.hits(), 2, "the second /stats comes from the cache");

    // Body limit: within it passes; a declared length over it is 413 with no instance asked.
    let post = |len: usize| {
        http::Request::post("/api/upload")
            .header("host", "test.local")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    let (status, _, body) = client.send(post(1024)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("body 1024"), "{body}");
    assert_eq!(api.hits(), 3);
    let (status, _, _) = client.send(post(1025)).await;
    assert_eq!(status, 413);
    assert_eq!(api.hits(), 3, "a 413 must not reach an instance");
    // The web route has no limit.
    let mut big = post(4096);
    *big.uri_mut() = "/upload".parse().unwrap();
    let (status, _, body) = Client::connect(addr).await.send(big).await;
    assert_eq!(status, 200);
    assert!(body.contains("body 4096"), "{body}");
    gateway.stop();
}

/// Two seed configs as written, pointed at real instances through their `${VAR}`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_configs_run_against_real_instances() {
    // fastnext: /api/ to the backend group, / to the frontend, a login zone of 5 r/m burst 2.
    let backends = [
        Instance::start("backend-1").await,
        Instance::start("backend-2").await,
        Instance::start("backend-3").await,
    ];
    let frontends = [
        Instance::start("frontend-1").await,
        Instance::start("frontend-2").await,
    ];
    let mut vars = HashMap::from([("FASTNEXT_LISTEN", "127.0.0.1:0".to_owned())]);
    for (i, b) in backends.iter().enumerate() {
        vars.insert(
            [
                "FASTNEXT_BACKEND_1",
                "FASTNEXT_BACKEND_2",
                "FASTNEXT_BACKEND_3",
            ][i],
            b.addr(),
        );
    }
    for (i, f) in frontends.iter().enumerate() {
        vars.insert(["FASTNEXT_FRONTEND_1", "FASTNEXT_FRONTEND_2"][i], f.addr());
    }
    let text = std::fs::read_to_string(configs_dir().join("fastnext.toml")).unwrap();
    let mut config = parse(&text, &vars);
    config.workers = 1;
    let mut gateway = Gateway::start(config).await.unwrap();
    let mut client = Client::connect(gateway.addrs()[0]).await;
    for _ in 0..6 {
        let (status, headers, body) = client.get("/api/v1/items").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("backend-"), "{body}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        // The zone's name is the policy's in the IETF RateLimit headers.
        let policy = headers["ratelimit-policy"].to_str().unwrap();
        assert!(policy.contains("api_limit"), "{policy}");
    }
    let (status, _, body) = client.get("/dashboard").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("frontend-"), "{body}");
    // login_limit: 5 r/m with burst 2 lets 3 through at once, then 429.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.get("/api/v1/auth/login").await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let backend_hits: usize = backends.iter().map(Instance::hits).sum();
    assert_eq!(backend_hits, 6 + 3);
    assert_eq!(frontends.iter().map(Instance::hits).sum::<usize>(), 1);
    gateway.stop();

    // cinemahint: /health answered by the gateway, the rest to the instances with the
    // client's Host and X-Forwarded-Proto https (TLS ends in front).
    let ec2 = [
        Instance::start("ec2-1").await,
        Instance::start("ec2-2").await,
        Instance::start("ec2-3").await,
    ];
    let mut vars = HashMap::from([("CINEMAHINT_LISTEN", "127.0.0.1:0".to_owned())]);
    for (i, e) in ec2.iter().enumerate() {
        vars.insert(
            ["CINEMAHINT_EC2_1", "CINEMAHINT_EC2_2", "CINEMAHINT_EC2_3"][i],
            e.addr(),
        );
    }
    let text = std::fs::read_to_string(configs_dir().join("cinemahint.toml")).unwrap();
    let mut config = parse(&text, &vars);
    config.workers = 1;
    let mut gateway = Gateway::start(config).await.unwrap();
    let mut client = Client::connect(gateway.addrs()[0]).await;
    let (status, headers, body) = client.get("/health").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "healthy\n"));
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(ec2.iter().map(Instance::hits).sum::<usize>(), 0);
    for _ in 0..3 {
        let (status, _, body) = client.get("/api/movies").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("ec2-"), "{body}");
    }
    assert_eq!(ec2.iter().map(Instance::hits).sum::<usize>(), 3);
    gateway.stop();
}

/// A test CA and a `localhost` certificate it signed: (CA DER, chain PEM, key PEM).
fn test_pki() -> (rustls_pki_types::CertificateDer<'static>, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca.der().clone(),
        format!("{}{}", leaf.pem(), ca.pem()),
        key.serialize_pem(),
    )
}

#[expect(deprecated, reason = "the workspace's rustls provider is ring")]
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS listener from the file's `tls` key, and a plain one redirecting to HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_terminate_and_plain_ones_redirect() {
    let api = Instance::start("api").await;
    let dir = std::env::temp_dir().join(format!("herd-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveDir(dir.clone());
    let (ca, chain, key) = test_pki();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let text = format!(
        r#"
workers = 1
[[listen]]
address = "127.0.0.1:0"
tls = {{ cert = "{dir}/chain.pem", key = "{dir}/key.pem", reload_interval = "0s" }}
[[listen]]
address = "127.0.0.1:0"
redirect_https = 8443
[upstreams.api]
servers = [{{ address = "{api}" }}]
"#,
        dir = dir.display(),
        api = api.addr()
    );
    let mut gateway = Gateway::start(parse(&text, &HashMap::new())).await.unwrap();
    let (tls_addr, plain_addr) = (gateway.addrs()[0], gateway.addrs()[1]);

    // HTTPS reaches the instance, which is told the client used https.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let res = sender
        .send_request(
            http::Request::get("/secure")
                .header("host", "localhost")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("api /secure"), "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");

    // The plain listener sends clients to HTTPS, reaching no instance.
    let (status, headers, _) = Client::connect(plain_addr).await.get("/a/b?c=1").await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], "https://test.local:8443/a/b?c=1");
    // 308, not 301: a POST stays a POST. A host that is not one is refused, never echoed.
    let mut client = Client::connect(plain_addr).await;
    let post = |host: &str| {
        http::Request::post("/login")
            .header("host", host)
            .body(Full::from("user=a"))
            .unwrap()
    };
    let (status, headers, _) = client.send(post("Test.Local:80")).await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], "https://test.local:8443/login");
    let (status, headers, _) = client.send(post("evil.example@test.local")).await;
    assert_eq!(status, 400);
    assert!(headers.get("location").is_none());
    assert_eq!(api.hits(), 1);
    gateway.stop();

    // A missing certificate file is named with its listener.
    let missing = text.replace("chain.pem", "nope.pem");
    let err = Gateway::check(&parse(&missing, &HashMap::new()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listen[0].tls.cert") && err.contains("nope.pem"),
        "{err}"
    );
}
