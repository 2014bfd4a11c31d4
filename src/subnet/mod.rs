//! Subnet leases: the model (`lease`), arithmetic (`net`), subnet.env (`env`),
//! the etcd registry (`registry`), the watch reducer (`watch`) and the lease
//! keeper's decisions (`keeper`).

pub mod env;
pub mod keeper;
pub mod lease;
pub mod net;
pub mod registry;
pub mod watch;
