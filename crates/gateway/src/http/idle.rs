//! The bound on each wait for the next piece of a body, as nginx's `proxy_read_timeout` and
//! `client_body_timeout`: not a deadline for the whole body, which may stream for as long as
//! pieces keep coming.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Sleep;

/// A timer, boxed: it is pinned and moves with the connection or body that owns it.
pub(super) type Timer = Pin<Box<Sleep>>;

/// Times one wait at a time: [`poll_expired`](Self::poll_expired) when the body is pending,
/// [`progress`](Self::progress) when a piece arrives. The timer is made on the first wait (a
/// body read whole never makes one) and reset, not rebuilt, for the next.
pub(super) struct IdleTimer {
    timeout: Duration,
    timer: Option<Timer>,
    /// A wait is under way, since the timer's deadline less `timeout`.
    waiting: bool,
}

impl IdleTimer {
    /// Waits of at most `timeout`, on `timer` when one is at hand (a pooled connection's).
    pub(super) fn new(timeout: Duration, timer: Option<Timer>) -> Self {
        Self {
            timeout,
            timer,
            waiting: false,
        }
    }

    /// A piece arrived: the next wait starts afresh.
    pub(super) fn progress(&mut self) {
        self.waiting = false;
    }

    /// Called when the body is pending: ready once this wait has lasted the timeout.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.waiting {
            self.waiting = true;
            timer.as_mut().reset(super::pool::deadline_after(timeout));
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(())
    }

    /// The timer, for the connection's next exchange.
    pub(super) fn into_timer(self) -> Option<Timer> {
        self.timer
    }
}
