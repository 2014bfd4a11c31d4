//! An in-memory kernel for unit tests: links, addresses, routes, neighbours
//! and FDB entries, with the kernel's keying and replace semantics.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::host::Host;
use super::model::*;

#[derive(Debug, Default)]
pub struct FakeHost {
    pub links: Vec<LinkState>,
    pub addrs: Vec<(u32, IpNet)>,
    pub routes: Vec<ObservedRoute>,
    pub neighs: Vec<ObservedNeigh>,
    pub fdbs: Vec<ObservedFdb>,
    /// Answers for `route_to`.
    pub lookups: HashMap<IpAddr, RouteLookup>,
    /// Every mutating call, in order, for assertions.
    pub log: Vec<String>,
    next_index: u32,
}

impl FakeHost {
    pub fn new() -> Self {
        FakeHost {
            next_index: 10,
            ..Default::default()
        }
    }

    /// Adds a plain link (the external interface, say).
    pub fn add_plain_link(&mut self, name: &str, mtu: u32) -> u32 {
        self.next_index += 1;
        let index = self.next_index;
        self.links.push(LinkState {
            index,
            name: name.into(),
            kind: Some("veth".into()),
            mtu,
            up: true,
            ..Default::default()
        });
        index
    }

    pub fn link_named(&self, name: &str) -> Option<&LinkState> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The log since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    pub fn apply_now(&mut self, op: &Op) {
        self.log.push(op.to_string());
        match *op {
            Op::ReplaceRoute(r) => {
                self.routes.retain(|o| !(o.dst == r.dst && o.priority == 0));
                self.routes.push(ObservedRoute {
                    dst: r.dst,
                    gateway: Some(r.gateway),
                    oif: Some(r.oif),
                    onlink: r.onlink,
                    priority: 0,
                    proto_kernel: false,
                });
            }
            Op::DeleteRoute(k) => {
                if let Some(i) = self.routes.iter().position(|o| {
                    o.dst == k.dst
                        && o.priority == k.priority
                        && k.gateway.is_none_or(|g| o.gateway == Some(g))
                        && k.oif.is_none_or(|i| o.oif == Some(i))
                }) {
                    self.routes.remove(i);
                }
            }
            Op::ReplaceNeigh(n) => {
                self.neighs
                    .retain(|o| !(o.ifindex == n.ifindex && o.ip == n.ip));
                self.neighs.push(ObservedNeigh {
                    ifindex: n.ifindex,
                    ip: n.ip,
                    mac: Some(n.mac),
                    permanent: true,
                });
            }
            Op::DeleteNeigh(n) => self
                .neighs
                .retain(|o| !(o.ifindex == n.ifindex && o.ip == n.ip)),
            Op::ReplaceFdb(e) => {
                // The kernel rewrites the first destination of the MAC.
                match self
                    .fdbs
                    .iter_mut()
                    .find(|o| o.ifindex == e.ifindex && o.mac == e.mac)
                {
                    Some(o) => o.dst = Some(e.dst),
                    None => self.fdbs.push(ObservedFdb {
                        ifindex: e.ifindex,
                        mac: e.mac,
                        dst: Some(e.dst),
                        permanent: true,
                    }),
                }
            }
            Op::DeleteFdb(e) => self
                .fdbs
                .retain(|o| !(o.ifindex == e.ifindex && o.mac == e.mac && o.dst == Some(e.dst))),
        }
    }

    /// Removes a link and everything on it, as the kernel does.
    pub fn remove_link(&mut self, index: u32) {
        self.links.retain(|l| l.index != index);
        self.addrs.retain(|(i, _)| *i != index);
        self.routes.retain(|r| r.oif != Some(index));
        self.neighs.retain(|n| n.ifindex != index);
        self.fdbs.retain(|e| e.ifindex != index);
    }
}

impl Host for FakeHost {
    async fn link(&mut self, name: &str) -> Result<Option<LinkState>, HostError> {
        Ok(self.link_named(name).cloned())
    }

