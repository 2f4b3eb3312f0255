//! Server processes: finding binaries, free ports, running as the `postgres` user, stopping by pid, and
//! the watchdog that cleans up when the test process dies without running destructors.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, User};

use crate::error::{Error, Result};

/// Where a server runs: the address it listens on and, for a host of a `Net`, the network
/// namespace it is started in (a path under /run/netns).
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub(crate) ip: Ipv4Addr,
    pub(crate) netns: Option<PathBuf>,
}

impl Placement {
    /// 127.0.0.1 in the test process's own namespace.
    pub(crate) fn local() -> Placement {
        Placement {
            ip: Ipv4Addr::LOCALHOST,
            netns: None,
        }
    }
}

/// Spawns `cmd`, inside the network namespace `netns` when given.
fn spawn_placed(cmd: &mut Command, netns: Option<&Path>) -> std::io::Result<Child> {
    match netns {
        None => cmd.spawn(),
        #[cfg(target_os = "linux")]
        Some(ns) => crate::net::in_netns(ns, || cmd.spawn())?,
        #[cfg(not(target_os = "linux"))]
        Some(_) => Err(std::io::Error::other("network namespaces need Linux")),
    }
}

/// The user server programs run as: `None` means the current user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// PostgreSQL refuses to run as root: when we are root, run it as the `postgres` system user.
    pub(crate) fn for_postgres() -> Result<Option<RunAs>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        match User::from_name("postgres") {
            Ok(Some(user)) => Ok(Some(RunAs {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })),
            _ => Err(Error::NoPostgresUser),
        }
    }

    pub(crate) fn apply(run_as: Option<RunAs>, cmd: &mut Command) {
        if let Some(r) = run_as {
            // std drops supplementary groups (setgroups(0)) when a uid is set.
            cmd.uid(r.uid).gid(r.gid);
        }
    }

    /// Creates `dir` (mode 0700) owned by the user the server runs as.
    pub(crate) fn private_dir(run_as: Option<RunAs>, dir: &Path) -> Result<()> {
        let what = || format!("create {}", dir.display());
        fs::create_dir_all(dir).map_err(|e| Error::io(what(), e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(what(), e))?;
        if let Some(r) = run_as {
            nix::unistd::chown(
                dir,
                Some(nix::unistd::Uid::from_raw(r.uid)),
                Some(nix::unistd::Gid::from_raw(r.gid)),
            )
            .map_err(|e| Error::io(format!("chown {} to postgres", dir.display()), e.into()))?;
        }
        Ok(())
    }
}

/// Finds the directory holding PostgreSQL's server programs: `PATH`, then `pg_config --bindir`, then the
/// newest `/usr/lib/postgresql/*/bin`. All of `initdb`, `postgres` and `pg_basebackup` must be there.
/// `HERD_PG_BINDIR`, when set, names the directory and nothing else is searched.
pub(crate) fn postgres_bindir() -> Result<PathBuf> {
    const NEEDED: [&str; 3] = ["initdb", "postgres", "pg_basebackup"];
    let has_all = |dir: &Path| NEEDED.iter().all(|p| is_executable(&dir.join(p)));

    if let Some(dir) = std::env::var_os("HERD_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return match NEEDED.iter().find(|p| !is_executable(&dir.join(p))) {
            None => Ok(dir),
            Some(program) => Err(Error::MissingBinary {
                program,
                searched: format!("HERD_PG_BINDIR={}", dir.display()),
                apt: "postgresql",
                brew: "postgresql",
            }),
        };
    }
    let mut searched = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // A PATH entry may hold symlinks (e.g. /usr/local/bin/initdb); follow initdb to its real home.
            if let Ok(real) = fs::canonicalize(dir.join("initdb"))
                && let Some(parent) = real.parent()
                && has_all(parent)
            {
                return Ok(parent.to_path_buf());
            }
            if has_all(&dir) {
                return Ok(dir);
            }
        }
        searched.push("PATH".to_owned());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_all(&dir) {
            return Ok(dir);
        }
        searched.push(format!("pg_config --bindir ({})", dir.display()));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    searched.push("/usr/lib/postgresql/*/bin".to_owned());
    if let Some((_, dir)) = versions.into_iter().rev().find(|(_, d)| has_all(d)) {
        return Ok(dir);
    }
    Err(Error::MissingBinary {
        program: "initdb",
        searched: format!("searched {}", searched.join(", ")),
        apt: "postgresql",
        brew: "postgresql",
    })
}

