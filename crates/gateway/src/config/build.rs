//! Building the gateway of a [`FileConfig`], serving it on its listeners, and reloading it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{ConfigError, FileConfig};
use crate::http::{HttpUpstream, HttpUpstreamConfig};
use crate::observe::{Observe, ObserveLayer};
use crate::server::{App, ServerThread, Threads};
use crate::service::{self, GatewayApp, GatewayConnection, ListenerMode, Parts, RenderMetrics};
use tower::Layer as _;

/// What new connections are served with: the gateway and, when `[observe]` is set, the
/// observation layers around it.
struct Current {
    app: GatewayApp,
    observe: Option<ObserveLayer>,
}

/// The service of one connection to a [`Reloadable`] gateway.
pub type Connection = tower::util::Either<Observe<GatewayConnection>, GatewayConnection>;
use crate::tls::TlsTerminator;

/// The built upstream groups by name, with the settings each was built from: a reload keeps
/// a group whose settings did not change (its endpoints' health, ejections and pools).
type Groups = BTreeMap<String, (HttpUpstreamConfig, HttpUpstream)>;

/// A gateway whose configuration can be swapped while it serves: each new connection takes
/// the configuration current when it is accepted, and keeps it to its end (connections in
/// flight during a reload finish on the old one).
#[derive(Clone)]
pub struct Reloadable {
    current: Arc<ArcSwap<Current>>,
    mode: ListenerMode,
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Reloadable {
    fn serve(&self, peer: SocketAddr, mode: ListenerMode) -> Connection {
        let current = self.current.load();
        let connection = service::connection_on(&current.app, peer, mode);
        match &current.observe {
            Some(layer) => tower::util::Either::Left(layer.layer(connection)),
            None => tower::util::Either::Right(connection),
        }
    }
}

impl App for Reloadable {
    type Service = Connection;
    type Body = crate::http::ProxyBody;

    fn connection(&self, peer: SocketAddr) -> Self::Service {
        self.serve(peer, self.mode)
    }

