//! Active health checks over HTTP: [`HttpProbe`], a [`Probe`] for herd-lb-core's
//! `spawn_active_health`.

use std::time::Duration;

use bytes::Bytes;
use herd_lb_core::EndpointKey;
use herd_lb_core::health::{Probe, ProbeError, ProbeFuture};
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Healthy when `GET http://{key}{path}` answers 2xx (nginx Plus `health_check uri=...`).
///
/// The key's `Display` must be the endpoint's `host:port`. Connections are pooled between rounds.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    path: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpProbe {
    /// Checks `path` (e.g. `/health`).
    pub fn new(path: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1)
            .build(connector);
        let mut path = path.into();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        Self { path, client }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("GET {uri}: status {status}, expected 2xx")]
struct UnexpectedStatus {
    uri: String,
    status: http::StatusCode,
}

impl<K: EndpointKey> Probe<K> for HttpProbe {
    fn probe(&self, key: &K) -> ProbeFuture {
        let uri = format!("http://{key}{}", self.path);
        let client = self.client.clone();
        Box::pin(async move {
            let parsed: Uri = uri
                .parse()
                .map_err(|e| -> ProbeError { format!("health check URI {uri}: {e}").into() })?;
            let req = Request::get(parsed)
                .header(http::header::USER_AGENT, "herd-lb-health-check")
                .body(Empty::new())?;
            let res = client
                .request(req)
                .await
                .map_err(|e| -> ProbeError { format!("GET {uri}: {e}").into() })?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(UnexpectedStatus {
                    uri,
                    status: res.status(),
                }
                .into())
            }
        })
    }
}
