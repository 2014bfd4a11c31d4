//! The `vxlan` backend: the kernel's VXLAN device carries the traffic;
//! flanneld only programs it, exactly as upstream does, so mixed clusters of
//! upstream and flannel-rs nodes interoperate.
//!
//! # Kernel state owned by this module
//! - link `flannel.<VNI>` (and `flannel-v6.<VNI>` with `EnableIPv6`), type
//!   vxlan, underlay = the external interface, local = the public address,
//!   MTU = (`MTU` option or interface MTU) − 50, a random locally administered
//!   MAC (the `VtepMAC` in our lease). Created if missing, adopted in place if
//!   an existing one is compatible (its MAC kept, so peers stay valid across a
//!   restart), recreated (keeping its MAC) if not; *kept* on shutdown so
//!   running pods keep their routes.
//! - its address: the lease's network address as /32 (/128), and no other
//!   address inside the flannel network. When a lost lease comes back with
//!   a different subnet the address moves in place (the device, its MAC and
//!   every peer entry stay).
//! - per remote vxlan lease: `neigh <subnet addr> lladdr <VtepMAC> nud
//!   permanent`, `fdb <VtepMAC> dst <PublicIP> self permanent`, `route
//!   <subnet> via <subnet addr> dev flannel.<VNI> onlink`; with
//!   `DirectRouting` and the peer directly connected, only `route <subnet>
//!   via <PublicIP>`. All removed with the lease.
//!
//! # Better than upstream
//! A periodic check (every [`RECONCILE_PERIOD`](super::kernel::RECONCILE_PERIOD), after a watch resync, and at
//! once when the device is deleted — upstream's `RTM_DELLINK` watcher)
//! compares the kernel with the leases: it recreates a deleted device with
//! the same MAC (so the `VtepMAC` in our lease stays true), restores deleted
//! or changed entries and, once the first lease snapshot arrived, removes
//! entries no lease explains, with one log line per repair. A device that
//! has to be recreated at start keeps its old MAC too, and a changed `MTU`
//! option is applied to an adopted device (upstream leaves it as it was).
//!
//! # Compatibility
//! Lease `BackendData` is `{"VNI":n,"VtepMAC":"…"}` byte for byte as upstream
//! writes it (VNI as upstream's `uint16`, so upstream nodes can decode it).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ipnet::IpNet;

use super::kernel::{
    Engine, EngineState, Host, LinkChange, Mac, Reconciler, RepairKind, VxlanAttrs, VxlanSpec,
};
use super::{Backend, BackendAttrs, BackendContext, BackendCounters, ExternalInterface};
use crate::subnet::lease::{Lease, LeaseEvent, SubnetKey};

mod plan;

pub use plan::{
    lease_data, vtep_mac, vxlan_verdict, Dev, LinkVerdict, VxlanConfig, VxlanPeer, VxlanPlanner,
    DEFAULT_VNI, ENCAP_OVERHEAD,
};

/// Which device of a vxlan network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Everything the backend mutates, behind one lock shared with the
/// reconciliation task.
struct Inner<H: Host> {
    host: H,
    engine: Engine<VxlanPlanner>,
    /// The links we want; their MAC is fixed once it is in our lease.
    specs: Vec<(Family, VxlanSpec)>,
    /// Our own subnets (the device addresses), once the lease is held.
    own: Option<SubnetKey>,
    networks: (Option<IpNet>, Option<IpNet>),
}

impl<H: Host> Inner<H> {
    fn dev_mut(&mut self, f: Family) -> &mut Option<Dev> {
        match f {
            Family::V4 => &mut self.engine.planner.v4,
            Family::V6 => &mut self.engine.planner.v6,
        }
    }

