//! `herd-gateway --config FILE [--check]`: the gateway from one TOML file (see
//! `herd_gateway::config` and the crate's README). SIGHUP reloads the file: new connections get
//! the new configuration, connections in flight finish on the old one, and a file with an error
//! keeps the old one (the error is logged with its key and problem). SIGTERM or Ctrl-C stop it
//! gracefully. Its own metrics are on `[admin] metrics_path` (default `/gateway/metrics`, from
//! admin networks only).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herd_gateway::config::{FileConfig, Gateway};

/// The herd gateway: a reverse proxy from one TOML file.
#[derive(Debug, Parser)]
#[command(name = "herd-gateway", version)]
struct Args {
    /// The configuration file.
    #[arg(long, short = 'c', env = "HERD_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Check the file (parse it and build everything but the listeners), print a summary and
    /// exit: 0 when it is valid, 1 when not.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // `--check` prints its summary; only warnings and errors go to the log then.
    let level = if args.check { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herd-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let path = args.config;
    let config = match FileConfig::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("herd-gateway: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        return match Gateway::check(&config).await {
            Ok(()) => {
                print!("{}", config.summary());
                println!("{}: configuration OK", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("herd-gateway: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    // Handlers first: a SIGHUP that comes once the listeners are announced must reload, not
    // end the process (SIGHUP's default action).
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("herd-gateway: signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before the gateway is built: what it records from then on lands in the recorder.
    let metrics = match herd_health::PrometheusMetrics::install(&Default::default()) {
        Ok(metrics) => metrics,
        Err(e) => {
            eprintln!("herd-gateway: metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let render = move || metrics.render();
    let mut gateway = match Gateway::start_with_metrics(config, render).await {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("herd-gateway: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    for addr in gateway.addrs() {
        // One line per listener on stdout: scripts and tests read the bound port from it.
        println!("herd-gateway listening on {addr}");
    }
    signals.serve(&gateway, &path).await;
    tracing::info!("stopping: finishing requests in flight");
    tokio::task::block_in_place(|| gateway.stop());
    ExitCode::SUCCESS
}

/// The signals the gateway answers.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Reloads on SIGHUP until SIGTERM or SIGINT.
    async fn serve(&mut self, gateway: &Gateway, path: &std::path::Path) {
        loop {
            tokio::select! {
                _ = self.hangup.recv() => reload(gateway, path).await,
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
            }
        }
    }
}

async fn reload(gateway: &Gateway, path: &std::path::Path) {
    match gateway.reload_file(path).await {
        Ok(report) => {
            tracing::info!(
                file = %path.display(),
                kept = ?report.kept,
                rebuilt = ?report.rebuilt,
                "configuration reloaded"
            );
            for failure in &report.tls_failures {
                tracing::error!("certificate reload refused, the old one stays: {failure}");
            }
            if !report.need_restart.is_empty() {
                tracing::warn!(
                    changed = ?report.need_restart,
                    "these settings changed but take a restart; the running ones stay"
                );
            }
        }
        Err(e) => tracing::error!(
            file = %path.display(),
            "reload refused, the running configuration stays: {}",
            one_line(&e.to_string())
        ),
    }
}

/// A multi-line message (toml's, with the line quoted) as one log line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join(" ")
}
