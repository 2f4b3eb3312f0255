//! A test certificate authority and the TLS settings of the servers the kit starts.
//!
//! [`TestCa::generate`] makes a CA with rcgen and issues, into a temp dir of its own:
//!
//! * a server certificate for `127.0.0.1` and `localhost`, what every loopback server presents
//!   ([`TestCa::server`]);
//! * a server certificate for [`TLS_HOSTNAME`] only, for tests of a host name that does not match
//!   the address connected to ([`TestCa::server_for_hostname`]);
//! * a client certificate with common name `postgres` (PostgreSQL's `clientcert=verify-full`
//!   compares it with the user name), which the kit presents itself and tests may present.
//!
//! A [`ServerTls`] goes to [`PgCluster::start_tls`](crate::PgCluster::start_tls),
//! [`RedisServer::start_tls`](crate::RedisServer::start_tls) or
//! [`RedisClusterBuilder::tls`](crate::RedisClusterBuilder::tls). The kit's own connections to
//! those servers (readiness, fault operations) go over TLS too, checking the chain against the
//! test CA and presenting the client certificate.
//!
//! ```no_run
//! # async fn demo() -> herd_testkit::Result<()> {
//! use herd_testkit::tls::{ClientAuth, TestCa};
//!
//! let ca = TestCa::generate()?;
//! let pg = herd_testkit::PgCluster::start_tls(1, ca.server(ClientAuth::Required)).await?;
//! // sslmode=verify-full, the CA file and the client certificate and key
//! let pool = sqlx::PgPool::connect(&pg.primary_url()).await.expect("connect over TLS");
//! # Ok(()) }
//! ```

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use crate::error::{Error, Result};

/// The only name in the certificate of [`TestCa::server_for_hostname`]: a server presenting it
/// on 127.0.0.1 fails a client's host name check (`sslmode=verify-full`, `rediss://`).
pub const TLS_HOSTNAME: &str = "herd-tls.test";

/// A test CA and the certificates it issued, as PEM files in a temp dir removed on drop (the
/// dir lives on while a [`ServerTls`] made from it does).
pub struct TestCa {
    dir: Arc<tempfile::TempDir>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The issuer holds the CA's private key: only the files' place is shown.
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Whether a server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients may present one (checked against the CA when they do): Redis'
    /// `tls-auth-clients optional`, PostgreSQL's `hostssl ... trust`.
    Optional,
    /// Clients must present one signed by the CA: Redis' `tls-auth-clients yes`, PostgreSQL's
    /// `hostssl ... trust clientcert=verify-full` (the certificate's common name must be the user
    /// name, `postgres`).
    Required,
}

/// What a TLS server the kit starts presents and checks, and what the kit presents to it.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Keeps the CA's files.
    _dir: Arc<tempfile::TempDir>,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: PathBuf,
    client_cert_file: PathBuf,
    client_key_file: PathBuf,
    client_auth: ClientAuth,
    /// Whether the certificate names 127.0.0.1, so that clients may check the host name.
    names_loopback: bool,
}

