//! Prints a new signing key for herd-session (and anything else that takes a 64-byte secret in
//! standard base64, such as the read-your-writes cookie's key).
//!
//! Run with: `cargo run -p herd-session --example keygen`
//!
//! The line printed is the secret itself: put it in every instance's secret configuration
//! (e.g. `SESSION_KEY`), read it back with `Key::from_base64`, and keep it out of logs and
//! version control. To rotate, generate another, list it first and keep the old one after it
//! until the longest session has expired.

fn main() -> Result<(), herd_session::ConfigError> {
    println!("{}", herd_session::Key::generate()?.to_base64());
    Ok(())
}
