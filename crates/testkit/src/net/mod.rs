//! Many hosts on one machine: network namespaces joined by a bridge, with silent faults.
//!
//! A [`Net`] is a private IPv4 subnet `10.77.X.0/24` (`X` picked so that no other live `Net`, in
//! this process or another, uses it) with named hosts. Each host is a network namespace holding
//! one veth (`eth0`, address `10.77.X.i`); the other ends of those veths are ports of a bridge
//! that lives in a namespace of its own, so the machine's network is left alone. The only thing
//! added to the root namespace is one veth, `herd<pid>-<X>`, address `10.77.X.254`, also a port
//! of that bridge: it is how the test process itself (its clients, a gateway it runs) reaches the
//! hosts, with nothing but the kernel's own connected route.
//!
//! Servers run on a host: [`Net::pg_cluster`], [`Net::redis_server`] and [`Net::redis_cluster`]
//! start the testkit's usual topologies listening on the hosts' addresses, [`Host::command`]
//! runs any program there (`ip netns exec`), and [`Host::run`] runs a closure on a thread inside
//! the namespace (sockets it creates stay there, so the test can be a client on a host).
//!
//! Faults drop packets silently both ways, as a dead switch port or a firewall would: no RST,
//! no ICMP, no FIN. A new connect times out, and an established connection stalls (a write
//! succeeds locally, no reply comes) until [`Net::heal`]. They are made with static neighbour
//! entries pointing at a MAC address nobody has (`02:00:00:00:00:00`): the bridge floods such
//! frames and every receiver discards them. Only iproute2 is needed (no nftables, no iptables),
//! the entries are `PERMANENT` (ARP traffic cannot overwrite them), and healing deletes them, so
//! retransmissions of established connections get through again.
//!
//! `tc netem` is not used (many kernels lack it): [`Net::add_latency`] starts a TCP relay in the
//! target host's namespace that holds every chunk for the given delay in each direction; see its
//! documentation for the limits.
//!
//! Everything is removed when the `Net` is dropped (also when a test panics): processes still
//! running in its namespaces are killed, the namespaces and the root veth deleted. A watchdog
//! process does the same if the test process dies without dropping it, and [`sweep`] (also run
//! by [`Net::new`]) removes what crashed runs left: every name carries the creating pid, and only
//! names whose process is gone are touched. (The empty lock file `/run/herd-testkit-net.lock`,
//! taken while a `Net` claims its subnet, is kept.)
//!
//! Needs root (or `CAP_NET_ADMIN` + `CAP_SYS_ADMIN`) and `ip` from iproute2; otherwise
//! [`Net::new`] fails with [`Error::Unsupported`], which tests turn into a loud skip unless
//! [`required`] (`HERD_REQUIRE_NETNS=1`) says the machine must support it.

mod relay;

use std::collections::HashSet;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::process::{Placement, lock};
use crate::{PgCluster, RedisCluster, RedisClusterBuilder, RedisServer};

pub use relay::Latency;
use relay::Relay;

/// Names of the namespaces the testkit creates: `herd-net-<pid>-<X>-<host>`, `herd-net-<pid>-<X>.br`.
const NS_PREFIX: &str = "herd-net-";
/// Name of the root namespace's veth: `herd<pid>-<X>` (at most 15 bytes).
const LINK_PREFIX: &str = "herd";
/// The first two octets of every `Net`'s subnet.
const SUBNET: [u8; 2] = [10, 77];
/// The last octet of the test process's own address on a `Net`.
const TEST_OCTET: u8 = 254;
/// Hosts per `Net`: addresses `.1` to `.200`.
const MAX_HOSTS: usize = 200;
/// Where faults send frames: a locally administered address no interface has.
const NOWHERE_MAC: &str = "02:00:00:00:00:00";
/// The lock taken while a `Net` claims its subnet.
const LOCK_FILE: &str = "/run/herd-testkit-net.lock";
/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Whether `HERD_REQUIRE_NETNS=1` is set: a machine without namespace support must then fail the
/// tests that need it instead of skipping them (CI sets it).
pub fn required() -> bool {
    std::env::var("HERD_REQUIRE_NETNS").as_deref() == Ok("1")
}