impl TestCa {
    /// Generates the CA (ECDSA P-256), the two server certificates and the client certificate,
    /// and writes them to a new temp dir (`herd-tls-*`).
    ///
    /// # Errors
    /// [`Error::Io`] when a certificate cannot be made or written.
    pub fn generate() -> Result<TestCa> {
        let dir = tempfile::Builder::new()
            .prefix("herd-tls-")
            .tempdir()
            .map_err(|e| Error::io("create the test CA's temp dir", e))?;
        // The servers may run as another user (postgres): they must be able to read the
        // certificates (PostgreSQL gets copies of its key; see `PgCluster::start_tls`).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("chmod the test CA's temp dir", e))?;
        let ca_key = KeyPair::generate().map_err(|e| cert_error("generate the CA key", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| cert_error("make the CA's parameters", e))?;
        // A name of its own: two test CAs with one name would make a certificate from the other
        // look like a bad signature of this one, where a real wrong CA is an unknown issuer.
        let unique = dir.path().file_name().map_or_else(String::new, |n| {
            n.to_string_lossy()
                .trim_start_matches("herd-tls-")
                .to_owned()
        });
        params
            .distinguished_name
            .push(DnType::CommonName, format!("herd test CA {unique}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, ca_key)
            .map_err(|e| cert_error("self-sign the CA", e))?;
        let ca = TestCa {
            dir: Arc::new(dir),
            issuer,
        };
        ca.write("ca.crt", &ca.issuer.pem(), 0o644)?;
        ca.issue("server", &["127.0.0.1", "localhost"], "herd test server")?;
        ca.issue("hostname", &[TLS_HOSTNAME], TLS_HOSTNAME)?;
        ca.issue("client", &[], "postgres")?;
        Ok(ca)
    }

    /// Issues `<stem>.crt` and `<stem>.key` for `names` (IP addresses or DNS names) with
    /// common name `cn`, good for server and client authentication both (a Redis replica
    /// presents its server certificate to its master).
    fn issue(&self, stem: &str, names: &[&str], cn: &str) -> Result<()> {
        let key = KeyPair::generate().map_err(|e| cert_error("generate a key", e))?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .map_err(|e| cert_error(&format!("make the parameters of {stem}.crt"), e))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| cert_error(&format!("sign {stem}.crt"), e))?;
        self.write(&format!("{stem}.crt"), &cert.pem(), 0o644)?;
        self.write(&format!("{stem}.key"), &key.serialize_pem(), 0o600)
    }

    fn write(&self, name: &str, pem: &str, mode: u32) -> Result<()> {
        let path = self.dir.path().join(name);
        let what = || format!("write {}", path.display());
        std::fs::write(&path, pem).map_err(|e| Error::io(what(), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(what(), e))
    }

    /// The dir holding the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The CA certificate's PEM text.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The client certificate (common name `postgres`).
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client certificate's private key (PKCS#8 PEM).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// Settings for a server presenting the certificate for `127.0.0.1` and `localhost`.
    pub fn server(&self, client_auth: ClientAuth) -> ServerTls {
        self.server_tls("server", client_auth, true)
    }

    /// Settings for a server presenting the certificate for [`TLS_HOSTNAME`] only: clients that
    /// check the host name (`sslmode=verify-full`, `rediss://`) refuse it on 127.0.0.1. The kit
    /// itself checks only the chain against such a server (PostgreSQL) or only waits for its
    /// port (Redis, whose client always checks the name): start fault-free standalone servers
    /// with it.
    pub fn server_for_hostname(&self, client_auth: ClientAuth) -> ServerTls {
        self.server_tls("hostname", client_auth, false)
    }

    fn server_tls(&self, stem: &str, client_auth: ClientAuth, names_loopback: bool) -> ServerTls {
        let dir = self.dir.path();
        ServerTls {
            _dir: Arc::clone(&self.dir),
            cert_file: dir.join(format!("{stem}.crt")),
            key_file: dir.join(format!("{stem}.key")),
            ca_file: self.ca_file(),
            client_cert_file: self.client_cert_file(),
            client_key_file: self.client_key_file(),
            client_auth,
            names_loopback,
        }
    }
}

impl ServerTls {
    /// The certificate the server presents.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// Its private key.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The CA certificate clients trust (and the server checks client certificates against).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The client certificate the kit presents (common name `postgres`).
    pub fn client_cert_file(&self) -> &Path {
        &self.client_cert_file
    }

    /// Its private key.
    pub fn client_key_file(&self) -> &Path {
        &self.client_key_file
    }

    /// Whether the server asks for client certificates or requires them.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }

    /// Whether the server's certificate names 127.0.0.1 (false for
    /// [`TestCa::server_for_hostname`]).
    pub fn names_loopback(&self) -> bool {
        self.names_loopback
    }

    /// The CA, client certificate and key as the `redis` client takes them.
    pub(crate) fn redis_certificates(&self) -> Result<redis::TlsCertificates> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
        };
        Ok(redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&self.client_cert_file)?,
                client_key: read(&self.client_key_file)?,
            }),
            root_cert: Some(read(&self.ca_file)?),
        })
    }
}

fn cert_error(what: &str, e: rcgen::Error) -> Error {
    Error::io(
        format!("test CA: {what}"),
        std::io::Error::other(e.to_string()),
    )
}

/// Makes *ring* rustls' process-wide crypto provider unless one is installed: the `redis`
/// client builds its TLS configuration with the process's provider, which must be chosen when
/// more than one is compiled in. *ring* is the workspace's (it builds without cmake; rustls
/// 0.23.48 deprecates it for lacking post-quantum key exchange).
pub(crate) fn install_crypto_provider() {
    #[expect(deprecated, reason = "ring is the workspace's provider; see above")]
    let ring = rustls::crypto::ring::default_provider;
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either is fine.
        let _ = ring().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_ca_and_every_certificate() {
        let ca = TestCa::generate().unwrap();
        for name in [
            "ca.crt",
            "server.crt",
            "server.key",
            "hostname.crt",
            "hostname.key",
            "client.crt",
            "client.key",
        ] {
            let text = std::fs::read_to_string(ca.dir().join(name)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{name}: {text}");
        }
        let server = ca.server(ClientAuth::Optional);
        assert!(server.names_loopback());
        assert!(
            !ca.server_for_hostname(ClientAuth::Required)
                .names_loopback()
        );
        let mode = std::fs::metadata(server.key_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The files outlive the CA value while a server's settings hold them.
        let dir = ca.dir().to_path_buf();
        drop(ca);
        assert!(server.cert_file().exists());
        drop(server);
        assert!(!dir.exists());
    }
}
