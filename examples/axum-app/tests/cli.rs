//! The binary's behaviour without servers or with a half-set environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn app() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_axum-app"));
    for var in [
        "DATABASE_URL",
        "REPLICA_URLS",
        "REDIS_CLUSTER_NODES",
        "REDIS_URL",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn without_postgresql_it_says_what_to_install() {
    let out = app()
        .env("HERD_PG_BINDIR", "/nonexistent/herd-test")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`initdb` was not found"), "{err}");
    assert!(err.contains("apt-get install -y postgresql"), "{err}");
    assert!(err.contains("brew install postgresql"), "{err}");
}

#[test]
fn a_half_set_environment_is_refused_by_name() {
    let out = app()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DATABASE_URL is set but neither REDIS_CLUSTER_NODES nor REDIS_URL"),
        "{err}"
    );
}

#[test]
fn unknown_flags_are_refused() {
    let out = app()
        .args(["gateway", "--policy", "fastest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fastest"));
}