/// One named host of a [`Net`]: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    netns: String,
    ip: Ipv4Addr,
    ip_program: PathBuf,
}

impl Host {
    /// The name given to [`Net::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address (`10.77.X.i`): servers started on it listen there.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The network namespace's name (`ip netns list` shows it; `ip -n NAME ...` works on it).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A command that runs `program` on this host (`ip netns exec NETNS program`); add arguments
    /// and spawn it as usual (it works with `tokio::process::Command::from` too). The spawned pid
    /// is the program's own (`ip` execs it). Processes still running in the namespace are killed
    /// when the [`Net`] is dropped.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip_program);
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `f` on a new thread that has joined this host's network namespace, and returns its
    /// result. Sockets created in `f` belong to the host for their whole life, so a test can act
    /// as a client on (or bind a listener of) this host, e.g. create a `std::net::TcpStream` and
    /// hand it to tokio with `from_std`. A panic in `f` is resumed on the caller's thread.
    ///
    /// # Errors
    /// When the namespace cannot be entered.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&netns_path(&self.netns), f).map_err(|e| {
            Error::io(
                format!("enter the network namespace of host {}", self.name),
                e,
            )
        })
    }

    pub(crate) fn placement(&self) -> Placement {
        Placement {
            ip: self.ip,
            netns: Some(netns_path(&self.netns)),
        }
    }
}

