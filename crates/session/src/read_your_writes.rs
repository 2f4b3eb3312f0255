//! A session field for herd-db-router's read-your-writes token.
//!
//! After a write, a handler stores the primary's commit [`Lsn`] in the session; later requests
//! of the same user, on any instance, hand it to the router so their reads go to a replica
//! that has replayed at least that far (or to the primary). The token only ever moves forward:
//! when two requests save different tokens concurrently, the merge keeps the higher one rather
//! than the last written.

use herd_db_router::Lsn;

use crate::error::SessionError;
use crate::session::Session;

/// The reserved field holding the token, as its text form (`"16/B374D848"`).
pub const READ_YOUR_WRITES_FIELD: &str = "__herd.db_router.lsn";

impl Session {
    /// The read-your-writes token stored in this session, if any. A stored value that is not
    /// an LSN (written by something else) reads as no token.
    pub async fn read_your_writes(&self) -> Result<Option<Lsn>, SessionError> {
        let text: Option<String> = self.get(READ_YOUR_WRITES_FIELD).await?;
        Ok(text.and_then(|text| match text.parse() {
            Ok(lsn) => Some(lsn),
            Err(error) => {
                tracing::warn!(%error, "session holds an invalid read-your-writes token; ignored");
                None
            }
        }))
    }

    /// Raises the stored token to `lsn`; a lower `lsn` than the stored one changes nothing.
    pub async fn advance_read_your_writes(&self, lsn: Lsn) -> Result<(), SessionError> {
        if self
            .read_your_writes()
            .await?
            .is_some_and(|current| current >= lsn)
        {
            return Ok(());
        }
        self.insert(READ_YOUR_WRITES_FIELD, lsn.to_string()).await
    }
}

/// The merge rule for the token field: the higher LSN of `ours` and `theirs` (JSON texts).
/// `None` when either side is not a valid token, so the ordinary rule applies.
pub(crate) fn merge(ours: &str, theirs: &str) -> Option<bool> {
    let parse = |json: &str| {
        serde_json::from_str::<String>(json)
            .ok()?
            .parse::<Lsn>()
            .ok()
    };
    Some(parse(ours)? >= parse(theirs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_higher_lsn() {
        assert_eq!(merge("\"1/0\"", "\"0/FFFF\""), Some(true));
        assert_eq!(merge("\"0/10\"", "\"0/20\""), Some(false));
        assert_eq!(merge("\"junk\"", "\"0/20\""), None);
    }
}