/// Finds a Redis program (`redis-server`, `redis-cli`) on `PATH`.
pub(crate) fn redis_program(program: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or(Error::MissingBinary {
            program,
            searched: "searched PATH".to_owned(),
            apt: "redis-server",
            brew: "redis",
        })
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Ports handed out by this process, so parallel tests in one binary never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback port; with `with_bus`, `port + 10000` (Redis Cluster's bus port) is free too.
pub(crate) fn free_port(with_bus: bool) -> Result<u16> {
    let mut handed = lock(&HANDED_OUT);
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..200 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("bind a free loopback port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("read a bound port", e))?
            .port();
        if handed.contains(&port) {
            continue;
        }
        if with_bus {
            let Some(bus) = port.checked_add(10_000) else {
                continue;
            };
            if handed.contains(&bus) || TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_err() {
                continue;
            }
            handed.insert(bus);
        }
        handed.insert(port);
        return Ok(port);
    }
    Err(Error::io(
        "find a free loopback port",
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free port after 200 tries",
        ),
    ))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (we only hold handles).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A topology's temp dir plus the watchdog that cleans it up if the test process dies.
///
/// Every server started in the topology writes its pid to `<root>/pids/<name>`. The watchdog is a small
/// `sh` process reading a pipe from us: when our process exits for any reason (including a static that
/// is never dropped, a panic with `panic = abort`, or SIGKILL) the pipe closes, and the watchdog
/// SIGKILLs exactly those pids and removes the dir.
#[derive(Debug)]
pub(crate) struct Workspace {
    dir: tempfile::TempDir,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

const WATCHDOG: &str = r#"cat >/dev/null
for f in "$1"/pids/*; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
sleep 1
rm -rf "$1""#;

impl Workspace {
    pub(crate) fn new(prefix: &str) -> Result<Workspace> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| Error::io("create a temp dir", e))?;
        // The servers may run as another user (postgres): they must be able to enter the dir.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("chmod the temp dir", e))?;
        fs::create_dir(dir.path().join("pids")).map_err(|e| Error::io("create pids dir", e))?;
        fs::create_dir(dir.path().join("logs")).map_err(|e| Error::io("create logs dir", e))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("herd-testkit-watchdog")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so a Ctrl-C aimed at the test doesn't kill it before it cleans up.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("spawn the cleanup watchdog (sh)", e))?;
        let stdin = child.stdin.take().ok_or_else(|| {
            Error::io(
                "open the watchdog's pipe",
                std::io::Error::other("no stdin pipe"),
            )
        })?;
        Ok(Workspace {
            dir,
            watchdog: Mutex::new(Some((child, stdin))),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    fn pid_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("pids").join(name)
    }

    /// The watchdog's pid (for tests proving nothing is left behind).
    pub(crate) fn watchdog_pid(&self) -> Option<u32> {
        lock(&self.watchdog).as_ref().map(|(c, _)| c.id())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // The owner stopped its servers already; the watchdog has nothing left to do.
        if let Some((mut child, stdin)) = lock(&self.watchdog).take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(stdin);
        }
        // TempDir's own drop removes the dir (as root it can remove the postgres-owned files too).
    }
}

/// One long-running server process (a postmaster or a redis-server), restartable.
#[derive(Debug)]
pub(crate) struct Server {
    name: String,
    child: Mutex<Option<Child>>,
}

impl Server {
    pub(crate) fn new(name: impl Into<String>) -> Server {
        Server {
            name: name.into(),
            child: Mutex::new(None),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Spawns `cmd` with its output appended to the node's log, and registers its pid with the watchdog;
    /// inside the network namespace `netns` when given.
    pub(crate) fn spawn(
        &self,
        ws: &Workspace,
        mut cmd: Command,
        netns: Option<&Path>,
    ) -> Result<()> {
        let mut slot = lock(&self.child);
        if let Some(child) = slot.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            return Err(Error::InvalidState {
                node: self.name.clone(),
                op: "start",
                reason: "it is already running",
            });
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(ws.log_path(&self.name))
            .map_err(|e| Error::io(format!("open the log of {}", self.name), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("open the log of {}", self.name), e))?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: Ctrl-C in a terminal running herd-dev must not kill the servers
            // before herd-dev stops them in order.
            .process_group(0);
        let child = spawn_placed(&mut cmd, netns)
            .map_err(|e| Error::io(format!("spawn {}", self.name), e))?;
        fs::write(ws.pid_path(&self.name), child.id().to_string())
            .map_err(|e| Error::io(format!("write the pid file of {}", self.name), e))?;
        *slot = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        let mut slot = lock(&self.child);
        let child = slot.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// `Some(status)` when the process has exited (or was never started).
    pub(crate) fn exited(&self) -> Option<String> {
        let mut slot = lock(&self.child);
        match slot.as_mut() {
            None => Some("never started".to_owned()),
            Some(child) => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(status.to_string()),
                Err(e) => Some(e.to_string()),
            },
        }
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&self, ws: &Workspace) -> Result<()> {
        let mut slot = lock(&self.child);
        if let Some(mut child) = slot.take() {
            child
                .kill()
                .or_else(|e| match child.try_wait() {
                    Ok(Some(_)) => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| Error::io(format!("SIGKILL {}", self.name), e))?;
            child
                .wait()
                .map_err(|e| Error::io(format!("reap {}", self.name), e))?;
        }
        let _ = fs::remove_file(ws.pid_path(&self.name));
        Ok(())
    }

    /// Sends `sig`, waits up to `grace` for the exit, then SIGKILLs. Blocking: used from `Drop` too.
    pub(crate) fn stop_blocking(&self, ws: &Workspace, sig: Signal, grace: Duration) -> Result<()> {
        {
            let mut slot = lock(&self.child);
            if let Some(child) = slot.as_mut()
                && matches!(child.try_wait(), Ok(None))
            {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = signal::kill(pid, sig);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        self.kill(ws)
    }

    /// Async form of [`Server::stop_blocking`], for use inside a runtime.
    pub(crate) async fn stop(&self, ws: &Workspace, sig: Signal, grace: Duration) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = signal::kill(Pid::from_raw(pid as i32), sig);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.pid().is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.kill(ws)
    }
}

/// The last `lines` lines of a log file (for error messages).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    let all: Vec<&str> = buf.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `probe` every 50 ms until it returns `Ok(Some(_))`, the server exits, or `timeout` passes.
pub(crate) async fn wait_until<T, F, Fut>(
    what: impl Fn() -> String,
    timeout: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a helper program to completion, failing with its output when it exits non-zero.
pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    run_as: Option<RunAs>,
    node: &str,
) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    RunAs::apply(run_as, &mut cmd);
    if run_as.is_some() {
        // Some PostgreSQL tools read $HOME; root's is not readable by postgres.
        cmd.env("HOME", "/tmp").current_dir("/tmp");
    }
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::io(format!("run {name} for {node}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    Err(Error::Command {
        program: name,
        node: node.to_owned(),
        status: out.status.to_string(),
        output: lines[lines.len().saturating_sub(20)..].join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_it_and_the_package() {
        let err = redis_program("herd-no-such-redis-server").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`herd-no-such-redis-server` was not found"),
            "{msg}"
        );
        assert!(msg.contains("apt-get install -y redis-server"), "{msg}");
        assert!(msg.contains("brew install redis"), "{msg}");
    }

    #[test]
    fn free_ports_are_distinct_and_leave_room_for_the_bus() {
        let ports: Vec<u16> = (0..50).map(|_| free_port(true).unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| *p <= 65_535 - 10_000));
    }
}
