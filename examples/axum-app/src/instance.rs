//! One application instance: sign-up/login, notes, a cached stats endpoint, health and metrics.
//!
//! Every instance is stateless: sessions live in Redis (herd-session), data in PostgreSQL through
//! herd-db-router (writes on the primary, lists from a replica that has replayed the user's own
//! writes), hot reads in herd-cache-cluster. Any instance can serve any request.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herd_cache_cluster::{Backend, Cache, RedisConfig};
use herd_db_router::{Consistency, DbRouter, ErrorClass, NodeConfig, RouterConfig};
use herd_gateway::http::X_HERD_DEPENDENCY_UNAVAILABLE as DEPENDENCY_UNAVAILABLE;
use herd_health::{
    CheckOptions, Health, HealthConfig, HttpMetricsLayer, PrometheusMetrics, ShowDetails,
};
use herd_session::{
    RedisStore, RedisStoreConfig, Session, SessionError, SessionLayer, SigningKeys,
};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::auth;
use crate::topology::RedisTarget;

const PAGE: &str = include_str!("page.html");
const SCHEMA: &str = include_str!("schema.sql");

/// What an instance needs to start.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// Shown by `/api/whoami` and in logs, e.g. `instance-1`.
    pub name: String,
    /// A PostgreSQL node, usually the primary (a libpq-style multi-host URL names several).
    pub database_url: String,
    /// More nodes, usually its streaming replicas. Every node is given to the router with role
    /// `auto`, so a promoted replica takes the writes without a restart.
    pub replica_urls: Vec<String>,
    /// Sessions and cache.
    pub redis: RedisTarget,
    /// Shared by every instance, so any of them accepts any other's cookies.
    pub session_keys: SigningKeys,
    /// `Secure` cookies (off for the plain-HTTP localhost demo).
    pub secure_cookies: bool,
}

/// A built instance: its router and its health registry (for drain on shutdown).
#[derive(Debug)]
pub struct Instance {
    /// The axum app: API, page, health and metrics.
    pub router: Router,
    /// Readiness, drain and deep health.
    pub health: Health,
    /// The database router (for tests: status, lag).
    pub db: DbRouter,
}