/// Hosts on a private subnet, joined by a bridge, with partitions, isolation and added latency.
///
/// ```no_run
/// # async fn demo() -> herd_testkit::Result<()> {
/// use std::time::Duration;
/// use herd_testkit::net::Net;
///
/// let net = Net::new(&["db", "app1", "app2"])?;
/// let pg = net.pg_cluster("db", &[]).await?; // listens on db's address
/// let _app = net.host("app1")?.command("my-app").arg("--db").arg(pg.primary_url()).spawn();
///
/// net.partition("app1", "db")?; // app1's packets to db (and back) vanish
/// net.isolate("app2")?; // app2 reaches nobody, nobody reaches app2 (the test process neither)
/// net.heal()?;
/// let slow = net.add_latency("db", pg.primary().port(), Duration::from_millis(25))?;
/// let url = format!("postgres://postgres@{}/postgres", slow.addr()); // 50 ms more per round trip
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Net {
    index: u8,
    ip_program: PathBuf,
    bridge_ns: String,
    root_link: String,
    hosts: Vec<Host>,
    relays: Mutex<Vec<Relay>>,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// The cleanup watchdog: waits for the pipe from the test process to close (it exited, however),
/// then kills what runs in the namespaces and deletes them and the root veth.
/// Arguments: the `ip` program, the root veth, the namespaces.
const WATCHDOG: &str = r#"cat >/dev/null
ip="$1"; link="$2"; shift 2
"$ip" link del "$link" 2>/dev/null
for ns in "$@"; do
  for p in $("$ip" netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  "$ip" netns del "$ns" 2>/dev/null
done"#;

impl Net {
    /// Creates the subnet, the bridge and one host per name (addresses `10.77.X.1`, `.2`, ... in
    /// order), and gives the test process the address [`Net::test_ip`]. Removes leftovers of
    /// crashed runs first ([`sweep`]). Blocking: runs `ip` a few times per host (milliseconds).
    ///
    /// Host names: 1 to 32 characters, lowercase ASCII letters, digits and `-`, all different.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the process is not root or `ip` is missing;
    /// [`Error::InvalidState`] for a bad host name; [`Error::Command`] when `ip` fails.
    pub fn new(hosts: &[&str]) -> Result<Net> {
        let ip_program = check_support()?;
        validate_names(hosts)?;
        sweep_with(&ip_program)?;

        let pid = std::process::id();
        // The subnet is claimed by creating the root veth whose name carries it, under a file
        // lock shared by every process on the machine: two `Net`s never get the same subnet.
        // In /run, not $TMPDIR: every process of the machine must see the same file.
        let lock_path = Path::new(LOCK_FILE);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)
            .map_err(|e| Error::io(format!("open {}", lock_path.display()), e))?;
        lock_file
            .lock()
            .map_err(|e| Error::io(format!("lock {}", lock_path.display()), e))?;
        let index = free_index(&ip_program)?;
        let mut net = Net {
            index,
            bridge_ns: format!("{NS_PREFIX}{pid}-{index}.br"),
            root_link: format!("{LINK_PREFIX}{pid}-{index}"),
            ip_program,
            hosts: Vec::with_capacity(hosts.len()),
            relays: Mutex::new(Vec::new()),
            watchdog: Mutex::new(None),
        };
        // From here on, dropping `net` (on an error too) removes whatever was created.
        let br = net.bridge_ns.clone();
        let link = net.root_link.clone();
        let test_cidr = format!("{}/24", net.test_ip());
        // The first namespace tells whether this machine allows them at all (a container
        // without CAP_SYS_ADMIN cannot mount /run/netns even as root).
        match net.ip(&["netns", "add", &br]) {
            Err(Error::Command { output, .. }) => {
                return Err(Error::Unsupported {
                    what: "network namespaces",
                    reason: format!("`ip netns add` failed: {output}"),
                });
            }
            other => other?,
        }
        net.ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        net.ip(&["-n", &br, "link", "set", "br0", "up"])?;
        let veth = ["type", "veth", "peer", "name", "test", "netns", &br];
        net.ip(&[&["link", "add", &link][..], &veth].concat())?;
        drop(lock_file);
        net.ip(&["-n", &br, "link", "set", "test", "master", "br0", "up"])?;
        net.ip(&["addr", "add", &test_cidr, "dev", &link])?;
        net.ip(&["link", "set", &link, "up"])?;

        for (i, name) in hosts.iter().enumerate() {
            let octet = u8::try_from(i + 1).map_err(|_| too_many_hosts())?;
            let host = Host {
                name: (*name).to_owned(),
                netns: format!("{NS_PREFIX}{pid}-{index}-{name}"),
                ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], index, octet),
                ip_program: net.ip_program.clone(),
            };
            let ns = host.netns.clone();
            let port = format!("p{octet}");
            let cidr = format!("{}/24", host.ip);
            net.ip(&["netns", "add", &ns])?;
            net.hosts.push(host);
            net.ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &br,
            ])?;
            net.ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            net.ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            net.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            net.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        net.start_watchdog()?;
        Ok(net)
    }

    fn start_watchdog(&self) -> Result<()> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("herd-testkit-net-watchdog")
            .arg(&self.ip_program)
            .arg(&self.root_link);
        cmd.args(self.namespaces());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C aimed at the test does not stop it before it cleans.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("spawn the network cleanup watchdog (sh)", e))?;
        let stdin = child.stdin.take().ok_or_else(|| {
            Error::io(
                "open the network watchdog's pipe",
                std::io::Error::other("no stdin pipe"),
            )
        })?;
        *lock(&self.watchdog) = Some((child, stdin));
        Ok(())
    }

    /// Every namespace of this `Net`: the hosts', then the bridge's.
    fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .map(|h| h.netns.as_str())
            .chain(std::iter::once(self.bridge_ns.as_str()))
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        run_ip(&self.ip_program, args)
    }

    /// The hosts, in the order given to [`Net::new`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host named `name`.
    ///
    /// # Errors
    /// [`Error::InvalidState`] when there is no such host.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| Error::InvalidState {
                node: name.to_owned(),
                op: "find the host",
                reason: "this Net has no host of that name",
            })
    }

    /// The test process's own address on the subnet (`10.77.X.254`): what servers on the hosts
    /// see as the peer address of the test's connections, and where hosts reach servers the test
    /// process runs itself (bound to it or to `0.0.0.0`).
    pub fn test_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], self.index, TEST_OCTET)
    }

    /// The subnet, `10.77.X.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}.{}.{}.0/24", SUBNET[0], SUBNET[1], self.index)
    }

    /// The root namespace's veth joining the test process to the bridge (`herd<pid>-<X>`).
    pub fn test_link(&self) -> &str {
        &self.root_link
    }

    /// The bridge's namespace (`herd-net-<pid>-<X>.br`).
    pub fn bridge_netns(&self) -> &str {
        &self.bridge_ns
    }

    /// Drops every packet between hosts `a` and `b`, both ways, silently; each still reaches
    /// everyone else. Takes effect at once, for established connections too. Undone by
    /// [`Net::heal`].
    ///
    /// # Errors
    /// [`Error::InvalidState`] for an unknown host or `a == b`; [`Error::Command`] when `ip` fails.
    pub fn partition(&self, a: &str, b: &str) -> Result<()> {
        let (ha, hb) = (self.host(a)?, self.host(b)?);
        if a == b {
            return Err(Error::InvalidState {
                node: a.to_owned(),
                op: "partition",
                reason: "a host cannot be partitioned from itself",
            });
        }
        self.blackhole(Some(&ha.netns), "eth0", hb.ip)?;
        self.blackhole(Some(&hb.netns), "eth0", ha.ip)
    }

    /// Drops every packet between host `a` and the test process (its clients, and servers it runs
    /// on [`Net::test_ip`]), both ways, silently; `a` still reaches the other hosts. Undone by
    /// [`Net::heal`].
    ///
    /// # Errors
    /// [`Error::InvalidState`] for an unknown host; [`Error::Command`] when `ip` fails.
    pub fn partition_test(&self, a: &str) -> Result<()> {
        let ha = self.host(a)?;
        self.blackhole(Some(&ha.netns), "eth0", self.test_ip())?;
        self.blackhole(None, &self.root_link, ha.ip)
    }

    /// Drops every packet between host `a` and everyone else (the other hosts and the test
    /// process), both ways, silently. Undone by [`Net::heal`].
    ///
    /// The cut is made as nearly at once as neighbour entries allow, in this order:
    /// 1. the test process's link to `a` (one entry in the root namespace): requests from the
    ///    test's clients stop reaching `a`;
    /// 2. everything `a` sends, to the test process and to every other host, in one `ip -batch`
    ///    run in `a`'s namespace (one process, one netlink message per peer, microseconds
    ///    apart): `a` stops answering its clients and stops replicating at the same moment, so a
    ///    Redis master or PostgreSQL primary cannot acknowledge a write its replicas no longer
    ///    receive (cutting peer by peer, milliseconds apart, could);
    /// 3. what the other hosts send to `a`, host by host.
    ///
    /// Between steps, `a` may still receive packets it can no longer answer.
    ///
    /// # Errors
    /// [`Error::InvalidState`] for an unknown host; [`Error::Command`] when `ip` fails (entries
    /// already installed stay until [`Net::heal`]).
    pub fn isolate(&self, a: &str) -> Result<()> {
        let ha = self.host(a)?;
        let others: Vec<&Host> = self.hosts.iter().filter(|h| h.name != a).collect();
        self.blackhole(None, &self.root_link, ha.ip)?;
        let outbound: Vec<Ipv4Addr> = std::iter::once(self.test_ip())
            .chain(others.iter().map(|h| h.ip))
            .collect();
        self.blackhole_all(&ha.netns, "eth0", &outbound)?;
        for other in others {
            self.blackhole(Some(&other.netns), "eth0", ha.ip)?;
        }
        Ok(())
    }

    /// Undoes every [`partition`](Net::partition) and [`isolate`](Net::isolate): the static
    /// entries are deleted and addresses are resolved again on the next packet. Established
    /// connections resume with their next retransmission (TCP backs off while a fault lasts: after
    /// a few seconds of partition the next retry can be a second or two away). Added latency is
    /// not a fault and stays.
    ///
    /// # Errors
    /// [`Error::Command`] when `ip` fails.
    pub fn heal(&self) -> Result<()> {
        for h in &self.hosts {
            self.ip(&["-n", &h.netns, "neigh", "flush", "nud", "permanent"])?;
        }
        self.ip(&["neigh", "flush", "dev", &self.root_link, "nud", "permanent"])
    }

    /// Frames from namespace `netns` via `dev` to each of `ips` go to a MAC nobody has: one
    /// `ip -n NETNS -batch -` run, so the entries take effect microseconds apart.
    fn blackhole_all(&self, netns: &str, dev: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let script: String = ips
            .iter()
            .map(|ip| format!("neigh replace {ip} lladdr {NOWHERE_MAC} dev {dev} nud permanent\n"))
            .collect();
        ip_batch(&self.ip_program, netns, &script)
    }

    /// Frames from `netns` (None: the root namespace) via `dev` to `ip` go to a MAC nobody has.
    fn blackhole(&self, netns: Option<&str>, dev: &str, ip: Ipv4Addr) -> Result<()> {
        let ip = ip.to_string();
        let cmd = [
            "neigh",
            "replace",
            &ip,
            "lladdr",
            NOWHERE_MAC,
            "dev",
            dev,
            "nud",
            "permanent",
        ];
        match netns {
            Some(ns) => self.ip(&[&["-n", ns][..], &cmd].concat()),
            None => self.ip(&cmd),
        }
    }

    /// Adds `each_way` of latency in front of `port` on `host`: starts a TCP relay in the host's
    /// namespace, on the host's address and a new port, that forwards to `host:port` and holds
    /// every chunk it reads for `each_way` before writing it on, in both directions. A round trip
    /// through it takes at least `2 * each_way` more than a direct one. Clients that should see
    /// the latency connect to [`Latency::addr`] instead of the server's address; the relay sits on
    /// the host, so a partition or isolation of the host cuts it as well. It runs on a thread of
    /// its own (a runtime of its own: a blocked test runtime does not stall it) until the `Net` is
    /// dropped.
    ///
    /// Limits: TCP only, and not transparent (a different port, and the server sees connections
    /// from its own host's address, not the client's); the client's connect completes at once
    /// (the relay accepts, then dials the server), only data is delayed; delay applies per chunk
    /// read (up to 16 KiB), with at most 64 chunks in flight per direction, so throughput is
    /// bounded by about 1 MiB per `each_way`; no jitter, loss or bandwidth shaping.
    ///
    /// # Errors
    /// [`Error::InvalidState`] for an unknown host; [`Error::Io`] when the relay cannot enter the
    /// namespace or bind.
    pub fn add_latency(&self, host: &str, port: u16, each_way: Duration) -> Result<Latency> {
        let h = self.host(host)?;
        let target = SocketAddr::from((h.ip, port));
        let relay = Relay::start(h, target, each_way)?;
        let latency = relay.latency().clone();
        lock(&self.relays).push(relay);
        Ok(latency)
    }

    /// Starts a PostgreSQL primary on host `primary` and one streaming replica on each host of
    /// `replicas` (a host may hold several), as [`PgCluster::start`] does, listening on the hosts'
    /// addresses. Replicas stream from the primary's address across the bridge, so a partition
    /// between their hosts cuts replication. `pg_hba.conf` trusts `samenet` (the subnet).
    ///
    /// # Errors
    /// [`Error::InvalidState`] for an unknown host; otherwise as [`PgCluster::start`].
    pub async fn pg_cluster(&self, primary: &str, replicas: &[&str]) -> Result<PgCluster> {
        let primary = self.host(primary)?.placement();
        let replicas = replicas
            .iter()
            .map(|r| Ok(self.host(r)?.placement()))
            .collect::<Result<Vec<_>>>()?;
        PgCluster::start_placed(primary, replicas).await
    }

    /// Starts a standalone Redis on `host`, listening on the host's address.
    ///
    /// # Errors
    /// [`Error::InvalidState`] for an unknown host; otherwise as [`RedisServer::start`].
    pub async fn redis_server(&self, host: &str) -> Result<RedisServer> {
        RedisServer::start_placed(self.host(host)?.placement()).await
    }

    /// Starts a Redis Cluster configured by `builder` with its nodes spread over `hosts` in turn
    /// (node `i`, in start order, on `hosts[i % hosts.len()]`), each listening on its host's
    /// address; the cluster bus runs across the bridge.
    ///
    /// # Errors
    /// [`Error::InvalidState`] for an unknown host or an empty `hosts`; otherwise as
    /// [`RedisClusterBuilder::start`].
    pub async fn redis_cluster(
        &self,
        builder: RedisClusterBuilder,
        hosts: &[&str],
    ) -> Result<RedisCluster> {
        if hosts.is_empty() {
            return Err(Error::InvalidState {
                node: "redis cluster".to_owned(),
                op: "place on hosts",
                reason: "no host was given",
            });
        }
        let places = hosts
            .iter()
            .map(|h| Ok(self.host(h)?.placement()))
            .collect::<Result<Vec<_>>>()?;
        builder.start_placed(places).await
    }

    /// The pid of the cleanup watchdog (for tests proving nothing is left behind).
    pub fn watchdog_pid(&self) -> Option<u32> {
        lock(&self.watchdog).as_ref().map(|(c, _)| c.id())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        lock(&self.relays).clear();
        let _ = self.ip(&["link", "del", &self.root_link]);
        let namespaces: Vec<String> = self.namespaces().map(str::to_owned).collect();
        for ns in &namespaces {
            kill_processes_in(&self.ip_program, ns);
            let _ = self.ip(&["netns", "del", ns]);
        }
        if let Some((mut child, stdin)) = lock(&self.watchdog).take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(stdin);
        }
    }
}

