//! The [`HealthCheck`] trait and what a check reports.
//!
//! A check answers one question about one component ("can I reach the primary?", "how much
//! disk is left?") with a [`CheckResult`]: a [`Status`], an optional output text and any number
//! of [`Measurement`]s (one per replica, per master, per disk...). The registry times each run,
//! applies the per-registration timeout and turns the results into `application/health+json`,
//! where a measurement is keyed `"{check name}:{measurement name}"` as the IETF draft
//! "Health Check Response Format for HTTP APIs" asks.
//!
//! Implementing a check takes a few lines; `herd_health::async_trait` is re-exported so that
//! crates implementing the trait need no extra dependency:
//!
//! ```
//! use herd_health::{async_trait, CheckResult, ComponentType, HealthCheck, Measurement, Status};
//!
//! struct QueueDepth;
//!
//! #[async_trait]
//! impl HealthCheck for QueueDepth {
//!     fn name(&self) -> &str {
//!         "jobs"
//!     }
//!
//!     fn component_type(&self) -> ComponentType {
//!         ComponentType::Component
//!     }
//!
//!     async fn check(&self) -> CheckResult {
//!         let depth = 17_u64; // read it from your queue
//!         let status = if depth > 1000 { Status::Warn } else { Status::Pass };
//!         CheckResult::pass().with_measurement(
//!             Measurement::new("depth", status).observed(depth, "jobs"),
//!         )
//!     }
//! }
//! # let result = futures_util::FutureExt::now_or_never(QueueDepth.check()).unwrap();
//! # assert_eq!(result.status(), Status::Pass);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize, Serializer};

/// The health of a check, a measurement or a whole report, ordered from best to worst.
///
/// `Pass < Warn < Fail`, so the worst of several is their [`Ord::max`]. The names and
/// meanings are the IETF draft's: `pass` is healthy, `warn` is healthy with some concern
/// (HTTP 200, like Spring Boot's and ASP.NET Core's "degraded"), `fail` is unhealthy (HTTP 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern worth a look (degraded).
    Warn,
    /// Unhealthy.
    Fail,
}

