//! Shared test harness, one file per thing it owns:
//!
//! - `require`: capability probing and the skip-or-fail rule (`require!`, `FLANNEL_TEST_REQUIRE`)
//! - `venv`: the tests' Python tools (moto, prometheus-client) in scripts/test.sh's venv
//! - `tls`: CA, server and client certificates for etcd
//! - `etcd`: a real etcd per test ([`Etcd`])
//! - `flanneld`: a real `flanneld` process ([`Flanneld`])
//! - `util`: polling, free ports, unique names, commands in a namespace, HTTP GET
//! - `cluster`: a whole cluster in network namespaces; `kernel`: checks on its kernel state
//!
//! Every resource a test makes carries a unique name or port and is removed in
//! `Drop`, so tests can run in parallel and clean up even when they fail.
#![allow(dead_code)]

pub mod cluster;
mod etcd;
mod flanneld;
pub mod kernel;
mod require;
mod tls;
mod util;
mod venv;

// The harness as one namespace (`use common::*`). Each test binary uses a part of it, so a
// re-export one of them leaves unused is no fault.
#[allow(unused_imports)]
pub use etcd::Etcd;
#[allow(unused_imports)]
pub use flanneld::{flanneld_bin, Flanneld, NETNS_HEALTHZ_PORT};
#[allow(unused_imports)]
pub use require::{probe, skip_or_fail, Cap, CNI_PLUGIN_DIR};
#[allow(unused_imports)]
pub use tls::TlsFiles;
#[allow(unused_imports)]
pub use util::{free_port, http_get, in_netns, run_with_stdin, secs, unique, wait_until};
#[allow(unused_imports)]
pub use venv::{moto_server, venv_python};
