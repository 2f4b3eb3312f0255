//! axum integration: [`Session`] as an extractor, [`SessionError`] as a response.

use axum_core::body::Body;
use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::error::SessionError;
use crate::persist::error_response;
use crate::session::Session;

/// The request reached a handler asking for a [`Session`] without passing through a
/// [`SessionLayer`](crate::SessionLayer). Answers `500` naming the missing layer.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no session on this request: add herd_session::SessionLayer to the router")]
pub struct MissingSessionLayer;

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "session error answered as {}", self.status());
        }
        error_response::<Body>(&self)
    }
}
