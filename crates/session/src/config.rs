//! Session settings: cookie attributes, timeouts, limits and policies.
//!
//! Every type here deserializes with serde; a missing field takes the default documented on
//! it, so a service can load `SessionConfig` from TOML or the environment:
//!
//! ```
//! let config: herd_session::SessionConfig = toml::from_str(r#"
//!     idle_timeout = "20m"
//!     absolute_timeout = "8h"
//! "#).unwrap();
//! assert_eq!(config.idle_timeout, std::time::Duration::from_secs(20 * 60));
//! assert!(config.cookie.secure);
//! assert_eq!(config.cookie.effective_name(), "__Host-sid");
//!
//! // Plain-HTTP local development: the opt-out also drops the prefix, which needs Secure.
//! let local: herd_session::SessionConfig = toml::from_str(r#"
//!     [cookie]
//!     secure = false
//! "#).unwrap();
//! assert_eq!(local.cookie.effective_name(), "sid");
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// Everything the [`SessionLayer`](crate::SessionLayer) can be told.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// The session cookie's name and attributes.
    pub cookie: CookieConfig,
    /// A session unused for this long expires. Default 30 minutes (OWASP ASVS level 2).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session expires this long after it was created, however active; `None` for no limit.
    /// Default 12 hours (OWASP ASVS level 2).
    #[serde(with = "humantime_serde")]
    pub absolute_timeout: Option<Duration>,
    /// What extends the idle timeout. Default [`TtlExtension::OnEveryRequest`].
    pub ttl_extension: TtlExtension,
    /// Largest session data accepted at save, in bytes of field names plus their JSON values.
    /// Default 64 KiB.
    pub max_size: usize,
    /// What a request gets when the store cannot be reached. Default
    /// [`OnStoreError::ServiceUnavailable`].
    pub on_store_error: OnStoreError,
    /// How a field changed both by this request and by another one since this request loaded
    /// the session is settled. Default [`ConflictRule::LastWriteWins`].
    pub conflict_rule: ConflictRule,
    /// Check-and-set attempts per save before giving up with
    /// [`SessionError::Conflict`](crate::SessionError::Conflict). Each failed attempt means
    /// another request's save landed, so this many concurrent writers to one session always
    /// succeed. Default 64.
    pub max_save_attempts: u32,
    /// Also take the session from `Authorization: Bearer <token>`, for API clients (cookie
    /// store only: the token is the sealed session, which any instance with the keys can
    /// open). A request with a bearer token gets its new token, when the session changes or
    /// its expiry rolls, in the [`SESSION_TOKEN_HEADER`](crate::SESSION_TOKEN_HEADER) response
    /// header instead of a cookie, and an empty one when the session ends; a client logs in
    /// through a handler that calls [`Session::use_bearer_token`](crate::Session::use_bearer_token).
    /// Default `false`.
    pub bearer_tokens: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie: CookieConfig::default(),
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Some(Duration::from_secs(12 * 60 * 60)),
            ttl_extension: TtlExtension::OnEveryRequest,
            max_size: 64 * 1024,
            on_store_error: OnStoreError::ServiceUnavailable,
            conflict_rule: ConflictRule::LastWriteWins,
            max_save_attempts: 64,
            bearer_tokens: false,
        }
    }
}

impl SessionConfig {
    /// Checks the settings; the layer builder calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cookie.validate()?;
        let positive = "must be greater than zero";
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::invalid("idle_timeout", positive));
        }
        if let Some(absolute) = self.absolute_timeout
            && absolute < self.idle_timeout
        {
            return Err(ConfigError::invalid(
                "absolute_timeout",
                format!(
                    "{absolute:?} is shorter than idle_timeout ({:?})",
                    self.idle_timeout
                ),
            ));
        }
        if self.max_size == 0 {
            return Err(ConfigError::invalid("max_size", positive));
        }
        if self.max_save_attempts == 0 {
            return Err(ConfigError::invalid("max_save_attempts", positive));
        }
        Ok(())
    }
}

