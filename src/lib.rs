//! flannel-rs: a drop-in `flanneld` in Rust.
//!
//! The map is `docs/design.md`: the parts, how a lease, a packet and a config flow, the
//! layers, and which module owns each kernel object. The layers, top to bottom: a module
//! names only modules on a lower floor, as the table in `docs/design.md` lists them, and
//! `tests/layering.rs` checks exactly that table (and that no file is over 800 lines before
//! its tests):
//!
//! ```text
//! floor 4   daemon, ctl
//! floor 3   backend, cli, fuzzing
//! floor 2   exec, datapath, config, cni        (exec and datapath are siblings under backend)
//! floor 1   subnet                             (named by datapath, exec, config, cni, ...)
//! floor 0   sys, cancel, compat, status        (name nothing of the crate)
//! ```
//! - [`daemon`]: start-up order, signals, subnet.env, the main loop, the health server, the
//!   daemon's side of the `SIGUSR2` hand-over.
//! - [`ctl`]: `flannelctl`, the operator's tool (names `cli`, never `daemon`): leases,
//!   reservations and config in etcd, the local node's `/status`.
//! - [`backend`]: the [`backend::Backend`] trait and one module per backend: what to do
//!   (plans, reconciliation against a `Host` seam), with the doing in `exec` and, for udp,
//!   the datapath.
//! - [`cli`]: flags with Go-style `-flag` and `FLANNELD_*` env semantics.
//! - [`cni`]: the `flannel` CNI meta-plugin (its own binary).
//! - [`exec`]: control-plane code with side effects: the one netlink client, interface
//!   discovery, the TUN device `flannel0` from creation to removal, hooks, masquerade rules.
//! - [`datapath`]: the udp backend's userspace datapath: pure packet logic, the route table,
//!   the worker threads, and the drivers that carry out its decisions ([`datapath::io`]).
//! - [`config`]: the network config, validated.
//! - [`subnet`]: the lease model, subnet math, subnet.env, the etcd registry, the watch
//!   reducer that turns etcd events into [`subnet::lease::LeaseEvent`]s, and the two lease
//!   loops: the watcher and the keeper.
//! - [`sys`]: the ground floor: safe wrappers over the kernel (TUN, sockets, io_uring,
//!   eventfd, fds across `execve`, netns).
//! - [`status`], [`cancel`], [`compat`]: the `/status` JSON document, the cancellation token
//!   every long-running task takes, the names upstream fixes.
//!
//! `unsafe` is denied everywhere except in `sys/` (also by `[lints]` in Cargo.toml), and
//! every block there has a `// SAFETY:` line.
#![deny(unsafe_code)]

pub mod backend;
pub mod cancel;
pub mod cli;
pub mod cni;
pub mod compat;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod datapath;
pub mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod status;
pub mod subnet;
#[allow(unsafe_code)]
pub mod sys;
