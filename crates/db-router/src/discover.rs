//! Database nodes from a DNS name ([`DnsNodes`]), re-resolved on an interval with
//! herd-lb-core's [`DnsDiscover`]: each address is a node, added and removed at run time.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use herd_lb_core::discover::{Change, DnsConfig, DnsDiscover};
use serde::Deserialize;

use crate::config::{NodeConfig, NodeSpec, RouterConfig};
use crate::error::Error;
use crate::nodes::Shared;
use crate::router::{insert_spec, remove_named, spec_for};

/// The nodes behind a DNS name, such as a Kubernetes headless Service over a PostgreSQL
/// primary and its replicas (one A or AAAA record per ready pod); see
/// [`DbRouterBuilder::dns`](crate::DbRouterBuilder::dns).
///
/// Every address is a node made from `node`, its URL's host replaced by the address: same
/// user, database, options, port, role (default [`Role::Auto`](crate::Role::Auto): the
/// monitor finds the primary and the replicas), weight and pool. A node is called
/// `address:port`, or `name-address:port` when `node.name` is set. New addresses become nodes
/// at once (checked by the monitor, reads from their first good check on); a vanished
/// address's node takes no new work and is closed when its work is done; the other nodes
/// keep their state. A failed or empty resolution changes nothing (see [`DnsDiscover`]).
///
/// The name to resolve and the port default to the URL's host and port; `dns` sets the
/// interval (default 5 s), jitter, timeout and name servers. With `sslmode=verify-full` the
/// server certificates must name the addresses, as the connections go to them.
///
/// ```
/// use herd_db_router::DnsNodes;
///
/// let nodes: DnsNodes = toml::from_str(r#"
///     [node]
///     url = "postgres://app@db.default.svc.cluster.local:5432/app"
///     pool = { max_connections = 20 }
///
///     [dns]
///     interval = "2s"
/// "#).unwrap();
/// assert_eq!(nodes.dns.interval, std::time::Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsNodes {
    /// What each node is: its URL's host is the DNS name.
    pub node: NodeConfig,
    /// How to resolve (name and port default to the URL's).
    #[serde(default)]
    pub dns: DnsConfig,
}

impl DnsNodes {
    /// The nodes behind `url`'s host, other settings at their defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            node: NodeConfig::new(url),
            dns: DnsConfig::default(),
        }
    }

    /// Sets how to resolve.
    pub fn dns(mut self, dns: DnsConfig) -> Self {
        self.dns = dns;
        self
    }
}

/// A router's DNS discovery: the stream of addresses and the node each one becomes.
pub(crate) struct Discovery {
    nodes: NodeRule,
    stream: DnsDiscover,
}

/// The node an address becomes (apart from the stream, which is not `Sync`, so that a
/// borrow of this one can be held while a change is applied).
struct NodeRule {
    template: NodeSpec,
    prefix: Option<String>,
    name: String,
}

impl Discovery {
    /// Validates `nodes` with the router's settings (also when the router lists no node).
    pub(crate) fn new(nodes: DnsNodes, config: &RouterConfig) -> Result<Self, Error> {
        let prefix = nodes.node.name.clone();
        let template = spec_for(config, nodes.node)?;
        let mut dns = nodes.dns;
        if dns.name.is_empty() {
            dns.name = template.connect.get_host().to_string();
        }
        if dns.port == 0 {
            dns.port = template.connect.get_port();
        }
        let stream = DnsDiscover::new(dns).map_err(|e| match e {
            herd_lb_core::Error::InvalidConfig { field, reason } => {
                Error::invalid_config(field, reason)
            }
            other => Error::invalid_config("dns", other.to_string()),
        })?;
        Ok(Self {
            nodes: NodeRule {
                template,
                prefix,
                name: stream.name().to_string(),
            },
            stream,
        })
    }

    /// The builder's first resolution, so the name's nodes are there for the first check.
    pub(crate) async fn first_resolution(&mut self, shared: &Arc<Shared>) {
        for change in self.stream.resolve_now().await {
            self.nodes.apply(shared, change).await;
        }
    }

    /// Follows the name until the router is dropped.
    pub(crate) async fn run(mut self, shared: Weak<Shared>) {
        while let Some(Ok(change)) = self.stream.next().await {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            self.nodes.apply(&shared, change).await;
        }
    }
}

impl NodeRule {
    fn name_of(&self, addr: SocketAddr) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}-{addr}"),
            None => addr.to_string(),
        }
    }

    async fn apply(&self, shared: &Arc<Shared>, change: Change<SocketAddr, SocketAddr>) {
        match change {
            Change::Insert(addr, _) => {
                let mut spec = self.template.clone();
                spec.name = self.name_of(addr);
                spec.connect = spec.connect.host(&addr.ip().to_string()).port(addr.port());
                if let Err(error) = insert_spec(shared, spec).await {
                    tracing::warn!(%error, name = %self.name, address = %addr, "DNS discovery: cannot add the node");
                }
            }
            Change::Remove(addr) => {
                remove_named(shared, &self.name_of(addr)).await;
            }
        }
    }
}
