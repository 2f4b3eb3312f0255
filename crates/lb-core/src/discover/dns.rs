//! [`DnsDiscover`]: the addresses of a DNS name, re-resolved on an interval, as a
//! `tower::discover::Discover` stream.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::Stream;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use serde::Deserialize;
use tokio::time::Sleep;
use tower::discover::Change;

use crate::error::Error;
use crate::rng::SharedRng;

pub use crate::metrics::{DNS_ADDRESSES, DNS_RESOLVE_FAILURES_TOTAL};

/// Where and how often [`DnsDiscover`] resolves. Deserializes with serde (durations as
/// humantime strings, `"5s"`); every field but `name` and `port` has a default.
///
/// ```
/// let config: herd_lb_core::discover::DnsConfig = toml::from_str(r#"
///     name = "app.default.svc.cluster.local"
///     port = 8080
///     interval = "10s"
/// "#).unwrap();
/// assert_eq!(config.jitter, 0.1);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// The name whose A and AAAA records are the endpoints (a Kubernetes headless Service:
    /// `name.namespace.svc.cluster.local`). A name without a final dot goes through the
    /// system's search domains, as in `resolv.conf`.
    pub name: String,
    /// The port of every endpoint (A/AAAA records carry none).
    pub port: u16,
    /// The longest time between two resolutions (default 5 s). A record's TTL shortens it,
    /// down to `min_interval`; answers are cached for at most this long, so a change shows
    /// within about one interval. (Envoy's `dns_refresh_rate` with `respect_dns_ttl`.)
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The shortest time between two resolutions, whatever the TTL (default 1 s).
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Each wait is stretched or shortened at random by up to this share (default 0.1), so
    /// that many instances started together do not query in step.
    pub jitter: f64,
    /// Bound on one resolution (default 2 s); a resolution that takes longer failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Name servers to ask, over UDP (`127.0.0.1:5353`). Empty (the default): the system's,
    /// from `/etc/resolv.conf`, with its search domains.
    pub nameservers: Vec<SocketAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            port: 0,
            interval: Duration::from_secs(5),
            min_interval: Duration::from_secs(1),
            jitter: 0.1,
            timeout: Duration::from_secs(2),
            nameservers: Vec::new(),
        }
    }
}

impl DnsConfig {
    /// `name`'s addresses with `port`, other settings at their defaults.
    pub fn new(name: impl Into<String>, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            ..Self::default()
        }
    }

    /// Asks `nameserver` (UDP) instead of the system's name servers; call again to add more.
    pub fn nameserver(mut self, nameserver: SocketAddr) -> Self {
        self.nameservers.push(nameserver);
        self
    }

    /// Sets `interval`.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets `min_interval`.
    pub fn min_interval(mut self, min_interval: Duration) -> Self {
        self.min_interval = min_interval;
        self
    }

    /// Sets `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let refuse = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.name.trim().is_empty() {
            return refuse("dns.name", "a DNS name to resolve is needed");
        }
        if self.port == 0 {
            return refuse("dns.port", "the endpoints' port is needed (not 0)");
        }
        if self.interval.is_zero() {
            return refuse("dns.interval", "must be more than 0");
        }
        if self.min_interval.is_zero() || self.min_interval > self.interval {
            return refuse(
                "dns.min_interval",
                "must be more than 0 and at most `interval`",
            );
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return refuse("dns.jitter", "must be at least 0 and below 1");
        }
        if self.timeout.is_zero() {
            return refuse("dns.timeout", "must be more than 0");
        }
        Ok(())
    }
}

/// The outcome of one resolution: the addresses and how long the answer is good for, or why
/// there is no usable answer.
type Resolution = Result<(BTreeSet<IpAddr>, Duration), String>;

/// A DNS name's addresses as a `tower::discover::Discover` stream of
/// `Change<SocketAddr, SocketAddr>` (the key and the service are both the endpoint's address;
/// [`MapService`](crate::discover::MapService) turns the service into a client).
///
/// Every A and AAAA record is an endpoint at [`DnsConfig::port`], as a Kubernetes headless
/// Service lists its ready pods. The name is resolved at the first poll, then again after
/// each wait (the record's TTL, within `min_interval..=interval`, with jitter); each
/// resolution yields `Insert` for new addresses and `Remove` for vanished ones, nothing for
/// those that stay. A resolution that fails, times out or finds no address changes nothing:
/// the last good set stays in force (an empty answer from a flapping server is more likely
/// than every instance gone at once). The first failure of an outage is logged as a warning
/// and the recovery as info; every failure counts in [`DNS_RESOLVE_FAILURES_TOTAL`].
///
/// The stream never ends; drop it to stop. Needs a tokio runtime with timers.
pub struct DnsDiscover {
    name: Arc<str>,
    config: DnsConfig,
    resolver: TokioResolver,
    rng: SharedRng,
    /// The set in force: the last good answer.
    current: BTreeSet<IpAddr>,
    pending: VecDeque<Change<SocketAddr, SocketAddr>>,
    state: State,
    /// Failed resolutions in a row (0: the last one worked).
    failures: u64,
    failures_total: ::metrics::Counter,
    addresses: ::metrics::Gauge,
}

