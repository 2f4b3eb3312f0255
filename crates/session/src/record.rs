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
        match self.absolute_deadline_ms {
            None => Some(idle_timeout),
            Some(deadline) => {
                let left = deadline.checked_sub(unix_ms(SystemTime::now()))?;
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

    /// The fields, by value.
    pub(crate) fn into_fields(self) -> impl Iterator<Item = (String, Box<RawValue>)> {
        self.fields.into_iter()
    }

    pub(crate) fn set_field(&mut self, name: String, value: Box<RawValue>) {
        self.fields.insert(name, value);
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
