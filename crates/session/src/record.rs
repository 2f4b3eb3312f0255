//! What a store keeps for one session: its fields (as JSON text) and its lifetime bounds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A session's stored content.
///
/// Fields are kept in a `BTreeMap`: sessions hold a handful of fields, and comparing a few
/// short names is cheaper than hashing each one (SipHash) on every read and write.
///
/// Field values are kept as their JSON text: typed reads and writes (de)serialize one field at
/// a time, merging compares texts, and a store that needs bytes calls [`to_json`](Self::to_json)
/// without re-encoding every value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(rename = "f")]
    fields: BTreeMap<String, Box<RawValue>>,
    /// Creation time, milliseconds since the Unix epoch.
    #[serde(rename = "c")]
    created_at_ms: u64,
    /// The absolute timeout's deadline, milliseconds since the Unix epoch.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    absolute_deadline_ms: Option<u64>,
}

impl SessionRecord {
    /// An empty session created now, ending at the latest after `absolute_timeout`.
    pub fn new(absolute_timeout: Option<Duration>) -> Self {
        let created_at_ms = unix_ms(SystemTime::now());
        Self {
            fields: BTreeMap::new(),
            created_at_ms,
            absolute_deadline_ms: absolute_timeout
                .map(|t| created_at_ms.saturating_add(duration_ms(t))),
        }
    }

    /// The record as compact JSON (`{"f":{..fields..},"c":created_ms,"a":deadline_ms}`).
    pub fn to_json(&self) -> String {
        // Serializing string keys and already-valid JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses what [`to_json`](Self::to_json) wrote.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// When the session was created.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_at_ms)
    }

    /// When the absolute timeout ends the session, if there is one.
    pub fn absolute_deadline(&self) -> Option<SystemTime> {
        self.absolute_deadline_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Field names and their JSON texts.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.get()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the session has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The size the limit applies to: field names plus their JSON texts, in bytes.
    pub fn data_len(&self) -> usize {
        self.fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len())
            .sum()
    }

    /// How long the session may still live in the store: the idle timeout, cut short by the
    /// absolute deadline. `None` once the absolute deadline has passed.
    pub(crate) fn ttl(&self, idle_timeout: Duration) -> Option<Duration> {
        self.ttl_at(idle_timeout, None)
    }

    /// [`ttl`](Self::ttl) at `now_ms` (milliseconds since the Unix epoch), or at the current
    /// time when `None`. The clock is read only when there is an absolute deadline.
    pub(crate) fn ttl_at(&self, idle_timeout: Duration, now_ms: Option<u64>) -> Option<Duration> {
        match self.absolute_deadline_ms {
            None => Some(idle_timeout),
            Some(deadline) => {
                let now_ms = now_ms.unwrap_or_else(|| unix_ms(SystemTime::now()));
                let left = deadline.checked_sub(now_ms)?;
                (left > 0).then(|| idle_timeout.min(Duration::from_millis(left)))
            }
        }
    }

    /// A copy with the same clock, keeping the fields for which `skip` is false.
    pub(crate) fn with_fields(&self, skip: impl Fn(&str) -> bool) -> Self {
        // Inserted one by one: sessions hold a handful of fields, and collecting would go
        // through a Vec and a sort first.
        let mut fields = BTreeMap::new();
        for (name, value) in &self.fields {
            if !skip(name) {
                fields.insert(name.clone(), value.clone());
            }
        }
        Self {
            fields,
            created_at_ms: self.created_at_ms,
            absolute_deadline_ms: self.absolute_deadline_ms,
        }
    }

    /// Takes creation time and absolute deadline from `fresh` (a new id restarts the clock).
    pub(crate) fn restart_clock_from(&mut self, fresh: &SessionRecord) {
        self.created_at_ms = fresh.created_at_ms;
        self.absolute_deadline_ms = fresh.absolute_deadline_ms;
    }

    pub(crate) fn field(&self, name: &str) -> Option<&RawValue> {
        self.fields.get(name).map(|v| &**v)
    }

    pub(crate) fn set_field(&mut self, name: String, value: Box<RawValue>) {
        self.fields.insert(name, value);
    }

    /// Sets (`Some`) or removes (`None`) one field; a field that exists keeps its place and
    /// only its value is replaced.
    fn apply(&mut self, name: String, change: Option<Box<RawValue>>) {
        match change {
            Some(value) => match self.fields.get_mut(&name) {
                Some(slot) => *slot = value,
                None => {
                    self.fields.insert(name, value);
                }
            },
            None => {
                self.fields.remove(&name);
            }
        }
    }

    /// A record with no fields and a zero clock: a stand-in that never reaches a store.
    #[cfg(feature = "memory")]
    pub(crate) fn placeholder() -> Self {
        Self {
            fields: BTreeMap::new(),
            created_at_ms: 0,
            absolute_deadline_ms: None,
        }
    }
}

