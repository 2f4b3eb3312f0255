//! The session as the home of a client's read-your-writes token.
//!
//! After a write, the primary's commit position (herd-db-router's `Lsn`) is stored in the
//! session; later requests of the same user, on any instance, hand it to the router so their
//! reads go to a replica that has replayed at least that far (or to the primary). With
//! herd-db-router's `ReadYourWritesLayer::session` inside the [`SessionLayer`](crate::SessionLayer)
//! this happens with no code: the layer puts a [`TokenSlot`] backed by the session into every
//! request, and the router's layer reads and advances it. herd-session does not depend on
//! herd-db-router: the token is a `u64` position (`Lsn` converts both ways), and herd-context
//! (where the token contract lives) supplies the rule that merges it, [`newer`](herd_context::newer).
//!
//! The token only moves forward: every layer starts with a [`MergeRule`](crate::MergeRule) for
//! [`READ_YOUR_WRITES_FIELD`], so when two requests save different tokens concurrently the
//! higher one survives whichever saves last. The general merge knows nothing of tokens; a
//! service may replace the rule with
//! [`merge_rule`](crate::SessionLayerBuilder::merge_rule)`(READ_YOUR_WRITES_FIELD, ..)`.

use std::sync::Arc;

use herd_context::{TokenFuture, TokenSlot, TokenStore};
use serde_json::value::RawValue;

use crate::error::SessionError;
use crate::merge::Keep;
use crate::session::Session;

/// The reserved field holding the token: a JSON number (older versions stored PostgreSQL's
/// `"16/B374D848"` text, which is still read).
pub const READ_YOUR_WRITES_FIELD: &str = "__herd.db_router.lsn";

impl Session {
    /// The read-your-writes token stored in this session, if any, as any type made from a
    /// `u64` position (herd-db-router's `Lsn`, or `u64`). A stored value that is not a token
    /// (written by something else) reads as no token.
    ///
    /// ```no_run
    /// # async fn demo(session: herd_session::Session) -> Result<(), herd_session::SessionError> {
    /// let token: Option<u64> = session.read_your_writes().await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_your_writes<T: From<u64>>(&self) -> Result<Option<T>, SessionError> {
        let raw: Option<Box<RawValue>> = self.get(READ_YOUR_WRITES_FIELD).await?;
        Ok(raw.and_then(|raw| match parse(raw.get()) {
            Some(token) => Some(T::from(token)),
            None => {
                tracing::warn!("session holds an invalid read-your-writes token; ignored");
                None
            }
        }))
    }

    /// Raises the stored token to `token` (herd-db-router's `Lsn`, or a `u64`); a lower one
    /// than the stored one changes nothing.
    pub async fn advance_read_your_writes<T: Into<u64>>(
        &self,
        token: T,
    ) -> Result<(), SessionError> {
        let token = token.into();
        if self
            .read_your_writes::<u64>()
            .await?
            .is_some_and(|current| herd_context::newer(current, token))
        {
            return Ok(());
        }
        self.insert(READ_YOUR_WRITES_FIELD, token).await
    }

    /// A [`TokenSlot`] backed by this session (the layer puts one in every request).
    pub(crate) fn token_slot(&self) -> TokenSlot {
        TokenSlot::new(Arc::new(SessionTokens(self.clone())))
    }
}

/// The session as a [`TokenStore`].
struct SessionTokens(Session);

impl TokenStore for SessionTokens {
    fn load(&self) -> TokenFuture<'_, Option<u64>> {
        Box::pin(async move { Ok(self.0.read_your_writes::<u64>().await?) })
    }

    fn advance(&self, token: u64) -> TokenFuture<'_, ()> {
        Box::pin(async move { Ok(self.0.advance_read_your_writes(token).await?) })
    }
}

/// A stored token: a JSON number, or an older version's `"X/Y"` hex text.
fn parse(json: &str) -> Option<u64> {
    if let Ok(token) = serde_json::from_str::<u64>(json) {
        return Some(token);
    }
    let text = serde_json::from_str::<String>(json).ok()?;
    let (hi, lo) = text.split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// The [`MergeRule`](crate::MergeRule) every layer starts with for the token field: the newer
/// position stays, by herd-context's [`newer`](herd_context::newer), whichever request saves
/// last. `None` (the layer's [`ConflictRule`](crate::ConflictRule) decides) when a side holds
/// no valid token.
pub(crate) fn keep_newer(ours: Option<&str>, stored: Option<&str>) -> Option<Keep> {
    let (ours, stored) = (parse(ours?)?, parse(stored?)?);
    Some(if herd_context::newer(ours, stored) {
        Keep::Ours
    } else {
        Keep::Stored
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_higher_token_in_either_form() {
        let merge = |ours, stored| keep_newer(Some(ours), Some(stored));
        assert_eq!(merge("4294967296", "65535"), Some(Keep::Ours));
        assert_eq!(merge("16", "32"), Some(Keep::Stored));
        assert_eq!(merge("\"1/0\"", "\"0/FFFF\""), Some(Keep::Ours));
        assert_eq!(merge("\"0/10\"", "32"), Some(Keep::Stored));
        assert_eq!(merge("\"junk\"", "32"), None);
        assert_eq!(merge("-1", "32"), None);
        assert_eq!(merge("\"123456789/0\"", "32"), None, "9 hex digits");
        assert_eq!(keep_newer(None, Some("32")), None, "removed on one side");
    }
}
