//! flannel-rs: a drop-in `flanneld` in Rust.
//!
//! The map (see `DESIGN.md` for the picture):
//! - [`cli`]: flags with Go-style `-flag` and `FLANNELD_*` env semantics.
//! - [`config`]: the network config JSON, defaults and validation.
//! - [`compat`]: names, paths, ports and keys shared with upstream flannel.
//! - [`subnet`]: the lease model, subnet math, subnet.env, the etcd registry and
//!   the watch reducer that turns etcd events into [`subnet::lease::LeaseEvent`]s.
//! - [`backend`]: the [`backend::Backend`] trait and one module per backend.
//! - [`exec`]: control-plane code with side effects (netlink queries, …).
//! - [`daemon`]: start-up order, signals, subnet.env, health server.
//! - [`datapath`]: the udp backend's userspace datapath: pure packet logic, the worker
//!   loop, and the drivers that carry its decisions out ([`datapath::io`]).
//! - [`sys`]: the ground floor: safe wrappers over the kernel (TUN, sockets, io_uring,
//!   eventfd, netns); it imports nothing else of the crate.
//!
//! `unsafe` is denied everywhere except in `sys/`.
#![deny(unsafe_code)]

pub mod backend;
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
