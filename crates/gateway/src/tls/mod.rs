//! TLS termination with rustls: a listener's certificate chain and key from PEM files, reloaded
//! without dropping a connection (nginx's `ssl_certificate`, `ssl_certificate_key`, and its
//! reload on `SIGHUP`), ALPN `h2`/`http/1.1`, optional client certificates, and an
//! HTTP-to-HTTPS redirect for the plain listener ([`HttpsRedirect`], nginx's
//! `return 308 https://$host$request_uri`).
//!
//! [`TlsTerminator`] holds the current rustls `ServerConfig` behind an atomic swap: every new
//! connection takes the one current at its accept, so a reload changes what new handshakes see
//! while handshakes in flight and open connections keep theirs. A replacement that cannot be
//! read, parsed or used (a key that is not the certificate's) is refused whole and the old one
//! stays, with an error naming the file.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use herd_gateway::tls::TlsConfig;
//!
//! let config: TlsConfig = toml::from_str(r#"
//!     cert = "/etc/herd/fullchain.pem"
//!     key = "/etc/herd/privkey.pem"
//! "#)?;
//! assert_eq!(config.alpn, ["h2", "http/1.1"]);
//! assert_eq!(config.reload_interval, std::time::Duration::from_secs(10));
//! // let tls = TlsTerminator::from_config(&config)?;  // reads and checks the files
//! // ServerThread::start_tls("gateway", bind, threads, limits, tls.clone(), build).await?;
//! // on SIGHUP: if let Err(e) = tls.reload() { tracing::error!(%e) }
//! # Ok(()) }
//! ```

mod redirect;
pub(crate) mod stream;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use herd_lb_core::Error;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

pub use redirect::{HttpsRedirect, RedirectConfig};

// The names live with the crate's other metric names (and in docs/metrics.md).
pub use crate::metrics::{TLS_HANDSHAKE_FAILURES_TOTAL, TLS_RELOADS_TOTAL};

/// A listener's TLS settings (the gateway TOML's `tls` table).
///
/// ```
/// # use herd_gateway::tls::TlsConfig;
/// let config: TlsConfig = toml::from_str(r#"
///     cert = "fullchain.pem"
///     key = "privkey.pem"
///     client_ca = "clients-ca.pem"
///     alpn = ["http/1.1"]
///     reload_interval = "0s"
/// "#).unwrap();
/// assert!(config.reload_interval.is_zero()); // no polling: reload on SIGHUP only
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM: the server's certificate first, then the intermediates
    /// (nginx's `ssl_certificate`).
    pub cert: PathBuf,
    /// The certificate's private key, PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
    /// (nginx's `ssl_certificate_key`).
    pub key: PathBuf,
    /// CA certificates, PEM, that clients' certificates must chain to; when set, every client
    /// must present one (nginx's `ssl_client_certificate` with `ssl_verify_client on`).
    /// Default: none asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Protocols offered by ALPN, most preferred first: `h2`, `http/1.1` (the default, both),
    /// `http/1.0`. A client that offers none of them is refused; one that sends no ALPN speaks
    /// HTTP/1.1 or HTTP/2, told apart by its first bytes.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// How often the files' modification times are checked; a change reloads them (default
    /// 10 s; `0s` turns polling off, leaving [`TlsTerminator::reload`], e.g. on `SIGHUP`).
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".to_owned(), "http/1.1".to_owned()]
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl TlsConfig {
    /// Settings for `cert` and `key` with the defaults for the rest.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            alpn: default_alpn(),
            reload_interval: default_reload_interval(),
        }
    }
}

/// What the files looked like when last read: modification time and length of each (`None`
/// when it could not be read), so the poller reloads only on a change.
type Stamps = [Option<(SystemTime, u64)>; 3];

