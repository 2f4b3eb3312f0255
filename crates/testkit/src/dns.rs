//! A DNS server on 127.0.0.1 for discovery tests: answers A and AAAA queries from a zone the
//! test changes while it runs, and can stop answering (a resolver outage).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// An authoritative DNS server over UDP on 127.0.0.1 and a free port, serving the names the
/// test sets. Stops when dropped.
///
/// Names are matched case-insensitively, with or without the final dot. A name that is not
/// set answers `NXDOMAIN`; a set name answers its addresses of the asked type (none is an
/// empty `NOERROR`, as for a name with only A records asked for AAAA).
///
/// ```no_run
/// # async fn demo() -> herd_testkit::Result<()> {
/// let dns = herd_testkit::DnsServer::start().await?;
/// dns.set("app.test", &["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()]);
/// // point the resolver under test at dns.addr() ...
/// dns.set_answering(false); // queries now go unanswered: the resolver times out
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Zone {
    names: Mutex<HashMap<String, Vec<IpAddr>>>,
    ttl: AtomicU32,
    answering: AtomicBool,
    queries: AtomicU64,
}

impl DnsServer {
    /// Binds 127.0.0.1 on a free UDP port and starts answering (TTL 1 s, no names yet).
    ///
    /// # Errors
    /// [`Error::Io`] when the socket cannot be bound.
    pub async fn start() -> Result<DnsServer> {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io("bind the DNS server's UDP socket on 127.0.0.1", e))?;
        let addr = socket
            .local_addr()
            .map_err(|e| Error::io("read the DNS server's address", e))?;
        let zone = Arc::new(Zone {
            names: Mutex::new(HashMap::new()),
            ttl: AtomicU32::new(1),
            answering: AtomicBool::new(true),
            queries: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(socket, Arc::clone(&zone)));
        Ok(DnsServer { addr, zone, task })
    }

    /// Where it listens (UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets `name`'s addresses (A records for IPv4, AAAA for IPv6), replacing earlier ones.
    pub fn set(&self, name: &str, addrs: &[IpAddr]) {
        self.names().insert(key(name), addrs.to_vec());
    }

    /// Removes `name`: it answers `NXDOMAIN` from now on.
    pub fn remove(&self, name: &str) {
        self.names().remove(&key(name));
    }

    /// The TTL of the records in later answers, in seconds.
    pub fn set_ttl(&self, seconds: u32) {
        self.zone.ttl.store(seconds, Ordering::Relaxed);
    }

    /// `false`: queries are read and dropped without an answer, as from a dead server, until
    /// set `true` again.
    pub fn set_answering(&self, answering: bool) {
        self.zone.answering.store(answering, Ordering::Relaxed);
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> u64 {
        self.zone.queries.load(Ordering::Relaxed)
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<IpAddr>>> {
        // A poisoned lock only means a test thread panicked while holding it: the map is whole.
        self.zone.names.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        zone.queries.fetch_add(1, Ordering::Relaxed);
        if !zone.answering.load(Ordering::Relaxed) {
            continue;
        }
        let Some(request) = buf.get(..n).and_then(|b| Message::from_vec(b).ok()) else {
            continue;
        };
        if let Ok(answer) = answer(&request, &zone).to_vec() {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

fn answer(request: &Message, zone: &Zone) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    let ttl = zone.ttl.load(Ordering::Relaxed);
    let names = zone.names.lock().unwrap_or_else(|p| p.into_inner());
    for query in &request.queries {
        let Some(addrs) = names.get(&key(&query.name().to_ascii())) else {
            response.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        for ip in addrs {
            let rdata = match (query.query_type(), ip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(A::from(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA::from(*v6)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
        }
    }
    response
}
