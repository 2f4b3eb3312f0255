//! `impl sqlx::Executor for &DbRouter`: automatic routing of each statement.
//!
//! The query is taken apart (SQL, arguments, persistence) so the SQL can be classified and
//! a read can be retried elsewhere: on another replica after a connection error before any
//! row arrived, and on the primary after a replica refused it as a write (SQLSTATE 25006).
//! The statement then runs on a connection from the chosen node's pool, through sqlx's own
//! `&mut PgConnection` executor, so sqlx's statement cache and connection handling apply
//! unchanged.
//!
//! Only the wait for that connection races the node's down signal: a statement that was sent
//! is never abandoned because the monitor found the node down (a failed or slow check, a
//! failover), since it may commit anyway and the caller would be told it failed.
//!
//! A sent statement is bounded by time instead (issue #22): the server cancels it at
//! `statement_timeout`, but on a connection that went silent (packets dropped, no RST or FIN)
//! that answer never arrives and TCP would keep the caller waiting for minutes. So when the
//! node has a `statement_timeout`, the wait for the statement's answer (a stream's first item)
//! is bounded by `statement_timeout + check_timeout`; past it the connection is closed (never
//! returned to the pool) and the caller gets [`Error::OutcomeUnknown`]: the statement may or
//! may not have taken effect. The rows of a stream after its first one are not bounded. A
//! statement the caller drops before the bound is left to sqlx as before (it waits for the
//! answer before pooling the connection again).