    /// Creates, adopts or recreates one device. Before the lease is
    /// published (`mac_fixed` false) an adopted or recreated device keeps the
    /// MAC it had, so peers' entries stay valid across a restart; afterwards
    /// the MAC in our lease wins.
    async fn ensure_device(&mut self, i: usize, mac_fixed: bool) -> anyhow::Result<Dev> {
        let spec = &mut self.specs[i].1;
        let have = self.host.link(&spec.name).await?;
        match vxlan_verdict(spec, have.as_ref()) {
            LinkVerdict::Create => {
                self.host.create_vxlan(spec).await?;
                tracing::info!(
                    "created vxlan device {} (VNI {}, VtepMAC {}, MTU {})",
                    spec.name,
                    spec.attrs.vni,
                    spec.mac,
                    spec.mtu
                );
            }
            LinkVerdict::Adopt {
                index,
                mac,
                mut change,
            } => {
                if !mac_fixed {
                    spec.mac = mac;
                } else if mac != spec.mac {
                    change.mac = Some(spec.mac);
                }
                tracing::info!(
                    "VXLAN device {} already exists and is compatible; adopting it (VtepMAC {})",
                    spec.name,
                    spec.mac
                );
                if change != LinkChange::default() {
                    tracing::info!("setting {} on {}: {change:?}", spec.name, spec.name);
                    self.host.set_link(index, &change).await?;
                }
            }
            LinkVerdict::Recreate {
                index,
                reason,
                old_mac,
            } => {
                tracing::warn!("{:?} already exists with incompatible configuration: {reason}; recreating device", spec.name);
                if let (false, Some(m)) = (mac_fixed, old_mac.filter(Mac::is_usable_unicast)) {
                    spec.mac = m;
                }
                self.host.delete_link(index).await?;
                self.host.create_vxlan(spec).await?;
            }
        }
        let spec = &self.specs[i].1;
        let link = self.host.link(&spec.name).await?.ok_or_else(|| {
            anyhow!(
                "vxlan device {} vanished right after it was set up",
                spec.name
            )
        })?;
        if link.mac != Some(spec.mac) {
            return Err(anyhow!(
                "vxlan device {} has MAC {:?}, expected {} (changed behind our back?)",
                spec.name,
                link.mac.map(|m| m.to_string()),
                spec.mac
            ));
        }
        self.host.disable_accept_ra(&spec.name).await;
        Ok(Dev {
            name: spec.name.clone(),
            index: link.index,
            mac: spec.mac,
        })
    }

    /// The device's address: our subnet's network address as /32 (/128),
    /// and no other address inside the flannel network (upstream's
    /// `EnsureV4AddressOnLink`). Returns whether something changed.
    async fn ensure_address(&mut self, f: Family) -> anyhow::Result<bool> {
        let (Some(dev), Some(own)) = (self.dev_mut(f).clone(), self.own) else {
            return Ok(false);
        };
        let (addr, network) = match f {
            Family::V4 => (
                IpNet::new(IpAddr::V4(own.ipv4.network()), 32)?,
                self.networks.0,
            ),
            Family::V6 => match own.ipv6 {
                Some(v6) => (IpNet::new(IpAddr::V6(v6.network()), 128)?, self.networks.1),
                None => return Ok(false),
            },
        };
        let mut changed = false;
        let have = self.host.addresses(dev.index).await?;
        for a in &have {
            if *a != addr && network.is_some_and(|n| n.contains(&a.addr())) {
                self.host.delete_address(dev.index, *a).await?;
                tracing::info!("removed IP address {a} from {}", dev.name);
                changed = true;
            }
        }
        if !have.contains(&addr) {
            self.host.add_address(dev.index, addr).await?;
            changed = true;
        }
        Ok(changed)
    }

    /// The periodic device check: recreate a deleted device (same MAC),
    /// restore MAC, MTU, address and up state.
    async fn check_devices(&mut self) {
        for i in 0..self.specs.len() {
            let f = self.specs[i].0;
            if let Err(e) = self.check_device(i, f).await {
                self.engine.stats().failed();
                tracing::error!("reconcile: vxlan device {}: {e:#}", self.specs[i].1.name);
            }
        }
    }

    async fn check_device(&mut self, i: usize, f: Family) -> anyhow::Result<()> {
        let name = self.specs[i].1.name.clone();
        let have = self.host.link(&name).await?;
        let known = self.dev_mut(f).as_ref().map(|d| d.index);
        match (&have, vxlan_verdict(&self.specs[i].1, have.as_ref())) {
            (Some(l), LinkVerdict::Adopt { mut change, .. }) if Some(l.index) == known => {
                if l.mac != Some(self.specs[i].1.mac) {
                    change.mac = Some(self.specs[i].1.mac);
                }
                change.up = !l.up;
                if change != LinkChange::default() {
                    tracing::info!("reconcile: restoring {name}: {change:?}");
                    self.host.set_link(l.index, &change).await?;
                    self.engine.stats().repaired(RepairKind::Link);
                }
            }
            (None, _) => {
                tracing::warn!("reconcile: vxlan device {name} is gone; recreating it");
                let dev = self.ensure_device(i, true).await?;
                *self.dev_mut(f) = Some(dev);
                self.bring_up(f).await?;
                self.engine.stats().repaired(RepairKind::Link);
            }
            _ => {
                tracing::warn!("reconcile: vxlan device {name} was replaced behind our back; setting it up again");
                let dev = self.ensure_device(i, true).await?;
                *self.dev_mut(f) = Some(dev);
                self.bring_up(f).await?;
                self.engine.stats().repaired(RepairKind::Link);
            }
        }
        if self.ensure_address(f).await? {
            self.engine.stats().repaired(RepairKind::Link);
            tracing::info!("reconcile: restored the address of {name}");
        }
        Ok(())
    }

