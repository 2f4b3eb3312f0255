//! Graceful drain: turn readiness off on SIGTERM (or Ctrl-C), wait for load balancers to notice,
//! then let the server stop accepting.

use std::future::Future;

use crate::health::Health;

impl Health {
    /// Waits for SIGTERM or Ctrl-C, then [drains](Health::drain) (readiness fails at once,
    /// liveness keeps passing) and waits `drain_delay` (default 5 s) before resolving. Pass it to
    /// `axum::serve(..).with_graceful_shutdown(..)`: the server keeps accepting and serving
    /// during the delay, while balancers and Kubernetes endpoints stop routing to this
    /// instance, then it stops accepting and finishes in-flight requests. A second signal
    /// during the delay ends it at once (an impatient Ctrl-C in development; for no delay at
    /// all there, use [`HealthConfig::development`](crate::HealthConfig::development)).
    ///
    /// ```no_run
    /// # async fn run() -> std::io::Result<()> {
    /// let health = herd_health::Health::builder().build().unwrap();
    /// let app: axum::Router = health.router();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// health.mark_started();
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(health.shutdown_signal())
    ///     .await
    /// # }
    /// ```
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        self.drain_on_then(termination(), termination())
    }

    /// Like [`shutdown_signal`](Self::shutdown_signal) with a signal of your own (a channel,
    /// an admin endpoint, a test trigger): when `signal` resolves, drains and waits
    /// `drain_delay`.
    pub fn drain_on<F>(&self, signal: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future + Send + 'static,
    {
        self.drain_on_then(signal, std::future::pending::<()>())
    }

    /// [`drain_on`](Self::drain_on), and `hurry` (started only after `signal`) cuts the wait
    /// short.
    fn drain_on_then<F, H>(&self, signal: F, hurry: H) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future + Send + 'static,
        H: Future + Send + 'static,
    {
        let health = self.clone();
        async move {
            signal.await;
            health.drain();
            let delay = health.config().drain_delay;
            if delay.is_zero() {
                tracing::info!("shutdown requested; refusing connections now (no drain delay)");
                return;
            }
            tracing::info!(
                ?delay,
                "shutdown requested; waiting before refusing connections (signal again to skip)"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = hurry => tracing::info!("second shutdown signal; not waiting any longer"),
            }
        }
    }
}

/// Resolves on SIGTERM (Unix) or Ctrl-C. If a handler cannot be installed, that source is
/// ignored (and logged) rather than resolving at once, which would shut the server down.
async fn termination() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
