//! A PostgreSQL primary with streaming replicas, started from the machine's own binaries.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sqlx::Connection;

use crate::error::{Error, Result};
use crate::process::{self, Placement, RunAs, Server, Workspace};
use crate::tls::{ClientAuth, ServerTls};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL primary plus N streaming replicas on free loopback ports, in a temp dir.
///
/// Trust authentication, user `postgres`, database `postgres`, `fsync=off`. Everything is stopped and
/// the temp dir removed when the value is dropped (also when a test panics), and by a watchdog process
/// if the test process dies without dropping it.
///
/// ```no_run
/// # async fn demo() -> herd_testkit::Result<()> {
/// let pg = herd_testkit::PgCluster::start(2).await?;
/// let primary = sqlx::PgPool::connect(&pg.primary_url()).await.expect("connect");
/// sqlx::query("CREATE TABLE t (id int)").execute(&primary).await.expect("create");
/// pg.wait_for_replay().await?; // the table is now visible on every replica
/// pg.replica(0).pause_replay().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgCluster {
    primary: PgNode,
    replicas: Vec<PgNode>,
    ws: Arc<Workspace>,
}

/// One PostgreSQL server of a [`PgCluster`]: the primary or a replica.
pub struct PgNode {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
struct NodeInner {
    name: String,
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    bindir: PathBuf,
    run_as: Option<RunAs>,
    server: Server,
    ws: Arc<Workspace>,
    /// Its address and network namespace.
    place: Placement,
    /// `Some((primary address, primary port))` for a node started as a replica.
    upstream: Option<(Ipv4Addr, u16)>,
    /// TLS settings and the server's own copies of its certificate files, when it runs with
    /// `ssl=on`.
    tls: Option<Arc<PgTls>>,
}

/// A TLS cluster's settings and where its server reads its certificate, key and CA.
#[derive(Debug)]
struct PgTls {
    settings: ServerTls,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
}

impl fmt::Debug for PgNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgNode")
            .field("name", &self.inner.name)
            .field("port", &self.inner.port)
            .field("pid", &self.pid())
            .finish()
    }
}

impl PgCluster {
    /// Starts a primary and `replicas` streaming replicas; returns once every replica is streaming
    /// (seen in the primary's `pg_stat_replication`).
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when PostgreSQL is not installed, [`Error::Startup`] with the server's
    /// log when a node does not come up.
    pub async fn start(replicas: usize) -> Result<PgCluster> {
        PgCluster::start_placed(Placement::local(), vec![Placement::local(); replicas]).await
    }

    /// [`PgCluster::start`] with `ssl=on`, presenting `tls`'s certificate and checking client
    /// certificates against its CA. Connections other than replication must use TLS
    /// (`hostnossl ... reject`); with [`ClientAuth::Required`] they must also present a client
    /// certificate whose common name is the user name (`hostssl ... clientcert=verify-full`).
    /// Replication connections (base backups, streaming) keep libpq's default `sslmode=prefer`.
    ///
    /// The URLs ([`PgNode::url`], [`PgCluster::primary_url`]) then carry `sslmode=verify-full`,
    /// `sslrootcert` and, with [`ClientAuth::Required`], `sslcert` and `sslkey`; the kit's own
    /// connections check the chain only (`verify-ca`), so a server presenting
    /// [`TestCa::server_for_hostname`](crate::tls::TestCa::server_for_hostname) starts too.
    ///
    /// # Errors
    /// As [`PgCluster::start`].
    pub async fn start_tls(replicas: usize, tls: ServerTls) -> Result<PgCluster> {
        PgCluster::start_placed_tls(
            Placement::local(),
            vec![Placement::local(); replicas],
            Some(tls),
        )
        .await
    }

    /// [`PgCluster::start`] with the primary and each replica at a given place (a `Net` host).
    pub(crate) async fn start_placed(
        primary_place: Placement,
        replica_places: Vec<Placement>,
    ) -> Result<PgCluster> {
        PgCluster::start_placed_tls(primary_place, replica_places, None).await
    }

