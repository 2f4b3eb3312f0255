//! PostgreSQL read/write splitting over sqlx.
pub mod classify;
pub use classify::{Classifier, FunctionPolicy, Reason, Route, classify};