/// The changes one request made to a session's fields, as a field-level save
/// ([`SessionStore::save_changes`](crate::SessionStore::save_changes)) applies them to the
/// stored record.
///
/// Values are JSON texts, like the record's. `clears` means every field of the stored record
/// that is not named here is removed first ([`Session::clear`](crate::Session::clear)).
#[derive(Debug, Clone, Default)]
pub struct FieldChanges {
    /// New values by field name; `None` removes the field.
    pub(crate) fields: ChangeMap,
    /// `Session::clear` was called: fields not in `fields` are gone.
    pub(crate) cleared: bool,
}

impl FieldChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.cleared && self.fields.is_empty()
    }

    /// Whether the fields not named by [`iter`](Self::iter) are removed.
    pub fn clears(&self) -> bool {
        self.cleared
    }

    /// The changed fields: name and new JSON text, `None` for a removed field (in no
    /// particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_deref().map(RawValue::get)))
    }

    /// Applies the changes to `record` in place, moving the new values into it, and leaves
    /// `self` empty. A field that already exists keeps its place in the record: only its
    /// value is replaced.
    pub fn apply_to(&mut self, record: &mut SessionRecord) {
        if std::mem::take(&mut self.cleared) {
            record.fields.clear();
        }
        let ChangeMap { first, rest } = std::mem::take(&mut self.fields);
        if let Some((name, change)) = first {
            record.apply(name, change);
        }
        // Usually empty: not even an iterator to build and drop.
        if !rest.is_empty() {
            for (name, change) in rest {
                record.apply(name, change);
            }
        }
    }

    /// A copy of `record` with the changes applied (unchanged fields copied, changed values
    /// cloned); `self` is left as it is.
    pub fn applied_to(&self, record: &SessionRecord) -> SessionRecord {
        let mut copy = record.with_fields(|name| self.cleared || self.fields.contains_key(name));
        for (name, change) in self.fields.iter() {
            if let Some(value) = change {
                copy.set_field(name.clone(), value.clone());
            }
        }
        copy
    }

    /// [`SessionRecord::data_len`] of `record` once the changes are applied, without
    /// applying them.
    pub(crate) fn data_len_after(&self, record: &SessionRecord) -> usize {
        let mut len = if self.cleared { 0 } else { record.data_len() };
        for (name, change) in self.fields.iter() {
            if !self.cleared
                && let Some(old) = record.field(name)
            {
                len = len.saturating_sub(name.len() + old.get().len());
            }
            if let Some(value) = change {
                len = len.saturating_add(name.len() + value.get().len());
            }
        }
        len
    }

    /// Forgets every change.
    pub(crate) fn clear(&mut self) {
        self.fields.clear();
        self.cleared = false;
    }
}

/// One field change: the name and the new value, `None` for a removal.
pub(crate) type Change = (String, Option<Box<RawValue>>);

/// The field changes of one request, by name. A request usually changes one field or two, so
/// the first change is kept inline and only further ones go to a map: no node is allocated
/// (and freed again) for the common case.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChangeMap {
    /// `None` only while `rest` is empty too.
    first: Option<Change>,
    rest: BTreeMap<String, Option<Box<RawValue>>>,
}

