//! `flannelctl`: an operator's look into a flannel network and into the local node.
//!
//! It reads what flanneld reads (the same `--etcd-*` flags and `FLANNELD_*` variables, shared
//! through [`crate::cli::EtcdFlags`]) and asks the local daemon over its health server (found
//! through the same `--healthz-ip`/`--healthz-port`, [`crate::cli::HealthzFlags`]):
//!
//! - [`args`]: the command line (clap) and the pure checks of its values;
//! - [`render`]: pure: etcd keys and the daemon's `/status` document to tables and JSON;
//! - [`run`]: the effects: etcd through [`crate::subnet::registry::Registry`] (the daemon's
//!   own client and key layout), one HTTP GET to the health server, stdout and stderr.
//!
//! Every command prints a human table by default and stable JSON with `-o json`; failures
//! exit with an [`Exit`] status that scripts can test.

pub mod args;
pub mod render;
pub mod run;

pub use run::main;

/// Exit statuses, documented in `flannelctl --help`. Scripts depend on them: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The operation failed: etcd or the daemon unreachable, a refused change, a race lost.
    Failed = 1,
    /// Bad flags or arguments (clap's own errors exit with 2 as well).
    Usage = 2,
    /// What was asked for does not exist (no such lease, no network config).
    NotFound = 3,
    /// The network config does not validate (`config check`, `config set`).
    InvalidConfig = 4,
}

impl Exit {
    /// The name in `-o json` error documents.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failed => "failed",
            Exit::Usage => "usage",
            Exit::NotFound => "not_found",
            Exit::InvalidConfig => "invalid_config",
        }
    }
}

/// Why a command failed: its exit status, a one-line message, and for an invalid config the
/// key at fault (so a script can point at it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError {
    pub exit: Exit,
    pub message: String,
    pub key: Option<String>,
}

impl CtlError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CtlError {
            exit,
            message: message.into(),
            key: None,
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CtlError::new(Exit::Failed, message)
    }
}

impl From<crate::config::ConfigError> for CtlError {
    fn from(e: crate::config::ConfigError) -> Self {
        CtlError {
            exit: Exit::InvalidConfig,
            message: e.to_string(),
            key: Some(e.key),
        }
    }
}
