//! flannel-rs: a drop-in `flanneld` in Rust.
//!
//! The map (see `DESIGN.md` for the picture), top to bottom. A module names only those
//! below it; `tests/layering.rs` keeps it so (and no file over 800 lines before its tests):
//!
//! ```text
//! bin ─► daemon, ctl ─► (subnet, backend) ─► exec ─► datapath ─► sys
//!          cli; config, compat, cancel and the subnet types are the shared ground
//! ```
//! - [`daemon`]: start-up order, signals, subnet.env, the main loop, health server.
//! - [`cli`]: flags with Go-style `-flag` and `FLANNELD_*` env semantics.
//! - [`ctl`]: `flannelctl`, the operator's tool (beside `daemon` at the top: names `cli`,
//!   never `daemon`): leases, reservations and config in etcd, the local node's `/status`.
//! - [`cni`]: the `flannel` CNI meta-plugin (its own binary; names only the ground).
//! - [`backend`]: the [`backend::Backend`] trait and one module per backend: what to do
//!   (plans, reconciliation against a `Host` seam), not the doing.
//! - [`subnet`]: the lease model, subnet math, subnet.env, the etcd registry, the watch
//!   reducer that turns etcd events into [`subnet::lease::LeaseEvent`]s, and the two
//!   lease loops: the watcher and the keeper.
//! - [`exec`]: control-plane code with side effects: the one netlink client,
//!   interface discovery, the TUN device set-up, hooks, masquerade rules.
//! - [`datapath`]: the udp backend's userspace datapath: pure packet logic, the worker
//!   loop, and the drivers that carry its decisions out ([`datapath::io`]).
//! - [`sys`]: the ground floor: safe wrappers over the kernel (TUN, sockets, io_uring,
//!   eventfd, netns); it imports nothing else of the crate.
//! - [`config`], [`compat`], [`cancel`]: the network config, the names upstream fixes,
//!   the cancellation token every long-running task takes.
//! - [`status`]: a running node's state as JSON (`GET /status`, `flannelctl status`).
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
