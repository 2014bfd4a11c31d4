//! The `host-gw` backend: every other host's subnet is routed via that
//! host's public address on the external interface. No encapsulation; all
//! hosts must share one L2 network.
//!
//! # Kernel state owned by this module
//! - per remote host-gw lease: `route <subnet> via <PublicIP> dev <ext>` (and
//!   `route <IPv6 subnet> via <PublicIPv6> dev <ext>` with `EnableIPv6`),
//!   removed with the lease, *kept* on shutdown.
//!
//! Nothing here is keyed by our own subnet except what reconciliation spares
//! (routes into it are never flannel's), which follows the subnet when a lost
//! lease comes back with a different one.
//!
//! # Refusals
//! Like upstream, the backend refuses to start when the public IP differs
//! from the interface address (NAT). A peer whose public address is not
//! directly connected through the external interface gets no route: upstream
//! asks the kernel, which answers "network is unreachable", and logs that;
//! here the same check runs before planning (`ip route get`), the refusal is
//! logged once, and the route appears as soon as the peer becomes reachable.
//!
//! # Better than upstream
//! Upstream re-adds missing routes every 10 s; the shared reconciliation
//! also replaces wrong ones and, once the lease list is complete, removes
//! routes no lease explains, one log line per repair.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::bail;
use ipnet::IpNet;

use super::kernel::{
    Desired, DirectPeers, Engine, EngineState, Host, Ownership, Planner, Reconciler, RouteSpec,
};
use super::{Backend, BackendAttrs, BackendContext, BackendCounters};
use crate::subnet::lease::{Lease, LeaseEvent, SubnetKey};

/// Upstream's refusal when the public IP is not the interface's own.
pub const NAT_REFUSAL: &str =
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not supported by host-gw backend";

/// What host-gw keeps of another host's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGwPeer {
    pub key: SubnetKey,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
}

/// Leases → routes (pure).
#[derive(Debug, Clone)]
pub struct HostGwPlanner {
    pub ext_index: u32,
    pub ext_name: String,
    pub v6: bool,
    pub networks: Vec<IpNet>,
    pub own_subnets: Vec<IpNet>,
}

impl HostGwPlanner {
    /// (subnet, gateway) pairs a peer asks for.
    fn wanted(&self, p: &HostGwPeer) -> Vec<(IpNet, IpAddr)> {
        let mut v = vec![(IpNet::V4(p.key.ipv4), IpAddr::V4(p.public_ip))];
        if let (true, Some(sn), Some(gw)) = (self.v6, p.key.ipv6, p.public_ipv6) {
            v.push((IpNet::V6(sn), IpAddr::V6(gw)));
        }
        v
    }

    fn on_link(&self, gw: &IpAddr, direct: &DirectPeers) -> bool {
        direct.get(gw) == Some(&self.ext_index)
    }
}

impl Planner for HostGwPlanner {
    type Peer = HostGwPeer;

    fn peer(&self, lease: &Lease) -> Option<HostGwPeer> {
        if lease.attrs.backend_type.as_deref() != Some("host-gw") {
            tracing::warn!(
                "Ignoring non-host-gw subnet: type={}",
                lease.attrs.backend_type.as_deref().unwrap_or("")
            );
            return None;
        }
        Some(HostGwPeer {
            key: lease.key,
            public_ip: lease.attrs.public_ip,
            public_ipv6: lease.attrs.public_ipv6,
        })
    }

    fn lookups(&self, p: &HostGwPeer) -> Vec<IpAddr> {
        self.wanted(p).into_iter().map(|(_, gw)| gw).collect()
    }

    fn desired(&self, peers: &BTreeMap<SubnetKey, HostGwPeer>, direct: &DirectPeers) -> Desired {
        let mut d = Desired::default();
        for p in peers.values() {
            for (dst, gw) in self.wanted(p) {
                if self.on_link(&gw, direct) {
                    d.add_route(RouteSpec {
                        dst,
                        gateway: gw,
                        oif: self.ext_index,
                        onlink: false,
                    });
                }
            }
        }
        d
    }

