//! Control-plane code with side effects on the host: the one netlink client
//! (`netlink`, opened once by the daemon and shared), external interface
//! discovery (`iface`), the udp backend's TUN device from creation to removal (`tun`), hook
//! commands (`hooks`) and masquerade rules (`masq`). Backends plan; this
//! module does. It names no backend, daemon or CLI type.

pub mod hooks;
pub mod iface;
pub mod masq;
pub mod netlink;
pub mod tun;