use std::future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use herd_lb_core::Outcome;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgConnection, PgQueryResult, PgRow, PgStatement, PgTypeInfo, Postgres,
};
use sqlx::{Describe, Either, Execute, Executor, SqlStr};
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use crate::classify::{Reason, Route};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics;
use crate::node::{Node, is_connection_error, is_read_only_violation, race_down};
use crate::nodes::{Lease, Shared};
use crate::router::DbRouter;
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

    /// Routes and runs one statement with `op` (one of the connection's executor methods).
    ///
    /// The common read (a replica picked at once, answering) runs inline; every other path
    /// is boxed, so this future, which every query allocates and moves, stays small.
    async fn run<T, F>(&self, parts: QueryParts, op: F) -> Result<T, sqlx::Error>
    where
        F: Op<T>,
    {
        let route = self.route(parts.sql.as_str());
        if let Route::Primary(_) = route {
            return self
                .run_on_writer(route, parts.into_query(), &op, true)
                .await;
        }
        // One look at the client's scope: its token, unless it wrote since its last read.
        let required = match Consistency::with_current(|client| {
            if client.take_unsettled() {
                Err(client.clone())
            } else {
                Ok(client.token())
            }
        }) {
            None => None,
            Some(Ok(token)) => token,
            Some(Err(client)) => {
                return Box::pin(self.read_after_write(route, parts, &op, client)).await;
            }
        };
        let Some((lease, node)) = self.lease_replica(required, &[]) else {
            return Box::pin(self.read_from_replicas(route, parts, &op, required, Vec::new()))
                .await;
        };
        let result = attempt(node, route, &op, parts.attempt()).await;
        match self.after_read(result, lease, node, &parts) {
            ReadNext::Done(result) => result,
            ReadNext::Elsewhere => {
                let tried = node.read_slot.into_iter().collect();
                Box::pin(self.read_from_replicas(route, parts, &op, required, tried)).await
            }
            ReadNext::Primary => {
                Box::pin(self.run_on_writer(route, parts.into_query(), &op, true)).await
            }
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
        F: Op<T>,
    {
        let node = self.writer_or_err("query").map_err(Error::into_sqlx)?;
        let result = attempt(node, route, op, query).await;
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

    /// A read by a client that wrote since its last read: it must see that write, so its
    /// token first rises to the primary's current position.
    async fn read_after_write<T, F>(
        &self,
        route: Route,
        parts: QueryParts,
        op: &F,
        client: Consistency,
    ) -> Result<T, sqlx::Error>
    where
        F: Op<T>,
    {
        match self.writer_lsn().await {
            Ok(lsn) => client.advance(lsn),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the primary's LSN: reading from the primary");
                client.mark_write();
                return self
                    .run_on_writer(route, parts.into_query(), op, false)
                    .await;
            }
        }
        self.read_from_replicas(route, parts, op, client.token(), Vec::new())
            .await
    }

    /// A replica for a read that must see `required`, skipping the read-set slots in `tried`.
    fn lease_replica(&self, required: Option<Lsn>, tried: &[usize]) -> Option<(Lease, &Node)> {
        self.pick_replica(required, tried)
            .and_then(|lease| self.with_node(lease))
    }

    /// A lease with the node it is on.
    fn with_node(&self, lease: Lease) -> Option<(Lease, &Node)> {
        let node = self.nodes.get(lease.node)?;
        Some((lease, node))
    }

    /// What a read's attempt on `node` leads to; records its outcome.
    fn after_read<T>(
        &self,
        result: Result<T, sqlx::Error>,
        lease: Lease,
        node: &Node,
        parts: &QueryParts,
    ) -> ReadNext<T> {
        match result {
            Ok(value) => {
                lease.finish(Outcome::Success);
                ReadNext::Done(Ok(value))
            }
            Err(e @ sqlx::Error::PoolTimedOut) => {
                // Saturation is backpressure, not a dead node: the caller gets the error, the
                // replica keeps its standing (the lease ends without an outcome).
                drop(lease);
                ReadNext::Done(Err(e))
            }
            Err(e) if is_connection_error(&e) => {
                lease.finish(Outcome::Failure);
                node.mark_down(&e);
                ReadNext::Elsewhere
            }
            Err(e) if is_read_only_violation(&e) && self.config.retry_misrouted => {
                lease.finish(Outcome::Success);
                metrics::misroute(&node.metric_keys);
                tracing::warn!(node = %node.name, sql = parts.sql.as_str(), "a replica refused the statement as a write: retrying on the primary");
                ReadNext::Primary
            }
            Err(e) => {
                // The node answered: the statement itself failed.
                lease.finish(Outcome::Success);
                ReadNext::Done(Err(e))
            }
        }
    }

    /// A read that did not get (or lost) its replica at the first try: the other replicas
    /// (waiting for one to replay `required`), then the fallback to the primary.
    async fn read_from_replicas<T, F>(
        &self,
        route: Route,
        parts: QueryParts,
        op: &F,
        required: Option<Lsn>,
        mut tried: Vec<usize>,
    ) -> Result<T, sqlx::Error>
    where
        F: Op<T>,
    {
        loop {
            let picked = match self.lease_replica(required, &tried) {
                Some(picked) => Some(picked),
                None => match required {
                    Some(lsn) => self
                        .wait_for_replay(lsn, &tried)
                        .await
                        .and_then(|lease| self.with_node(lease)),
                    None => None,
                },
            };
            let Some((lease, node)) = picked else {
                let reason = if !tried.is_empty() {
                    "replica_errors"
                } else if required.is_some() {
                    "read_your_writes"
                } else {
                    "no_eligible_replica"
                };
                self.fallback_node("query", reason)
                    .map_err(Error::into_sqlx)?;
                return self
                    .run_on_writer(route, parts.into_query(), op, false)
                    .await;
            };
            let result = attempt(node, route, op, parts.attempt()).await;
            match self.after_read(result, lease, node, &parts) {
                ReadNext::Done(result) => return result,
                ReadNext::Elsewhere => tried.extend(node.read_slot),
                ReadNext::Primary => {
                    return self
                        .run_on_writer(route, parts.into_query(), op, true)
                        .await;
                }
            }
        }
    }
}

/// Where a read goes after an attempt on a replica.
enum ReadNext<T> {
    /// Answered (a row set or the statement's own error).
    Done(Result<T, sqlx::Error>),
    /// The replica failed: another replica, else the primary.
    Elsewhere,
    /// The replica refused a write: the primary.
    Primary,
}

/// One of the connection's executor methods, run on a pooled connection it owns.
pub(crate) trait Op<T>:
    Fn(Sent, RoutedQuery) -> BoxFuture<'static, Result<T, sqlx::Error>>
{
}

impl<T, F> Op<T> for F where F: Fn(Sent, RoutedQuery) -> BoxFuture<'static, Result<T, sqlx::Error>> {}

/// The pooled connection a statement is sent on. Dropped unanswered past its deadline (the
/// node's in-flight bound), it closes the connection instead of returning it to the pool, where
/// sqlx would first wait for that answer on a connection that may never give one.
pub(crate) struct Sent {
    connection: PoolConnection<Postgres>,
    answered: bool,
    deadline: Option<Instant>,
}

impl Sent {
    fn new(connection: PoolConnection<Postgres>, deadline: Option<Instant>) -> Self {
        Self {
            connection,
            answered: false,
            deadline,
        }
    }

    /// The connection, and the flag to raise once the server has answered.
    fn parts(&mut self) -> (&mut PgConnection, &mut bool) {
        (&mut self.connection, &mut self.answered)
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if !self.answered
            && self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
        {
            self.connection.close_on_drop();
        }
    }
}

/// Runs one of the connection's executor methods on `sent`, marking it answered when it returns.
macro_rules! answered {
    ($sent:ident, $query:ident, $method:ident) => {{
        let mut sent = $sent;
        async move {
            let (connection, answered) = sent.parts();
            let result = connection.$method($query).await;
            *answered = true;
            metrics::answered(&result);
            result
        }
        .boxed()
    }};
}

/// One attempt of a statement on `node`, counted and, when DEBUG spans are wanted, in its own
/// `herd.db.query` span (see [`metrics::query_span`]).
async fn attempt<T>(
    node: &Node,
    route: Route,
    op: &impl Op<T>,
    query: RoutedQuery,
) -> Result<T, sqlx::Error> {
    metrics::query(&node.metric_keys, route);
    let span = metrics::query_span(node, route, query.sql.as_str());
    if span.is_disabled() {
        return attempt_on(node, op, query).await;
    }
    let result = attempt_on(node, op, query).instrument(span.clone()).await;
    if let Err(error) = &result {
        metrics::query_failed(&span, error);
    }
    result
}

/// One attempt of a statement on `node`: a connection from its pool, given up as soon as the
/// node is found down (nothing was sent yet, so any statement may go elsewhere or fail
/// cleanly), then the statement on that connection, which only the node's in-flight bound
/// interrupts (see the module documentation).
async fn attempt_on<T>(node: &Node, op: &impl Op<T>, query: RoutedQuery) -> Result<T, sqlx::Error> {
    let connection = match race_down(node, "query", node.pool.acquire()).await {
        Ok(connection) => connection,
        Err(e) => {
            if matches!(e, sqlx::Error::PoolTimedOut) {
                metrics::pool_timeout(&node.name);
            }
            return Err(e);
        }
    };
    let Some((bound, deadline)) = node
        .in_flight_timeout
        .and_then(|bound| Some((bound, Instant::now().checked_add(bound)?)))
    else {
        return op(Sent::new(connection, None), query).await;
    };
    match timeout_at(deadline, op(Sent::new(connection, Some(deadline)), query)).await {
        Ok(result) => result,
        // The statement's future, and with it the connection, was dropped unanswered.
        Err(_elapsed) => Err(outcome_unknown(node, bound)),
    }
}

#[cold]
fn outcome_unknown(node: &Node, waited: Duration) -> sqlx::Error {
    let error = Error::OutcomeUnknown {
        node: node.name.to_string(),
        operation: "query",
        waited,
    };
    tracing::warn!(node = %node.name, %error, "a sent statement got no answer: connection closed");
    error.into_sqlx()
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
                .run(parts?, |mut sent, q| {
                    // The rest of the rows stream from the connection the stream owns; it is
                    // answered once the first item (or the end, or an error) arrives.
                    // The attempt's span, kept open until the last row and told their count.
                    let span = metrics::current_span();
                    let mut rest: BoxStream<'static, Result<Item, sqlx::Error>> =
                        Box::pin(async_stream::try_stream! {
                            let (connection, answered) = sent.parts();
                            let mut rows = connection.fetch_many(q);
                            let mut returned = 0_u64;
                            loop {
                                let item = rows.try_next().await;
                                *answered = true;
                                match item? {
                                    Some(item) => {
                                        returned += u64::from(item.is_right());
                                        yield item
                                    }
                                    None => break,
                                }
                            }
                            metrics::returned_rows(&span, returned);
                        });
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
        match QueryParts::take(query) {
            Ok(parts) => Box::pin(
                self.shared
                    .run(parts, |sent, q| answered!(sent, q, fetch_optional)),
            ),
            Err(e) => Box::pin(future::ready(Err(e))),
        }
    }

    /// Overrides sqlx's default (`fetch_optional` wrapped in a second boxed future): the check
    /// for a row happens inside the one future this returns.
    fn fetch_one<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<PgRow, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match QueryParts::take(query) {
            Ok(parts) => {
                let shared = &*self.shared;
                Box::pin(async move {
                    shared
                        .run(parts, |sent, q| answered!(sent, q, fetch_optional))
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)
                })
            }
            Err(e) => Box::pin(future::ready(Err(e))),
        }
    }

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<PgQueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match QueryParts::take(query) {
            Ok(parts) => Box::pin(
                self.shared
                    .run(parts, |sent, q| answered!(sent, q, execute)),
            ),
            Err(e) => Box::pin(future::ready(Err(e))),
        }
    }

    fn fetch_all<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Vec<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match QueryParts::take(query) {
            Ok(parts) => Box::pin(
                self.shared
                    .run(parts, |sent, q| answered!(sent, q, fetch_all)),
            ),
            Err(e) => Box::pin(future::ready(Err(e))),
        }
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