/// TLS termination for a listener: the current rustls `ServerConfig`, swapped whole by
/// [`reload`](Self::reload). Clones share it; hand one to
/// [`ServerThread::start_tls`](crate::server::ServerThread::start_tls) and keep one to reload
/// (see the [module](self) docs).
#[derive(Clone)]
pub struct TlsTerminator {
    shared: Arc<Shared>,
}

/// The settings only: rustls' configuration holds the key.
impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// The stamps of the files the current attempt read (successful or not); also serializes
    /// reloads.
    seen: Mutex<Stamps>,
}

impl TlsTerminator {
    /// Reads and checks the files `config` names.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the key (`tls.cert`, `tls.key`, `tls.client_ca`,
    /// `tls.alpn`) and, in the reason, the file and what is wrong with it.
    pub fn from_config(config: &TlsConfig) -> Result<Self, Error> {
        let stamps = stamps(config);
        let server = load(config)?;
        Ok(Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                current: ArcSwap::from_pointee(server),
                seen: Mutex::new(stamps),
            }),
        })
    }

    /// Re-reads the files (what a `SIGHUP` handler calls, and the poller on a change). On
    /// success new handshakes use them; handshakes in flight and open connections keep what
    /// they started with. On failure nothing changes. It reads files, briefly blocking: on a
    /// busy runtime call it through `spawn_blocking`.
    ///
    /// # Errors
    /// As [`from_config`](Self::from_config); the old certificate stays in use. The caller
    /// logs it (the poller does so at `error`).
    pub fn reload(&self) -> Result<(), Error> {
        let mut seen = self.shared.seen.lock();
        // Stamped before reading: a write that lands during the read changes the stamp again,
        // and the next poll reads it.
        *seen = stamps(&self.shared.config);
        let result = load(&self.shared.config).map(|server| {
            self.shared.current.store(Arc::new(server));
        });
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(TLS_RELOADS_TOTAL, "result" => label).increment(1);
        if result.is_ok() {
            tracing::info!(cert = %self.shared.config.cert.display(), "TLS certificate reloaded");
        }
        result
    }

    /// Reloads when a file's modification time or length changed since the last attempt;
    /// `None` when none did.
    fn reload_if_changed(&self) -> Option<Result<(), Error>> {
        if *self.shared.seen.lock() == stamps(&self.shared.config) {
            return None;
        }
        Some(self.reload())
    }

    /// The settings it was made from.
    pub fn config(&self) -> &TlsConfig {
        &self.shared.config
    }

    /// The rustls configuration new handshakes use now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.shared.current.load_full()
    }

    /// An acceptor for one new connection, with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.shared.current.load_full())
    }

    /// Checks the files every [`reload_interval`](TlsConfig::reload_interval) on the current
    /// tokio runtime and reloads them on a change, logging a failed reload at `error` (the old
    /// certificate stays). Ends when the returned guard is dropped (or the runtime ends);
    /// `None` when the interval is zero. [`ServerThread::start_tls`] starts one itself.
    ///
    /// [`ServerThread::start_tls`]: crate::server::ServerThread::start_tls
    pub fn spawn_poller(&self) -> Option<PollerGuard> {
        let interval = self.shared.config.reload_interval;
        if interval.is_zero() {
            return None;
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            loop {
                // `sleep` takes any duration (an `Instant` sum could overflow).
                tokio::time::sleep(interval).await;
                let check = this.clone();
                // Reading files blocks: off the runtime's (maybe only) thread.
                match tokio::task::spawn_blocking(move || check.reload_if_changed()).await {
                    Ok(Some(Err(error))) => {
                        tracing::error!(%error, "TLS reload failed; the old certificate stays");
                    }
                    Ok(_) => {}
                    // The runtime is shutting down.
                    Err(_) => return,
                }
            }
        });
        Some(PollerGuard(task))
    }
}

/// Stops a [`TlsTerminator::spawn_poller`] poller when dropped.
#[derive(Debug)]
pub struct PollerGuard(tokio::task::JoinHandle<()>);