    async fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), HostError> {
        if self.link_named(&spec.name).is_some() {
            return Err(HostError::new(
                format!("creating {}", spec.name),
                "File exists",
                Some(libc::EEXIST),
            ));
        }
        self.next_index += 1;
        self.log.push(format!(
            "create vxlan {} vni {} mac {}",
            spec.name, spec.attrs.vni, spec.mac
        ));
        self.links.push(LinkState {
            index: self.next_index,
            name: spec.name.clone(),
            kind: Some("vxlan".into()),
            mac: Some(spec.mac),
            mtu: spec.mtu,
            up: false,
            vxlan: Some(spec.attrs.clone()),
        });
        Ok(())
    }

    async fn delete_link(&mut self, index: u32) -> Result<(), HostError> {
        self.log.push(format!("delete link #{index}"));
        self.remove_link(index);
        Ok(())
    }

    async fn set_link(&mut self, index: u32, change: &LinkChange) -> Result<(), HostError> {
        self.log.push(format!("set link #{index} {change:?}"));
        let Some(l) = self.links.iter_mut().find(|l| l.index == index) else {
            return Err(HostError::new(
                "set link",
                "No such device",
                Some(libc::ENODEV),
            ));
        };
        l.up |= change.up;
        if let Some(m) = change.mtu {
            l.mtu = m;
        }
        if let Some(m) = change.mac {
            l.mac = Some(m);
        }
        Ok(())
    }

    async fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, HostError> {
        Ok(self
            .addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, a)| *a)
            .collect())
    }

    async fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
        self.log.push(format!("addr add {addr} dev #{index}"));
        self.addrs.push((index, addr));
        Ok(())
    }

    async fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<(), HostError> {
        self.log.push(format!("addr del {addr} dev #{index}"));
        self.addrs.retain(|(i, a)| !(*i == index && *a == addr));
        Ok(())
    }

    async fn route_to(&mut self, dst: IpAddr) -> Result<Option<RouteLookup>, HostError> {
        Ok(self.lookups.get(&dst).copied())
    }

    async fn observe(&mut self, v6: bool, devices: &[u32]) -> Result<Observed, HostError> {
        Ok(Observed {
            routes: self
                .routes
                .iter()
                .filter(|r| v6 || r.dst.addr().is_ipv4())
                .copied()
                .collect(),
            neighs: self
                .neighs
                .iter()
                .filter(|n| devices.contains(&n.ifindex))
                .copied()
                .collect(),
            fdbs: self
                .fdbs
                .iter()
                .filter(|e| devices.contains(&e.ifindex))
                .copied()
                .collect(),
        })
    }

    async fn apply(&mut self, op: &Op) -> Result<(), HostError> {
        self.apply_now(op);
        Ok(())
    }

    async fn disable_accept_ra(&mut self, _name: &str) {}
}

/// Fixtures shared by the kernel model's and reconciler's unit tests.
pub mod fixtures {
    use std::net::IpAddr;

    use ipnet::IpNet;

    use crate::backend::kernel::model::{Desired, FdbSpec, Mac, NeighSpec, RouteSpec};

    pub const MAC_A: Mac = Mac([0x0a, 1, 2, 3, 4, 5]);
    pub const MAC_B: Mac = Mac([0x0a, 9, 9, 9, 9, 9]);
    /// The vxlan device's ifindex.
    pub const DEV: u32 = 7;

    pub fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    pub fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// What vxlan wants for one peer: neighbour, FDB entry and onlink route on [`DEV`].
    pub fn vxlan_peer(subnet: &str, public: &str, mac: Mac) -> Desired {
        let dst = net(subnet);
        let mut d = Desired::default();
        d.add_neigh(NeighSpec {
            ifindex: DEV,
            ip: dst.network(),
            mac,
        });
        d.add_fdb(FdbSpec {
            ifindex: DEV,
            mac,
            dst: ip(public),
        });
        d.add_route(RouteSpec {
            dst,
            gateway: dst.network(),
            oif: DEV,
            onlink: true,
        });
        d
    }
}
