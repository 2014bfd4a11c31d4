//! Control-plane code with side effects on the host: netlink queries and
//! changes, hooks, sysctls, masquerade rules. Backends plan; this module does.

pub mod hooks;
pub mod iface;
pub mod masq;
pub mod netlink;
pub mod tun;