    fn refused(
        &self,
        peers: &BTreeMap<SubnetKey, HostGwPeer>,
        direct: &DirectPeers,
    ) -> BTreeMap<IpNet, String> {
        let mut out = BTreeMap::new();
        for p in peers.values() {
            for (dst, gw) in self.wanted(p) {
                if !self.on_link(&gw, direct) {
                    out.insert(
                        dst,
                        format!(
                            "Error adding route to {dst} via {gw} dev {}: network is unreachable \
                             ({gw} is not on this host's L2 network through {}; host-gw needs every host on one L2 \
                             segment — use vxlan, or vxlan with DirectRouting, across routers)",
                            self.ext_name, self.ext_name
                        ),
                    );
                }
            }
        }
        out
    }

    fn ownership(&self) -> Ownership {
        Ownership {
            networks: self.networks.clone(),
            own_subnets: self.own_subnets.clone(),
            devices: Vec::new(),
            gateway_oifs: vec![self.ext_index],
        }
    }

    fn uses_v6(&self) -> bool {
        self.v6
    }

    fn device_name(&self, index: u32) -> String {
        if index == self.ext_index {
            self.ext_name.clone()
        } else {
            format!("#{index}")
        }
    }

    fn added_line(&self, p: &HostGwPeer) -> String {
        let mut s = format!("Subnet added: {} via {}", p.key.ipv4, p.public_ip);
        if let (true, Some(sn), Some(gw)) = (self.v6, p.key.ipv6, p.public_ipv6) {
            s.push_str(&format!(", {sn} via {gw}"));
        }
        s
    }

    fn removed_line(&self, p: &HostGwPeer) -> String {
        format!("Subnet removed: {}", p.key)
    }
}

struct Inner<H: Host> {
    host: H,
    engine: Engine<HostGwPlanner>,
}

impl<H: Host> EngineState for Inner<H> {
    type Host = H;
    type Planner = HostGwPlanner;

    fn parts(&mut self) -> (&mut H, &mut Engine<HostGwPlanner>) {
        (&mut self.host, &mut self.engine)
    }

    async fn reconcile(&mut self) {
        self.engine.reconcile(&mut self.host).await;
    }
}

/// The host-gw backend (generic over the kernel seam for tests).
pub struct HostGw<H: Host> {
    reconciler: Reconciler<Inner<H>>,
    mtu: u32,
}

fn check_no_nat(ctx: &BackendContext) -> anyhow::Result<()> {
    if ctx.iface.public_ip != ctx.iface.iface_addr {
        bail!("{NAT_REFUSAL}");
    }
    Ok(())
}

impl<H: Host> HostGw<H> {
    /// Builds the backend on `host`, the kernel seam: the daemon's shared
    /// `exec::netlink::Netlink`, a `FakeHost` in tests.
    pub fn new(ctx: &BackendContext, host: H) -> anyhow::Result<Self> {
        check_no_nat(ctx)?;
        let planner = HostGwPlanner {
            ext_index: ctx.iface.index,
            ext_name: ctx.iface.name.clone(),
            v6: ctx.config.ipv6.is_some(),
            networks: ctx
                .config
                .network_v4()
                .map(IpNet::V4)
                .into_iter()
                .chain(ctx.config.network_v6().map(IpNet::V6))
                .collect(),
            own_subnets: Vec::new(),
        };
        Ok(HostGw {
            reconciler: Reconciler::new(Inner {
                host,
                engine: Engine::new(planner),
            }),
            mtu: ctx.iface.mtu,
        })
    }

    /// Changes how often the kernel is checked (tests).
    pub fn with_period(mut self, period: Duration) -> Self {
        self.reconciler.set_period(period);
        self
    }

    /// Records our own subnets, which reconciliation never touches.
    async fn set_own(&self, own: &SubnetKey) {
        let own_subnets = std::iter::once(IpNet::V4(own.ipv4))
            .chain(own.ipv6.map(IpNet::V6))
            .collect();
        self.reconciler
            .state
            .lock()
            .await
            .engine
            .planner
            .own_subnets = own_subnets;
    }

    /// Runs one reconciliation pass now (tests).
    pub async fn reconcile_now(&self) {
        self.reconciler.reconcile_now().await;
    }

    /// Runs `f` on the kernel seam (tests).
    pub async fn with_host_mut<T>(&self, f: impl FnOnce(&mut H) -> T) -> T {
        self.reconciler.with_host_mut(f).await
    }
}