    async fn start_placed_tls(
        primary_place: Placement,
        replica_places: Vec<Placement>,
        tls: Option<ServerTls>,
    ) -> Result<PgCluster> {
        let bindir = process::postgres_bindir()?;
        let run_as = RunAs::for_postgres()?;
        let ws = Arc::new(Workspace::new("herd-pg-")?);
        let socket_dir = ws.path().join("sockets");
        RunAs::private_dir(run_as, &socket_dir)?;
        let tls = tls
            .map(|settings| PgTls::install(settings, &ws, run_as))
            .transpose()?
            .map(Arc::new);

        let primary = PgNode::new(
            &ws,
            "primary",
            &bindir,
            run_as,
            &socket_dir,
            primary_place,
            None,
            tls.clone(),
        )?;
        RunAs::private_dir(run_as, &primary.inner.data_dir)?;
        let data = primary.inner.data_dir.to_string_lossy().into_owned();
        process::run(
            &bindir.join("initdb"),
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            run_as,
            "primary",
        )
        .await?;
        if !primary.inner.place.ip.is_loopback() {
            // Clients and replicas on other hosts of the subnet (replicas copy this file).
            let hba = primary.inner.data_dir.join("pg_hba.conf");
            let mut f = std::fs::File::options()
                .append(true)
                .open(&hba)
                .map_err(|e| Error::io(format!("open {}", hba.display()), e))?;
            std::io::Write::write_all(
                &mut f,
                b"host all all samenet trust\nhost replication all samenet trust\n",
            )
            .map_err(|e| Error::io(format!("write {}", hba.display()), e))?;
        }
        if let Some(tls) = &tls {
            // Replicas copy this file with their base backup.
            tls.require_tls(&primary.inner.data_dir)?;
        }
        primary.launch().await?;

        let mut nodes = Vec::with_capacity(replica_places.len());
        for (i, place) in (1..).zip(replica_places) {
            let node = PgNode::new(
                &ws,
                &format!("replica{i}"),
                &bindir,
                run_as,
                &socket_dir,
                place,
                Some((primary.inner.place.ip, primary.port())),
                tls.clone(),
            )?;
            RunAs::private_dir(run_as, &node.inner.data_dir)?;
            nodes.push(node);
        }
        // Base backups run concurrently; each is a small, fresh cluster.
        let backups = nodes
            .iter()
            .map(|n| n.base_backup(primary.inner.place.ip, primary.port()));
        for r in futures::future::join_all(backups).await {
            r?;
        }
        for node in &nodes {
            node.launch().await?;
        }
        let cluster = PgCluster {
            primary,
            replicas: nodes,
            ws,
        };
        cluster.wait_streaming().await?;
        Ok(cluster)
    }

    async fn wait_streaming(&self) -> Result<()> {
        let want = self.replicas.len() as i64;
        let primary = &self.primary;
        process::wait_until(
            || format!("{want} replicas streaming from the primary"),
            START_TIMEOUT,
            || async move {
                let n: i64 = primary
                    .query_scalar(
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                        "read pg_stat_replication",
                    )
                    .await?;
                Ok((n >= want).then_some(()))
            },
        )
        .await
    }

    /// The node started as the primary (it stays "primary" by name after a failover).
    pub fn primary(&self) -> &PgNode {
        &self.primary
    }

    /// The replicas, in start order (`replica1` is `replicas()[0]`).
    pub fn replicas(&self) -> &[PgNode] {
        &self.replicas
    }

    /// Replica `i` (0-based).
    ///
    /// # Panics
    /// When `i` is out of range: a test's own mistake.
    pub fn replica(&self, i: usize) -> &PgNode {
        &self.replicas[i]
    }

