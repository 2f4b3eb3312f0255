//! Redis: a standalone server and a 6-node Redis Cluster (3 masters + 3 replicas).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::process::{self, Placement, Server, Workspace};
use crate::tls::{ClientAuth, ServerTls};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One redis-server process, standalone or a cluster node.
pub struct RedisNode {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
struct NodeInner {
    port: u16,
    cluster_node_timeout: Option<Duration>,
    program: PathBuf,
    dir: PathBuf,
    server: Server,
    ws: Arc<Workspace>,
    /// Its address and network namespace.
    place: Placement,
    /// TLS settings when it serves TLS only (`--port 0 --tls-port PORT`).
    tls: Option<ServerTls>,
}

impl fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisNode")
            .field("name", &self.name())
            .field("pid", &self.pid())
            .finish()
    }
}

impl RedisNode {
    fn new(
        ws: &Arc<Workspace>,
        cluster_node_timeout: Option<Duration>,
        place: Placement,
        tls: Option<ServerTls>,
    ) -> Result<RedisNode> {
        let program = process::redis_program("redis-server")?;
        let port = process::free_port(cluster_node_timeout.is_some())?;
        let name = format!("redis-{port}");
        let dir = ws.path().join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create dir of {name}"), e))?;
        Ok(RedisNode {
            inner: Arc::new(NodeInner {
                port,
                cluster_node_timeout,
                program,
                dir,
                server: Server::new(name),
                ws: Arc::clone(ws),
                place,
                tls,
            }),
        })
    }

