//! Crate-private macros.

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose wrapped service of type `$S`
/// is the field `$inner` (tower-http's accessor pattern). Use inside `impl<S> Middleware<S>`.
macro_rules! inner_service_accessors {
    ($inner:ident: $S:ty) => {
        /// The wrapped service.
        pub fn get_ref(&self) -> &$S {
            &self.$inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut $S {
            &mut self.$inner
        }

        /// The wrapped service, consuming the middleware.
        pub fn into_inner(self) -> $S {
            self.$inner
        }
    };
}

pub(crate) use inner_service_accessors;
