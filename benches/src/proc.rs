//! What the whole-system comparisons (`gateway-vs-nginx`, `ws-echo`) share: the CPU time of a
//! proxy's threads or processes, free ports, and a proxy process (nginx, HAProxy) stopped by its
//! pid on drop.

use std::process::{Child, Command};
use std::time::Duration;

/// CPU time in clock ticks: user and system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticks {
    /// User time.
    pub user: u64,
    /// System time.
    pub system: u64,
}

impl Ticks {
    /// User plus system.
    pub fn total(self) -> u64 {
        self.user.saturating_add(self.system)
    }
}

impl std::iter::Sum for Ticks {
    fn sum<I: Iterator<Item = Ticks>>(iter: I) -> Ticks {
        iter.fold(Ticks::default(), |a, b| Ticks {
            user: a.user.saturating_add(b.user),
            system: a.system.saturating_add(b.system),
        })
    }
}

/// utime and stime (ticks) from a `/proc/.../stat` line; the command name may hold spaces, so
/// fields are counted after its closing parenthesis.
pub fn stat_ticks(stat: &str) -> Option<Ticks> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `(comm)`: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    Some(Ticks {
        user: fields.get(11)?.parse().ok()?,
        system: fields.get(12)?.parse().ok()?,
    })
}

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Where a proxy's CPU time is read from.
#[derive(Debug, Clone, Copy)]
pub enum Cpu {
    /// Threads of this process whose name starts with the prefix (a gateway's runtimes).
    Threads(&'static str),
    /// A process and its children (nginx's master and workers, HAProxy).
    Process(u32),
}

impl Cpu {
    /// The CPU time used so far.
    pub fn ticks(self) -> Ticks {
        match self {
            Cpu::Threads(prefix) => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with(prefix))
                })
                .filter_map(|t| stat_ticks(&std::fs::read_to_string(t.path().join("stat")).ok()?))
                .sum(),
            Cpu::Process(master) => {
                let children =
                    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
                        .unwrap_or_default();
                std::iter::once(master)
                    .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
                    .filter_map(|pid| {
                        stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
                    })
                    .sum()
            }
        }
    }
}

/// A port nothing listens on now (for a proxy started as another process).
///
/// # Errors
/// The OS refused a socket.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}

/// Whether this process runs as root (nginx then needs `user root;` to keep its workers able to
/// read the temp directory).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Waits until something accepts TCP connections at `url` (`http://`, `https://` or `ws://`
/// prefix or a bare `host:port`), for at most 5 s.
///
/// # Errors
/// Nothing accepted in time.
pub async fn wait_until_serving(url: &str) -> Result<(), String> {
    let addr = ["http://", "https://", "ws://"]
        .iter()
        .fold(url, |a, p| a.trim_start_matches(p));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} never accepted connections"))
}

/// A proxy (nginx, HAProxy) running in the foreground with its own directory; stopped by its
/// pid on drop.
#[derive(Debug)]
pub struct Proxy {
    /// The process.
    pub child: Child,
    /// Its configuration and temp files, removed on drop.
    pub dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its workers, then exits (SIGKILL on
        // the master alone would orphan the workers); HAProxy, one process, stops at once.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_stat_times() {
        assert_eq!(
            stat_ticks("42 (tokio w) S 1 1 1 0 -1 4194560 10 0 0 0 250 75 0 0 20 0"),
            Some(Ticks {
                user: 250,
                system: 75
            })
        );
        assert_eq!(stat_ticks("garbage"), None);
        assert_eq!(stat_ticks("1 (x)"), None);
    }
}
