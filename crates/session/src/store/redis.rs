//! `RedisStore`: sessions in Redis Cluster or a standalone Redis, one hash per session.
//!
//! Layout: key `<prefix><hex sha256(id)>` is a hash with field `v` (version) and `d` (the
//! record as JSON); the key's TTL is the session's expiry. Every write is a Lua script on that
//! one key, so it is atomic and lands on one cluster slot:
//!
//! * create: write version 1 only if the key does not exist (NX);
//! * save: write version `v + 1` only if the stored version is still `v`; otherwise return
//!   what is stored (for the merge) or that the key is gone (never recreate it);
//! * touch: `PEXPIRE`, which does nothing on a missing key.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use serde::Deserialize;

use super::{SaveOutcome, SessionStore, Stored};
use crate::error::{StoreError, StoreOperation};
use crate::id::StoreKey;
use crate::record::{SessionRecord, duration_ms};

const STORE: &str = "redis";

const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', '1', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const LOAD: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'd')
if not r[1] or not r[2] then return false end
return {r[1], r[2], redis.call('PTTL', KEYS[1])}
";

const SAVE: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return {0} end
if v ~= ARGV[1] then
  return {1, v, redis.call('HGET', KEYS[1], 'd'), redis.call('PTTL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {2}
";

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// Prefix of every session key. Default `"herd:session:"`.
    pub key_prefix: String,
    /// Deadline for one store operation (one round trip plus the client's own redirects and
    /// retries). Default 1 second.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline for opening a connection. Default 5 seconds.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            key_prefix: "herd:session:".to_owned(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Sessions in Redis: a Redis Cluster ([`cluster`](Self::cluster)) or a single server
/// ([`standalone`](Self::standalone)).
///
/// Cheap to clone; clones share the connection (multiplexed, reconnecting).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herd_session::{RedisStore, RedisStoreConfig, SessionLayer, SigningKeys};
///
/// let store = RedisStore::cluster(
///     ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
///     RedisStoreConfig::default(),
/// )
/// .await?;
/// let layer = SessionLayer::new(store, SigningKeys::generate()?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    config: Arc<RedisStoreConfig>,
    /// Where the store points, for error messages: the server, or the cluster's seed nodes.
    nodes: Arc<str>,
    scripts: Arc<Scripts>,
}

#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Scripts {
    create: Script,
    load: Script,
    save: Script,
}

