//! Per-field merge rules: how a field changed on both sides of a concurrent save is settled.

use std::fmt;
use std::sync::Arc;

use crate::config::ConflictRule;

/// Which value a field changed on both sides of a concurrent save keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// This request's value: its change is saved over the other request's.
    Ours,
    /// The value the other request stored: this request's change is dropped.
    Stored,
}

/// Settles one field changed both by this request and by another request that saved first.
///
/// When a save meets a concurrent change, the layer re-applies this request's changes on top
/// of what the other request stored. Fields changed on one side only merge by themselves; a
/// field changed on both sides asks the rule set for it with
/// [`SessionLayerBuilder::merge_rule`](crate::SessionLayerBuilder::merge_rule), and without
/// one (or when the rule has no opinion) the layer's [`ConflictRule`] decides.
///
/// Closures `Fn(Option<&str>, Option<&str>) -> Option<Keep>` are rules, and so is a
/// [`ConflictRule`] (a per-field override of the layer's):
///
/// ```
/// use herd_session::{ConflictRule, Keep, MemoryStore, SessionLayer, SigningKeys};
///
/// // A high score only goes up, whichever request saves last.
/// let higher = |ours: Option<&str>, stored: Option<&str>| {
///     let ours: u64 = ours?.parse().ok()?;
///     let stored: u64 = stored?.parse().ok()?;
///     Some(if ours >= stored { Keep::Ours } else { Keep::Stored })
/// };
/// let layer = SessionLayer::builder(MemoryStore::new(), SigningKeys::generate()?)
///     .merge_rule("high_score", higher)
///     .merge_rule("theme", ConflictRule::FirstWriteWins)
///     .build()?;
/// # Ok::<(), herd_session::ConfigError>(())
/// ```
pub trait MergeRule: Send + Sync + 'static {
    /// `ours` is this request's new value and `stored` the other request's, as JSON text
    /// (`None`: that side removed the field). Returns the side that keeps the field, or `None`
    /// to leave it to the layer's [`ConflictRule`] (e.g. for a value the rule cannot read).
    fn merge(&self, ours: Option<&str>, stored: Option<&str>) -> Option<Keep>;
}

impl<F> MergeRule for F
where
    F: Fn(Option<&str>, Option<&str>) -> Option<Keep> + Send + Sync + 'static,
{
    fn merge(&self, ours: Option<&str>, stored: Option<&str>) -> Option<Keep> {
        self(ours, stored)
    }
}

impl MergeRule for ConflictRule {
    fn merge(&self, _ours: Option<&str>, _stored: Option<&str>) -> Option<Keep> {
        Some(self.keep())
    }
}

impl ConflictRule {
    /// The side this rule keeps.
    pub(crate) fn keep(self) -> Keep {
        match self {
            ConflictRule::LastWriteWins => Keep::Ours,
            ConflictRule::FirstWriteWins => Keep::Stored,
        }
    }
}

/// The rules set on a layer, by field name. A handful at most, and looked up only when a
/// field clashes, so a list is enough.
#[derive(Clone, Default)]
pub(crate) struct MergeRules {
    rules: Vec<(String, Arc<dyn MergeRule>)>,
}

impl MergeRules {
    /// The rules every layer starts with: the read-your-writes token only moves forward.
    pub(crate) fn with_defaults() -> Self {
        let mut rules = Self::default();
        rules.set(
            crate::READ_YOUR_WRITES_FIELD.to_owned(),
            Arc::new(crate::read_your_writes::keep_newer),
        );
        rules
    }

    /// Sets the rule for `field`, replacing an earlier one.
    pub(crate) fn set(&mut self, field: String, rule: Arc<dyn MergeRule>) {
        match self.rules.iter_mut().find(|(name, _)| *name == field) {
            Some((_, slot)) => *slot = rule,
            None => self.rules.push((field, rule)),
        }
    }

    /// Which side keeps `field`: its rule's answer, else `fallback`'s.
    pub(crate) fn keep(
        &self,
        field: &str,
        ours: Option<&str>,
        stored: Option<&str>,
        fallback: ConflictRule,
    ) -> Keep {
        self.rules
            .iter()
            .find(|(name, _)| name == field)
            .and_then(|(_, rule)| rule.merge(ours, stored))
            .unwrap_or_else(|| fallback.keep())
    }
}

impl fmt::Debug for MergeRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.rules.iter().map(|(name, _)| name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_rule_decides_and_the_conflict_rule_covers_the_rest() {
        let mut rules = MergeRules::with_defaults();
        let token = crate::READ_YOUR_WRITES_FIELD;
        // The token's default rule: the higher position stays, on either side.
        for fallback in [ConflictRule::LastWriteWins, ConflictRule::FirstWriteWins] {
            assert_eq!(
                rules.keep(token, Some("7"), Some("9"), fallback),
                Keep::Stored
            );
            assert_eq!(
                rules.keep(token, Some("9"), Some("7"), fallback),
                Keep::Ours
            );
        }
        // A value the rule cannot read, and other fields: the conflict rule.
        let lww = ConflictRule::LastWriteWins;
        assert_eq!(rules.keep(token, Some("\"x\""), Some("7"), lww), Keep::Ours);
        assert_eq!(rules.keep("cart", Some("1"), Some("2"), lww), Keep::Ours);
        assert_eq!(
            rules.keep("cart", Some("1"), Some("2"), ConflictRule::FirstWriteWins),
            Keep::Stored
        );
        // Rules set later replace the default, and a ConflictRule is a rule.
        rules.set(token.to_owned(), Arc::new(ConflictRule::LastWriteWins));
        rules.set("cart".to_owned(), Arc::new(ConflictRule::FirstWriteWins));
        assert_eq!(rules.keep(token, Some("7"), Some("9"), lww), Keep::Ours);
        assert_eq!(rules.keep("cart", Some("1"), Some("2"), lww), Keep::Stored);
        assert_eq!(format!("{rules:?}"), format!("{{{token:?}, \"cart\"}}"));
    }
}