/// The session cookie's name and attributes.
///
/// # Which cookie is the session's
///
/// A request normally carries at most one cookie with the session's name. When it carries
/// several, none is used: the request gets no session (as with no cookie), counted in
/// `herd_session_cookies_rejected_total{reason="ambiguous"}`, and the response does not clear
/// the cookie. The `Cookie` header says nothing of where a cookie came from, and a browser
/// orders same-named cookies by path length and age, both of which a sibling subdomain (or
/// any host under the same registrable domain, or a man in the middle on plain HTTP) can
/// choose when it plants a `Domain=` cookie of its own: "the first one that verifies wins"
/// would let it log a user into its own session, and a removal could only delete this host's
/// cookie and hand the next request to the planted one. Refusing is the one answer that no
/// ordering can game, and it fails closed. OWASP ASVS v4 has no rule for duplicates as such:
/// its V3.4.4 asks for the `__Host-` prefix so that no other host can set the cookie in the
/// first place, which is why that is the default here. With a `__Host-` name a browser
/// accepts no planted cookie at all (it must be Secure, Path=/ and host-only), so several
/// values can only come from a hand-made request. The same rule bounds the work a request can cause: scanning
/// stops at the second value, and at most one value per request is verified (one HMAC per
/// signing key, or one decryption with the cookie store), however many `sid=` pairs the
/// header repeats.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CookieConfig {
    /// Cookie name. Default (`None`): [`HOST_COOKIE_NAME`] (`__Host-sid`) when the cookie is
    /// Secure with `Path=/` and no Domain, which is the default; [`SECURE_COOKIE_NAME`]
    /// (`__Secure-sid`) when it is Secure with another path or a Domain; [`PLAIN_COOKIE_NAME`]
    /// (`sid`) when it is not Secure. A name of your own that starts with `__Host-` or
    /// `__Secure-` (in any case, as browsers compare them) is checked against the rules the
    /// browser would enforce by dropping the cookie: [`ConfigError::InvalidConfig`] with field
    /// `cookie.name` names the rule broken.
    pub name: Option<String>,
    /// Send the cookie over HTTPS only. Default `true`; turn off only for plain-HTTP localhost
    /// development (which also makes the default name `sid`, since the `__Host-` prefix
    /// requires Secure).
    pub secure: bool,
    /// Hide the cookie from JavaScript. Default `true`.
    pub http_only: bool,
    /// SameSite attribute. Default [`SameSite::Lax`].
    pub same_site: SameSite,
    /// Path attribute. Default `"/"`.
    pub path: String,
    /// Domain attribute; `None` (the default) keeps the cookie on the exact host.
    pub domain: Option<String>,
    /// Give the cookie a Max-Age in step with the store's expiry (default `true`). When
    /// `false` it is a browser-session cookie, gone when the browser closes.
    pub persistent: bool,
}

/// The default cookie name when the cookie is Secure, with `Path=/` and no Domain.
pub const HOST_COOKIE_NAME: &str = "__Host-sid";
/// The default cookie name when the cookie is Secure with another path or a Domain.
pub const SECURE_COOKIE_NAME: &str = "__Secure-sid";
/// The default cookie name when the cookie is not Secure (plain-HTTP development).
pub const PLAIN_COOKIE_NAME: &str = "sid";

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            name: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
            domain: None,
            persistent: true,
        }
    }
}

/// Whether `name` starts with `prefix`, compared as browsers do: ignoring ASCII case.
fn has_prefix(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

impl CookieConfig {
    /// The cookie's name: [`name`](Self::name) when set, else the default it documents.
    pub fn effective_name(&self) -> &str {
        match &self.name {
            Some(name) => name,
            None if self.secure && self.path == "/" && self.domain.is_none() => HOST_COOKIE_NAME,
            None if self.secure => SECURE_COOKIE_NAME,
            None => PLAIN_COOKIE_NAME,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let name = self.effective_name();
        let is_token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(ConfigError::invalid(
                "cookie.name",
                format!("{name:?} is not a non-empty RFC 6265 token"),
            ));
        }
        let is_attribute_char = |b: u8| b.is_ascii_graphic() && b != b';' && b != b',';
        if !self.path.starts_with('/') || !self.path.bytes().all(is_attribute_char) {
            return Err(ConfigError::invalid(
                "cookie.path",
                format!(
                    "{:?} must start with `/` and have no spaces, `;` or `,`",
                    self.path
                ),
            ));
        }
        if let Some(domain) = &self.domain
            && (domain.is_empty() || !domain.bytes().all(is_attribute_char))
        {
            return Err(ConfigError::invalid(
                "cookie.domain",
                format!("{domain:?} must be non-empty, with no spaces, `;` or `,`"),
            ));
        }
        let prefix_error = |rule: &str| {
            ConfigError::invalid("cookie.name", format!("session cookie {name:?}: {rule}"))
        };
        if has_prefix(name, "__Host-") {
            if !self.secure {
                return Err(prefix_error(
                    "a __Host- cookie must be Secure (for plain-HTTP development leave the name \
                     unset: it is then `sid`)",
                ));
            }
            if self.path != "/" {
                return Err(prefix_error("a __Host- cookie must have Path=/"));
            }
            if self.domain.is_some() {
                return Err(prefix_error("a __Host- cookie must not have a Domain"));
            }
        }
        if has_prefix(name, "__Secure-") && !self.secure {
            return Err(prefix_error("a __Secure- cookie must be Secure"));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(ConfigError::invalid(
                "cookie.same_site",
                "SameSite=None requires Secure",
            ));
        }
        Ok(())
    }
}

/// The cookie's SameSite attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    /// Sent on same-site requests and top-level navigations (the default).
    Lax,
    /// Sent on same-site requests only.
    Strict,
    /// Sent on cross-site requests too; requires Secure.
    None,
}

