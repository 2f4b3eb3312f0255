//! One standalone Redis server through the `redis` crate's reconnecting `ConnectionManager`.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo};
use tokio::sync::{mpsc, watch};

use super::{DELETE_IF_EQUALS, NodeHealth, PubSubEvent, ttl_ms};
use crate::config::RedisConfig;
use crate::error::Error;

pub(super) const NAME: &str = "redis";

static DELETE_IF_EQUALS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(DELETE_IF_EQUALS));

/// A standalone Redis backend (one server, or a proxy in front of many).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    addr: String,
    client: Client,
    conn: ConnectionManager,
    resets: watch::Sender<u64>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the server at `config.urls[0]`; over TLS for a `rediss://` URL, with the
    /// certificates of [`RedisConfig::tls`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a missing or unparsable URL or unreadable certificate files,
    /// [`Error::Tls`] when the TLS handshake fails (wrong CA, a certificate for another host),
    /// [`Error::Backend`] when the server does not answer within the connect timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        let url = config.urls.first().ok_or_else(|| Error::InvalidConfig {
            field: "urls",
            reason: "the server URL is required".into(),
        })?;
        super::tls::check(&config)?;
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| Error::InvalidConfig {
                field: "urls",
                reason: format!("{url}: {e}"),
            })?;
        let addr = info.addr().to_string();
        let client = super::tls::client(info, &config)
            .map_err(|e| Error::backend(NAME, "connect", addr.clone(), e))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(config.retries as usize);
        let conn = tokio::time::timeout(
            config.connect_timeout.saturating_mul(2),
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| timed_out("connect timed out"))
        .and_then(|r| r)
        .map_err(|e| super::tls::connect_error(NAME, addr.clone(), e))?;
        let (resets, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                addr,
                client,
                conn,
                resets,
            }),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn fail(&self, operation: &'static str, source: redis::RedisError) -> Error {
        Error::backend(NAME, operation, self.inner.addr.clone(), source)
    }

    /// Bounds a whole operation, retries included.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.inner.config.operation_timeout, fut).await {
            Ok(result) => result.map_err(|e| self.fail(operation, e)),
            Err(_) => Err(self.fail(operation, timed_out("operation timed out"))),
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.bounded(
            "GET",
            redis::cmd("GET").arg(key).query_async(&mut self.conn()),
        )
        .await
    }

    pub(super) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(ttl_ms(ttl));
        self.bounded("SET", cmd.query_async::<()>(&mut self.conn()))
            .await
    }

    pub(super) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ttl_ms(ttl));
        self.bounded(
            "SET NX",
            cmd.query_async::<Option<String>>(&mut self.conn()),
        )
        .await
        .map(|r| r.is_some())
    }

    pub(super) async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        let mut conn = self.conn();
        let fut = async move {
            DELETE_IF_EQUALS_SCRIPT
                .key(key)
                .arg(value)
                .invoke_async::<i64>(&mut conn)
                .await
        };
        self.bounded("EVAL delete-if-equals", fut)
            .await
            .map(|n| n > 0)
    }

    pub(super) async fn delete(&self, keys: &[String]) -> Result<u64, Error> {
        self.bounded(
            "DEL",
            redis::cmd("DEL").arg(keys).query_async(&mut self.conn()),
        )
        .await
    }

    pub(super) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        self.bounded(
            "MGET",
            redis::cmd("MGET").arg(keys).query_async(&mut self.conn()),
        )
        .await
    }

    pub(super) async fn set_many(
        &self,
        items: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        for (key, value) in items {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .ignore();
        }
        self.bounded("SET (pipeline)", pipe.query_async::<()>(&mut self.conn()))
            .await
    }

    pub(super) async fn tag_add(
        &self,
        tag_key: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), Error> {
        let ms = ttl_ms(ttl);
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(tag_key).arg(members).ignore();
        pipe.cmd("PEXPIRE").arg(tag_key).arg(ms).arg("NX").ignore();
        pipe.cmd("PEXPIRE").arg(tag_key).arg(ms).arg("GT").ignore();
        self.bounded("SADD tag", pipe.query_async::<()>(&mut self.conn()))
            .await
    }

    pub(super) async fn tag_members(&self, tag_key: &str) -> Result<Vec<String>, Error> {
        self.bounded(
            "SMEMBERS",
            redis::cmd("SMEMBERS")
                .arg(tag_key)
                .query_async(&mut self.conn()),
        )
        .await
    }

    pub(super) async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), Error> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        self.bounded("PUBLISH", cmd.query_async::<i64>(&mut self.conn()))
            .await
            .map(drop)
    }

    /// `SUBSCRIBE channel` on a connection of its own, re-established (and reported as
    /// [`PubSubEvent::Interrupted`]) whenever it drops.
    pub(super) async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<mpsc::UnboundedReceiver<PubSubEvent>, Error> {
        let (events, rx) = mpsc::unbounded_channel();
        let first = self.subscribe_once(channel).await?;
        let this = self.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let mut stream = Some(first);
            let mut backoff = Duration::from_millis(50);
            loop {
                let mut messages = match stream.take() {
                    Some(s) => s,
                    None => {
                        tokio::select! {
                            () = events.closed() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        match this.subscribe_once(&channel).await {
                            Ok(s) => {
                                backoff = Duration::from_millis(50);
                                let _ = events.send(PubSubEvent::Interrupted);
                                this.inner.resets.send_modify(|n| *n += 1);
                                s
                            }
                            Err(error) => {
                                tracing::debug!(%error, "cache invalidation: resubscribe failed");
                                backoff = (backoff * 2).min(Duration::from_secs(1));
                                continue;
                            }
                        }
                    }
                };
                loop {
                    tokio::select! {
                        () = events.closed() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => { let _ = events.send(PubSubEvent::Message(msg.get_payload_bytes().to_vec())); }
                            None => break,
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn subscribe_once(&self, channel: &str) -> Result<redis::aio::PubSubStream, Error> {
        let fut = async {
            let mut pubsub = self.inner.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok(pubsub.into_on_message())
        };
        self.bounded("SUBSCRIBE", fut).await
    }

    pub(super) fn resets(&self) -> watch::Receiver<u64> {
        self.inner.resets.subscribe()
    }

    pub(super) async fn ping_nodes(&self) -> Vec<NodeHealth> {
        let started = Instant::now();
        let node = self.inner.addr.clone();
        match self
            .bounded(
                "PING",
                redis::cmd("PING").query_async::<String>(&mut self.conn()),
            )
            .await
        {
            Ok(_) => vec![NodeHealth {
                node,
                latency: Some(started.elapsed()),
                error: None,
            }],
            Err(e) => vec![NodeHealth {
                node,
                latency: None,
                error: Some(e.to_string()),
            }],
        }
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}
