#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod scope;
mod token;

pub use scope::{Captured, InScope, Propagate, Scope, in_current_scope, register, spawn};
pub use token::{BoxError, TokenFuture, TokenSlot, TokenStore, newer};