impl ChangeMap {
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Option<Box<RawValue>>> {
        match &self.first {
            Some((first, value)) if first == name => Some(value),
            Some(_) => self.rest.get(name),
            None => None,
        }
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets the change of `name`, replacing an earlier one.
    pub(crate) fn insert(&mut self, name: String, value: Option<Box<RawValue>>) {
        match &mut self.first {
            None => self.first = Some((name, value)),
            Some((first, slot)) if *first == name => *slot = value,
            Some(_) => {
                self.rest.insert(name, value);
            }
        }
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Option<Box<RawValue>>> {
        match &self.first {
            Some((first, _)) if first == name => {
                let removed = self.first.take().map(|(_, value)| value);
                self.first = self.rest.pop_first();
                removed
            }
            Some(_) => self.rest.remove(name),
            None => None,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Option<Box<RawValue>>)> {
        self.first
            .iter()
            .map(|(name, value)| (name, value))
            .chain(self.rest.iter())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(name, _)| name)
    }
}

impl IntoIterator for ChangeMap {
    type Item = Change;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<Change>,
        std::collections::btree_map::IntoIter<String, Option<Box<RawValue>>>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

impl Extend<Change> for ChangeMap {
    fn extend<I: IntoIterator<Item = Change>>(&mut self, changes: I) {
        for (name, value) in changes {
            self.insert(name, value);
        }
    }
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn json_round_trip_keeps_fields_and_deadlines() {
        let mut record = SessionRecord::new(Some(Duration::from_secs(60)));
        record.set_field("user".into(), raw(r#"{"id":7,"name":"ann"}"#));
        record.set_field("n".into(), raw("3"));
        let back = SessionRecord::from_json(&record.to_json()).unwrap();
        assert_eq!(back.field("n").unwrap().get(), "3");
        assert_eq!(
            back.field("user").unwrap().get(),
            r#"{"id":7,"name":"ann"}"#
        );
        assert_eq!(back.created_at(), record.created_at());
        assert_eq!(back.absolute_deadline(), record.absolute_deadline());
        assert_eq!(back.data_len(), "user".len() + 21 + 1 + 1);
        assert!(SessionRecord::from_json("{").is_err());
    }

    fn fields(record: &SessionRecord) -> Vec<(String, String)> {
        record
            .fields()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn field_changes_apply_in_place_as_in_a_copy() {
        let mut base = SessionRecord::new(Some(Duration::from_secs(60)));
        base.set_field("kept".into(), raw("1"));
        base.set_field("same".into(), raw("2"));
        base.set_field("changed".into(), raw("3"));
        base.set_field("removed".into(), raw("4"));
        for cleared in [false, true] {
            let mut changes = FieldChanges::default();
            changes.fields.insert("same".into(), Some(raw("2")));
            changes
                .fields
                .insert("changed".into(), Some(raw(r#""thirty""#)));
            changes.fields.insert("new".into(), Some(raw("[5]")));
            changes.fields.insert("removed".into(), None);
            changes.fields.insert("absent".into(), None);
            changes.cleared = cleared;
            assert!(!changes.is_empty());
            assert_eq!(changes.clears(), cleared);
            assert_eq!(changes.iter().count(), 5);

            let copy = changes.applied_to(&base);
            assert_eq!(changes.data_len_after(&base), copy.data_len());
            let mut in_place = base.clone();
            changes.apply_to(&mut in_place);
            assert!(changes.is_empty(), "applying consumes the changes");
            assert_eq!(fields(&in_place), fields(&copy));
            assert_eq!(in_place.created_at(), base.created_at());
            assert_eq!(in_place.absolute_deadline(), base.absolute_deadline());
            let expected: &[(&str, &str)] = if cleared {
                &[("changed", r#""thirty""#), ("new", "[5]"), ("same", "2")]
            } else {
                &[
                    ("changed", r#""thirty""#),
                    ("kept", "1"),
                    ("new", "[5]"),
                    ("same", "2"),
                ]
            };
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(fields(&copy), expected, "cleared {cleared}");
        }
        assert!(FieldChanges::default().is_empty());
    }

    #[test]
    fn change_map_behaves_as_a_map() {
        let mut map = ChangeMap::default();
        let mut model = BTreeMap::new();
        let text =
            |v: Option<&Option<Box<RawValue>>>| v.map(|v| v.as_ref().map(|v| v.get().to_owned()));
        // Inserts, replacements and removals in an order that moves the inline entry around.
        let steps: &[(&str, Option<&str>, bool)] = &[
            ("b", Some("1"), false),
            ("a", Some("2"), false),
            ("b", Some("3"), false),
            ("c", None, false),
            ("b", None, true),
            ("d", Some("4"), false),
            ("a", None, true),
            ("a", Some("5"), false),
            ("x", None, true),
            ("c", None, true),
            ("d", None, true),
            ("a", None, true),
            ("e", Some("6"), false),
        ];
        for (name, value, remove) in steps {
            if *remove {
                assert_eq!(
                    text(map.remove(name).as_ref()),
                    text(model.remove(*name).as_ref())
                );
            } else {
                let value = value.map(raw);
                map.insert((*name).to_owned(), value.clone());
                model.insert((*name).to_owned(), value);
            }
            assert_eq!(map.is_empty(), model.is_empty());
            let mut names: Vec<&String> = map.keys().collect();
            names.sort();
            assert_eq!(names, model.keys().collect::<Vec<_>>());
            for key in ["a", "b", "c", "d", "e", "x"] {
                assert_eq!(text(map.get(key)), text(model.get(key)), "{key}");
                assert_eq!(map.contains_key(key), model.contains_key(key));
            }
        }
        let mut more = ChangeMap::default();
        more.insert("e".into(), None);
        more.insert("f".into(), Some(raw("7")));
        map.extend(more);
        let mut all: Vec<(String, Option<String>)> = map
            .clone()
            .into_iter()
            .map(|(n, v)| (n, v.map(|v| v.get().to_owned())))
            .collect();
        all.sort();
        assert_eq!(all, [("e".into(), None), ("f".into(), Some("7".into()))]);
        map.clear();
        assert!(map.is_empty() && map.iter().next().is_none());
    }

    #[test]
    fn ttl_is_capped_by_the_absolute_deadline() {
        let idle = Duration::from_secs(30 * 60);
        assert_eq!(SessionRecord::new(None).ttl(idle), Some(idle));
        let short = SessionRecord::new(Some(Duration::from_secs(10)));
        let ttl = short.ttl(idle).unwrap();
        assert!(ttl <= Duration::from_secs(10) && ttl > Duration::from_secs(8));
        let mut over = SessionRecord::new(None);
        over.absolute_deadline_ms = Some(unix_ms(SystemTime::now()) - 1);
        assert_eq!(over.ttl(idle), None);
    }
}