impl RedisStore {
    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port` URLs); the
    /// client discovers the rest and follows slot moves and failovers.
    pub async fn cluster<I, S>(nodes: I, config: RedisStoreConfig) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let described = describe(&urls);
        let fail = |error: RedisError| {
            StoreError::new(STORE, StoreOperation::Connect, error.to_string())
                .with_node(&*described)
        };
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.timeout)
            .build()
            .map_err(fail)?;
        let connection =
            tokio::time::timeout(config.connect_timeout, client.get_async_connection())
                .await
                .map_err(|_| {
                    StoreError::timeout(STORE, StoreOperation::Connect, config.connect_timeout)
                        .with_node(&*described)
                })?
                .map_err(fail)?;
        Ok(Self::with(
            Connection::Cluster(connection),
            config,
            described,
        ))
    }

    /// Connects to a single Redis server (`redis://host:port/db`), reconnecting on its own
    /// after a connection loss.
    pub async fn standalone(url: &str, config: RedisStoreConfig) -> Result<Self, StoreError> {
        let described = describe(&[url]);
        let fail = |error: RedisError| {
            StoreError::new(STORE, StoreOperation::Connect, error.to_string())
                .with_node(&*described)
        };
        let client = Client::open(url).map_err(fail)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2);
        let connection = tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| {
            StoreError::timeout(STORE, StoreOperation::Connect, config.connect_timeout)
                .with_node(&*described)
        })?
        .map_err(fail)?;
        Ok(Self::with(
            Connection::Standalone(connection),
            config,
            described,
        ))
    }

    /// A store over a cluster connection the application already has.
    pub fn from_cluster_connection(
        connection: ClusterConnection,
        config: RedisStoreConfig,
    ) -> Self {
        Self::with(
            Connection::Cluster(connection),
            config,
            "redis cluster".to_owned(),
        )
    }

    /// A store over a standalone connection manager the application already has.
    pub fn from_connection_manager(
        connection: ConnectionManager,
        config: RedisStoreConfig,
    ) -> Self {
        Self::with(
            Connection::Standalone(connection),
            config,
            "redis".to_owned(),
        )
    }

    fn with(connection: Connection, config: RedisStoreConfig, nodes: String) -> Self {
        Self {
            connection,
            config: Arc::new(config),
            nodes: nodes.into(),
            scripts: Arc::new(Scripts {
                create: Script::new(CREATE),
                load: Script::new(LOAD),
                save: Script::new(SAVE),
            }),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisStoreConfig {
        &self.config
    }

    /// The Redis key of a session.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{key}", self.config.key_prefix)
    }

    /// Sends `PING`; for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let reply: Value = self
            .run(StoreOperation::Ping, async move {
                redis::cmd("PING").query_async(&mut connection).await
            })
            .await?;
        match reply {
            Value::SimpleString(_) | Value::BulkString(_) | Value::Okay => Ok(()),
            other => Err(self.unexpected(StoreOperation::Ping, &other)),
        }
    }

    /// Runs one operation under the store's timeout, naming the operation and nodes on error.
    async fn run<T>(
        &self,
        operation: StoreOperation,
        future: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                Err(StoreError::new(STORE, operation, error.to_string()).with_node(&*self.nodes))
            }
            Err(_) => {
                Err(StoreError::timeout(STORE, operation, self.config.timeout)
                    .with_node(&*self.nodes))
            }
        }
    }

    fn unexpected(&self, operation: StoreOperation, reply: &Value) -> StoreError {
        StoreError::new(STORE, operation, format!("unexpected reply {reply:?}"))
            .with_node(&*self.nodes)
    }

    /// Parses `[version, json, pttl]` as the LOAD and SAVE scripts return it.
    fn stored(
        &self,
        operation: StoreOperation,
        version: Value,
        json: Value,
        pttl: Value,
    ) -> Result<Stored, StoreError> {
        let bad = |what: &str| {
            StoreError::new(STORE, operation, format!("stored session has {what}"))
                .with_node(&*self.nodes)
        };
        let version = text(version)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad("no valid version"))?;
        let json = text(json).ok_or_else(|| bad("no data"))?;
        let record = SessionRecord::from_json(&json).map_err(|e| bad(&format!("bad data: {e}")))?;
        // PTTL is -1 for a key without expiry (written by someone else): treat it as one
        // millisecond left so the layer re-applies an expiry on its next touch.
        let ttl = match pttl {
            Value::Int(ms) if ms > 0 => Duration::from_millis(ms.unsigned_abs()),
            _ => Duration::from_millis(1),
        };
        Ok(Stored {
            record: Arc::new(record),
            version,
            ttl,
            lease: None,
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.connection {
            Connection::Standalone(_) => "standalone",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("nodes", &self.nodes)
            .field("config", &self.config)
            .finish()
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn name(&self) -> &'static str {
        STORE
    }

    async fn create(
        &self,
        key: &StoreKey,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.scripts.create.key(self.redis_key(key));
        invocation
            .arg(record.to_json())
            .arg(duration_ms(ttl).max(1));
        let created: i64 = self
            .run(StoreOperation::Create, async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(created == 1)
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<Stored>, StoreError> {
        let mut connection = self.connection.clone();
        let invocation = self.scripts.load.key(self.redis_key(key));
        let reply: Value = self
            .run(StoreOperation::Load, async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::Array(items) => match <[Value; 3]>::try_from(items) {
                Ok([version, json, pttl]) => self
                    .stored(StoreOperation::Load, version, json, pttl)
                    .map(Some),
                Err(items) => Err(self.unexpected(StoreOperation::Load, &Value::Array(items))),
            },
            other => Err(self.unexpected(StoreOperation::Load, &other)),
        }
    }

    async fn save(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        let mut connection = self.connection.clone();
        let version = expected_version.saturating_add(1);
        let mut invocation = self.scripts.save.key(self.redis_key(key));
        invocation
            .arg(expected_version)
            .arg(version)
            .arg(record.to_json())
            .arg(duration_ms(ttl).max(1));
        let reply: Vec<Value> = self
            .run(StoreOperation::Save, async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        let mut items = reply.into_iter();
        match (items.next(), items.next(), items.next(), items.next()) {
            (Some(Value::Int(2)), None, ..) => Ok(SaveOutcome::Saved { version }),
            (Some(Value::Int(0)), None, ..) => Ok(SaveOutcome::Gone),
            (Some(Value::Int(1)), Some(current), Some(json), Some(pttl)) => self
                .stored(StoreOperation::Save, current, json, pttl)
                .map(SaveOutcome::Conflict),
            (first, ..) => Err(self.unexpected(StoreOperation::Save, &first.unwrap_or(Value::Nil))),
        }
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let redis_key = self.redis_key(key);
        let _: i64 = self
            .run(StoreOperation::Delete, async move {
                redis::cmd("DEL")
                    .arg(redis_key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let redis_key = self.redis_key(key);
        let ms = duration_ms(ttl).max(1);
        let touched: i64 = self
            .run(StoreOperation::Touch, async move {
                redis::cmd("PEXPIRE")
                    .arg(redis_key)
                    .arg(ms)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(touched == 1)
    }
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `host:port` of each URL for error messages, without credentials.
fn describe<S: AsRef<str>>(urls: &[S]) -> String {
    let hosts: Vec<&str> = urls
        .iter()
        .map(|url| {
            let url = url.as_ref();
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            rest.split('/').next().unwrap_or(rest)
        })
        .collect();
    hosts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_strips_scheme_credentials_and_db() {
        assert_eq!(
            describe(&[
                "redis://user:secret@10.0.0.1:6379/2",
                "redis://10.0.0.2:7000"
            ]),
            "10.0.0.1:6379,10.0.0.2:7000"
        );
    }

    #[test]
    fn config_defaults_and_humantime() {
        let config: RedisStoreConfig =
            serde_json::from_str(r#"{"timeout": "250ms", "key_prefix": "app:s:"}"#).unwrap();
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.key_prefix, "app:s:");
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
    }
}