    /// Every node, the primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &PgNode> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// The primary's connection URL.
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// The replicas' connection URLs, in order.
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(PgNode::url).collect()
    }

    /// Per replica, how many bytes of WAL the primary has written that the replica has not replayed.
    ///
    /// # Errors
    /// When the primary or a replica cannot be queried (a stopped node is an error, naming it).
    pub async fn lag_bytes(&self) -> Result<Vec<u64>> {
        let lsn = self.primary.current_lsn().await?;
        let mut out = Vec::with_capacity(self.replicas.len());
        for r in &self.replicas {
            out.push(r.bytes_behind(&lsn).await?);
        }
        Ok(out)
    }

    /// Waits until every running replica has replayed everything the primary has written so far.
    ///
    /// # Errors
    /// [`Error::Timeout`] after 30 s, e.g. when a replica's replay is paused.
    pub async fn wait_for_replay(&self) -> Result<()> {
        let lsn = self.primary.current_lsn().await?;
        for r in self.replicas.iter().filter(|r| r.is_running()) {
            let lsn = &lsn;
            process::wait_until(
                || format!("{} to replay up to {lsn}", r.name()),
                Duration::from_secs(30),
                || async move { Ok((r.bytes_behind(lsn).await? == 0).then_some(())) },
            )
            .await?;
        }
        Ok(())
    }

    /// Makes the primary's commits wait until a replica has flushed them to disk
    /// (`synchronous_standby_names = '*'`, set with `ALTER SYSTEM` on the primary only, so that a
    /// promoted replica does not wait for a standby it does not have). With it a failover loses
    /// no acknowledged commit; with asynchronous streaming replication (the default) the last
    /// commits before a crash can be lost, whatever the clients do.
    ///
    /// # Errors
    /// When the primary cannot be reached or refuses the setting.
    pub async fn synchronous_commit(&self) -> Result<()> {
        let primary = &self.primary;
        let mut conn = primary.connect().await?;
        for sql in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::raw_sql(sql)
                .execute(&mut conn)
                .await
                .map_err(|source| primary.sql_error("set synchronous_standby_names", source))?;
        }
        let _ = conn.close().await;
        // Reloaded asynchronously: wait until the walsender reports the standby as synchronous.
        process::wait_until(
            || "a synchronous standby".to_owned(),
            START_TIMEOUT,
            || async move {
                let n: i64 = primary
                    .query_scalar(
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')",
                        "read pg_stat_replication",
                    )
                    .await?;
                Ok((n > 0 || self.replicas.is_empty()).then_some(()))
            },
        )
        .await
    }

    /// The pids of every running server and of the cleanup watchdog (to prove nothing outlives a drop).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes()
            .filter_map(PgNode::pid)
            .chain(self.ws.watchdog_pid())
            .collect()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster stops its backends itself and exits, leaving no orphans.
        for node in self.replicas.iter().chain(std::iter::once(&self.primary)) {
            let _ =
                node.inner
                    .server
                    .stop_blocking(&self.ws, Signal::SIGQUIT, Duration::from_secs(10));
        }
    }
}

