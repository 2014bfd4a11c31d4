//! The headers the datapath reads and writes, one file each, and the one Internet checksum
//! they share (the shape of smoltcp's `wire`): pure views, offsets and builders, no I/O.
//! [`super::gso`] (cutting super-packets) and [`super::gro`] (coalescing them) sit on top.

pub mod checksum;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vnet;