enum State {
    Due,
    Waiting(Pin<Box<Sleep>>),
    Resolving(Pin<Box<dyn Future<Output = Resolution> + Send>>),
}

impl fmt::Debug for DnsDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscover")
            .field("name", &self.name)
            .field("port", &self.config.port)
            .field("current", &self.current)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl DnsDiscover {
    /// A stream of `config.name`'s addresses, with jitter from OS entropy. Refuses a
    /// configuration that cannot work, naming the field; fails when the system's resolver
    /// configuration cannot be read (with no `nameservers` given).
    pub fn new(config: DnsConfig) -> Result<Self, Error> {
        Self::with_rng(config, SharedRng::new())
    }

    /// [`new`](Self::new) with a fixed seed for the jitter (deterministic tests).
    pub fn seeded(config: DnsConfig, seed: u64) -> Result<Self, Error> {
        Self::with_rng(config, SharedRng::seeded(seed))
    }

    fn with_rng(config: DnsConfig, rng: SharedRng) -> Result<Self, Error> {
        config.validate()?;
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| Error::InvalidConfig {
                field: "dns.nameservers",
                reason: format!(
                    "none given, and the system's resolver configuration cannot be read: {e}"
                ),
            })?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = 1;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Cached answers never outlive the interval (a long TTL would hide changes), and a
        // failed or empty answer is asked again at the next resolution.
        options.positive_max_ttl = Some(config.interval);
        options.negative_max_ttl = Some(config.min_interval);
        let resolver = builder.build().map_err(|e| Error::InvalidConfig {
            field: "dns.nameservers",
            reason: format!("cannot build the resolver: {e}"),
        })?;
        crate::metrics::describe();
        let name: Arc<str> = config.name.as_str().into();
        let label = ::metrics::SharedString::from(Arc::clone(&name));
        Ok(Self {
            failures_total: ::metrics::counter!(DNS_RESOLVE_FAILURES_TOTAL, "name" => label.clone()),
            addresses: ::metrics::gauge!(DNS_ADDRESSES, "name" => label),
            name,
            config,
            resolver,
            rng,
            current: BTreeSet::new(),
            pending: VecDeque::new(),
            state: State::Due,
            failures: 0,
        })
    }

    /// The name resolved.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoints in force (the last good answer), in address order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.current
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.config.port))
            .collect()
    }

    /// Resolves now, whatever the schedule, and returns the changes from the set in force
    /// (none when the resolution failed). The stream then yields nothing for them and waits
    /// a full interval before its next resolution. Lets a caller start with the name's
    /// endpoints in place instead of following the stream from empty.
    pub async fn resolve_now(&mut self) -> Vec<Change<SocketAddr, SocketAddr>> {
        let resolution = resolve(
            self.resolver.clone(),
            Arc::clone(&self.name),
            self.config.timeout,
        )
        .await;
        let wait = self.apply(resolution);
        self.state = State::Waiting(Box::pin(tokio::time::sleep(wait)));
        self.pending.drain(..).collect()
    }

    /// Takes a resolution's outcome: queues the changes, keeps the set on failure, logs and
    /// counts. Returns how long to wait before the next one.
    fn apply(&mut self, resolution: Resolution) -> Duration {
        let interval = self.config.interval;
        match resolution {
            Ok((found, ttl)) => {
                if self.failures > 0 {
                    tracing::info!(name = %self.name, failures = self.failures, addresses = found.len(), "DNS discovery: the name resolves again");
                    self.failures = 0;
                }
                let port = self.config.port;
                for gone in self.current.difference(&found) {
                    let addr = SocketAddr::new(*gone, port);
                    tracing::info!(name = %self.name, endpoint = %addr, "DNS discovery: address gone");
                    self.pending.push_back(Change::Remove(addr));
                }
                for new in found.difference(&self.current) {
                    let addr = SocketAddr::new(*new, port);
                    tracing::info!(name = %self.name, endpoint = %addr, "DNS discovery: new address");
                    self.pending.push_back(Change::Insert(addr, addr));
                }
                self.current = found;
                self.addresses.set(self.current.len() as f64);
                self.jittered(ttl.clamp(self.config.min_interval, interval))
            }
            Err(reason) => {
                self.failures_total.increment(1);
                if self.failures == 0 {
                    tracing::warn!(name = %self.name, error = %reason, kept = self.current.len(), "DNS discovery: resolution failed; keeping the last good set of endpoints until it works again");
                } else {
                    tracing::debug!(name = %self.name, error = %reason, failures = self.failures + 1, "DNS discovery: resolution still failing");
                }
                self.failures += 1;
                self.jittered(interval)
            }
        }
    }

    fn jittered(&self, wait: Duration) -> Duration {
        let spread = self.config.jitter * (2.0 * self.rng.unit_f64() - 1.0);
        wait.mul_f64(1.0 + spread)
    }
}

