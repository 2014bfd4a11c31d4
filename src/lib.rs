//! flannel-rs: a drop-in `flanneld` in Rust.
//!
//! The map (see `DESIGN.md` for the picture):
//! - [`cli`]: flags with Go-style `-flag` and `FLANNELD_*` env semantics.
//! - [`config`]: the network config JSON, defaults and validation.
//! - [`cancel`]: the one cancellation token every long-running task takes.
//! - [`compat`]: names, paths, ports and keys shared with upstream flannel.
//! - [`subnet`]: the lease model, subnet math, subnet.env, the etcd registry,
//!   the watch reducer that turns etcd events into [`subnet::lease::LeaseEvent`]s,
//!   and the two lease loops: the watcher and the keeper.
//! - [`backend`]: the [`backend::Backend`] trait and one module per backend.
//! - [`exec`]: control-plane code with side effects: the one netlink client,
//!   interface discovery, the TUN device set-up, hooks, masquerade rules.
//! - [`daemon`]: start-up order, signals, subnet.env, health server.
//! - [`datapath`]: the udp backend's userspace datapath: pure packet logic, the worker
//!   loop, and the drivers that carry its decisions out ([`datapath::io`]).
//! - [`sys`]: the ground floor: safe wrappers over the kernel (TUN, sockets, io_uring,
//!   eventfd, netns); it imports nothing else of the crate.
//!
//! `unsafe` is denied everywhere except in `sys/`.
#![deny(unsafe_code)]

pub mod backend;
pub mod cancel;
pub mod cli;
pub mod cni;
pub mod compat;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod subnet;
#[allow(unsafe_code)]
pub mod sys;