impl Drop for PollerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn stamps(config: &TlsConfig) -> Stamps {
    let stamp = |path: &Path| {
        let meta = fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [
        stamp(&config.cert),
        stamp(&config.key),
        config.client_ca.as_deref().and_then(stamp),
    ]
}

fn invalid(field: &'static str, reason: String) -> Error {
    Error::InvalidConfig { field, reason }
}

/// Reads a PEM file's certificates (at least one).
fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = fs::read(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, format!("{}: not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            field,
            format!(
                "{}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The process's default crypto provider when the application installed one, else *ring*, the
/// workspace's choice (it builds without cmake; rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange).
fn provider() -> Arc<CryptoProvider> {
    #[expect(deprecated, reason = "ring is the workspace's provider; see above")]
    let ring = rustls::crypto::ring::default_provider;
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(ring()))
}

/// The rustls configuration from the files, checked: the key is the certificate's.
fn load(config: &TlsConfig) -> Result<ServerConfig, Error> {
    let provider = provider();
    let alpn = alpn(&config.alpn)?;
    let chain = read_certs("tls.cert", &config.cert)?;
    let key_path = config.key.display();
    let pem = fs::read(&config.key).map_err(|e| invalid("tls.key", format!("{key_path}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let reason = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no private key in it (expected PEM PKCS#8, PKCS#1 or SEC1)".to_owned()
            }
            e => format!("not valid PEM: {e}"),
        };
        invalid("tls.key", format!("{key_path}: {reason}"))
    })?;
    let certified = certified_key(chain, key, &provider, config)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", format!("TLS versions: {e}")))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("tls.client_ca", path)? {
                roots.add(cert).map_err(|e| {
                    invalid(
                        "tls.client_ca",
                        format!("{}: a certificate: {e}", path.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid("tls.client_ca", format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    server.alpn_protocols = alpn;
    Ok(server)
}

/// The chain and its key, refused when the key cannot be used or is not the first
/// certificate's.
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    config: &TlsConfig,
) -> Result<CertifiedKey, Error> {
    let (cert_path, key_path) = (config.cert.display(), config.key.display());
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        invalid(
            "tls.key",
            format!("{key_path}: not a usable private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // A key that does not tell its public half (rare); rustls accepts it as well.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(invalid(
                "tls.key",
                format!("{key_path}: the key does not match the certificate in {cert_path}"),
            ))
        }
        Err(e) => Err(invalid(
            "tls.cert",
            format!("{cert_path}: the first certificate cannot be parsed: {e}"),
        )),
    }
}

fn alpn(protocols: &[String]) -> Result<Vec<Vec<u8>>, Error> {
    protocols
        .iter()
        .map(|p| match p.as_str() {
            "h2" | "http/1.1" | "http/1.0" => Ok(p.as_bytes().to_vec()),
            other => Err(invalid(
                "tls.alpn",
                format!("{other:?}: not a protocol this server speaks (h2, http/1.1, http/1.0)"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let config: TlsConfig = toml::from_str("cert = \"c.pem\"\nkey = \"k.pem\"").unwrap();
        assert_eq!(config, TlsConfig::new("c.pem", "k.pem"));
        let typo = toml::from_str::<TlsConfig>("cert = \"c\"\nkey = \"k\"\nalpm = []");
        assert!(typo.unwrap_err().to_string().contains("alpm"));
    }

    #[test]
    fn alpn_names_are_checked() {
        assert_eq!(
            alpn(&default_alpn()).unwrap(),
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let err = alpn(&["spdy/3".to_owned()]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { field: "tls.alpn", reason } if reason.contains("spdy/3")),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let config = TlsConfig::new("/nonexistent/herd/cert.pem", "/nonexistent/herd/key.pem");
        let err = TlsTerminator::from_config(&config).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { field: "tls.cert", reason }
                if reason.contains("/nonexistent/herd/cert.pem")),
            "{err}"
        );
    }
}