impl<H: Host> Backend for HostGw<H> {
    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn counters(&self) -> BackendCounters {
        BackendCounters {
            reconcile: Some(self.reconciler.stats().clone()),
            datapath: None,
        }
    }

    async fn prepare(&mut self) -> anyhow::Result<BackendAttrs> {
        Ok(BackendAttrs {
            backend_type: Some("host-gw".to_owned()),
            ..BackendAttrs::default()
        })
    }

    async fn start(&mut self, own: &Lease) -> anyhow::Result<()> {
        self.set_own(&own.key).await;
        self.reconciler.spawn();
        Ok(())
    }

    async fn apply(&mut self, events: &[LeaseEvent]) {
        self.reconciler.apply(events).await;
    }

    async fn resynced(&mut self) {
        self.reconciler.resynced().await;
    }

    /// Our subnet changed. host-gw puts nothing of its own on this host for its own subnet
    /// (no device, no address, no route: the pods' bridge is the CNI's), so only what
    /// reconciliation must never touch moves: routes into the new subnet are left alone from
    /// now on, and a route into the old one is flannel's like any peer's (programmed when the
    /// old subnet's new holder's lease arrives, removed as stray otherwise).
    async fn moved(&mut self, _old: &Lease, new: &Lease) -> anyhow::Result<()> {
        self.set_own(&new.key).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel::fake::FakeHost;
    use crate::backend::kernel::{ObservedRoute, RouteLookup};
    use crate::backend::ExternalInterface;
    use crate::config::NetworkConfig;
    use crate::subnet::lease::LeaseAttrs;

    const CONF: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}"#;

    fn ctx(host: &mut FakeHost, public: &str) -> BackendContext {
        let index = host.add_plain_link("eth0", 1500);
        BackendContext {
            config: NetworkConfig::parse(CONF).unwrap(),
            iface: ExternalInterface {
                name: "eth0".into(),
                index,
                mtu: 1500,
                iface_addr: "192.0.2.1".parse().unwrap(),
                iface_addr_v6: Some("2001:db8::1".parse().unwrap()),
                public_ip: public.parse().unwrap(),
                public_ipv6: Some("2001:db8::1".parse().unwrap()),
            },
        }
    }

