//! Subnet leases: the model (`lease`), arithmetic (`net`), subnet.env (`env`),
//! the etcd registry (`registry`) and the watch reducer (`watch`).

pub mod env;
pub mod lease;
pub mod net;
