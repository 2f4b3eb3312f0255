//! `impl sqlx::Executor for &DbRouter`: automatic routing of each statement.
//!
//! The query is taken apart (SQL, arguments, persistence) so the SQL can be classified and
//! a read can be retried elsewhere: on another replica after a connection error before any
//! row arrived, and on the primary after a replica refused it as a write (SQLSTATE 25006).
//! The statement then runs through the chosen node's `&PgPool` executor, so sqlx's own
//! statement cache and connection handling apply unchanged.

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt};
use herd_lb_core::Outcome;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo, Postgres};
use sqlx::{Describe, Either, Execute, Executor, PgPool, SqlStr};

use crate::classify::{Reason, Route};
use crate::error::Error;
use crate::metrics;
use crate::node::{is_connection_error, is_read_only_violation};
use crate::router::{DbRouter, Lease, Shared, race_down};
use crate::scope::{self, Consistency};

/// A statement rebuilt from its parts, for one attempt on one node.
#[derive(Debug)]
pub(crate) struct RoutedQuery {
    sql: SqlStr,
    arguments: Option<PgArguments>,
    persistent: bool,
}

impl<'q> Execute<'q, Postgres> for RoutedQuery {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        // A statement prepared elsewhere belongs to another connection; the node's
        // connection prepares (and caches) its own from the SQL.
        None
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        Ok(self.arguments.take())
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// A statement taken apart once, so it can be attempted more than once.
pub(crate) struct QueryParts {
    sql: SqlStr,
    arguments: Option<PgArguments>,
    persistent: bool,
}

impl QueryParts {
    fn take<'q, E: Execute<'q, Postgres>>(mut query: E) -> Result<Self, sqlx::Error> {
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let persistent = query.persistent();
        Ok(Self {
            sql: query.sql(),
            arguments,
            persistent,
        })
    }

    fn attempt(&self) -> RoutedQuery {
        RoutedQuery {
            sql: self.sql.clone(),
            arguments: self.arguments.clone(),
            persistent: self.persistent,
        }
    }

    fn into_query(self) -> RoutedQuery {
        RoutedQuery {
            sql: self.sql,
            arguments: self.arguments,
            persistent: self.persistent,
        }
    }
}

impl Shared {
    fn route(&self, sql: &str) -> Route {
        if scope::primary_forced() {
            return Route::Primary(Reason::Forced);
        }
        self.routes.route(sql, |sql| self.classifier.classify(sql))
    }

    /// Routes and runs one statement with `op` (one of the `&PgPool` executor methods).
    async fn run<T, F>(&self, parts: QueryParts, op: F) -> Result<T, sqlx::Error>
    where
        F: Fn(&PgPool, RoutedQuery) -> BoxFuture<'static, Result<T, sqlx::Error>>,
    {
        let route = self.route(parts.sql.as_str());
        match route {
            Route::Primary(_) => {
                self.run_on_writer(route, parts.into_query(), &op, true)
                    .await
            }
            Route::Replica(_) => self.run_read(route, parts, &op).await,
        }
    }

    async fn run_on_writer<T, F>(
        &self,
        route: Route,
        query: RoutedQuery,
        op: &F,
        is_write: bool,
    ) -> Result<T, sqlx::Error>
    where
        F: Fn(&PgPool, RoutedQuery) -> BoxFuture<'static, Result<T, sqlx::Error>>,
    {
        let node = self.writer_or_err("query").map_err(Error::into_sqlx)?;
        metrics::query(&node.metric_keys, route);
        let result = race_down(node, "query", op(&node.pool, query)).await;
        match &result {
            Ok(_) if is_write => {
                if let Some(client) = Consistency::current() {
                    client.mark_write();
                }
            }
            // Let the monitor confirm (and fail writes fast) instead of waiting an interval.
            Err(e) if is_connection_error(e) => self.wake.notify_one(),
            _ => {}
        }
        result
    }