impl From<SameSite> for cookie::SameSite {
    fn from(value: SameSite) -> Self {
        match value {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        }
    }
}

/// What extends a session's idle timeout (actix-session's `TtlExtensionPolicy`,
/// express-session's `rolling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlExtension {
    /// Any request that reads the session keeps it alive. To spare the store, a read-only
    /// request touches it only once less than half the idle timeout is left, so a busy session
    /// costs at most one touch per half idle timeout. Saves follow the same rule: a save keeps
    /// the expiry it finds (and the response carries no `Set-Cookie`) unless moving it gains at
    /// least half the idle timeout, so the cookie's Max-Age and the store's expiry move
    /// together, at most once per half idle timeout.
    OnEveryRequest,
    /// Only requests that change the session keep it alive: every save extends the expiry
    /// to the full idle timeout and sends the cookie with the new Max-Age.
    OnStateChanges,
}

/// What a request gets when the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Answer `503 Service Unavailable` with a plain-text body naming the failed operation,
    /// whatever the handler returned (the default). Failing open would silently log users out.
    ServiceUnavailable,
    /// Carry on: a failed load gives the handler a fresh empty session, a failed save is
    /// logged and counted and the handler's response goes out unchanged.
    FailOpen,
}

/// How a field changed both by this request and, meanwhile, by another is settled. Changes to
/// different fields always merge. Every such clash is counted in
/// `herd_session_conflicts_total{kind="same_field"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictRule {
    /// The save that lands last wins the field (the default; what a single store would do).
    LastWriteWins,
    /// The value already stored stays; this request's change to that field is dropped.
    FirstWriteWins,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = SessionConfig::default();
        config.validate().unwrap();
        assert_eq!(config.idle_timeout, Duration::from_secs(1800));
        assert_eq!(config.max_size, 65_536);
        assert_eq!(config.cookie.name, None);
        assert_eq!(config.cookie.effective_name(), "__Host-sid");
        assert!(config.cookie.secure && config.cookie.http_only);
        assert_eq!(config.cookie.same_site, SameSite::Lax);
        assert_eq!(config.cookie.path, "/");
    }

    #[test]
    fn deserializes_with_defaults_and_humantime() {
        let config: SessionConfig = serde_json::from_str(
            r#"{"idle_timeout": "5m", "absolute_timeout": null, "ttl_extension": "on_state_changes",
                "on_store_error": "fail_open", "conflict_rule": "first_write_wins",
                "cookie": {"secure": false, "same_site": "strict"}}"#,
        )
        .unwrap();
        assert_eq!(config.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.absolute_timeout, None);
        assert_eq!(config.ttl_extension, TtlExtension::OnStateChanges);
        assert_eq!(config.on_store_error, OnStoreError::FailOpen);
        assert_eq!(config.conflict_rule, ConflictRule::FirstWriteWins);
        assert!(!config.cookie.secure);
        assert_eq!(config.cookie.same_site, SameSite::Strict);
        assert_eq!(config.max_size, 65_536);
        assert!(serde_json::from_str::<SessionConfig>(r#"{"idle_timout": "5m"}"#).is_err());
    }

    #[test]
    fn invalid_settings_are_named() {
        let with = |f: fn(&mut SessionConfig)| {
            let mut config = SessionConfig::default();
            f(&mut config);
            config.validate().unwrap_err()
        };
        let zero = with(|c| c.idle_timeout = Duration::ZERO);
        assert_eq!(
            zero.to_string(),
            "configuration field `idle_timeout`: must be greater than zero"
        );
        let below = with(|c| c.absolute_timeout = Some(Duration::from_secs(60)));
        assert_eq!(below.field(), Some("absolute_timeout"));
        assert!(
            below.to_string().contains("shorter than idle_timeout"),
            "{below}"
        );
        assert_eq!(with(|c| c.max_size = 0).field(), Some("max_size"));
        assert_eq!(
            with(|c| c.max_save_attempts = 0).field(),
            Some("max_save_attempts")
        );
        assert_eq!(
            with(|c| c.cookie.name = Some("a b".into())).field(),
            Some("cookie.name")
        );
        assert_eq!(
            with(|c| c.cookie.name = Some(String::new())).field(),
            Some("cookie.name")
        );
        assert_eq!(
            with(|c| c.cookie.path = "/a;b".into()).field(),
            Some("cookie.path")
        );
        assert_eq!(
            with(|c| c.cookie.domain = Some(String::new())).field(),
            Some("cookie.domain")
        );
        let host_with_domain = with(|c| {
            c.cookie.name = Some("__Host-sid".into());
            c.cookie.domain = Some("example.com".into());
        });
        assert_eq!(host_with_domain.field(), Some("cookie.name"));
        let secure_without_secure = with(|c| {
            c.cookie.name = Some("__Secure-sid".into());
            c.cookie.secure = false;
        });
        assert_eq!(secure_without_secure.field(), Some("cookie.name"));
        let none_without_secure = with(|c| {
            c.cookie.same_site = SameSite::None;
            c.cookie.secure = false;
        });
        assert_eq!(none_without_secure.field(), Some("cookie.same_site"));
    }

    #[test]
    fn the_default_name_follows_secure_path_and_domain() {
        let mut cookie = CookieConfig::default();
        assert_eq!(cookie.effective_name(), HOST_COOKIE_NAME);
        cookie.path = "/app".into();
        assert_eq!(cookie.effective_name(), SECURE_COOKIE_NAME);
        cookie.path = "/".into();
        cookie.domain = Some("example.com".into());
        assert_eq!(cookie.effective_name(), SECURE_COOKIE_NAME);
        cookie.domain = None;
        cookie.secure = false;
        assert_eq!(cookie.effective_name(), PLAIN_COOKIE_NAME);
        // Each default is valid with the attributes that chose it.
        for (secure, path, domain) in [
            (true, "/", None),
            (true, "/app", None),
            (true, "/", Some("example.com")),
            (false, "/", None),
        ] {
            let config = SessionConfig {
                cookie: CookieConfig {
                    secure,
                    path: path.into(),
                    domain: domain.map(Into::into),
                    ..CookieConfig::default()
                },
                ..SessionConfig::default()
            };
            config.validate().unwrap();
        }
        // A name of one's own wins.
        cookie.name = Some("app_session".into());
        assert_eq!(cookie.effective_name(), "app_session");
    }

    #[test]
    fn host_prefix_rules_are_checked_in_any_case() {
        let with_name = |name: &str, f: fn(&mut CookieConfig)| {
            let mut config = SessionConfig::default();
            config.cookie.name = Some(name.into());
            f(&mut config.cookie);
            config.validate()
        };
        for name in ["__Host-sid", "__host-sid", "__HOST-sid"] {
            assert!(with_name(name, |_| {}).is_ok(), "{name}");
            for (broken, f) in [
                (
                    "Secure",
                    (|c: &mut CookieConfig| c.secure = false) as fn(&mut CookieConfig),
                ),
                ("Path=/", |c| c.path = "/app".into()),
                ("Domain", |c| c.domain = Some("example.com".into())),
            ] {
                let error = with_name(name, f).unwrap_err();
                let named = matches!(&error, ConfigError::InvalidConfig { field: "cookie.name", reason }
                    if reason.contains(broken));
                assert!(named, "{name} without {broken}: {error}");
            }
        }
        assert_eq!(
            with_name("__secure-sid", |c| c.secure = false)
                .unwrap_err()
                .field(),
            Some("cookie.name")
        );
        // The message says what to do.
        let error = with_name("__Host-sid", |c| c.secure = false).unwrap_err();
        assert!(error.to_string().contains("must be Secure"), "{error}");
    }
}