impl PgNode {
    #[expect(
        clippy::too_many_arguments,
        reason = "a private constructor taking the node's fields, called for the primary and each replica"
    )]
    fn new(
        ws: &Arc<Workspace>,
        name: &str,
        bindir: &std::path::Path,
        run_as: Option<RunAs>,
        socket_dir: &std::path::Path,
        place: Placement,
        upstream: Option<(Ipv4Addr, u16)>,
        tls: Option<Arc<PgTls>>,
    ) -> Result<PgNode> {
        Ok(PgNode {
            inner: Arc::new(NodeInner {
                name: name.to_owned(),
                port: process::free_port(false)?,
                data_dir: ws.path().join(name),
                socket_dir: socket_dir.to_path_buf(),
                bindir: bindir.to_path_buf(),
                run_as,
                server: Server::new(name),
                ws: Arc::clone(ws),
                place,
                upstream,
                tls,
            }),
        })
    }

    async fn base_backup(&self, primary_ip: Ipv4Addr, primary_port: u16) -> Result<()> {
        let i = &self.inner;
        process::run(
            &i.bindir.join("pg_basebackup"),
            &[
                "-h",
                &primary_ip.to_string(),
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &i.data_dir.to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            i.run_as,
            &i.name,
        )
        .await
    }

    fn command(&self) -> Command {
        let i = &self.inner;
        let mut cmd = Command::new(i.bindir.join("postgres"));
        cmd.arg("-D").arg(&i.data_dir);
        cmd.arg("-p").arg(i.port.to_string());
        let mut set = |kv: String| {
            cmd.arg("-c").arg(kv);
        };
        set(format!("listen_addresses={}", i.place.ip));
        set(format!(
            "unix_socket_directories={}",
            i.socket_dir.display()
        ));
        set("wal_level=replica".into());
        set("hot_standby=on".into());
        set("hot_standby_feedback=on".into());
        set("fsync=off".into());
        set("full_page_writes=off".into());
        set("max_wal_senders=10".into());
        set("max_replication_slots=10".into());
        // Bounded WAL on disk: a test's cluster keeps at most about 160 MB a node (many clusters
        // run at once in `cargo test --workspace`, and CI's disk is shared with its builds).
        set("wal_keep_size=64MB".into());
        set("min_wal_size=32MB".into());
        set("max_wal_size=96MB".into());
        set("wal_receiver_status_interval=1s".into());
        set("max_connections=200".into());
        set("shared_buffers=32MB".into());
        set("logging_collector=off".into());
        if let Some(tls) = &i.tls {
            set("ssl=on".into());
            set(format!("ssl_cert_file={}", tls.cert_file.display()));
            set(format!("ssl_key_file={}", tls.key_file.display()));
            set(format!("ssl_ca_file={}", tls.ca_file.display()));
        }
        if let Some((up_ip, up_port)) = i.upstream {
            // Name the replica in pg_stat_replication; -R wrote the rest of the conninfo.
            set(format!(
                "primary_conninfo=host={up_ip} port={up_port} user=postgres application_name={}",
                i.name
            ));
        }
        RunAs::apply(i.run_as, &mut cmd);
        if i.run_as.is_some() {
            cmd.current_dir("/tmp").env("HOME", "/tmp");
        }
        cmd.env("LC_ALL", "C");
        cmd
    }

    /// Spawns the postmaster and waits until it accepts connections.
    async fn launch(&self) -> Result<()> {
        let i = &self.inner;
        i.server
            .spawn(&i.ws, self.command(), i.place.netns.as_deref())?;
        let started = Instant::now();
        loop {
            if let Some(status) = i.server.exited() {
                return Err(self.startup_error(format!("the server exited ({status})")));
            }
            if self.connect().await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = i.server.kill(&i.ws);
                return Err(self
                    .startup_error(format!("not accepting connections after {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn startup_error(&self, reason: String) -> Error {
        Error::Startup {
            node: self.inner.name.clone(),
            reason,
            log_tail: process::log_tail(&self.inner.ws.log_path(&self.inner.name), 30),
        }
    }

    async fn connect(&self) -> Result<sqlx::PgConnection> {
        sqlx::PgConnection::connect(&self.kit_url())
            .await
            .map_err(|source| Error::Sql {
                node: self.inner.name.clone(),
                op: "connect",
                source,
            })
    }

    async fn query_scalar<T>(&self, sql: &'static str, op: &'static str) -> Result<T>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        let mut conn = self.connect().await?;
        let v = sqlx::query_scalar::<_, T>(sql)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| self.sql_error(op, source))?;
        let _ = conn.close().await;
        Ok(v)
    }

    fn sql_error(&self, op: &'static str, source: sqlx::Error) -> Error {
        Error::Sql {
            node: self.inner.name.clone(),
            op,
            source,
        }
    }

    async fn current_lsn(&self) -> Result<String> {
        self.query_scalar(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
            "read the current WAL LSN",
        )
        .await
    }

    async fn bytes_behind(&self, lsn: &str) -> Result<u64> {
        let mut conn = self.connect().await?;
        let lag: Option<f64> = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::float8",
        )
        .bind(lsn)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| self.sql_error("read the replay LSN", e))?;
        let _ = conn.close().await;
        // NULL means the node is not in recovery (a primary): it is behind nobody.
        Ok(lag.map_or(0, |l| l.max(0.0) as u64))
    }

    /// The node's name: `primary`, `replica1`, `replica2`, ...
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

    /// Its connection URL (`postgres://postgres@127.0.0.1:PORT/postgres`, or the host's address).
    ///
    /// On a TLS cluster ([`PgCluster::start_tls`]) it adds `sslmode=verify-full` and
    /// `sslrootcert` (the test CA), and `sslcert`/`sslkey` (the test client certificate) when the
    /// server requires one.
    pub fn url(&self) -> String {
        let base = self.plain_url();
        match &self.inner.tls {
            None => base,
            Some(tls) => {
                let s = &tls.settings;
                let mut url = format!(
                    "{base}?sslmode=verify-full&sslrootcert={}",
                    s.ca_file().display()
                );
                if s.client_auth() == ClientAuth::Required {
                    url.push_str(&client_params(s));
                }
                url
            }
        }
    }

    /// The URL without any TLS parameter: `postgres://postgres@127.0.0.1:PORT/postgres`, for
    /// tests that choose `sslmode` and certificates themselves.
    pub fn plain_url(&self) -> String {
        format!(
            "postgres://postgres@{}:{}/postgres",
            self.inner.place.ip, self.inner.port
        )
    }

    /// The URL the kit connects with: on a TLS cluster the chain is checked but not the host
    /// name (the server may present a certificate for another name on purpose), and the client
    /// certificate is always presented.
    fn kit_url(&self) -> String {
        let base = self.plain_url();
        match &self.inner.tls {
            None => base,
            Some(tls) => format!(
                "{base}?sslmode=verify-ca&sslrootcert={}{}",
                tls.settings.ca_file().display(),
                client_params(&tls.settings)
            ),
        }
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.server.pid()
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Promotes this replica (`pg_promote()`); returns once it answers `pg_is_in_recovery() = false`.
    ///
    /// # Errors
    /// When the node is not a replica or cannot be reached.
    pub async fn promote(&self) -> Result<()> {
        let promoted: bool = self
            .query_scalar("SELECT pg_promote(true, 60)", "pg_promote()")
            .await?;
        if !promoted {
            return Err(Error::Timeout {
                what: format!("{} to finish promotion", self.name()),
                after: Duration::from_secs(60),
            });
        }
        process::wait_until(
            || format!("{} to leave recovery", self.name()),
            Duration::from_secs(30),
            || async {
                let r: bool = self
                    .query_scalar("SELECT pg_is_in_recovery()", "pg_is_in_recovery()")
                    .await?;
                Ok((!r).then_some(()))
            },
        )
        .await
    }

    /// Pauses WAL replay on this replica (`pg_wal_replay_pause()`): its lag grows with every write.
    ///
    /// # Errors
    /// When the node is not a replica or cannot be reached.
    pub async fn pause_replay(&self) -> Result<()> {
        let mut conn = self.connect().await?;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut conn)
            .await
            .map_err(|e| self.sql_error("pg_wal_replay_pause()", e))?;
        Ok(())
    }

    /// Resumes WAL replay (`pg_wal_replay_resume()`).
    ///
    /// # Errors
    /// When the node is not a replica or cannot be reached.
    pub async fn resume_replay(&self) -> Result<()> {
        let mut conn = self.connect().await?;
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&mut conn)
            .await
            .map_err(|e| self.sql_error("pg_wal_replay_resume()", e))?;
        Ok(())
    }

    /// Fast shutdown (SIGINT): aborts open transactions, checkpoints, exits. Waits for the exit.
    ///
    /// # Errors
    /// When the process cannot be signalled or reaped.
    pub async fn stop(&self) -> Result<()> {
        let i = &self.inner;
        i.server
            .stop(&i.ws, Signal::SIGINT, Duration::from_secs(30))
            .await
    }

    /// SIGKILL to the postmaster, as a crash. Waits for its exit; its backends follow on their own.
    ///
    /// # Errors
    /// When the process cannot be signalled or reaped.
    pub fn kill(&self) -> Result<()> {
        self.inner.server.kill(&self.inner.ws)
    }

    /// Starts the node again (after [`stop`](Self::stop) or [`kill`](Self::kill)) and waits until it
    /// accepts connections.
    ///
    /// # Errors
    /// [`Error::InvalidState`] when it is running, [`Error::Startup`] when it does not come up.
    pub async fn start(&self) -> Result<()> {
        // After a SIGKILL the old backends may hold the port for a moment; launch() waits it out.
        self.launch().await
    }
}

