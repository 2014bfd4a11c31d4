//! Subnet leases: the model (`lease`), arithmetic (`net`), subnet.env (`env`),
//! the etcd registry (`registry`), the reducer of etcd listings and watch events into lease
//! events (`reduce`), and the two loops that run on them: the lease watcher (`watcher`) and
//! the lease keeper (`keeper`), with their time seam (`clock`); `counters` counts what they
//! saw.

pub mod clock;
pub mod counters;
pub mod env;
pub mod keeper;
pub mod lease;
pub mod net;
pub mod reduce;
pub mod registry;
pub mod watcher;
