//! Run with: `cargo run -p axum-app`
//!
//! The demo application is not built yet (issue 8); this binary says so and exits.

fn main() -> std::process::ExitCode {
    eprintln!("axum-app: the demo topology is not built yet; see issue 8. Run the tests with `cargo test --workspace`.");
    std::process::ExitCode::FAILURE
}
