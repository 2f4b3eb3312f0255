//! Small macros shared by the crate's tower services.

/// `get_ref`, `get_mut` and `into_inner` for a tower service generic over `S` whose field
/// `inner: S` is the wrapped service (tower-http's accessors, written here). Call it inside
/// `impl<S> Service<S> { .. }`.
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

        /// The inner service, consuming this one.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
