//! Macros shared by the crate's services.

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose wrapped service of type `S` is
/// its `inner` field (tower-http's accessors). Use inside `impl<S> Middleware<S> { ... }`.
macro_rules! define_inner_service_accessors {
    () => {
        /// The wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the service, dropping this middleware.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
