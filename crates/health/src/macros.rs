//! Crate-private macros.

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose wrapped service is the field
/// `inner` of type `S` (tower-http's accessors, one definition for every middleware here).
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
