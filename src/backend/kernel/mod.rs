//! The forwarding state that the kernel-programming backends (vxlan, host-gw)
//! own: a pure model of routes, neighbours and FDB entries, the diff between
//! what the leases ask for and what the kernel holds, and the [`Host`] seam
//! through which the backends reach the kernel.
//!
//! Planning never touches the OS. A backend turns leases into a [`Desired`]
//! state; [`Desired::removed_in`] and [`reconcile`] turn two states into
//! [`Op`]s; an implementation of [`Host`] (the daemon's shared
//! `exec::netlink::Netlink`, see `host.rs`; `fake::FakeHost` in unit tests)
//! performs them. [`Engine`] is
//! the loop both backends share: lease events in, operations out, and a
//! periodic [`reconcile`] that repairs drift with one log line per repair.
//!
//! # What "ours" means
//! [`Ownership`] draws the line between flannel's entries and everybody
//! else's, so that reconciliation can remove what no lease explains without
//! touching the rest of the host: routes in the main table whose destination
//! lies inside the flannel network (but not inside this host's own subnet)
//! and that go through a flannel device or through a gateway on the external
//! interface; permanent neighbours and FDB entries on flannel devices.
//!
//! # Layout
//! - `model`: links, routes, neighbours, FDB entries, [`Desired`], [`Observed`], [`Op`] (pure).
//! - `reconcile`: [`Ownership`] and the repairs between two states (pure).
//! - `host`: the [`Host`] seam and its netlink implementation (model ⇄ messages).
//! - `engine`: [`Planner`], [`Engine`] and the [`Reconciler`] task.
//! - `fake`: the in-memory kernel for unit tests.

mod engine;
#[cfg(test)]
pub mod fake;
mod host;
mod model;
mod reconcile;

pub use engine::{
    Engine, EngineState, Planner, ReconcileStats, Reconciler, RepairKind, RECONCILE_PERIOD,
};
pub use host::Host;
pub use model::*;
pub use reconcile::{reconcile, Ownership, Repair, Why};