    fn lease(key: &str, public: &str, public6: Option<&str>, ty: &str) -> Lease {
        let v6 = public6.map_or("null".to_owned(), |p| format!("\"{p}\""));
        let attrs = LeaseAttrs::from_json(&format!(
            r#"{{"PublicIP":"{public}","PublicIPv6":{v6},"BackendType":"{ty}"}}"#
        ))
        .unwrap();
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs,
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn on_link(host: &mut FakeHost, ip: &str, oif: u32) {
        host.lookups.insert(
            ip.parse().unwrap(),
            RouteLookup {
                gateway: None,
                oif: Some(oif),
            },
        );
    }

    async fn started(mut host: FakeHost) -> (HostGw<FakeHost>, u32) {
        let c = ctx(&mut host, "192.0.2.1");
        let eth = c.iface.index;
        for ip in ["192.0.2.2", "192.0.2.3", "2001:db8::2"] {
            on_link(&mut host, ip, eth);
        }
        host.lookups.insert(
            "198.51.100.9".parse().unwrap(),
            RouteLookup {
                gateway: Some("192.0.2.254".parse().unwrap()),
                oif: Some(eth),
            },
        );
        let mut gw = HostGw::new(&c, host)
            .unwrap()
            .with_period(Duration::from_secs(3600));
        assert_eq!(gw.mtu(), 1500);
        let attrs = gw.prepare().await.unwrap();
        assert_eq!(
            attrs,
            BackendAttrs {
                backend_type: Some("host-gw".into()),
                ..Default::default()
            }
        );
        gw.start(&lease(
            "10.5.1.0-24&fd00:5:1::-64",
            "192.0.2.1",
            Some("2001:db8::1"),
            "host-gw",
        ))
        .await
        .unwrap();
        (gw, eth)
    }

    #[test]
    fn a_nat_public_ip_is_refused_with_upstreams_message() {
        let mut host = FakeHost::new();
        let c = ctx(&mut host, "203.0.113.7");
        let err = HostGw::new(&c, host).err().unwrap();
        assert_eq!(err.to_string(), NAT_REFUSAL);
    }

    #[tokio::test]
    async fn routes_follow_leases_in_both_families() {
        let (mut gw, eth) = started(FakeHost::new()).await;
        let peer = lease(
            "10.5.2.0-24&fd00:5:2::-64",
            "192.0.2.2",
            Some("2001:db8::2"),
            "host-gw",
        );
        gw.apply(&[LeaseEvent::Added(peer.clone())]).await;
        let log = gw.with_host_mut(|h| h.take_log()).await;
        assert_eq!(
            log,
            vec![
                format!("route replace 10.5.2.0/24 via 192.0.2.2 dev #{eth}"),
                format!("route replace fd00:5:2::/64 via 2001:db8::2 dev #{eth}"),
            ]
        );
        gw.apply(&[LeaseEvent::Removed(peer)]).await;
        let log = gw.with_host_mut(|h| h.take_log()).await;
        assert_eq!(
            log,
            vec![
                format!("route del 10.5.2.0/24 via 192.0.2.2 dev #{eth}"),
                format!("route del fd00:5:2::/64 via 2001:db8::2 dev #{eth}")
            ]
        );
    }

    #[tokio::test]
    async fn peers_off_link_and_other_backends_get_no_route() {
        let (mut gw, _) = started(FakeHost::new()).await;
        gw.apply(&[
            LeaseEvent::Added(lease("10.5.9.0-24", "198.51.100.9", None, "host-gw")),
            LeaseEvent::Added(lease("10.5.3.0-24", "192.0.2.3", None, "vxlan")),
        ])
        .await;
        assert_eq!(
            gw.with_host_mut(|h| h.take_log()).await,
            Vec::<String>::new()
        );
        let refused = {
            let inner = gw.reconciler.state.lock().await;
            inner
                .engine
                .planner
                .refused(inner.engine.peers(), &DirectPeers::new())
        };
        assert!(refused
            .values()
            .next()
            .unwrap()
            .contains("network is unreachable"));
    }

    #[tokio::test]
    async fn reconcile_recovers_deleted_routes_and_drops_strays() {
        let (mut gw, eth) = started(FakeHost::new()).await;
        gw.apply(&[LeaseEvent::Added(lease(
            "10.5.2.0-24",
            "192.0.2.2",
            None,
            "host-gw",
        ))])
        .await;
        gw.with_host_mut(|h| {
            h.take_log();
            h.routes.clear();
            h.routes.push(ObservedRoute {
                dst: "10.5.7.0/24".parse().unwrap(),
                gateway: Some("192.0.2.7".parse().unwrap()),
                oif: Some(eth),
                onlink: false,
                priority: 0,
                proto_kernel: false,
            });
        })
        .await;
        gw.reconcile_now().await;
        let log = gw.with_host_mut(|h| h.take_log()).await;
        assert_eq!(
            log,
            vec![
                format!("route replace 10.5.2.0/24 via 192.0.2.2 dev #{eth}"),
                format!("route del 10.5.7.0/24 via 192.0.2.7 dev #{eth}")
            ]
        );
    }

    #[tokio::test]
    async fn a_move_protects_the_new_subnet_and_no_longer_the_old_one() {
        let (mut gw, eth) = started(FakeHost::new()).await;
        gw.resynced().await;
        let route = |dst: &str, gw: &str| ObservedRoute {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(eth),
            onlink: false,
            priority: 0,
            proto_kernel: false,
        };
        gw.with_host_mut(|h| {
            h.take_log();
            h.routes.push(route("10.5.1.0/24", "192.0.2.7"));
            h.routes.push(route("10.5.9.0/24", "192.0.2.8"));
        })
        .await;
        let old = lease(
            "10.5.1.0-24&fd00:5:1::-64",
            "192.0.2.1",
            Some("2001:db8::1"),
            "host-gw",
        );
        let new = lease(
            "10.5.9.0-24&fd00:5:9::-64",
            "192.0.2.1",
            Some("2001:db8::1"),
            "host-gw",
        );
        gw.moved(&old, &new).await.unwrap();
        gw.reconcile_now().await;
        assert_eq!(
            gw.with_host_mut(|h| h.take_log()).await,
            vec![format!("route del 10.5.1.0/24 via 192.0.2.7 dev #{eth}")]
        );
    }
}
