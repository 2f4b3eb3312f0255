//! The `application/health+json` body, per the IETF draft "Health Check Response Format for
//! HTTP APIs" (draft-inadarei-api-health-check).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::{Measurement, Status};
use crate::registry::{Outcome, Registered};

/// The media type of every health body.
pub const HEALTH_JSON: &str = "application/health+json";

/// A health response body: the overall status, the service's identity and, when details are
/// shown, one array of [`CheckEntry`] per `component:measurement` key.
///
/// It also deserializes, so a gateway or a test can read another instance's health+json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HealthReport {
    /// The overall status.
    pub status: Status,
    /// Public version of the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Release of the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    /// Unique identifier of the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// Human-friendly description of the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Why the status is what it is ("draining", "not started"...), when details are shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Per-check details keyed `component:measurement`; empty when details are hidden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Vec<CheckEntry>>,
}

impl HealthReport {
    pub(crate) fn new(status: Status) -> Self {
        HealthReport {
            status,
            version: None,
            release_id: None,
            service_id: None,
            description: None,
            output: None,
            checks: BTreeMap::new(),
        }
    }

    /// The body as JSON bytes.
    pub fn to_json(&self) -> bytes::Bytes {
        // Serializing this type cannot fail: every map key is a string and no value errors.
        serde_json::to_vec(self)
            .map(bytes::Bytes::from)
            .unwrap_or_else(|_| bytes::Bytes::from_static(br#"{"status":"fail"}"#))
    }

    /// Adds the entries of one check run: `name:responseTime` with the run's status, output and
    /// duration in milliseconds, then one entry per measurement under `name:measurement`.
    pub(crate) fn add_outcome(&mut self, registered: &Registered, outcome: &Outcome) {
        let time = humantime_serde::re::humantime::format_rfc3339_millis(outcome.time).to_string();
        let component_type = registered.component_type.as_str();
        let result = &outcome.result;
        let response_time = CheckEntry {
            component_id: None,
            component_type: component_type.to_owned(),
            observed_value: Some(serde_json::Value::from(
                (outcome.duration.as_secs_f64() * 1e6).round() / 1e3,
            )),
            observed_unit: Some("ms".to_owned()),
            status: result.status(),
            time: Some(time.clone()),
            output: result.output().map(str::to_owned),
        };
        self.checks
            .entry(format!("{}:responseTime", registered.name))
            .or_default()
            .push(response_time);
        for measurement in result.measurements() {
            self.checks
                .entry(format!("{}:{}", registered.name, measurement.name))
                .or_default()
                .push(CheckEntry::from_measurement(
                    measurement,
                    component_type,
                    &time,
                ));
        }
    }
}

/// One object of the draft's `checks` arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CheckEntry {
    /// Which instance of the component (node name, address...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    /// `component`, `datastore`, `system` or a custom type.
    #[serde(default)]
    pub component_type: String,
    /// The observed value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_value: Option<serde_json::Value>,
    /// Unit of the observed value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_unit: Option<String>,
    /// Status of this measurement.
    pub status: Status,
    /// When the observation was made (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Human-readable detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl CheckEntry {
    fn from_measurement(measurement: &Measurement, component_type: &str, time: &str) -> Self {
        CheckEntry {
            component_id: measurement.component_id.clone(),
            component_type: component_type.to_owned(),
            observed_value: measurement.observed_value.clone(),
            observed_unit: measurement
                .observed_unit
                .as_ref()
                .map(|unit| unit.to_string()),
            status: measurement.status,
            time: Some(time.to_owned()),
            output: measurement.output.clone(),
        }
    }

    pub(crate) fn system(
        observed_value: serde_json::Value,
        observed_unit: &str,
        time: String,
    ) -> Self {
        CheckEntry {
            component_id: None,
            component_type: "system".to_owned(),
            observed_value: Some(observed_value),
            observed_unit: Some(observed_unit.to_owned()),
            status: Status::Pass,
            time: Some(time),
            output: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_drafts_example_back() {
        // Shortened from the draft's example response.
        let body = r#"{
            "status": "pass", "version": "1", "releaseId": "1.2.2",
            "serviceId": "f03e522f", "description": "health of authz service",
            "notes": [""], "output": "",
            "checks": {
                "cassandra:responseTime": [{
                    "componentId": "dfd6cf2b", "componentType": "datastore",
                    "observedValue": 250, "observedUnit": "ms", "status": "pass",
                    "affectedEndpoints": ["/users/{userId}"],
                    "time": "2018-01-17T03:36:48Z", "output": ""
                }],
                "uptime": [{
                    "componentType": "system", "observedValue": 1209600.245,
                    "observedUnit": "s", "status": "pass", "time": "2018-01-17T03:36:48Z"
                }]
            },
            "links": {"about": "http://api.example.com/about/authz"}
        }"#;
        let report: HealthReport = serde_json::from_str(body).unwrap();
        assert_eq!(report.status, Status::Pass);
        assert_eq!(report.service_id.as_deref(), Some("f03e522f"));
        let cassandra = &report.checks["cassandra:responseTime"][0];
        assert_eq!(cassandra.component_type, "datastore");
        assert_eq!(cassandra.observed_value, Some(250.into()));
        assert_eq!(
            report.checks["uptime"][0].observed_unit.as_deref(),
            Some("s")
        );
        // And what we write reads back the same.
        let again: HealthReport = serde_json::from_slice(&report.to_json()).unwrap();
        assert_eq!(again.checks, report.checks);
    }
}