/// SIGKILLs every process in namespace `ns` (never this process).
fn kill_processes_in(ip_program: &Path, ns: &str) {
    let Ok(out) = Command::new(ip_program)
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let me = std::process::id();
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| u32::try_from(*p).ok() != Some(me))
    {
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Removes namespaces and root veths that earlier runs left behind: names with the testkit's
/// prefixes (`herd-net-<pid>-...`, `herd<pid>-<X>`) whose `<pid>` no longer runs (a run that was
/// killed before its watchdog could clean up, or whose watchdog was killed too). Live runs'
/// names are never touched. Processes still running in a removed namespace are killed. Returns
/// the names removed. [`Net::new`] calls it.
///
/// # Errors
/// [`Error::Unsupported`] without root or `ip`; [`Error::Command`] when `ip` fails.
pub fn sweep() -> Result<Vec<String>> {
    let ip_program = check_support()?;
    sweep_with(&ip_program)
}

fn sweep_with(ip_program: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for link in root_links(ip_program)? {
        if let Some((pid, _)) = parse_link(&link)
            && !pid_alive(pid)
        {
            // Already gone when its namespace went (veths die with their peer): not an error.
            if run_ip(ip_program, &["link", "del", &link]).is_ok() {
                removed.push(link);
            }
        }
    }
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(format!("list {NETNS_DIR}"), e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = parse_netns(&name)
            && !pid_alive(pid)
        {
            kill_processes_in(ip_program, &name);
            match run_ip(ip_program, &["netns", "del", &name]) {
                Ok(()) => removed.push(name),
                // Another process's sweep removed it first.
                Err(_) if !netns_path(&name).exists() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// The pid in `herd-net-<pid>-...`.
fn parse_netns(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// `(pid, X)` from `herd<pid>-<X>`.
fn parse_link(name: &str) -> Option<(u32, u8)> {
    let rest = name.strip_prefix(LINK_PREFIX)?;
    let (pid, index) = rest.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((pid.parse().ok()?, index.parse().ok()?))
}

fn pid_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Names of the root namespace's links (`ip -o link show`, `NAME@PEER` cut at `@`).
fn root_links(ip_program: &Path) -> Result<Vec<String>> {
    let out = ip_output(ip_program, &["-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// The first `X` whose subnet no live `Net` claims and that the root namespace does not use.
fn free_index(ip_program: &Path) -> Result<u8> {
    let claimed: HashSet<u8> = root_links(ip_program)?
        .iter()
        .filter_map(|l| parse_link(l).map(|(_, x)| x))
        .collect();
    let in_use = ip_output(ip_program, &["-o", "-4", "addr", "show"])?
        + &ip_output(ip_program, &["-4", "route", "show", "table", "all"])?;
    (0..=u8::MAX)
        .find(|x| {
            !claimed.contains(x) && !in_use.contains(&format!("{}.{}.{x}.", SUBNET[0], SUBNET[1]))
        })
        .ok_or_else(|| Error::InvalidState {
            node: format!("{}.{}.0.0/16", SUBNET[0], SUBNET[1]),
            op: "pick a subnet",
            reason: "all 256 subnets are in use by other Nets",
        })
}

fn too_many_hosts() -> Error {
    Error::InvalidState {
        node: "net".to_owned(),
        op: "create hosts",
        reason: "a Net holds at most 200 hosts",
    }
}

fn validate_names(hosts: &[&str]) -> Result<()> {
    if hosts.len() > MAX_HOSTS {
        return Err(too_many_hosts());
    }
    let mut seen = HashSet::new();
    for name in hosts {
        let bad = |reason| Error::InvalidState {
            node: (*name).to_owned(),
            op: "name a host",
            reason,
        };
        if name.is_empty() || name.len() > 32 {
            return Err(bad("a host name has 1 to 32 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("a host name has only a-z, 0-9 and -"));
        }
        if !seen.insert(*name) {
            return Err(bad("two hosts have this name"));
        }
    }
    Ok(())
}

/// Root and `ip`: the path of `ip`, or [`Error::Unsupported`] saying what is missing.
fn check_support() -> Result<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Unsupported {
            what: "network namespaces",
            reason: "the process is not root (ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
                .to_owned(),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("ip"))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Unsupported {
            what: "network namespaces",
            reason: "`ip` was not found; install it: `apt-get install -y iproute2`".to_owned(),
        })
}

fn run_ip(ip_program: &Path, args: &[&str]) -> Result<()> {
    ip_output(ip_program, args).map(drop)
}

fn ip_output(ip_program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(ip_program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("run ip {}", args.join(" ")), e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(Error::Command {
        program: format!("ip {}", args.join(" ")),
        node: "net".to_owned(),
        status: out.status.to_string(),
        output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Runs the `ip` commands in `script` (one a line) in namespace `netns` with one `ip -batch -`.
fn ip_batch(ip_program: &Path, netns: &str, script: &str) -> Result<()> {
    use std::io::Write as _;
    let program = format!("ip -n {netns} -batch -");
    let mut child = Command::new(ip_program)
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("run {program}"), e))?;
    let written = match child.stdin.take() {
        // Dropped at the end of the arm: `ip` sees end of input and exits.
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Err(std::io::Error::other("no stdin pipe")),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("run {program}"), e))?;
    written.map_err(|e| Error::io(format!("write the commands of {program}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        program,
        node: "net".to_owned(),
        status: out.status.to_string(),
        output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a new thread inside the network namespace at `netns` (a file under /run/netns).
/// Children spawned by that thread start in the namespace; sockets it creates belong to it.
pub(crate) fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let file = File::open(netns)?;
    let joined = std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            Ok(f())
        })
        .join()
    });
    match joined {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid_and_subnet() {
        assert_eq!(parse_netns("herd-net-4242-7-db"), Some(4242));
        assert_eq!(parse_netns("herd-net-4242-7.br"), Some(4242));
        assert_eq!(parse_netns("herd-net-x-7-db"), None);
        assert_eq!(parse_netns("other"), None);
        assert_eq!(parse_link("herd4242-7"), Some((4242, 7)));
        assert_eq!(parse_link("herd4242-300"), None);
        assert_eq!(parse_link("herd-1"), None);
        assert_eq!(parse_link("eth0"), None);
    }

    #[test]
    fn host_names_are_checked() {
        assert!(validate_names(&["db", "app-1"]).is_ok());
        assert!(validate_names(&["Db"]).is_err());
        assert!(validate_names(&[""]).is_err());
        assert!(validate_names(&["a", "a"]).is_err());
        assert!(validate_names(&["a.b"]).is_err());
    }
}
