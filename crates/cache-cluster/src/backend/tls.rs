//! TLS to Redis: `rediss://` URLs, the CA and client certificate of [`TlsConfig`], and telling
//! a failed handshake from other connection errors.

use redis::{Client, ConnectionInfo, RedisError};

use crate::config::{RedisConfig, TlsConfig};
use crate::error::Error;

/// Whether the URLs ask for TLS (`rediss://`, `valkeys://`), checking that they agree, that
/// `tls` files are not given for plain URLs, and that TLS is compiled in.
pub(super) fn wanted(config: &RedisConfig) -> Result<bool, Error> {
    let is_tls = |url: &String| {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    };
    let tls = config.urls.iter().filter(|u| is_tls(u)).count();
    if tls != 0 && tls != config.urls.len() {
        return Err(Error::InvalidConfig {
            field: "urls",
            reason: "some URLs are rediss:// (TLS) and some redis:// (plain): use one scheme"
                .into(),
        });
    }
    let tls = tls != 0;
    if !tls && config.tls != TlsConfig::default() {
        // Certificates for plain connections: the operator believes TLS is on, and it is not.
        return Err(Error::InvalidConfig {
            field: "tls",
            reason: "CA or client certificate files are set, but the URLs are redis:// (plain): \
                     use rediss:// URLs for TLS"
                .into(),
        });
    }
    if tls && !cfg!(feature = "tls-rustls") {
        return Err(Error::InvalidConfig {
            field: "urls",
            reason: "rediss:// (TLS) needs herd-cache-cluster's `tls-rustls` feature".into(),
        });
    }
    Ok(tls)
}

/// Checks the URLs' scheme and, for TLS, that the certificate files can be read, so that a bad
/// one is a configuration error rather than a failed connect.
pub(super) fn check(config: &RedisConfig) -> Result<(), Error> {
    let _tls = wanted(config)?;
    #[cfg(feature = "tls-rustls")]
    if _tls {
        certificates(&config.tls)?;
    }
    Ok(())
}

/// A standalone client for `info`, with the certificates of `config.tls` for a `rediss://`
/// URL (which [`check`] accepted).
pub(super) fn client(info: ConnectionInfo, config: &RedisConfig) -> redis::RedisResult<Client> {
    #[cfg(feature = "tls-rustls")]
    if let Some(certs) = certificates(&config.tls)
        .map_err(|e| RedisError::from(std::io::Error::other(e.to_string())))?
    {
        return Client::build_with_tls(info, certs);
    }
    #[cfg(not(feature = "tls-rustls"))]
    let _ = config;
    Client::open(info)
}

/// Reads the CA and client certificate files (PEM), naming the field of one that cannot be
/// read; `None` without any file (the system's roots, no client certificate).
#[cfg(feature = "tls-rustls")]
pub(super) fn certificates(tls: &TlsConfig) -> Result<Option<redis::TlsCertificates>, Error> {
    if *tls == TlsConfig::default() {
        return Ok(None);
    }
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::InvalidConfig {
            field,
            reason: format!("cannot read {}: {e}", path.display()),
        })
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("tls.client_cert", cert)?,
            client_key: read("tls.client_key", key)?,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::InvalidConfig {
                field: "tls.client_key",
                reason: "a client certificate needs its key".into(),
            });
        }
        (None, Some(_)) => {
            return Err(Error::InvalidConfig {
                field: "tls.client_cert",
                reason: "a client key needs its certificate".into(),
            });
        }
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|path| read("tls.ca_file", path))
        .transpose()?;
    install_crypto_provider();
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Makes *ring* rustls' process-wide crypto provider unless the application installed one: the
/// `redis` client builds its TLS configuration with the process's provider, which must be
/// chosen when more than one is compiled in. *ring* is the workspace's (it builds without
/// cmake; rustls 0.23.48 deprecates it for lacking post-quantum key exchange).
#[cfg(feature = "tls-rustls")]
pub(super) fn install_crypto_provider() {
    #[expect(deprecated, reason = "ring is the workspace's provider; see above")]
    let ring = rustls::crypto::ring::default_provider;
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either will do.
        let _ = ring().install_default();
    }
}

/// The TLS library's reason when `error` is a failed handshake: a certificate the CA does not
/// sign or that names another host, or a client certificate the server refused.
pub(super) fn failure(error: &RedisError) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        #[cfg(feature = "tls-rustls")]
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        source = e.source();
    }
    // The cluster client reports a failed first connection to every seed as text only; these
    // are the beginnings of rustls' messages for certificate errors and TLS alerts.
    let text = error.to_string();
    ["invalid peer certificate", "received fatal alert"]
        .iter()
        .any(|m| text.contains(m))
        .then_some(text)
}

/// [`Error::Tls`] for `node` when `error` is a failed handshake, else [`Error::Backend`].
pub(super) fn connect_error(backend: &'static str, node: String, error: RedisError) -> Error {
    match failure(&error) {
        Some(reason) => Error::Tls {
            backend,
            node,
            reason,
        },
        None => Error::backend(backend, "connect", node, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_must_agree_and_files_need_tls_urls() {
        let config = |urls: &[&str]| RedisConfig::new(urls.iter().copied());
        assert!(!wanted(&config(&["redis://a:1", "redis://b:1"])).unwrap());
        let mixed = wanted(&config(&["rediss://a:1", "redis://b:1"])).unwrap_err();
        assert!(
            matches!(mixed, Error::InvalidConfig { field: "urls", .. }),
            "{mixed}"
        );
        let mut plain = config(&["redis://a:1"]);
        plain.tls.ca_file = Some("/etc/ca.crt".into());
        let files = wanted(&plain).unwrap_err();
        assert!(
            matches!(files, Error::InvalidConfig { field: "tls", .. }),
            "{files}"
        );
        let tls = wanted(&config(&["rediss://a:1"]));
        if cfg!(feature = "tls-rustls") {
            assert!(tls.unwrap());
        } else {
            assert!(tls.unwrap_err().to_string().contains("tls-rustls"));
        }
    }

    #[cfg(feature = "tls-rustls")]
    #[test]
    fn unreadable_files_and_a_lone_certificate_are_refused() {
        let missing = TlsConfig {
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..TlsConfig::default()
        };
        let err = certificates(&missing).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "tls.ca_file",
                    ..
                }
            ),
            "{err}"
        );
        let lone = TlsConfig {
            client_cert: Some("/nonexistent/c.crt".into()),
            ..TlsConfig::default()
        };
        assert!(matches!(
            certificates(&lone),
            Err(Error::InvalidConfig {
                field: "tls.client_key",
                ..
            })
        ));
        assert!(certificates(&TlsConfig::default()).unwrap().is_none());
    }
}