/// `&sslcert=...&sslkey=...` with the kit's client certificate.
fn client_params(tls: &ServerTls) -> String {
    format!(
        "&sslcert={}&sslkey={}",
        tls.client_cert_file().display(),
        tls.client_key_file().display()
    )
}

impl PgTls {
    /// Copies the certificate, key and CA into `<workspace>/tls`, owned by the user PostgreSQL
    /// runs as: the server refuses a key file that others can read or that it does not own
    /// (unless root owns it), and it cannot read the test CA's key (mode 0600, our user's).
    fn install(settings: ServerTls, ws: &Workspace, run_as: Option<RunAs>) -> Result<PgTls> {
        let dir = ws.path().join("tls");
        RunAs::private_dir(run_as, &dir)?;
        let owner = match run_as {
            Some(_) => match nix::unistd::User::from_name("postgres") {
                Ok(Some(user)) => Some((user.uid, user.gid)),
                _ => return Err(Error::NoPostgresUser),
            },
            None => None,
        };
        let copy = |from: &std::path::Path, name: &str| -> Result<PathBuf> {
            let to = dir.join(name);
            let what = || format!("copy {} to {}", from.display(), to.display());
            std::fs::copy(from, &to).map_err(|e| Error::io(what(), e))?;
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| Error::io(what(), e))?;
            if let Some((uid, gid)) = owner {
                nix::unistd::chown(&to, Some(uid), Some(gid))
                    .map_err(|e| Error::io(what(), e.into()))?;
            }
            Ok(to)
        };
        Ok(PgTls {
            cert_file: copy(settings.cert_file(), "server.crt")?,
            key_file: copy(settings.key_file(), "server.key")?,
            ca_file: copy(settings.ca_file(), "ca.crt")?,
            settings,
        })
    }

    /// Puts the TLS rules first in `pg_hba.conf` (the first matching line decides): no plain
    /// connection except replication, and a client certificate when required.
    fn require_tls(&self, data_dir: &std::path::Path) -> Result<()> {
        let hba = data_dir.join("pg_hba.conf");
        let what = || format!("rewrite {}", hba.display());
        let old = std::fs::read_to_string(&hba).map_err(|e| Error::io(what(), e))?;
        let cert = match self.settings.client_auth() {
            ClientAuth::Optional => "",
            ClientAuth::Required => " clientcert=verify-full",
        };
        let rules = format!(
            "# herd-testkit: TLS only (replication keeps the rules below)\n\
             hostnossl all all all reject\n\
             hostssl all all all trust{cert}\n"
        );
        std::fs::write(&hba, format!("{rules}{old}")).map_err(|e| Error::io(what(), e))
    }
}
