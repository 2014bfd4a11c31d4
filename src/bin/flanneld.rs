//! `flanneld`: flags → config → `daemon::run` → exit status.
//!
//! Exit status as upstream: 0 after a stop signal, 1 for a bad flag, a bad
//! network config, no usable interface or a backend that cannot start.

use std::process::ExitCode;

use flannel_rs::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before any thread exists: the binary's path (for a SIGUSR2 hand-over) and the hand-over
    // variable a previous image may have left (see daemon::handover).
    flannel_rs::daemon::handover::init_process();
    let cli = match Cli::parse_go(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help prints to stdout and exits 0; real errors exit 1 (Go's flag exits 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.version {
        // Upstream prints the version to stderr; ours is followed by the commit and build tag.
        eprintln!("{}", flannel_rs::daemon::handover::version());
        return ExitCode::SUCCESS;
    }
    init_logging(cli.v, cli.log_format);
    if let Err(e) = cli.validate() {
        tracing::error!("{e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flanneld: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(flannel_rs::daemon::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what failed and why (logging goes to stderr).
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// klog-style verbosity: 0 info, 1–3 debug, 4+ trace; `RUST_LOG` overrides. `--log-format`
/// picks text lines or one JSON object per line (fields flattened next to `message`).
fn init_logging(v: u32, format: LogFormat) {
    let level = match v {
        0 => "info",
        1..=3 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},h2=info,tower=info,hyper=info,tonic=info"))
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}
