//! Who the client is: the connection's peer, or `X-Forwarded-For` when the peer is a trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use herd_lb_core::Error;
use http::{HeaderMap, Request};
use serde::Deserialize;

/// The connection's remote address, as a request extension. Insert it in the server's accept
/// loop (hyper) or enable feature `axum` to read axum's `ConnectInfo<SocketAddr>` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR ranges).
///
/// ```
/// # use herd_gateway::http::TrustedProxies;
/// let t = TrustedProxies::new(["10.0.0.0/8", "192.168.1.7"]).unwrap();
/// assert!(t.contains("10.1.2.3".parse().unwrap()));
/// assert!(!t.contains("11.0.0.1".parse().unwrap()));
/// assert!(TrustedProxies::new(["10.0.0.0/40"]).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = Error;

    fn try_from(list: Vec<String>) -> Result<Self, Error> {
        Self::new(list)
    }
}

impl TrustedProxies {
    /// No proxy is trusted: the client is always the connection's peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses addresses (`10.0.0.1`, `::1`) and CIDR ranges (`10.0.0.0/8`).
    pub fn new<I, S>(list: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for item in list {
            let item = item.as_ref().trim();
            let bad = |reason: &str| Error::InvalidConfig {
                field: "trusted_proxies",
                reason: format!("{item}: {reason}"),
            };
            let (addr, prefix) = match item.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (item, None),
            };
            let ip = IpAddr::from_str(addr).map_err(|_| bad("not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p.parse::<u8>().map_err(|_| bad("bad prefix length"))?,
                None => max,
            };
            if prefix > max {
                return Err(bad("prefix length too long"));
            }
            nets.push((ip, prefix));
        }
        Ok(Self { nets })
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets
            .iter()
            .any(|&(net, prefix)| match (canonical(net), ip) {
                (IpAddr::V4(n), IpAddr::V4(i)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                    u32::from(n) & mask == u32::from(i) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(i)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                    u128::from(n) & mask == u128::from(i) & mask
                }
                _ => false,
            })
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The connection's peer address, from [`ClientAddr`] or (feature `axum`) axum's `ConnectInfo`.
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    if let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    None
}

/// The client's IP: the peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy (entries further left are client-supplied
/// and could be forged).
pub fn client_ip<B>(req: &Request<B>, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = peer_addr(req)?.ip();
    Some(client_behind(peer, req.headers(), trusted))
}

/// [`client_ip`] of a request from `peer` with these headers.
pub(crate) fn client_behind(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let forwarded = headers.get_all(http::header::HeaderName::from_static("x-forwarded-for"));
    let entries: Vec<&str> = forwarded
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_ip(entry) else {
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, xff: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        if let Some(x) = xff {
            b = b.header("x-forwarded-for", x);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut().insert(ClientAddr(peer.parse().unwrap()));
        r
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client_ip(&req("203.0.113.9:1", Some("1.2.3.4")), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Trusted peer: the right-most untrusted entry wins, forged left entries are skipped.
        assert_eq!(
            client_ip(
                &req("10.0.0.2:1", Some("6.6.6.6, 198.51.100.7, 10.0.0.3")),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            client_ip(&req("10.0.0.2:1", Some("nonsense")), &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(&req("10.0.0.2:1", None), &TrustedProxies::none()),
            Some(ip("10.0.0.2"))
        );
    }
}