/// One lookup of `name`'s A and AAAA records within `timeout`; an empty answer is a failure.
async fn resolve(resolver: TokioResolver, name: Arc<str>, timeout: Duration) -> Resolution {
    let lookup = match tokio::time::timeout(timeout, resolver.lookup_ip(&*name)).await {
        Err(_) => return Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(lookup)) => lookup,
    };
    let found: BTreeSet<IpAddr> = lookup.iter().collect();
    if found.is_empty() {
        return Err("the answer has no address".to_string());
    }
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Ok((found, ttl))
}

impl Stream for DnsDiscover {
    type Item = Result<Change<SocketAddr, SocketAddr>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match &mut this.state {
                State::Due => {
                    let lookup = resolve(
                        this.resolver.clone(),
                        Arc::clone(&this.name),
                        this.config.timeout,
                    );
                    this.state = State::Resolving(Box::pin(lookup));
                }
                State::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.state = State::Due;
                }
                State::Resolving(lookup) => {
                    let Poll::Ready(resolution) = lookup.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    let wait = this.apply(resolution);
                    this.state = State::Waiting(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_that_cannot_work_is_refused_by_field() {
        let field = |config: DnsConfig| match DnsDiscover::new(config) {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let ok = DnsConfig::new("app.test.", 80).nameserver("127.0.0.1:53".parse().unwrap());
        assert_eq!(
            field(DnsConfig {
                name: " ".into(),
                ..ok.clone()
            }),
            "dns.name"
        );
        assert_eq!(
            field(DnsConfig {
                port: 0,
                ..ok.clone()
            }),
            "dns.port"
        );
        assert_eq!(field(ok.clone().interval(Duration::ZERO)), "dns.interval");
        assert_eq!(
            field(ok.clone().min_interval(Duration::from_secs(60))),
            "dns.min_interval"
        );
        assert_eq!(
            field(DnsConfig {
                jitter: 1.0,
                ..ok.clone()
            }),
            "dns.jitter"
        );
        assert_eq!(field(ok.timeout(Duration::ZERO)), "dns.timeout");
    }

    #[tokio::test]
    async fn changes_are_the_difference_and_a_failure_keeps_the_set() {
        let config = DnsConfig::new("app.test.", 8080).nameserver("127.0.0.1:53".parse().unwrap());
        let mut dns = DnsDiscover::seeded(config, 7).unwrap();
        let ips = |list: &[&str]| -> BTreeSet<IpAddr> {
            list.iter().map(|s| s.parse().unwrap()).collect()
        };
        let ttl = Duration::from_secs(30);
        let wait = dns.apply(Ok((ips(&["10.0.0.1", "10.0.0.2"]), ttl)));
        assert!(
            wait >= Duration::from_secs(4) && wait <= Duration::from_secs(6),
            "{wait:?}: the interval, jittered"
        );
        assert_eq!(dns.pending.len(), 2);
        dns.pending.clear();
        dns.apply(Ok((ips(&["10.0.0.2", "::1"]), Duration::ZERO)));
        let changes: Vec<_> = dns.pending.drain(..).collect();
        assert!(matches!(changes[0], Change::Remove(a) if a == "10.0.0.1:8080".parse().unwrap()));
        assert!(matches!(changes[1], Change::Insert(a, _) if a == "[::1]:8080".parse().unwrap()));
        assert_eq!(changes.len(), 2);
        let wait = dns.apply(Err("SERVFAIL".into()));
        assert!(dns.pending.is_empty());
        assert_eq!(dns.failures, 1);
        assert!(wait >= Duration::from_secs(4));
        assert_eq!(dns.endpoints().len(), 2, "the last good set stays");
        dns.apply(Ok((ips(&["10.0.0.2", "::1"]), ttl)));
        assert_eq!(dns.failures, 0);
        assert!(dns.pending.is_empty(), "nothing changed");
    }
}
