//! [`ResponseFuture`], the response future of [`ReadYourWrites`](super::ReadYourWrites).

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use herd_context::TokenSlot;
use http::Response;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;

use super::carrier::Carrier;
use crate::lsn::Lsn;
use crate::router::DbRouter;
use crate::scope::Consistency;

pin_project! {
    /// Response future of [`ReadYourWrites`](super::ReadYourWrites): the inner service's
    /// future, run in the client's [`Consistency`] scope.
    ///
    /// A request that carries no token, or one the router has already seen the primary reach,
    /// and that does not write, allocates nothing here. Only the steps that wait on I/O are
    /// boxed: reading the token from the session (herd-context's `TokenStore` returns boxed
    /// futures), checking a token newer than the router's last look at the primary, and, after
    /// a write, reading the primary's WAL position for the new token.
    pub struct ResponseFuture<F, B> {
        #[pin]
        inner: TaskLocalFuture<Consistency, F>,
        state: State<B>,
        client: Consistency,
        router: DbRouter,
        carrier: Arc<Carrier>,
        // The session's token slot (session carrier with a session).
        slot: Option<TokenSlot>,
    }
}

/// Where a [`ResponseFuture`] is.
enum State<B> {
    /// Waiting for the client's token: read from the session and checked, or checked against
    /// the primary. The inner future is not polled before the scope holds the token.
    Token(BoxFuture<'static, Option<Lsn>>),
    /// Running the inner service in the client's scope.
    Inner,
    /// The request wrote: the new token is being read (and stored in the session); the
    /// response goes out after it.
    Settle {
        settle: BoxFuture<'static, Option<Lsn>>,
        response: Response<B>,
    },
    /// The response was returned.
    Done,
}

impl<F: Future, B> ResponseFuture<F, B> {
    /// Runs `inner` in `client`'s scope once the token (the one presented, `presented`, or
    /// the session's) is in it.
    pub(super) fn new(
        inner: F,
        client: Consistency,
        router: DbRouter,
        carrier: Arc<Carrier>,
        slot: Option<TokenSlot>,
        presented: Option<Lsn>,
    ) -> Self {
        let state = if let Some(slot) = &slot {
            let (slot, router) = (slot.clone(), router.clone());
            State::Token(Box::pin(async move {
                match slot.load().await {
                    Ok(Some(token)) => router.check_token(Lsn::new(token)).await,
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%error, "read-your-writes: the session's token cannot be read; none used");
                        None
                    }
                }
            }))
        } else {
            match presented {
                Some(token) if !router.shared.token_seen(token) => {
                    let router = router.clone();
                    State::Token(Box::pin(async move { router.check_token(token).await }))
                }
                Some(token) => {
                    client.advance(token);
                    State::Inner
                }
                None => State::Inner,
            }
        };
        Self {
            inner: client.scoped(inner),
            state,
            client,
            router,
            carrier,
            slot,
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Token(_) => "token",
            State::Inner => "inner",
            State::Settle { .. } => "settle",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state {
                State::Token(check) => {
                    if let Some(token) = ready!(check.as_mut().poll(cx)) {
                        this.client.advance(token);
                    }
                    *this.state = State::Inner;
                }
                State::Inner => {
                    let mut response = match ready!(this.inner.as_mut().poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            *this.state = State::Done;
                            return Poll::Ready(Err(error));
                        }
                    };
                    let session_less =
                        matches!(**this.carrier, Carrier::Session) && this.slot.is_none();
                    if !this.client.wrote() || session_less {
                        // Nothing to settle: the token is the one the request came with (a
                        // header carrier echoes it; the others change nothing).
                        if let Some(token) = this.client.token() {
                            this.carrier.write(response.headers_mut(), token, false);
                        }
                        *this.state = State::Done;
                        return Poll::Ready(Ok(response));
                    }
                    let settle = settle(this.router.clone(), this.client.clone(), this.slot.take());
                    *this.state = State::Settle {
                        settle: Box::pin(settle),
                        response,
                    };
                }
                State::Settle { settle, .. } => {
                    let token = ready!(settle.as_mut().poll(cx));
                    if let State::Settle { mut response, .. } =
                        mem::replace(this.state, State::Done)
                    {
                        if let Some(token) = token {
                            this.carrier.write(response.headers_mut(), token, true);
                        }
                        return Poll::Ready(Ok(response));
                    }
                }
                State::Done => panic!("ResponseFuture polled after it returned the response"),
            }
        }
    }
}

/// After a write: the client's new token (the primary's position after its commits), stored
/// in the session when there is one. `None` when there is none to hand out, or it cannot be
/// read (the response then goes out without it, and a warning is logged).
async fn settle(router: DbRouter, client: Consistency, slot: Option<TokenSlot>) -> Option<Lsn> {
    let token = match router.settle(&client).await {
        Ok(token) => token?,
        Err(error) => {
            tracing::warn!(%error, "read-your-writes: no token for this response");
            return None;
        }
    };
    if let Some(slot) = slot
        && let Err(error) = slot.advance(token.into()).await
    {
        tracing::warn!(%error, "read-your-writes: the token cannot be stored in the session");
    }
    Some(token)
}