    async fn run_read<T, F>(
        &self,
        route: Route,
        parts: QueryParts,
        op: &F,
    ) -> Result<T, sqlx::Error>
    where
        F: Fn(&PgPool, RoutedQuery) -> BoxFuture<'static, Result<T, sqlx::Error>>,
    {
        let required = match Consistency::current() {
            None => None,
            Some(client) => {
                if client.take_unsettled() {
                    // The client wrote in this scope: its reads must see that write.
                    // The rare paths are boxed: kept inline, their futures would make every
                    // read's future (moved a few times per query) several times larger.
                    match Box::pin(self.writer_lsn()).await {
                        Ok(lsn) => client.advance(lsn),
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot read the primary's LSN: reading from the primary");
                            client.mark_write();
                            return Box::pin(self.run_on_writer(
                                route,
                                parts.into_query(),
                                op,
                                false,
                            ))
                            .await;
                        }
                    }
                }
                client.token()
            }
        };
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let lease = match self.pick_replica(required, &tried) {
                Some(lease) => Some(lease),
                None => match required {
                    Some(lsn) => Box::pin(self.wait_for_replay(lsn, &tried)).await,
                    None => None,
                },
            };
            let Some((lease, node)) = lease.and_then(|l| self.nodes.get(l.node).map(|n| (l, n)))
            else {
                let reason = if !tried.is_empty() {
                    "replica_errors"
                } else if required.is_some() {
                    "read_your_writes"
                } else {
                    "no_eligible_replica"
                };
                self.fallback_node("query", reason)
                    .map_err(Error::into_sqlx)?;
                return Box::pin(self.run_on_writer(route, parts.into_query(), op, false)).await;
            };
            metrics::query(&node.metric_keys, route);
            let result = race_down(node, "query", op(&node.pool, parts.attempt())).await;
            match result {
                Ok(value) => {
                    lease.finish(Outcome::Success);
                    return Ok(value);
                }
                Err(e) if is_connection_error(&e) => {
                    lease.finish(Outcome::Failure);
                    node.mark_down(&e);
                    tried.extend(node.read_slot);
                }
                Err(e) if is_read_only_violation(&e) && self.config.retry_misrouted => {
                    Lease::finish(lease, Outcome::Success);
                    metrics::misroute(&node.metric_keys);
                    tracing::warn!(node = %node.name, sql = parts.sql.as_str(), "a replica refused the statement as a write: retrying on the primary");
                    return Box::pin(self.run_on_writer(route, parts.into_query(), op, true)).await;
                }
                Err(e) => {
                    // The node answered: the statement itself failed.
                    lease.finish(Outcome::Success);
                    return Err(e);
                }
            }
        }
    }
}

type Item = Either<PgQueryResult, PgRow>;

impl<'c> Executor<'c> for &'c DbRouter {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Item, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let parts = QueryParts::take(query);
        let shared = &*self.shared;
        // Retrying is only possible before the first item, so open the stream, look at its
        // first item, and only then hand the rest to the caller.
        let opened = async move {
            shared
                .run(parts?, |pool, q| {
                    let mut rest = pool.fetch_many(q);
                    async move {
                        match rest.next().await {
                            Some(Err(e)) => Err(e),
                            first => Ok((first, rest)),
                        }
                    }
                    .boxed()
                })
                .await
        };
        stream::once(opened)
            .flat_map(|opened| match opened {
                Ok((first, rest)) => stream::iter(first).chain(rest).left_stream(),
                Err(e) => stream::iter(Some(Err(e))).right_stream(),
            })
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let parts = QueryParts::take(query);
        let shared = &*self.shared;
        Box::pin(async move { shared.run(parts?, |pool, q| pool.fetch_optional(q)).await })
    }

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<PgQueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let parts = QueryParts::take(query);
        let shared = &*self.shared;
        Box::pin(async move { shared.run(parts?, |pool, q| pool.execute(q)).await })
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Vec<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let parts = QueryParts::take(query);
        let shared = &*self.shared;
        Box::pin(async move { shared.run(parts?, |pool, q| pool.fetch_all(q)).await })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let shared = &*self.shared;
        Box::pin(async move {
            let node = shared.writer_or_err("prepare").map_err(Error::into_sqlx)?;
            race_down(node, "prepare", node.pool.prepare_with(sql, parameters)).await
        })
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        let shared = &*self.shared;
        Box::pin(async move {
            let node = shared.writer_or_err("describe").map_err(Error::into_sqlx)?;
            race_down(node, "describe", node.pool.describe(sql)).await
        })
    }
}
