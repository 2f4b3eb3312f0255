//! `cargo run -p axum-app` as a newcomer sees it: a line per start-up step with its time, no
//! WARN lines on a clean start, and the banner the README shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const README: &str = include_str!("../../../README.md");

/// The README's block under "The demo: what you will see".
fn readme_block() -> Vec<String> {
    let section = &README[README
        .find("## The demo: what you will see")
        .expect("section")..];
    let start = section.find("```\n").expect("a block") + 4;
    let end = start + section[start..].find("```\n").expect("closed");
    section[start..end].lines().map(normalize).collect()
}

/// Digits become `N` and runs of spaces one space: ports, times and alignment differ per run.
fn normalize(line: &str) -> String {
    let mut out = String::new();
    let mut last = ' ';
    for c in line.trim_end().chars() {
        let c = if c.is_ascii_digit() { 'N' } else { c };
        if c == 'N' && last == 'N' || c == ' ' && last == ' ' && !out.is_empty() {
            continue;
        }
        out.push(c);
        last = c;
    }
    out
}

/// Kills the demo on drop, so a failing assertion leaves no servers behind (the demo removes
/// its topology on SIGINT; SIGKILL leaves the kit's watchdog to do it).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_clean_start_shows_each_step_and_the_readme_banner_without_warnings() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_axum-app"));
    for var in [
        "DATABASE_URL",
        "REPLICA_URLS",
        "REDIS_CLUSTER_NODES",
        "REDIS_URL",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    let mut demo = Demo(
        cmd.args(["all", "--gateway-port", "0", "--first-instance-port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("axum-app runs"),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let stderr = demo.0.stderr.take().unwrap();
    let logged = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = logged.clone();
    std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!(
                    "the demo did not come up; it printed:\n{}",
                    lines.join("\n")
                )
            });
        let done = line.starts_with("Ctrl-C stops everything");
        lines.push(line);
        if done {
            break;
        }
    }
    // What the start logged (stopping logs the drain, which is not a clean start's business).
    std::thread::sleep(Duration::from_millis(300));
    let start_log = logged.lock().unwrap().clone();
    let pid = demo.0.id().to_string();
    let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(status.success());
    let mut exited = None;
    for _ in 0..300 {
        if let Some(s) = demo.0.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = exited.expect("the demo stops within 30 s of Ctrl-C");
    assert!(
        exited.success(),
        "exit {exited}; stderr:\n{}",
        logged.lock().unwrap()
    );
    let printed = lines.join("\n");
    assert!(
        !start_log.contains("WARN") && !start_log.contains("ERROR"),
        "a clean start logs no warnings; stderr:\n{start_log}\nstdout:\n{printed}"
    );

    // A line per step, each with its time: PostgreSQL primary and replica, Redis Cluster,
    // schema, the 3 instances, the gateway.
    for step in [
        "PostgreSQL primary",
        "PostgreSQL replica",
        "Redis Cluster",
        "schema applied",
        "instance-1",
        "instance-2",
        "instance-3",
        "gateway ",
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(step) && l.trim_start().split_once("s  ").is_some())
            .unwrap_or_else(|| panic!("no progress line for {step}:\n{printed}"));
        let secs = line.trim_start().split_once('s').unwrap().0;
        assert!(secs.parse::<f64>().is_ok(), "{line}");
    }

    // The README's block is what was printed, up to the Redis line (digits and spacing aside).
    let shown = readme_block();
    let end = lines
        .iter()
        .position(|l| l.starts_with("  redis"))
        .expect("a redis line");
    let printed_block: Vec<String> = lines[..=end].iter().map(|l| normalize(l)).collect();
    // PostgreSQL and the Redis Cluster start at once and each is reported when it is up, in
    // either order: the lines before the schema step are compared as a set.
    let (shown, printed_block) = (concurrent_as_set(shown), concurrent_as_set(printed_block));
    assert_eq!(
        shown, printed_block,
        "the README's demo block differs from the demo's output:\n{printed}"
    );
}

/// `block` with its lines before `schema applied` sorted.
fn concurrent_as_set(mut block: Vec<String>) -> Vec<String> {
    let schema = block
        .iter()
        .position(|l| l.contains("schema applied"))
        .unwrap_or(0);
    block[..schema].sort();
    block
}