    fn tls_connection(&self, peer: SocketAddr) -> Self::Service {
        let mode = ListenerMode {
            tls: true,
            ..self.mode
        };
        self.serve(peer, mode)
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Groups kept as they were (same settings): their endpoints' state and their dashboard
    /// history go on. By name.
    pub kept: Vec<String>,
    /// Groups built anew (new, or with changed settings). By name.
    pub rebuilt: Vec<String>,
    /// Settings that changed but take a restart (listeners, workers, server limits).
    pub need_restart: Vec<String>,
    /// TLS listeners whose certificate files could not be reloaded (they keep the old ones):
    /// `listen[i].tls: why`.
    pub tls_failures: Vec<String>,
}

struct State {
    config: FileConfig,
    groups: Groups,
    pages: Pages,
    /// The gateway's own metrics page, kept across reloads.
    metrics: Option<RenderMetrics>,
}

/// The gateway of a [`FileConfig`], serving on every listener.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use herd_gateway::config::{FileConfig, Gateway};
/// let config = FileConfig::load("gateway.toml".as_ref())?;
/// let gateway = Gateway::start(config).await?;
/// // on SIGHUP:
/// gateway.reload_file("gateway.toml".as_ref()).await?;
/// # Ok(()) }
/// ```
pub struct Gateway {
    current: Arc<ArcSwap<Current>>,
    state: tokio::sync::Mutex<State>,
    servers: Vec<ServerThread>,
    /// The TLS listeners' certificates, by listener index: reloaded with the configuration.
    tls: Vec<(usize, TlsTerminator)>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// The TLS listeners' terminators (their files read and checked), by listener index.
fn terminators(config: &FileConfig) -> Result<Vec<(usize, TlsTerminator)>, ConfigError> {
    let mut out = Vec::new();
    for (i, listen) in config.listen.iter().enumerate() {
        if let Some(tls) = &listen.tls {
            let terminator = TlsTerminator::from_config(tls).map_err(|e| match e {
                herd_lb_core::Error::InvalidConfig { field, reason } => {
                    ConfigError::invalid(format!("listen[{i}].{field}"), reason)
                }
                other => ConfigError::invalid(format!("listen[{i}].tls"), other.to_string()),
            })?;
            out.push((i, terminator));
        }
    }
    Ok(out)
}

// The operators' pages of a build: the next build's go on with their history for the groups
// it keeps.
use crate::pages::Pages;

/// Builds the service of `config`, reusing the groups of `previous` whose settings are the same.
/// Also returns the names of the groups kept from `previous`, and the pages to hand to the next
/// build.
async fn build(
    config: &FileConfig,
    previous: &Groups,
    previous_pages: Option<&Pages>,
    metrics: Option<&RenderMetrics>,
) -> Result<(Current, Groups, Vec<String>, Pages), ConfigError> {
    let order = config.group_order();
    let mut groups = Groups::new();
    let mut kept = Vec::new();
    let mut upstreams = Vec::with_capacity(order.len());
    for name in &order {
        let Some(group) = config.upstreams.get(*name) else {
            return Err(ConfigError::invalid(
                "upstreams",
                format!("no group {name:?}"),
            ));
        };
        let mut settings = group.to_upstream_config(name)?;
        // The access log names the endpoint that answered.
        if config.observe.as_ref().is_some_and(|o| o.access_log) {
            settings.record_endpoint = true;
        }
        let upstream = match previous.get(*name) {
            Some((old, upstream)) if *old == settings => {
                kept.push((*name).to_owned());
                upstream.clone()
            }
            _ => {
                let upstream = HttpUpstream::from_config(&settings).map_err(|e| match e {
                    herd_lb_core::Error::InvalidConfig { field, reason } => {
                        ConfigError::invalid(format!("upstreams.{name}.{field}"), reason)
                    }
                    other => ConfigError::invalid(format!("upstreams.{name}"), other.to_string()),
                })?;
                #[cfg(feature = "dns")]
                if let Some(dns) = &settings.dns {
                    first_answer(&upstream, dns.timeout).await;
                }
                upstream
            }
        };
        upstreams.push(upstream.clone());
        groups.insert((*name).to_owned(), (settings, upstream));
    }
    let admin = config.admin.to_admin();
    let rate_limits = config.rate_limits()?;
    let names: Vec<String> = order.iter().map(|name| (*name).to_owned()).collect();
    let pages = previous_pages.map(|p| (p.clone(), kept.clone()));
    let built = service::build(Parts {
        admin: &admin,
        upstreams,
        group_names: names,
        routes: config.service_routes(&order)?,
        rate_limits: rate_limits.as_ref(),
        #[cfg(feature = "proxy-cache")]
        caches: config.caches(&order)?,
        pages,
        metrics: metrics.cloned(),
    })
    .await?;
    let pages = built.pages;
    let observe = config.observe.as_ref().map(ObserveLayer::new).transpose()?;
    let current = Current {
        app: built.app,
        observe,
    };
    Ok((current, groups, kept, pages))
}

/// Waits, at most `timeout` (one resolution's bound), for a group that takes its servers from
/// DNS to have one, so that a gateway does not start answering 503 for the moment its first
/// answer takes. A name that does not resolve by then starts the group empty (it fills when
/// the name resolves).
#[cfg(feature = "dns")]
async fn first_answer(upstream: &HttpUpstream, timeout: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while upstream.endpoints().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Gateway {
    /// Builds everything `config` describes without serving it (what `herd-gateway --check`
    /// does after parsing): upstream groups, routes, rate limits, caches. Needs a tokio runtime
    /// (active health checks are started, then stopped when this returns).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the problem.
    pub async fn check(config: &FileConfig) -> Result<(), ConfigError> {
        terminators(config)?;
        build(config, &Groups::new(), None, None).await.map(drop)
    }

    /// Builds the gateway (in the calling runtime: health checks and caches run there, so it
    /// must outlive the gateway) and serves it on every listener, each with
    /// [`workers`](FileConfig::workers) accepting threads.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the problem; a listener that cannot be bound is
    /// named by its `listen[i].address`.
    pub async fn start(config: FileConfig) -> Result<Self, ConfigError> {
        Self::start_inner(config, None).await
    }

    /// [`start`](Self::start), serving the gateway's own metrics on
    /// [`admin.metrics_path`](super::AdminSection::metrics_path) (admin networks only):
    /// the text `render` returns, e.g. `move || handle.render()` with the
    /// metrics-exporter-prometheus recorder the process installed (herd-health's
    /// `PrometheusMetrics`, as the `herd-gateway` binary does).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with_metrics(
        config: FileConfig,
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        Self::start_inner(config, Some(Arc::new(render))).await
    }

    async fn start_inner(
        config: FileConfig,
        metrics: Option<RenderMetrics>,
    ) -> Result<Self, ConfigError> {
        let tls = terminators(&config)?;
        let (app, groups, _, pages) =
            build(&config, &Groups::new(), None, metrics.as_ref()).await?;
        let current = Arc::new(ArcSwap::from_pointee(app));
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        let mut servers = Vec::with_capacity(config.listen.len());
        for (i, listen) in config.listen.iter().enumerate() {
            let app = Reloadable {
                current: Arc::clone(&current),
                mode: ListenerMode {
                    tls: false,
                    redirect_https: listen.redirect_https,
                },
            };
            let build = move || async move { Ok::<_, String>(app) };
            let threads = Threads::PerCore(workers);
            let started = match tls.iter().find(|(at, _)| *at == i) {
                Some((_, terminator)) => {
                    ServerThread::start_tls(
                        "gateway",
                        listen.address,
                        threads,
                        config.server,
                        terminator.clone(),
                        build,
                    )
                    .await
                }
                None => {
                    ServerThread::start_with_limits(
                        "gateway",
                        listen.address,
                        threads,
                        config.server,
                        build,
                    )
                    .await
                }
            };
            let server =
                started.map_err(|e| ConfigError::invalid(format!("listen[{i}].address"), e))?;
            servers.push(server);
        }
        Ok(Self {
            current,
            state: tokio::sync::Mutex::new(State {
                config,
                groups,
                pages,
                metrics,
            }),
            servers,
            tls,
        })
    }

    /// Where each listener listens (the bound port when the file said port 0), in file order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(ServerThread::addr).collect()
    }