    /// Records our subnets: the device addresses, and what reconciliation never touches.
    fn set_own(&mut self, own: SubnetKey) {
        self.own = Some(own);
        self.engine.planner.own_subnets = std::iter::once(IpNet::V4(own.ipv4))
            .chain(own.ipv6.map(IpNet::V6))
            .collect();
    }

    async fn bring_up(&mut self, f: Family) -> anyhow::Result<()> {
        self.ensure_address(f).await?;
        if let Some(dev) = self.dev_mut(f).clone() {
            self.host
                .set_link(
                    dev.index,
                    &LinkChange {
                        up: true,
                        ..LinkChange::default()
                    },
                )
                .await
                .with_context(|| format!("failed to set interface {} to UP state", dev.name))?;
        }
        Ok(())
    }
}

impl<H: Host> EngineState for Inner<H> {
    type Host = H;
    type Planner = VxlanPlanner;

    fn parts(&mut self) -> (&mut H, &mut Engine<VxlanPlanner>) {
        (&mut self.host, &mut self.engine)
    }

    /// The devices first (a deleted one is recreated), then the entries.
    async fn reconcile(&mut self) {
        self.check_devices().await;
        self.engine.reconcile(&mut self.host).await;
    }
}

/// The vxlan backend (generic over the kernel seam for tests).
pub struct Vxlan<H: Host> {
    reconciler: Reconciler<Inner<H>>,
    mtu: u32,
    config: VxlanConfig,
    link_watch: Option<tokio::task::JoinHandle<()>>,
}

impl<H: Host> Vxlan<H> {
    /// Builds the backend on `host`, the kernel seam: the daemon's shared
    /// `exec::netlink::Netlink`, a `FakeHost` in tests.
    pub fn new(ctx: &BackendContext, host: H) -> anyhow::Result<Self> {
        let config = VxlanConfig::from_backend(&ctx.config.backend, ctx.config.ipv6.is_some())
            .context("error decoding VXLAN backend config")?;
        tracing::info!(
            "VXLAN config: VNI={} Port={} GBP={} Learning={} DirectRouting={}",
            config.vni,
            config.port.unwrap_or(0),
            config.gbp,
            config.learning,
            config.direct_routing
        );
        let underlay_mtu = config.mtu.unwrap_or(ctx.iface.mtu);
        let mtu = underlay_mtu.checked_sub(ENCAP_OVERHEAD).filter(|m| *m >= 68).ok_or_else(|| {
            anyhow!("interface {} has MTU {underlay_mtu}, too small for VXLAN's {ENCAP_OVERHEAD} bytes", ctx.iface.name)
        })?;
        let specs = device_specs(&config, &ctx.iface, mtu, ctx.config.ipv6.is_some())?;
        let networks = (
            ctx.config.network_v4().map(IpNet::V4),
            ctx.config.network_v6().map(IpNet::V6),
        );
        let planner = VxlanPlanner {
            direct_routing: config.direct_routing,
            ext_index: ctx.iface.index,
            v4: None,
            v6: None,
            networks: networks.0.into_iter().chain(networks.1).collect(),
            own_subnets: Vec::new(),
        };
        let inner = Inner {
            host,
            engine: Engine::new(planner),
            specs,
            own: None,
            networks,
        };
        Ok(Vxlan {
            reconciler: Reconciler::new(inner),
            mtu,
            config,
            link_watch: None,
        })
    }

    /// Changes how often the kernel is checked (tests).
    pub fn with_period(mut self, period: Duration) -> Self {
        self.reconciler.set_period(period);
        self
    }

    /// The options this backend runs with.
    pub fn config(&self) -> &VxlanConfig {
        &self.config
    }

    /// Runs one reconciliation pass now (tests; the daemon has the periodic task).
    pub async fn reconcile_now(&self) {
        self.reconciler.reconcile_now().await;
    }

    /// Runs `f` on the kernel seam (tests inspect the fake kernel this way).
    pub async fn with_host_mut<T>(&self, f: impl FnOnce(&mut H) -> T) -> T {
        self.reconciler.with_host_mut(f).await
    }
}

impl<H: Host> Drop for Vxlan<H> {
    fn drop(&mut self) {
        if let Some(t) = self.link_watch.take() {
            t.abort();
        }
    }
}