impl Status {
    /// The draft's spelling: `"pass"`, `"warn"` or `"fail"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// The HTTP status code for a response with this status: 200 for pass and warn, 503 for fail.
    pub fn http_status(self) -> http::StatusCode {
        match self {
            Status::Pass | Status::Warn => http::StatusCode::OK,
            Status::Fail => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether a probe should consider the component usable (pass or warn).
    pub fn is_healthy(self) -> bool {
        self != Status::Fail
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of thing a check looks at (the draft's `componentType`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ComponentType {
    /// A software component of the service or one it calls (the default).
    #[default]
    Component,
    /// A database, cache or other data store.
    Datastore,
    /// The machine: CPU, memory, disk, uptime.
    System,
    /// Anything else; the draft suggests a URI naming the type.
    Other(Cow<'static, str>),
}

impl ComponentType {
    /// The draft's spelling: `"component"`, `"datastore"`, `"system"` or the custom text.
    pub fn as_str(&self) -> &str {
        match self {
            ComponentType::Component => "component",
            ComponentType::Datastore => "datastore",
            ComponentType::System => "system",
            ComponentType::Other(other) => other,
        }
    }
}

impl fmt::Display for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ComponentType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One observation made by a check: rendered as one entry of the draft's `checks` object under
/// the key `"{check name}:{measurement name}"`.
///
/// Several measurements may share a name and differ by [`component_id`](Self::component_id),
/// e.g. `lag` once per replica; they end up in the same array, as the draft intends.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Measurement {
    /// The measurement name (`responseTime`, `utilization`, `lag`, `connections`...).
    pub name: Cow<'static, str>,
    /// Which instance of the component this is about (a node name, an address...).
    pub component_id: Option<String>,
    /// The health of this measurement.
    pub status: Status,
    /// The observed value: a number, string, boolean or any JSON value.
    pub observed_value: Option<serde_json::Value>,
    /// The unit of [`observed_value`](Self::observed_value) (`ms`, `percent`, `bytes`, `s`...).
    pub observed_unit: Option<Cow<'static, str>>,
    /// Human-readable detail, typically why the status is not `pass`.
    pub output: Option<String>,
}

impl Measurement {
    /// A measurement called `name` with `status` and nothing observed yet.
    pub fn new(name: impl Into<Cow<'static, str>>, status: Status) -> Self {
        Measurement {
            name: name.into(),
            component_id: None,
            status,
            observed_value: None,
            observed_unit: None,
            output: None,
        }
    }

    /// Sets which instance this measurement is about.
    pub fn component_id(mut self, id: impl Into<String>) -> Self {
        self.component_id = Some(id.into());
        self
    }

    /// Sets the observed value and its unit.
    pub fn observed(
        mut self,
        value: impl Into<serde_json::Value>,
        unit: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.observed_value = Some(value.into());
        self.observed_unit = Some(unit.into());
        self
    }

    /// Sets the observed value of a measurement without a unit (a role, a state name...).
    pub fn value(mut self, value: impl Into<serde_json::Value>) -> Self {
        self.observed_value = Some(value.into());
        self
    }

    /// Sets the output text.
    pub fn output(mut self, output: impl Into<String>) -> Self {
        self.output = Some(output.into());
        self
    }
}

/// What one run of a [`HealthCheck`] found.
///
/// The overall [`status`](Self::status) starts as given to the constructor and only ever gets
/// worse as measurements are added: it is the worst of itself and every measurement.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckResult {
    status: Status,
    output: Option<String>,
    measurements: Vec<Measurement>,
}

impl CheckResult {
    /// A healthy result.
    pub fn pass() -> Self {
        CheckResult::with_status(Status::Pass)
    }

    /// A degraded result that says why.
    pub fn warn(output: impl Into<String>) -> Self {
        CheckResult::with_status(Status::Warn).with_output(output)
    }

    /// A failed result that says why.
    pub fn fail(output: impl Into<String>) -> Self {
        CheckResult::with_status(Status::Fail).with_output(output)
    }

    /// A result with the given status and no output.
    pub fn with_status(status: Status) -> Self {
        CheckResult {
            status,
            output: None,
            measurements: Vec::new(),
        }
    }

    /// A failed result from an error, using its `Display` text (and its sources') as output.
    pub fn from_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut output = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            output.push_str(": ");
            output.push_str(&cause.to_string());
            source = cause.source();
        }
        CheckResult::fail(output)
    }

    /// Sets the output text.
    pub fn with_output(mut self, output: impl Into<String>) -> Self {
        self.output = Some(output.into());
        self
    }

    /// Adds a measurement; the overall status becomes the worse of the two.
    pub fn with_measurement(mut self, measurement: Measurement) -> Self {
        self.push(measurement);
        self
    }

    /// Adds a measurement in place; the overall status becomes the worse of the two.
    pub fn push(&mut self, measurement: Measurement) {
        self.status = self.status.max(measurement.status);
        self.measurements.push(measurement);
    }

    /// Makes the overall status at least as bad as `status` (it never gets better).
    pub fn degrade_to(&mut self, status: Status) {
        self.status = self.status.max(status);
    }

    /// Replaces the overall status and output (flap damping in the registry).
    pub(crate) fn override_status(&mut self, status: Status, output: String) {
        self.status = status;
        self.output = Some(match self.output.take() {
            Some(original) => format!("{original} ({output})"),
            None => output,
        });
    }

    /// The overall status: the worst of the initial status and every measurement.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The output text, if any.
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// The measurements, in the order they were added.
    pub fn measurements(&self) -> &[Measurement] {
        &self.measurements
    }
}

impl<E: std::error::Error + 'static> From<E> for CheckResult {
    fn from(error: E) -> Self {
        CheckResult::from_error(&error)
    }
}

/// A health check: one named probe of one component.
///
/// The trait is object safe (`Arc<dyn HealthCheck>`) through `#[async_trait]`, re-exported as
/// `herd_health::async_trait`. `check` should not apply its own overall timeout or catch
/// panics: the registry runs every check concurrently in its own task under the timeout given
/// at registration, and reports a timeout or panic as `fail` with an output saying so (a
/// non-passing result without output gets one naming its non-passing measurements). Whether
/// the check is critical and which tags it carries are registration options too
/// ([`CheckOptions`](crate::CheckOptions)), so the same check can be critical in one service and
/// informational in another.
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// The component name: the part of the health+json key before the `:`, e.g. `postgres`.
    /// It should be unique within a registry and must stay the same between runs.
    fn name(&self) -> &str;

    /// What kind of component this is; [`ComponentType::Component`] unless overridden.
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    /// Tags this check always carries, added to those given at registration: herd-db-router's
    /// `RouterCheck` returns [`tags::REPLICATION`](crate::tags::REPLICATION), so it is served
    /// on `/health/replication` with no registration option. None unless overridden.
    fn tags(&self) -> &[&'static str] {
        &[]
    }

    /// Runs the check once.
    async fn check(&self) -> CheckResult;
}

#[async_trait]
impl<T: HealthCheck + ?Sized> HealthCheck for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn tags(&self) -> &[&'static str] {
        (**self).tags()
    }

    fn component_type(&self) -> ComponentType {
        (**self).component_type()
    }

    async fn check(&self) -> CheckResult {
        (**self).check().await
    }
}