    /// Swaps in `config`: new connections get it, connections open now finish on the old one.
    /// Groups with unchanged settings are kept with their state. Listeners, workers and server
    /// limits are not changed (they take a restart; the report lists such changes). On an
    /// error the running configuration stays. The TLS listeners' certificate files are read
    /// again too (as nginx does on `SIGHUP`); one that fails keeps its old certificate and is
    /// listed in the report.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the problem.
    pub async fn reload(&self, config: FileConfig) -> Result<ReloadReport, ConfigError> {
        let mut state = self.state.lock().await;
        let (app, groups, mut kept, pages) = build(
            &config,
            &state.groups,
            Some(&state.pages),
            state.metrics.as_ref(),
        )
        .await?;
        kept.sort();
        let mut report = ReloadReport {
            rebuilt: groups
                .keys()
                .filter(|n| !kept.contains(n))
                .cloned()
                .collect(),
            kept,
            need_restart: Vec::new(),
            tls_failures: Vec::new(),
        };
        for (i, terminator) in &self.tls {
            if let Err(e) = terminator.reload() {
                report.tls_failures.push(format!("listen[{i}].{e}"));
            }
        }
        if config.listen != state.config.listen {
            report.need_restart.push("listen".into());
        }
        if config.workers != state.config.workers {
            report.need_restart.push("workers".into());
        }
        if config.server != state.config.server {
            report.need_restart.push("server".into());
        }
        self.current.store(Arc::new(app));
        state.config = config;
        state.groups = groups;
        state.pages = pages;
        Ok(report)
    }

    /// [`reload`](Self::reload) from a file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the problem, or the file's read error.
    pub async fn reload_file(&self, path: &Path) -> Result<ReloadReport, ConfigError> {
        self.reload(FileConfig::load(path)?).await
    }

    /// Stops accepting, lets in-flight requests finish (bounded), then ends every listener.
    pub fn stop(&mut self) {
        for server in &mut self.servers {
            server.stop();
        }
    }
}