/// The links a config asks for (MACs random until an existing link is adopted).
fn device_specs(
    cfg: &VxlanConfig,
    ext: &ExternalInterface,
    mtu: u32,
    ipv6: bool,
) -> anyhow::Result<Vec<(Family, VxlanSpec)>> {
    let attrs = |local: IpAddr| VxlanAttrs {
        vni: cfg.vni,
        link: Some(ext.index),
        local: Some(local),
        group: None,
        port: cfg.port,
        gbp: cfg.gbp,
        learning: cfg.learning,
        l2miss: false,
    };
    let mut specs = vec![(
        Family::V4,
        VxlanSpec {
            name: cfg.device_name(),
            mac: Mac::random_local(),
            mtu,
            attrs: attrs(IpAddr::V4(ext.public_ip)),
        },
    )];
    if ipv6 {
        let local = ext.public_ipv6.ok_or_else(|| {
            anyhow!(
                "IPv6 is enabled but interface {} has no IPv6 address for the VXLAN tunnel",
                ext.name
            )
        })?;
        specs.push((
            Family::V6,
            VxlanSpec {
                name: cfg.device_name_v6(),
                mac: Mac::random_local(),
                mtu,
                attrs: attrs(IpAddr::V6(local)),
            },
        ));
    }
    Ok(specs)
}

