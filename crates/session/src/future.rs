//! The response future of [`SessionService`](crate::SessionService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::session::Session;

/// The save after the handler, when it has to wait for the store. Boxed: it is an `async fn`
/// over `dyn SessionStore` (whose futures are boxed themselves), a type with no name to store
/// here. Only requests that changed (or must touch) a session in a store other than the
/// `MemoryStore`, or that create one, build it; the rest finish in `ResponseFuture::poll` with
/// nothing boxed.
type Finishing<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

pin_project! {
    /// Runs the inner service, then saves the session and sets its cookie.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        /// The inner service is answering.
        Inner {
            #[pin]
            future: F,
            session: Option<Session>,
        },
        /// The session is being saved (only when the handler used it).
        Finishing { future: Finishing<B> },
        /// The response was returned.
        Done,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, session: Session) -> Self {
        Self {
            state: State::Inner {
                future,
                session: Some(session),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<String> + Send + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { future, session } => {
                    let result = ready!(future.poll(cx));
                    let (mut response, session, plan) = match (result, session.take()) {
                        (Ok(mut response), Some(session)) => {
                            // A session the handler never read, or one the store saves
                            // in place, is finished here, boxing nothing.
                            match session.finish_now(&mut response) {
                                Ok(()) => {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Ok(response));
                                }
                                Err(plan) => (response, session, plan),
                            }
                        }
                        (result, _) => {
                            this.state.set(State::Done);
                            return Poll::Ready(result);
                        }
                    };
                    let future = Box::pin(async move {
                        session.finish_plan(plan, &mut response).await;
                        response
                    });
                    this.state.set(State::Finishing { future });
                }
                StateProj::Finishing { future } => {
                    let response = ready!(future.as_mut().poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                // Polled after it completed: a caller bug; never wakes again.
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