    fn command(&self) -> Command {
        let i = &self.inner;
        let mut cmd = Command::new(&i.program);
        match &i.tls {
            None => {
                cmd.args(["--port", &i.port.to_string()]);
            }
            Some(tls) => {
                // TLS only: no plain port; replication and (below) the cluster bus over TLS.
                let auth = match tls.client_auth() {
                    ClientAuth::Optional => "optional",
                    ClientAuth::Required => "yes",
                };
                cmd.args(["--port", "0", "--tls-port", &i.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(tls.cert_file())
                    .arg("--tls-key-file")
                    .arg(tls.key_file())
                    .arg("--tls-ca-cert-file")
                    .arg(tls.ca_file())
                    .args(["--tls-auth-clients", auth])
                    .args(["--tls-replication", "yes"]);
                if i.cluster_node_timeout.is_some() {
                    // The bus port is the client port + 10000, as `free_port` reserved it.
                    cmd.args(["--tls-cluster", "yes"])
                        .args(["--cluster-port", &(u32::from(i.port) + 10_000).to_string()]);
                }
            }
        }
        cmd.args(["--bind", &i.place.ip.to_string()])
            .args(["--protected-mode", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            // Replicas sync at once instead of after Redis' default 5 s wait for more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&i.dir);
        if let Some(t) = i.cluster_node_timeout {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &t.as_millis().to_string()]);
        }
        cmd
    }

    async fn launch(&self) -> Result<()> {
        let i = &self.inner;
        i.server
            .spawn(&i.ws, self.command(), i.place.netns.as_deref())?;
        let started = Instant::now();
        loop {
            if let Some(status) = i.server.exited() {
                if i.tls.is_some() {
                    let log = process::log_tail(&i.ws.log_path(self.name()), 30);
                    if log.contains("tls-port") || log.contains("TLS support") {
                        return Err(Error::Unsupported {
                            what: "TLS servers of this redis-server",
                            reason: format!(
                                "it was built without TLS (exit {status}); install a build with \
                                 TLS, e.g. Debian's redis-server 7.0 or later:\n{log}"
                            ),
                        });
                    }
                }
                return Err(self.startup_error(format!("the server exited ({status})")));
            }
            if self.ready().await {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = i.server.kill(&i.ws);
                return Err(self.startup_error(format!("no PONG after {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn startup_error(&self, reason: String) -> Error {
        Error::Startup {
            node: self.name().to_owned(),
            reason,
            log_tail: process::log_tail(&self.inner.ws.log_path(self.name()), 30),
        }
    }

    /// Whether it answers PING; for a server whose certificate does not name its address (which
    /// the `redis` client refuses), whether its port accepts connections.
    async fn ready(&self) -> bool {
        match &self.inner.tls {
            Some(tls) if !tls.names_loopback() => {
                tokio::net::TcpStream::connect((self.inner.place.ip, self.inner.port))
                    .await
                    .is_ok()
            }
            _ => self.ping().await.is_ok(),
        }
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let err = |source| Error::Redis {
            node: self.name().to_owned(),
            op: "connect",
            source,
        };
        let client = match &self.inner.tls {
            None => redis::Client::open(self.url()).map_err(err)?,
            Some(tls) => {
                crate::tls::install_crypto_provider();
                redis::Client::build_with_tls(self.url(), tls.redis_certificates()?).map_err(err)?
            }
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(err)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        op: &'static str,
    ) -> Result<T> {
        let mut conn = self.connection().await?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|source| Error::Redis {
                node: self.name().to_owned(),
                op,
                source,
            })
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.query(&redis::cmd("PING"), "PING").await?;
        Ok(())
    }

    /// `CLUSTER INFO` as key/value pairs.
    async fn cluster_info(&self) -> Result<Vec<(String, String)>> {
        let text: String = self
            .query(redis::cmd("CLUSTER").arg("INFO"), "CLUSTER INFO")
            .await?;
        Ok(parse_info(&text))
    }

    async fn info_replication(&self) -> Result<Vec<(String, String)>> {
        let text: String = self
            .query(redis::cmd("INFO").arg("replication"), "INFO replication")
            .await?;
        Ok(parse_info(&text))
    }

    /// The node's name, `redis-PORT`.
    pub fn name(&self) -> &str {
        self.inner.server.name()
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The address it listens on: 127.0.0.1, or its host's address on a [`Net`](crate::net::Net).
    pub fn ip(&self) -> Ipv4Addr {
        self.inner.place.ip
    }

    /// `127.0.0.1:PORT` (or the host's address).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.inner.place.ip, self.inner.port)
    }

    /// `redis://127.0.0.1:PORT` (or the host's address); `rediss://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}:{}", self.inner.place.ip, self.inner.port)
    }

    /// Its TLS settings, when it serves TLS.
    pub fn tls(&self) -> Option<&ServerTls> {
        self.inner.tls.as_ref()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.server.pid()
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// SIGKILL, as a crash; waits for the exit.
    ///
    /// # Errors
    /// When the process cannot be signalled or reaped.
    pub fn kill(&self) -> Result<()> {
        self.inner.server.kill(&self.inner.ws)
    }

    /// Starts the node again after [`kill`](Self::kill) and waits for PONG. A cluster node rejoins with
    /// its saved `nodes.conf` (as a replica, once a failover has replaced it).
    ///
    /// # Errors
    /// [`Error::InvalidState`] when it is running, [`Error::Startup`] when it does not come up.
    pub async fn start(&self) -> Result<()> {
        self.launch().await
    }
}

fn parse_info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn field<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A standalone Redis server on a free loopback port, persistence off.
///
/// ```no_run
/// # async fn demo() -> herd_testkit::Result<()> {
/// let redis = herd_testkit::RedisServer::start().await?;
/// let client = redis::Client::open(redis.url()).expect("url");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    node: RedisNode,
    ws: Arc<Workspace>,
}

impl RedisServer {
    /// Starts the server and waits until it answers PING.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] without `redis-server`, [`Error::Startup`] when it does not come up.
    pub async fn start() -> Result<RedisServer> {
        RedisServer::start_placed(Placement::local()).await
    }

    /// [`RedisServer::start`] serving TLS only (`--port 0 --tls-port PORT`) with `tls`'s
    /// certificate, checking client certificates against its CA (`--tls-auth-clients optional`
    /// or `yes`). [`url`](Self::url) is then `rediss://127.0.0.1:PORT`.
    ///
    /// # Errors
    /// As [`RedisServer::start`]; [`Error::Unsupported`] when `redis-server` was built without
    /// TLS.
    pub async fn start_tls(tls: ServerTls) -> Result<RedisServer> {
        RedisServer::start_placed_tls(Placement::local(), Some(tls)).await
    }

    /// [`RedisServer::start`] at a given place (a `Net` host).
    pub(crate) async fn start_placed(place: Placement) -> Result<RedisServer> {
        RedisServer::start_placed_tls(place, None).await
    }

    async fn start_placed_tls(place: Placement, tls: Option<ServerTls>) -> Result<RedisServer> {
        let ws = Arc::new(Workspace::new("herd-redis-")?);
        let node = RedisNode::new(&ws, None, place, tls)?;
        node.launch().await?;
        Ok(RedisServer { node, ws })
    }

    /// The server as a node (pid, kill, start).
    pub fn node(&self) -> &RedisNode {
        &self.node
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` when it serves TLS).
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.node.addr()
    }

    /// SIGKILL, as a crash.
    ///
    /// # Errors
    /// When the process cannot be signalled or reaped.
    pub fn kill(&self) -> Result<()> {
        self.node.kill()
    }

    /// The pids of the server and the cleanup watchdog.
    pub fn pids(&self) -> Vec<u32> {
        self.node
            .pid()
            .into_iter()
            .chain(self.ws.watchdog_pid())
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self
            .node
            .inner
            .server
            .stop_blocking(&self.ws, Signal::SIGKILL, Duration::ZERO);
    }
}

/// How to build a [`RedisCluster`].
#[derive(Debug, Clone)]
pub struct RedisClusterBuilder {
    masters: usize,
    replicas_per_master: usize,
    node_timeout: Duration,
    tls: Option<ServerTls>,
}

impl Default for RedisClusterBuilder {
    fn default() -> Self {
        RedisClusterBuilder {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_millis(2000),
            tls: None,
        }
    }
}

impl RedisClusterBuilder {
    /// Number of masters (default 3; Redis needs at least 3).
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// Replicas per master (default 1).
    pub fn replicas_per_master(mut self, n: usize) -> Self {
        self.replicas_per_master = n;
        self
    }

    /// `cluster-node-timeout` (default 2 s): how long a master must be unreachable before its replica
    /// takes over.
    pub fn node_timeout(mut self, t: Duration) -> Self {
        self.node_timeout = t;
        self
    }

    /// Serves TLS only with `tls`'s certificate: clients on `--tls-port` (the plain port is 0),
    /// the cluster bus (`--tls-cluster yes`) and replication (`--tls-replication yes`) too, and
    /// client certificates checked against its CA (`--tls-auth-clients optional` or `yes`).
    /// [`RedisCluster::urls`] are then `rediss://` URLs. Use [`TestCa::server`] (the nodes
    /// announce 127.0.0.1, which clients check the certificate against).
    ///
    /// [`TestCa::server`]: crate::tls::TestCa::server
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts the nodes, creates the cluster with `redis-cli --cluster create`, and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots covered and every replica is in sync.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] without `redis-server`/`redis-cli`, [`Error::Startup`],
    /// [`Error::Command`] when `redis-cli` fails, [`Error::Timeout`] when the cluster does not settle.
    pub async fn start(self) -> Result<RedisCluster> {
        self.start_placed(vec![Placement::local()]).await
    }

    /// [`RedisClusterBuilder::start`] with node `i` at `places[i % places.len()]` (`Net` hosts).
    pub(crate) async fn start_placed(self, places: Vec<Placement>) -> Result<RedisCluster> {
        if self.masters < 3 {
            return Err(Error::InvalidState {
                node: "redis cluster".to_owned(),
                op: "create",
                reason: "Redis Cluster needs at least 3 masters",
            });
        }
        let cli = process::redis_program("redis-cli")?;
        let ws = Arc::new(Workspace::new("herd-redis-cluster-")?);
        let count = self.masters * (1 + self.replicas_per_master);
        let mut nodes = Vec::with_capacity(count);
        for place in places.iter().cycle().take(count) {
            nodes.push(RedisNode::new(
                &ws,
                Some(self.node_timeout),
                place.clone(),
                self.tls.clone(),
            )?);
        }
        let cluster = RedisCluster {
            nodes,
            ws,
            node_timeout: self.node_timeout,
        };
        for r in futures::future::join_all(cluster.nodes.iter().map(RedisNode::launch)).await {
            r?;
        }
        let addrs = cluster.addrs();
        let replicas = self.replicas_per_master.to_string();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let tls_args: Vec<String> = self.tls.as_ref().map_or_else(Vec::new, |tls| {
            vec![
                "--tls".to_owned(),
                "--cacert".to_owned(),
                tls.ca_file().display().to_string(),
                "--cert".to_owned(),
                tls.client_cert_file().display().to_string(),
                "--key".to_owned(),
                tls.client_key_file().display().to_string(),
            ]
        });
        args.extend(tls_args.iter().map(String::as_str));
        process::run(&cli, &args, None, "redis cluster").await?;
        cluster.wait_settled(START_TIMEOUT).await?;
        Ok(cluster)
    }
}

/// A Redis Cluster of real redis-server processes on free loopback ports (3 masters + 3 replicas by
/// default), persistence off. Stopped and cleaned up on drop.
///
/// ```no_run
/// # async fn demo() -> herd_testkit::Result<()> {
/// use redis::AsyncCommands;
/// let rc = herd_testkit::RedisCluster::start().await?;
/// let client = redis::cluster::ClusterClient::new(rc.urls()).expect("urls");
/// let mut conn = client.get_async_connection().await.expect("connect");
/// let _: () = conn.set("k", "v").await.expect("set");
/// let master = rc.masters().await?[0];
/// master.kill()?;
/// let took = rc.wait_for_failover(std::time::Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    ws: Arc<Workspace>,
    node_timeout: Duration,
}

impl RedisCluster {
    /// A 3-master, 3-replica cluster with a 2 s node timeout. See [`RedisCluster::builder`].
    ///
    /// # Errors
    /// As [`RedisClusterBuilder::start`].
    pub async fn start() -> Result<RedisCluster> {
        Self::builder().start().await
    }

    /// Configures the node count and `cluster-node-timeout`.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// Every node, masters and replicas, in start order.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// `redis://127.0.0.1:PORT` for every node (seed list for a cluster client); `rediss://` when
    /// the cluster serves TLS.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// `127.0.0.1:PORT` for every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::addr).collect()
    }

    /// The configured `cluster-node-timeout`.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// The running masters that serve slots, as the cluster sees them now.
    ///
    /// # Errors
    /// When no running node answers `CLUSTER NODES`.
    pub async fn masters(&self) -> Result<Vec<&RedisNode>> {
        let view = self.topology().await?;
        Ok(self
            .nodes
            .iter()
            .filter(|n| {
                n.is_running()
                    && view
                        .iter()
                        .any(|e| e.port == n.port() && e.is_master && e.has_slots && !e.failed)
            })
            .collect())
    }

    /// Waits until the cluster has recovered from a fault: every running node reports
    /// `cluster_state:ok`, and every slot is served by a running master. Returns how long it took.
    ///
    /// # Errors
    /// [`Error::Timeout`] when that does not happen within `timeout`.
    pub async fn wait_for_failover(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        self.wait_settled(timeout).await?;
        Ok(start.elapsed())
    }

    async fn wait_settled(&self, timeout: Duration) -> Result<()> {
        process::wait_until(
            || "the Redis Cluster to report cluster_state:ok with every slot on a running master and replicas in sync".to_owned(),
            timeout,
            || async { Ok(self.is_settled().await.then_some(())) },
        )
        .await
    }

    async fn is_settled(&self) -> bool {
        let running: Vec<&RedisNode> = self.nodes.iter().filter(|n| n.is_running()).collect();
        for n in &running {
            let Ok(info) = n.cluster_info().await else {
                return false;
            };
            if field(&info, "cluster_state") != Some("ok")
                || field(&info, "cluster_slots_ok") != Some("16384")
            {
                return false;
            }
        }
        let Ok(view) = self.topology().await else {
            return false;
        };
        // Every slot-holding master is one of ours that runs; every running replica is linked.
        let masters_ok = view
            .iter()
            .filter(|e| e.is_master && e.has_slots)
            .all(|e| !e.failed && running.iter().any(|n| n.port() == e.port));
        if !masters_ok {
            return false;
        }
        for n in &running {
            let Ok(info) = n.info_replication().await else {
                return false;
            };
            if field(&info, "role") == Some("slave")
                && field(&info, "master_link_status") != Some("up")
            {
                return false;
            }
        }
        true
    }

    /// `CLUSTER NODES` as seen by the first running node that answers.
    async fn topology(&self) -> Result<Vec<TopologyEntry>> {
        let mut last = None;
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            match n
                .query::<String>(redis::cmd("CLUSTER").arg("NODES"), "CLUSTER NODES")
                .await
            {
                Ok(text) => return Ok(text.lines().filter_map(TopologyEntry::parse).collect()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::InvalidState {
            node: "redis cluster".to_owned(),
            op: "read CLUSTER NODES",
            reason: "no node is running",
        }))
    }

    /// The pids of every running node and of the cleanup watchdog.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(RedisNode::pid)
            .chain(self.ws.watchdog_pid())
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = n
                .inner
                .server
                .stop_blocking(&self.ws, Signal::SIGKILL, Duration::ZERO);
        }
    }
}

/// One line of `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>...`
#[derive(Debug)]
struct TopologyEntry {
    port: u16,
    is_master: bool,
    failed: bool,
    has_slots: bool,
}

impl TopologyEntry {
    fn parse(line: &str) -> Option<TopologyEntry> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let addr = parts.get(1)?.split('@').next()?;
        let port = addr.rsplit_once(':')?.1.parse().ok()?;
        let flags = parts.get(2)?;
        Some(TopologyEntry {
            port,
            is_master: flags.split(',').any(|f| f == "master"),
            failed: flags.split(',').any(|f| f == "fail" || f == "fail?"),
            has_slots: parts.len() > 8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() {
        let master = "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 master - 0 1426238317239 4 connected 0-5460";
        let replica = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,slave 07c37dfeb235213a872192d90877d0cd55635b91 0 0 1 connected";
        let failed = "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238316232 3 disconnected";
        let m = TopologyEntry::parse(master).unwrap();
        assert_eq!(
            (m.port, m.is_master, m.failed, m.has_slots),
            (30004, true, false, true)
        );
        let r = TopologyEntry::parse(replica).unwrap();
        assert_eq!((r.port, r.is_master, r.has_slots), (30001, false, false));
        let f = TopologyEntry::parse(failed).unwrap();
        assert!(f.failed && !f.has_slots);
        assert!(TopologyEntry::parse("garbage").is_none());
    }
}