impl<H: Host> Backend for Vxlan<H> {
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
        let mut guard = self.reconciler.state.lock().await;
        let inner = &mut *guard;
        let mut attrs = BackendAttrs {
            backend_type: Some("vxlan".to_owned()),
            ..BackendAttrs::default()
        };
        for i in 0..inner.specs.len() {
            let f = inner.specs[i].0;
            let dev = inner
                .ensure_device(i, false)
                .await
                .with_context(|| format!("setting up {}", inner.specs[i].1.name))?;
            let data = lease_data(self.config.vni, dev.mac);
            match f {
                Family::V4 => attrs.backend_data = Some(data),
                Family::V6 => attrs.backend_v6_data = Some(data),
            }
            *inner.dev_mut(f) = Some(dev);
        }
        Ok(attrs)
    }

    async fn start(&mut self, own: &Lease) -> anyhow::Result<()> {
        {
            let mut inner = self.reconciler.state.lock().await;
            inner.set_own(own.key);
            for f in inner.specs.iter().map(|(f, _)| *f).collect::<Vec<_>>() {
                if f == Family::V6 && own.key.ipv6.is_none() {
                    tracing::error!("IPv6 is enabled but our lease {} has no IPv6 subnet; {} stays unconfigured", own.key, inner.specs[1].1.name);
                    continue;
                }
                let name = inner
                    .dev_mut(f)
                    .as_ref()
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                inner
                    .bring_up(f)
                    .await
                    .with_context(|| format!("failed to configure interface {name}"))?;
            }
            let names = inner.specs.iter().map(|(_, s)| s.name.clone()).collect();
            let kick = self.reconciler.kick.clone();
            self.link_watch = inner.host.watch_link_deletions(names, kick);
        }
        self.reconciler.spawn();
        Ok(())
    }

    async fn apply(&mut self, events: &[LeaseEvent]) {
        self.reconciler.apply(events).await;
    }

    async fn resynced(&mut self) {
        self.reconciler.resynced().await;
    }

    /// Our subnet changed: each device trades the old /32 (/128) for the new one (the
    /// address check removes every other address inside the network), and the reconciler
    /// stops protecting the old subnet and protects the new one. Peers' entries are keyed
    /// by their subnets and stay; the old subnet's new holder arrives as a lease event.
    async fn moved(&mut self, old: &Lease, new: &Lease) -> anyhow::Result<()> {
        let mut inner = self.reconciler.state.lock().await;
        inner.set_own(new.key);
        for f in inner.specs.iter().map(|(f, _)| *f).collect::<Vec<_>>() {
            if inner.ensure_address(f).await? {
                let name = inner.dev_mut(f).as_ref().map(|d| d.name.clone());
                tracing::info!(
                    "moved {} from our old subnet {} to {}",
                    name.unwrap_or_default(),
                    old.key,
                    new.key
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel::fake::FakeHost;
    use crate::backend::kernel::{LinkState, ObservedFdb, ObservedRoute};
    use crate::config::NetworkConfig;
    use crate::subnet::lease::{LeaseAttrs, RawJson};

    const ETH: &str = "eth0";

    fn ctx(config: &str, host: &mut FakeHost) -> BackendContext {
        let index = match host.link_named(ETH) {
            Some(l) => l.index,
            None => host.add_plain_link(ETH, 1500),
        };
        let config = NetworkConfig::parse(config).unwrap();
        let v6 = config.ipv6.is_some();
        BackendContext {
            config,
            iface: ExternalInterface {
                name: ETH.into(),
                index,
                mtu: 1500,
                iface_addr: "192.0.2.1".parse().unwrap(),
                iface_addr_v6: v6.then(|| "2001:db8::1".parse().unwrap()),
                public_ip: "192.0.2.1".parse().unwrap(),
                public_ipv6: v6.then(|| "2001:db8::1".parse().unwrap()),
            },
        }
    }

    const CONF: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

    fn lease(key: &str, public: &str, mac: &str) -> Lease {
        let attrs = LeaseAttrs::from_json(&format!(
            r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        ))
        .unwrap();
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs,
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    /// Host 2's lease (`10.5.2.0/24` at 192.0.2.2) with VTEP MAC `mac`, added.
    fn peer2(mac: &str) -> LeaseEvent {
        LeaseEvent::Added(lease("10.5.2.0-24", "192.0.2.2", mac))
    }

    async fn started(conf: &str, mut host: FakeHost) -> Vxlan<FakeHost> {
        let c = ctx(conf, &mut host);
        started_in(&c, host).await
    }

    /// Prepared and started on `host` as 10.5.1.0/24, with the start-up's calls cleared.
    async fn started_in(c: &BackendContext, host: FakeHost) -> Vxlan<FakeHost> {
        let mut vx = Vxlan::new(c, host)
            .unwrap()
            .with_period(Duration::from_secs(3600));
        vx.prepare().await.unwrap();
        vx.start(&lease("10.5.1.0-24", "192.0.2.1", "02:00:00:00:00:01"))
            .await
            .unwrap();
        vx.with_host_mut(|h| h.take_log()).await;
        vx
    }

    #[tokio::test]
    async fn prepare_creates_the_device_and_publishes_its_mac() {
        let mut host = FakeHost::new();
        let c = ctx(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":4,"Port":4789,"MTU":1400,"GBP":true}}"#,
            &mut host,
        );
        let mut vx = Vxlan::new(&c, host).unwrap();
        assert_eq!(vx.mtu(), 1350);
        let attrs = vx.prepare().await.unwrap();
        let link = vx
            .with_host_mut(|h| h.link_named("flannel.4").cloned())
            .await
            .unwrap();
        let v = link.vxlan.clone().unwrap();
        assert_eq!(
            (v.vni, v.port, v.gbp, v.learning, v.link),
            (4, Some(4789), true, false, Some(c.iface.index))
        );
        assert_eq!(v.local, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(link.mtu, 1350);
        assert_eq!(attrs.backend_type.as_deref(), Some("vxlan"));
        assert_eq!(
            attrs.backend_data.unwrap().get(),
            format!(r#"{{"VNI":4,"VtepMAC":"{}"}}"#, link.mac.unwrap())
        );
        assert_eq!(attrs.backend_v6_data, None);
    }

    #[tokio::test]
    async fn start_sets_a_slash32_and_removes_stray_network_addresses() {
        let mut host = FakeHost::new();
        let c = ctx(CONF, &mut host);
        let mut vx = Vxlan::new(&c, host)
            .unwrap()
            .with_period(Duration::from_secs(3600));
        vx.prepare().await.unwrap();
        let idx = vx
            .with_host_mut(|h| h.link_named("flannel.1").unwrap().index)
            .await;
        vx.with_host_mut(|h| {
            h.addrs.push((idx, "10.5.77.0/32".parse().unwrap()));
            h.addrs.push((idx, "192.168.9.9/24".parse().unwrap()));
        })
        .await;
        vx.start(&lease("10.5.1.0-24", "192.0.2.1", "02:00:00:00:00:01"))
            .await
            .unwrap();
        let (addrs, up) = vx
            .with_host_mut(|h| {
                let mut a: Vec<String> = h
                    .addrs
                    .iter()
                    .filter(|(i, _)| *i == idx)
                    .map(|(_, a)| a.to_string())
                    .collect();
                a.sort();
                (a, h.link_named("flannel.1").unwrap().up)
            })
            .await;
        assert_eq!(addrs, vec!["10.5.1.0/32", "192.168.9.9/24"]);
        assert!(up);
    }

    #[tokio::test]
    async fn a_move_trades_the_device_address_and_the_protected_subnet() {
        let mut vx = started(CONF, FakeHost::new()).await;
        vx.resynced().await;
        let idx = vx
            .with_host_mut(|h| h.link_named("flannel.1").unwrap().index)
            .await;
        let route = |dst: &str, gw: &str| ObservedRoute {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(idx),
            onlink: true,
            priority: 0,
            proto_kernel: false,
        };
        vx.with_host_mut(|h| {
            h.take_log();
            h.routes.push(route("10.5.1.0/24", "10.5.1.0"));
            h.routes.push(route("10.5.9.0/24", "10.5.9.0"));
        })
        .await;
        let old = lease("10.5.1.0-24", "192.0.2.1", "02:00:00:00:00:01");
        let new = lease("10.5.9.0-24", "192.0.2.1", "02:00:00:00:00:01");
        vx.moved(&old, &new).await.unwrap();
        let addrs = vx
            .with_host_mut(|h| {
                h.addrs
                    .iter()
                    .filter(|(i, _)| *i == idx)
                    .map(|(_, a)| a.to_string())
                    .collect::<Vec<_>>()
            })
            .await;
        assert_eq!(addrs, vec!["10.5.9.0/32"]);
        vx.with_host_mut(|h| h.take_log()).await;
        vx.reconcile_now().await;
        assert_eq!(
            vx.with_host_mut(|h| h.take_log()).await,
            vec![format!("route del 10.5.1.0/24 via 10.5.1.0 dev #{idx}")],
            "the old subnet's route is a stray now, the new one's is left alone"
        );
    }

    #[tokio::test]
    async fn a_peer_lease_becomes_neighbour_fdb_and_onlink_route_and_goes_with_it() {
        let mut vx = started(CONF, FakeHost::new()).await;
        let peer = lease("10.5.2.0-24", "192.0.2.2", "0a:00:00:00:00:02");
        vx.apply(&[LeaseEvent::Added(peer.clone())]).await;
        let log = vx.with_host_mut(|h| h.take_log()).await;
        let idx = vx
            .with_host_mut(|h| h.link_named("flannel.1").unwrap().index)
            .await;
        assert_eq!(
            log,
            vec![
                format!("neigh replace 10.5.2.0 lladdr 0a:00:00:00:00:02 dev #{idx} nud permanent"),
                format!("fdb replace 0a:00:00:00:00:02 dev #{idx} dst 192.0.2.2 self permanent"),
                format!("route replace 10.5.2.0/24 via 10.5.2.0 dev #{idx} onlink"),
            ]
        );
        vx.apply(&[LeaseEvent::Removed(peer)]).await;
        let log = vx.with_host_mut(|h| h.take_log()).await;
        assert_eq!(
            log,
            vec![
                format!("route del 10.5.2.0/24 via 10.5.2.0 dev #{idx}"),
                format!("fdb del 0a:00:00:00:00:02 dev #{idx} dst 192.0.2.2 self"),
                format!("neigh del 10.5.2.0 dev #{idx}"),
            ]
        );
        let empty = vx
            .with_host_mut(|h| h.routes.is_empty() && h.neighs.is_empty() && h.fdbs.is_empty())
            .await;
        assert!(empty);
    }

    #[tokio::test]
    async fn other_backends_and_garbage_leases_are_ignored() {
        let mut vx = started(CONF, FakeHost::new()).await;
        let mut hostgw = lease("10.5.3.0-24", "192.0.2.3", "0a:00:00:00:00:03");
        hostgw.attrs.backend_type = Some("host-gw".into());
        let mut broken = lease("10.5.4.0-24", "192.0.2.4", "0a:00:00:00:00:04");
        broken.attrs.backend_data = Some(RawJson::new(r#"{"VtepMAC":"zz"}"#).unwrap());
        let mut none = lease("10.5.5.0-24", "192.0.2.5", "0a:00:00:00:00:05");
        none.attrs.backend_data = None;
        vx.apply(&[
            LeaseEvent::Added(hostgw),
            LeaseEvent::Added(broken),
            LeaseEvent::Added(none),
        ])
        .await;
        assert_eq!(
            vx.with_host_mut(|h| h.take_log()).await,
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn a_changed_vtep_mac_replaces_entries_and_drops_the_old_fdb() {
        let mut vx = started(CONF, FakeHost::new()).await;
        vx.apply(&[peer2("0a:00:00:00:00:02")]).await;
        vx.apply(&[peer2("0a:00:00:00:00:22")]).await;
        let fdbs = vx
            .with_host_mut(|h| h.fdbs.iter().map(|e| e.mac.to_string()).collect::<Vec<_>>())
            .await;
        assert_eq!(fdbs, vec!["0a:00:00:00:00:22"]);
        let neigh = vx
            .with_host_mut(|h| h.neighs[0].mac.unwrap().to_string())
            .await;
        assert_eq!(neigh, "0a:00:00:00:00:22");
    }

    #[tokio::test]
    async fn direct_routing_uses_a_plain_route_for_peers_on_the_same_l2() {
        let mut host = FakeHost::new();
        let c = ctx(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
            &mut host,
        );
        let eth = c.iface.index;
        host.lookups.insert(
            "192.0.2.2".parse().unwrap(),
            super::super::kernel::RouteLookup {
                gateway: None,
                oif: Some(eth),
            },
        );
        host.lookups.insert(
            "198.51.100.3".parse().unwrap(),
            super::super::kernel::RouteLookup {
                gateway: Some("192.0.2.254".parse().unwrap()),
                oif: Some(eth),
            },
        );
        let mut vx = started_in(&c, host).await;
        vx.apply(&[
            peer2("0a:00:00:00:00:02"),
            LeaseEvent::Added(lease("10.5.3.0-24", "198.51.100.3", "0a:00:00:00:00:03")),
        ])
        .await;
        let log = vx.with_host_mut(|h| h.take_log()).await;
        assert!(
            log.contains(&format!(
                "route replace 10.5.2.0/24 via 192.0.2.2 dev #{eth}"
            )),
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("route replace 10.5.3.0/24 via 10.5.3.0")
                    && l.ends_with("onlink")),
            "{log:?}"
        );
        assert!(
            !log.iter().any(|l| l.contains("10.5.2.0 lladdr")),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn reconcile_restores_deleted_entries_and_removes_unexplained_ones_after_the_snapshot() {
        let mut vx = started(CONF, FakeHost::new()).await;
        let idx = vx
            .with_host_mut(|h| h.link_named("flannel.1").unwrap().index)
            .await;
        // A leftover from a lease that vanished while we were down.
        let stale = ObservedFdb {
            ifindex: idx,
            mac: Mac([0x0a, 0, 0, 0, 0, 9]),
            dst: Some("192.0.2.9".parse().unwrap()),
            permanent: true,
        };
        vx.with_host_mut(|h| h.fdbs.push(stale)).await;
        vx.reconcile_now().await;
        assert_eq!(
            vx.with_host_mut(|h| h.take_log()).await,
            Vec::<String>::new(),
            "nothing goes before the snapshot"
        );

        vx.apply(&[peer2("0a:00:00:00:00:02")]).await;
        vx.with_host_mut(|h| {
            h.take_log();
            h.fdbs.retain(|e| e.mac != Mac([0x0a, 0, 0, 0, 0, 2]));
        })
        .await;
        vx.reconcile_now().await;
        let log = vx.with_host_mut(|h| h.take_log()).await;
        assert_eq!(
            log,
            vec![
                format!("fdb replace 0a:00:00:00:00:02 dev #{idx} dst 192.0.2.2 self permanent"),
                format!("fdb del 0a:00:00:00:00:09 dev #{idx} dst 192.0.2.9 self"),
            ]
        );
        vx.reconcile_now().await;
        assert_eq!(
            vx.with_host_mut(|h| h.take_log()).await,
            Vec::<String>::new(),
            "converged"
        );
    }

    #[tokio::test]
    async fn a_deleted_device_is_recreated_with_the_same_mac_and_entries() {
        let mut vx = started(CONF, FakeHost::new()).await;
        vx.apply(&[peer2("0a:00:00:00:00:02")]).await;
        let (old, mac) = vx
            .with_host_mut(|h| {
                let l = h.link_named("flannel.1").unwrap();
                (l.index, l.mac)
            })
            .await;
        vx.with_host_mut(|h| h.remove_link(old)).await;
        vx.reconcile_now().await;
        let (link, routes, fdbs, addrs) = vx
            .with_host_mut(|h| {
                let l = h.link_named("flannel.1").unwrap().clone();
                let a: Vec<IpNet> = h
                    .addrs
                    .iter()
                    .filter(|(i, _)| *i == l.index)
                    .map(|(_, a)| *a)
                    .collect();
                (l, h.routes.clone(), h.fdbs.clone(), a)
            })
            .await;
        assert_ne!(link.index, old);
        assert_eq!(link.mac, mac);
        assert!(link.up);
        assert_eq!(addrs, vec!["10.5.1.0/32".parse::<IpNet>().unwrap()]);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].oif, Some(link.index));
        assert_eq!(fdbs.len(), 1);
    }

    #[tokio::test]
    async fn a_restart_adopts_device_and_entries_without_touching_them() {
        let mut first = started(CONF, FakeHost::new()).await;
        first.apply(&[peer2("0a:00:00:00:00:02")]).await;
        let mut host = FakeHost::new();
        first
            .with_host_mut(|h| {
                host.links = h.links.clone();
                host.addrs = h.addrs.clone();
                host.routes = h.routes.clone();
                host.neighs = h.neighs.clone();
                host.fdbs = h.fdbs.clone();
            })
            .await;
        let mac = host.link_named("flannel.1").unwrap().mac.unwrap();
        drop(first);

        // flanneld starts again on the same kernel.
        let c = ctx(CONF, &mut host);
        let mut second = Vxlan::new(&c, host)
            .unwrap()
            .with_period(Duration::from_secs(3600));
        let attrs = second.prepare().await.unwrap();
        assert_eq!(
            attrs.backend_data.unwrap().get(),
            format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)
        );
        second
            .start(&lease("10.5.1.0-24", "192.0.2.1", "02:00:00:00:00:01"))
            .await
            .unwrap();
        second.apply(&[peer2("0a:00:00:00:00:02")]).await;
        second.reconcile_now().await;
        let log = second.with_host_mut(|h| h.take_log()).await;
        assert!(
            log.iter()
                .all(|l| !l.contains("delete") && !l.contains(" del ") && !l.starts_with("create")),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn an_incompatible_device_is_recreated_with_its_old_mac() {
        let mut host = FakeHost::new();
        let c = ctx(CONF, &mut host);
        let old_mac = Mac([0x0a, 1, 1, 1, 1, 1]);
        host.links.push(LinkState {
            index: 99,
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mac: Some(old_mac),
            mtu: 1450,
            up: true,
            vxlan: Some(VxlanAttrs {
                vni: 1,
                gbp: true,
                link: Some(c.iface.index),
                ..Default::default()
            }),
        });
        let mut vx = Vxlan::new(&c, host)
            .unwrap()
            .with_period(Duration::from_secs(3600));
        let attrs = vx.prepare().await.unwrap();
        let (index, gbp) = vx
            .with_host_mut(|h| {
                let l = h.link_named("flannel.1").unwrap();
                (l.index, l.vxlan.as_ref().unwrap().gbp)
            })
            .await;
        assert_ne!(index, 99);
        assert!(!gbp, "recreated as configured");
        assert_eq!(
            attrs.backend_data.unwrap().get(),
            format!(r#"{{"VNI":1,"VtepMAC":"{old_mac}"}}"#)
        );
    }

    #[tokio::test]
    async fn dual_stack_programs_both_devices() {
        let conf = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#;
        let mut host = FakeHost::new();
        let c = ctx(conf, &mut host);
        let mut vx = Vxlan::new(&c, host)
            .unwrap()
            .with_period(Duration::from_secs(3600));
        let attrs = vx.prepare().await.unwrap();
        assert!(attrs.backend_v6_data.is_some());
        let mut own = lease(
            "10.5.1.0-24&fd00:5:1::-64",
            "192.0.2.1",
            "02:00:00:00:00:01",
        );
        own.attrs.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        vx.start(&own).await.unwrap();
        let v6idx = vx
            .with_host_mut(|h| h.link_named("flannel-v6.1").unwrap().index)
            .await;
        let has128 = vx
            .with_host_mut(|h| {
                h.addrs
                    .contains(&(v6idx, "fd00:5:1::/128".parse().unwrap()))
            })
            .await;
        assert!(has128);
        let attrs = LeaseAttrs::from_json(
            r#"{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:06:02"}}"#,
        )
        .unwrap();
        let peer = Lease {
            key: SubnetKey::parse("10.5.2.0-24&fd00:5:2::-64").unwrap(),
            attrs,
            etcd_lease: 1,
            mod_revision: 1,
        };
        vx.with_host_mut(|h| h.take_log()).await;
        vx.apply(&[LeaseEvent::Added(peer)]).await;
        let log = vx.with_host_mut(|h| h.take_log()).await;
        assert!(
            log.contains(&format!(
                "neigh replace fd00:5:2:: lladdr 0a:00:00:00:06:02 dev #{v6idx} nud permanent"
            )),
            "{log:?}"
        );
        assert!(
            log.contains(&format!(
                "fdb replace 0a:00:00:00:06:02 dev #{v6idx} dst 2001:db8::2 self permanent"
            )),
            "{log:?}"
        );
        assert!(
            log.contains(&format!(
                "route replace fd00:5:2::/64 via fd00:5:2:: dev #{v6idx} onlink"
            )),
            "{log:?}"
        );
        assert_eq!(log.len(), 6, "{log:?}");
    }
}
