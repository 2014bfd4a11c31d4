//! Subnet leases: the model (`lease`), arithmetic (`net`), subnet.env (`env`),
//! the etcd registry (`registry`), the watch reducer (`watch`), and the two
//! loops that run on them: the lease watcher (`watcher`) and the lease keeper
//! (`keeper`), with their time seam (`clock`); `telemetry` records what they saw.

pub mod clock;
pub mod env;
pub mod keeper;
pub mod lease;
pub mod net;
pub mod registry;
pub mod telemetry;
pub mod watch;
pub mod watcher;