#[derive(Clone)]
struct AppState {
    name: Arc<str>,
    db: DbRouter,
    cache: Cache,
    /// Password hashing, bounded (see [`auth::Hashing`]).
    hashing: Arc<auth::Hashing>,
}

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database router refused its configuration or could not connect.
    #[error("database: {0}")]
    Db(#[from] herd_db_router::Error),
    /// The schema could not be applied on the primary.
    #[error("schema: {0}")]
    Schema(#[from] sqlx::Error),
    /// The cache could not connect.
    #[error("cache: {0}")]
    Cache(#[from] herd_cache_cluster::Error),
    /// The session store could not connect.
    #[error("sessions: {0}")]
    Session(#[from] herd_session::StoreError),
    /// The session layer refused its configuration.
    #[error("sessions: {0}")]
    SessionConfig(#[from] herd_session::ConfigError),
    /// The health registry refused its configuration.
    #[error("health: {0}")]
    Health(#[from] herd_health::Error),
    /// The password-hashing stage could not be set up.
    #[error("password hashing: {0}")]
    Hashing(String),
}

/// The process-wide Prometheus recorder (one per process, shared by in-process instances).
pub fn metrics() -> Result<PrometheusMetrics, herd_health::Error> {
    static METRICS: std::sync::OnceLock<PrometheusMetrics> = std::sync::OnceLock::new();
    if let Some(m) = METRICS.get() {
        return Ok(m.clone());
    }
    let m = PrometheusMetrics::install(&herd_health::MetricsConfig::default())?;
    Ok(METRICS.get_or_init(|| m).clone())
}

/// Applies the schema on the primary (idempotent).
///
/// # Errors
/// When the primary cannot be reached or refuses the DDL.
pub async fn migrate(db: &DbRouter) -> Result<(), sqlx::Error> {
    let primary = db.primary().map_err(herd_db_router::Error::into_sqlx)?;
    sqlx::raw_sql(SCHEMA).execute(primary).await?;
    Ok(())
}

/// Applies the schema on the primary at `url` over one connection of its own (idempotent), so a
/// start-up can do it once before the instances start.
///
/// # Errors
/// When the primary cannot be reached or refuses the DDL.
pub async fn apply_schema(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
    conn.close().await
}

/// Connects to the back ends and builds the instance's router.
///
/// # Errors
/// [`StartError`] naming the back end that failed.
pub async fn build(config: InstanceConfig) -> Result<Instance, StartError> {
    // The recorder first: metrics recorded before it exists (start-up checks) would be lost.
    let metrics = metrics()?;
    // Every known node with role `auto`: the monitor finds the writable one and follows a
    // promotion, so a failover needs no restart and no new URLs.
    let router_config = RouterConfig {
        nodes: std::iter::once(&config.database_url)
            .chain(&config.replica_urls)
            .enumerate()
            .map(|(i, url)| NodeConfig::new(url).name(format!("db{}", i + 1)))
            .collect(),
        check_interval: Duration::from_millis(250),
        ..RouterConfig::default()
    };
    let db = DbRouter::connect(router_config).await?;
    migrate(&db).await?;

    let (cache_backend, store) = match &config.redis {
        RedisTarget::Cluster(nodes) => (
            Backend::cluster(RedisConfig::new(nodes.iter())).await?,
            RedisStore::cluster(nodes, RedisStoreConfig::default()).await?,
        ),
        RedisTarget::Standalone(url) => (
            Backend::redis(RedisConfig::new([url])).await?,
            RedisStore::standalone(url, RedisStoreConfig::default()).await?,
        ),
    };
    let cache = Cache::builder(cache_backend)
        .namespace("notes-app")
        .build()
        .await?;

    let health = Health::builder()
        // A demo shows everything; a production service would use `WhenAuthorized` + a token.
        .config(HealthConfig {
            show_details: ShowDetails::Always,
            ..HealthConfig::default()
        })
        // The database and the session store are shared by every instance: their failures show
        // on /health but never fail readiness, so a failover does not take every instance out
        // of the gateway at once.
        .check_with(
            herd_db_router::health::RouterCheck::new(db.clone()),
            CheckOptions::new()
                .shared_dependency()
                .tag(herd_health::tags::REPLICATION),
        )
        .check_with(cache.health_check(), CheckOptions::new().non_critical())
        .check_with(
            herd_session::health::StoreCheck::new(store.clone()),
            CheckOptions::new().shared_dependency(),
        )
        .metrics(metrics)
        .build()?;

    let sessions = SessionLayer::builder(store, config.session_keys.clone())
        .secure(config.secure_cookies)
        .build()?;

    // Two hashes at once (19 MiB each), 32 more queued for up to 2 s: a flood of sign-ups gets
    // 503 + Retry-After instead of exhausting the instance's memory and CPU.
    let hashing = tokio::task::spawn_blocking(|| auth::Hashing::new(2, 32, Duration::from_secs(2)))
        .await
        .map_err(|e| StartError::Hashing(e.to_string()))?
        .map_err(|e| StartError::Hashing(e.to_string()))?;
    let state = AppState {
        name: config.name.into(),
        db: db.clone(),
        cache,
        hashing: Arc::new(hashing),
    };
    let api = Router::new()
        .route("/", get(page))
        .route("/api/whoami", get(whoami))
        .route("/api/auth/signup", post(signup))
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
        .route("/api/notes", get(list_notes).post(create_note))
        .route("/api/notes/{id}", get(get_note).delete(delete_note))
        .route("/api/stats", get(stats))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_your_writes,
        ))
        .with_state(state)
        .layer(sessions);
    let router = Router::new()
        .merge(api)
        .merge(health.router())
        .layer(HttpMetricsLayer::new());
    health.mark_started();
    Ok(Instance { router, health, db })
}

/// An API error: a status and a message, sent as `{"error": "..."}`.
///
/// A failure of a dependency every instance shares (the database, the session store) is a 503
/// with `Retry-After` and the `x-herd-dependency-unavailable` header, which tells the gateway
/// not to count it against this instance (and which the gateway removes).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// The shared dependency that failed, for 503s.
    dependency: Option<&'static str>,
    /// Send `Retry-After: 1` (always with a dependency).
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            dependency: None,
            retry_after: false,
        }
    }

    fn unavailable(dependency: &'static str, message: &str) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.to_owned(),
            dependency: Some(dependency),
            retry_after: true,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        let headers = response.headers_mut();
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(dependency) = self.dependency {
            headers.insert(DEPENDENCY_UNAVAILABLE, HeaderValue::from_static(dependency));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        let class = ErrorClass::of(&e);
        match class {
            ErrorClass::InvalidData => {
                tracing::debug!(error = %e, "rejected data");
                ApiError::new(StatusCode::BAD_REQUEST, "the database rejected that value")
            }
            ErrorClass::Conflict => {
                tracing::debug!(error = %e, "conflict");
                ApiError::new(StatusCode::CONFLICT, "that conflicts with stored data")
            }
            _ if class.is_dependency_failure() => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("postgres", "the database is unavailable, try again")
            }
            _ => {
                tracing::error!(error = %e, "database error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        tracing::warn!(error = %e, "session error");
        ApiError::unavailable("redis", "sessions are unavailable, try again")
    }
}

impl From<auth::Busy> for ApiError {
    fn from(_: auth::Busy) -> Self {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many sign-ups and logins at once, try again",
        );
        e.retry_after = true;
        e
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

/// `axum::Json` with the API's JSON error body for a rejected request.
#[derive(Debug, FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
struct ApiJson<T>(T);

/// `axum::extract::Path` with the API's JSON error body for a rejected path.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
struct Path<T>(T);

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

fn unauthorized() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "log in first")
}

/// Read-your-writes across instances, with the token kept in the user's session: every request
/// runs in a [`Consistency`] scope seeded from the session's token, so reads through the router
/// go to a replica that has replayed this user's writes (else the primary); after a request that
/// wrote, the primary's WAL position is stored back in the session for the next request, on
/// whichever instance it lands.
async fn read_your_writes(
    State(s): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(session) = request.extensions().get::<Session>().cloned() else {
        return next.run(request).await;
    };
    let token = match session.read_your_writes().await {
        Ok(token) => token,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let client = token.map_or_else(Consistency::new, Consistency::after);
    let response = client.scope(next.run(request)).await;
    if client.wrote() {
        match s.db.settle(&client).await {
            Ok(Some(lsn)) => {
                if let Err(e) = session.advance_read_your_writes(lsn).await {
                    tracing::warn!(error = %e, "could not store the read-your-writes token");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the primary's WAL position"),
        }
    }
    response
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[derive(Serialize)]
struct WhoAmI {
    instance: String,
    user: Option<String>,
}

async fn whoami(State(s): State<AppState>, session: Session) -> Result<Json<WhoAmI>, ApiError> {
    Ok(Json(WhoAmI {
        instance: s.name.to_string(),
        user: session.get("username").await?,
    }))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn signup(
    State(s): State<AppState>,
    session: Session,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let username = c.username.trim().to_owned();
    if username.is_empty() || username.len() > 64 || c.password.len() < 8 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a username of 1-64 characters and a password of at least 8",
        ));
    }
    if c.password.len() > 1024 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a password of at most 1024 bytes",
        ));
    }
    let hash = s
        .hashing
        .hash(c.password)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
    let row = sqlx::query(
        "INSERT INTO users (username, password_hash) VALUES ($1, $2) ON CONFLICT (username) DO NOTHING RETURNING id",
    )
    .bind(&username)
    .bind(&hash)
    .fetch_optional(&s.db)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "that username is taken",
        ));
    };
    start_session(&session, row.get::<i64, _>("id"), &username).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "user": username })),
    ))
}

