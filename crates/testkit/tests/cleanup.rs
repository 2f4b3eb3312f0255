//! Nothing outlives a topology: every server process, its children and the watchdog are gone after
//! drop, and the temp dirs are removed. Also: missing binaries give an error that says what to install.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use herd_testkit::{PgCluster, RedisCluster, RedisServer};

/// Direct children of `pid`, read from /proc (the postmaster's backends and auxiliary processes).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn all_gone(pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn no_process_survives_the_topologys_drop() {
    let pg = PgCluster::start(1).await.unwrap();
    let rc = RedisCluster::start().await.unwrap();
    let rs = RedisServer::start().await.unwrap();

    let mut pids = pg.pids();
    let postmasters: Vec<u32> = pg.nodes().filter_map(|n| n.pid()).collect();
    for pm in &postmasters {
        let kids = children(*pm);
        assert!(!kids.is_empty(), "a postmaster has backends");
        pids.extend(kids);
    }
    pids.extend(rc.pids());
    pids.extend(rs.pids());
    assert_eq!(rc.pids().len(), 6 + 1, "6 nodes + watchdog");
    assert!(pids.iter().all(|p| alive(*p)));

    let dirs: Vec<std::path::PathBuf> = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok())
        .filter_map(|cmd| {
            cmd.split('\0')
                .find(|a| {
                    a.starts_with(
                        &std::env::temp_dir()
                            .join("herd-")
                            .to_string_lossy()
                            .to_string(),
                    )
                })
                .map(|a| Path::new(a).components().take(3).collect())
        })
        .collect();
    assert!(!dirs.is_empty());

    drop(pg);
    drop(rc);
    drop(rs);
    let left = all_gone(&pids).await;
    assert!(left.is_empty(), "still running after drop: {left:?}");
    for d in dirs {
        assert!(!d.exists(), "{} was not removed", d.display());
    }
}

#[test]
fn a_missing_postgres_says_what_to_install() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd-dev"))
        .args(["up", "--replicas", "1"])
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
fn herd_dev_rejects_bad_arguments() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd-dev"))
        .args(["up", "--replicas", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`many` is not a number"));
}
