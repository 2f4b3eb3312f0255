//! Small macros used across the crate.

/// `get_ref`, `get_mut` and `into_inner` for a tower service wrapping its inner service in a
/// field named `inner` of type `S` (tower-http's accessor pattern); expand inside
/// `impl<S> Service<S> { .. }`.
macro_rules! inner_service_accessors {
    () => {
        /// A reference to the wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// A mutable reference to the wrapped service.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps this service, returning the wrapped one.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub(crate) use inner_service_accessors;