async fn login(
    State(s): State<AppState>,
    session: Session,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    // Reads the user from the primary: a just-created account may not be on a replica yet.
    let row = herd_db_router::on_primary(
        sqlx::query("SELECT id, password_hash FROM users WHERE username = $1")
            .bind(c.username.trim())
            .fetch_optional(&s.db),
    )
    .await?;
    let wrong = || ApiError::new(StatusCode::UNAUTHORIZED, "wrong username or password");
    if c.password.len() > 1024 {
        return Err(wrong());
    }
    // An unknown name costs a verification too (against a decoy), so timing tells no one
    // which accounts exist.
    let stored: Option<String> = row.as_ref().map(|r| r.get("password_hash"));
    if !s.hashing.verify(c.password, stored).await? {
        return Err(wrong());
    }
    let Some(row) = row else {
        return Err(wrong());
    };
    start_session(&session, row.get::<i64, _>("id"), c.username.trim()).await?;
    Ok(Json(serde_json::json!({ "user": c.username.trim() })))
}

async fn start_session(
    session: &Session,
    user_id: i64,
    username: &str,
) -> Result<(), SessionError> {
    // A new id on every login: a session id planted before login is worthless after it.
    session.cycle_id().await?;
    session.insert("user_id", user_id).await?;
    session.insert("username", username).await?;
    Ok(())
}