#[async_trait]
impl<T: HealthCheck + ?Sized> HealthCheck for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn component_type(&self) -> ComponentType {
        (**self).component_type()
    }

    async fn check(&self) -> CheckResult {
        (**self).check().await
    }
}

/// A check made from a name and an async closure; see [`from_fn`].
pub struct FnCheck<F> {
    name: Cow<'static, str>,
    component_type: ComponentType,
    f: F,
}

impl<F> fmt::Debug for FnCheck<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCheck")
            .field("name", &self.name)
            .field("component_type", &self.component_type)
            .finish_non_exhaustive()
    }
}

impl<F> FnCheck<F> {
    /// Sets the component type (default [`ComponentType::Component`]).
    pub fn component_type(mut self, component_type: ComponentType) -> Self {
        self.component_type = component_type;
        self
    }
}

/// A check from a closure that returns a future of anything convertible into a [`CheckResult`]
/// (a `CheckResult`, or a `Result<CheckResult, E>` whose error becomes a `fail` naming it).
///
/// ```
/// use herd_health::{check, CheckResult, HealthCheck};
///
/// let queue = check::from_fn("queue", || async { CheckResult::pass() });
/// assert_eq!(queue.name(), "queue");
/// ```
pub fn from_fn<F, Fut, R>(name: impl Into<Cow<'static, str>>, f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoCheckResult,
{
    FnCheck {
        name: name.into(),
        component_type: ComponentType::Component,
        f,
    }
}

#[async_trait]
impl<F, Fut, R> HealthCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoCheckResult,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        self.component_type.clone()
    }

    async fn check(&self) -> CheckResult {
        (self.f)().await.into_check_result()
    }
}

/// What a closure check may return: a [`CheckResult`], a [`Status`], a `bool` (true = pass) or
/// a `Result` of one of these whose error becomes a `fail` with the error's text.
pub trait IntoCheckResult: Send {
    /// Converts into a check result.
    fn into_check_result(self) -> CheckResult;
}

impl IntoCheckResult for CheckResult {
    fn into_check_result(self) -> CheckResult {
        self
    }
}

impl IntoCheckResult for Status {
    fn into_check_result(self) -> CheckResult {
        CheckResult::with_status(self)
    }
}

impl IntoCheckResult for bool {
    fn into_check_result(self) -> CheckResult {
        if self {
            CheckResult::pass()
        } else {
            CheckResult::fail("check returned false")
        }
    }
}

impl<T, E> IntoCheckResult for Result<T, E>
where
    T: IntoCheckResult,
    E: fmt::Display + Send,
{
    fn into_check_result(self) -> CheckResult {
        match self {
            Ok(ok) => ok.into_check_result(),
            Err(error) => CheckResult::fail(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_orders_from_best_to_worst() {
        assert!(Status::Pass < Status::Warn && Status::Warn < Status::Fail);
        assert_eq!(Status::Pass.max(Status::Fail), Status::Fail);
        assert_eq!(Status::Warn.http_status(), http::StatusCode::OK);
        assert_eq!(
            Status::Fail.http_status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(serde_json::to_string(&Status::Warn).unwrap(), "\"warn\"");
    }

    #[test]
    fn measurements_only_make_a_result_worse() {
        let result = CheckResult::pass()
            .with_measurement(Measurement::new("lag", Status::Warn).component_id("replica1"))
            .with_measurement(Measurement::new("lag", Status::Pass).component_id("replica2"));
        assert_eq!(result.status(), Status::Warn);
        assert_eq!(result.measurements().len(), 2);

        let mut failed = CheckResult::fail("down");
        failed.push(Measurement::new("lag", Status::Pass));
        assert_eq!(failed.status(), Status::Fail);
        assert_eq!(failed.output(), Some("down"));
    }

    #[test]
    fn errors_become_failures_with_their_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect to replica1 failed")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let result = CheckResult::from(error);
        assert_eq!(result.status(), Status::Fail);
        assert_eq!(result.output(), Some("connect to replica1 failed: refused"));
    }

    #[tokio::test]
    async fn closures_are_checks() {
        let ok = from_fn("ok", || async { true });
        let err = from_fn("err", || async { Err::<Status, _>("no route to 10.0.0.1") })
            .component_type(ComponentType::Datastore);
        let checks: Vec<Box<dyn HealthCheck>> = vec![Box::new(ok), Box::new(err)];
        assert_eq!(checks[0].check().await.status(), Status::Pass);
        let failed = checks[1].check().await;
        assert_eq!(failed.status(), Status::Fail);
        assert_eq!(failed.output(), Some("no route to 10.0.0.1"));
        assert_eq!(checks[1].component_type().as_str(), "datastore");
    }
}