async fn logout(session: Session) -> Result<StatusCode, ApiError> {
    session.destroy().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_id(session: &Session) -> Result<i64, ApiError> {
    session
        .get::<i64>("user_id")
        .await?
        .ok_or_else(unauthorized)
}

#[derive(Serialize)]
struct Note {
    id: i64,
    body: String,
}

#[derive(Deserialize)]
struct NewNote {
    body: String,
}

async fn list_notes(
    State(s): State<AppState>,
    session: Session,
) -> Result<Json<Vec<Note>>, ApiError> {
    let uid = user_id(&session).await?;
    // A replica that has replayed this user's own writes (the RYW layer's token), else the primary.
    let rows = sqlx::query("SELECT id, body FROM notes WHERE user_id = $1 ORDER BY id")
        .bind(uid)
        .fetch_all(&s.db)
        .await?;
    Ok(Json(
        rows.iter()
            .map(|r| Note {
                id: r.get("id"),
                body: r.get("body"),
            })
            .collect(),
    ))
}

async fn create_note(
    State(s): State<AppState>,
    session: Session,
    ApiJson(n): ApiJson<NewNote>,
) -> Result<impl IntoResponse, ApiError> {
    let uid = user_id(&session).await?;
    let body = n.body.trim();
    if body.is_empty() || body.len() > 10_000 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a note has 1-10000 characters",
        ));
    }
    let id: i64 =
        sqlx::query_scalar("INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING id")
            .bind(uid)
            .bind(body)
            .fetch_one(&s.db)
            .await?;
    Ok((
        StatusCode::CREATED,
        Json(Note {
            id,
            body: body.to_owned(),
        }),
    ))
}

async fn get_note(
    State(s): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> Result<Json<Note>, ApiError> {
    let uid = user_id(&session).await?;
    let row = sqlx::query("SELECT id, body FROM notes WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(uid)
        .fetch_optional(&s.db)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no note {id}")))?;
    Ok(Json(Note {
        id: row.get("id"),
        body: row.get("body"),
    }))
}

async fn delete_note(
    State(s): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let uid = user_id(&session).await?;
    let done = sqlx::query("DELETE FROM notes WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(uid)
        .execute(&s.db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no note {id}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Clone, Serialize, Deserialize)]
struct Stats {
    users: i64,
    notes: i64,
}

/// Site-wide counts: cached for 5 s in the Redis Cluster (one load per key across callers), and
/// public for 5 s so the gateway's response cache can serve it too.
async fn stats(State(s): State<AppState>) -> Result<Response, ApiError> {
    let db = s.db.clone();
    let stats = s
        .cache
        .get_or_load("stats", Duration::from_secs(5), || async move {
            let row = sqlx::query(
                "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM notes) AS notes",
            )
            .fetch_one(&db)
            .await?;
            Ok::<_, sqlx::Error>(Some(Stats { users: row.get("users"), notes: row.get("notes") }))
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "stats");
            // The cache fails open, so this is the loader's query: the database's failure.
            ApiError::unavailable("postgres", "stats are unavailable, try again")
        })?
        .unwrap_or(Stats { users: 0, notes: 0 });
    let mut response = Json(stats).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=5"),
    );
    Ok(response)
}

/// A running instance on its own thread and runtime (see [`herd_gateway::server`]).
#[derive(Debug)]
pub struct RunningInstance {
    /// The server thread (address, kill, stop).
    pub server: herd_gateway::server::ServerThread,
    /// Its health registry: `drain()` before stopping, so balancers stop sending first.
    pub health: Health,
    /// Its database router (status, lag).
    pub db: DbRouter,
}

/// Builds an instance inside its own runtime and serves it on `bind`.
///
/// # Errors
/// A message naming the instance and the back end that failed.
pub async fn spawn(
    config: InstanceConfig,
    bind: std::net::SocketAddr,
) -> Result<RunningInstance, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = config.name.clone();
    let server = herd_gateway::server::ServerThread::start(&name, bind, move || async move {
        let instance = build(config).await.map_err(|e| e.to_string())?;
        let _ = tx.send((instance.health, instance.db));
        Ok(instance.router)
    })
    .await?;
    let (health, db) = rx
        .await
        .map_err(|_| format!("{name}: the instance did not hand back its health registry"))?;
    Ok(RunningInstance { server, health, db })
}
