//! The `udp` backend: a userspace datapath that carries each pod packet, unchanged, as the
//! payload of one UDP datagram to the peer that owns the destination subnet.
//!
//! Wire-compatible with upstream's udp backend (`pkg/backend/udp`): same port (option `Port`,
//! default 8285), same TUN device `flannel0` (address = lease network /32, MTU = external MTU −
//! 28, route for the whole network), same bare-IPv4 payload, same TTL handling and ICMP
//! network-unreachable. A node running upstream flanneld and one running this share a cluster.
//!
//! # Options (`Backend` object of the network config, matched case-insensitively)
//! - `Port` (upstream): UDP port, bound on the external interface address. Default 8285.
//! - `StrictSource` (ours; upstream ignores unknown keys): drop inbound packets whose inner
//!   source lies outside the sending peer's subnet. Default true; overrides [`UdpOptions`].
//! - `Workers` (ours): worker threads, used when [`UdpOptions::workers`] is `None`.
//!
//! # Kernel state
//! - The TUN device `flannel0` is owned by `exec::tun` (creation, persistence across a
//!   `SIGKILL`, address, route, removal on a clean stop); this backend says when: created
//!   and configured at [`Backend::start`], its /32 moved when a lost lease comes back with a
//!   different subnet (with the workers running), released at [`Udp::stop`].
//! - Across a hand-over (`SIGUSR2`, [`handover`]) the queues and sockets pass to the next
//!   image, so the device never loses its readers.
//! - Owned here: one UDP socket per worker on `<iface address>:<Port>` (`SO_REUSEPORT` group), plus,
//!   with [`UdpOptions::spread_source_ports`], one ephemeral-port send socket per extra worker.
//!
//! # Limitations
//! IPv4 only, as upstream.

pub mod handover;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde_json::Value;

use super::{Backend, BackendAttrs, BackendContext, BackendCounters, HandOver};
use crate::compat::{UDP_DEFAULT_PORT, UDP_OVERHEAD, UDP_TUN_NAME};
use crate::datapath::counters::{CountersHub, CountersSnapshot};
use crate::datapath::route::{RouteSet, RouteTable, Routes};
use crate::datapath::worker::{QueueFds, WorkerConfig, Workers};
use crate::datapath::{select_io, IoKind};
use crate::exec::netlink::Netlink;
use crate::exec::tun::{self, TunLink, TunSpec};
use crate::subnet::lease::{Lease, LeaseEvent};
use crate::sys::poll::BATCH as MMSG_BATCH;
use crate::sys::sockopt;
use crate::sys::uring::UringConfig;

pub use crate::datapath::IoChoice;

/// Most workers we start, whatever is asked (the kernel allows 256 TUN queues).
pub const MAX_WORKERS: usize = 64;

/// Host-level knobs (flags), as opposed to the cluster-wide network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOptions {
    /// Worker threads (= TUN queues). `None`: the `Workers` backend option, else one per CPU.
    pub workers: Option<usize>,
    /// Which I/O layer to use.
    pub io: IoChoice,
    /// Drop inbound packets whose inner source is outside the sender's subnet. The backend
    /// option `StrictSource`, when present, wins.
    pub strict_source: bool,
    /// Workers after the first send from their own ephemeral port, so a peer's kernel spreads
    /// our traffic over its workers (one 4-tuple lands on one socket). Upstream does not check
    /// source ports. Worker 0 always sends from `Port`.
    pub spread_source_ports: bool,
    /// Most datagrams one `recvmmsg`/`sendmsg` call moves, on the mmsg path. Set by
    /// `--udp-batch` ([`UdpOptions::with_batch_flag`]).
    pub mmsg_batch: usize,
    /// Buffers per direction in each worker's io_uring, on the io_uring path. Set by
    /// `--udp-batch` too.
    pub ring_depth: usize,
    /// Upstream's design, one packet per read and per send (`--udp-batch=1`, kept as a
    /// benchmark baseline): forces the mmsg path and turns the TUN offloads off, whatever
    /// [`UdpOptions::io`] and [`UdpOptions::offload`] say.
    pub one_packet_per_syscall: bool,
    /// Send consecutive datagrams to one peer with one UDP GSO (`UDP_SEGMENT`) send; the wire
    /// still carries one inner packet per datagram. On by default. Read by the mmsg path (where
    /// the kernel refuses GSO, quinn-udp falls back by itself); the io_uring path sends GSO
    /// runs whenever [`UdpOptions::offload`] is on.
    pub gso: bool,
    /// TUN offloads (TCP super-packets cut into GSO sends, UDP GRO coalesced back). On by
    /// default; off with [`UdpOptions::one_packet_per_syscall`].
    pub offload: bool,
    /// io_uring path: multishot reads and receives over provided-buffer rings, where the
    /// kernel has them.
    pub multishot: bool,
    /// io_uring path: how long a worker polls for work before sleeping (zero: never).
    pub busy_poll: Duration,
    /// Name of the TUN device.
    pub tun_name: String,
    /// Count traffic per peer too (`--metrics-per-peer`; a lock per batch when on).
    pub per_peer_stats: bool,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            workers: None,
            io: IoChoice::Auto,
            strict_source: true,
            spread_source_ports: true,
            mmsg_batch: MMSG_BATCH,
            ring_depth: UringConfig::DEFAULT_DEPTH,
            one_packet_per_syscall: false,
            gso: true,
            offload: true,
            multishot: true,
            busy_poll: Duration::ZERO,
            tun_name: UDP_TUN_NAME.to_owned(),
            per_peer_stats: false,
        }
    }
}

impl UdpOptions {
    /// The three settings `--udp-batch` stands for: `Some(n)` sets [`UdpOptions::mmsg_batch`]
    /// and [`UdpOptions::ring_depth`] to `n`, and `Some(1)` also means
    /// [`UdpOptions::one_packet_per_syscall`]; `None` keeps them as they are.
    #[must_use]
    pub fn with_batch_flag(self, batch: Option<usize>) -> Self {
        match batch {
            None => self,
            Some(n) => UdpOptions {
                mmsg_batch: n,
                ring_depth: n,
                one_packet_per_syscall: n == 1,
                ..self
            },
        }
    }
}

/// A `Backend` section the udp backend cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdpConfigError {
    #[error("udp backend option {option}: {reason}")]
    Option {
        option: &'static str,
        reason: String,
    },
    #[error("the udp backend needs an IPv4 Network (EnableIPv4)")]
    NoIpv4Network,
}

/// The settings resolved from config, options and interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    port: u16,
    bind: Ipv4Addr,
    mtu: u32,
    network: Ipv4Net,
    subnet_len: u8,
    strict_source: bool,
    workers: usize,
}

/// The udp backend. Build with [`Udp::new`]; the daemon then calls `prepare`, `start`,
/// `apply`. [`Udp::stop`] (or dropping it) stops the workers, which removes `flannel0`.
#[derive(Debug)]
pub struct Udp {
    /// The config and interface it was built for (a hand-over records them).
    ctx: BackendContext,
    settings: Settings,
    opts: UdpOptions,
    set: RouteSet,
    routes: Routes,
    running: Option<Running>,
    /// The daemon's netlink handle, for the device set-up ([`Udp::with_netlink`]).
    netlink: Option<Netlink>,
    /// Where the workers' counters are read (`/metrics`, through [`Backend::counters`]).
    hub: CountersHub,
    /// The stopped datapath while a hand-over is under way.
    handing_over: Option<handover::HandingOver>,
}

#[derive(Debug)]
struct Running {
    workers: Workers,
    /// The TUN device as configured (its address follows our subnet).
    link: TunLink,
    cfg: WorkerConfig,
}

impl Udp {
    /// Reads the backend options and prepares the route table; creates nothing yet.
    ///
    /// # Errors
    /// An invalid `Port`, `StrictSource` or `Workers` option, or a config without IPv4.
    pub fn new(ctx: &BackendContext, opts: UdpOptions) -> anyhow::Result<Self> {
        let settings = settings(ctx, &opts)?;
        let hub = CountersHub::new(opts.per_peer_stats);
        let set = RouteSet::new(settings.network, settings.subnet_len, settings.port);
        let routes = Routes::new(RouteTable::empty(settings.network, settings.subnet_len));
        Ok(Udp {
            ctx: ctx.clone(),
            settings,
            opts,
            set,
            routes,
            running: None,
            netlink: None,
            hub,
            handing_over: None,
        })
    }

    /// The netlink handle `start` configures the TUN device through (the daemon's shared one).
    #[must_use]
    pub fn with_netlink(mut self, netlink: Netlink) -> Self {
        self.netlink = Some(netlink);
        self
    }

    /// The UDP port peers are reached on (and we listen on).
    pub fn port(&self) -> u16 {
        self.settings.port
    }

    /// Worker threads that `start` runs.
    pub fn workers(&self) -> usize {
        self.settings.workers
    }

    /// The I/O layer in use, once started.
    pub fn io_kind(&self) -> Option<IoKind> {
        self.running.as_ref().map(|r| r.cfg.io)
    }

    /// Counters summed over all workers (zero before `start`).
    pub fn stats(&self) -> CountersSnapshot {
        self.running
            .as_ref()
            .map(|r| r.workers.stats())
            .unwrap_or_default()
    }

    /// Workers still running: less than [`Udp::workers`] after a fatal I/O error.
    pub fn running_workers(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.workers.running())
    }

    /// The route table the workers currently use.
    pub fn route_table(&self) -> Arc<RouteTable> {
        arc_swap::Guard::into_inner(self.routes.load())
    }

    /// Stops and joins every worker; the TUN device goes away with their fds (its
    /// persistence is cleared first). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let fds = running.workers.stop_keeping_fds();
            tun::release(
                fds.iter().flatten().next().map(|q| &q.tun),
                &running.link.name,
            );
            drop(fds);
            tracing::info!("udp backend stopped");
        }
    }

    /// The peers the datapath routes to: subnet and public address.
    pub fn peers(&self) -> Vec<(Ipv4Net, Ipv4Addr)> {
        self.set.peers().collect()
    }

    /// Spawns the workers on `queues`; the datapath is running from then on.
    fn run_workers(
        &mut self,
        queues: Vec<QueueFds>,
        cfg: WorkerConfig,
        link: TunLink,
    ) -> anyhow::Result<()> {
        let workers =
            Workers::spawn(queues, cfg, &self.routes, &self.hub).context("spawning udp workers")?;
        self.running = Some(Running { workers, link, cfg });
        Ok(())
    }

    /// Whether the TUN queues carry virtio-net headers (offloads): not with one packet per
    /// syscall, upstream's design.
    fn tun_offload(&self) -> bool {
        self.opts.offload && !self.opts.one_packet_per_syscall
    }

    /// One packet per syscall exists only on the mmsg path (io_uring batches by design).
    fn io_choice(&self) -> IoChoice {
        if self.opts.one_packet_per_syscall {
            IoChoice::Mmsg
        } else {
            self.opts.io
        }
    }

    fn worker_config(&self, io: IoKind, offload: bool) -> WorkerConfig {
        WorkerConfig {
            io,
            uring: UringConfig {
                multishot: self.opts.multishot,
                busy_poll: self.opts.busy_poll,
                ..UringConfig::with_depth(self.opts.ring_depth)
            },
            mmsg_batch: self.opts.mmsg_batch,
            gso: self.opts.gso,
            offload,
            strict_source: self.settings.strict_source,
            // Upstream sends ICMP from the TUN address, but that address is local to this
            // host, so the kernel drops the reply as a martian before any pod sees it. The
            // network address (the first subnet, never leased) is not local anywhere and
            // routes back through flannel0, so pods really get "network unreachable".
            icmp_source: self.settings.network.network(),
        }
    }

    fn publish(&self) {
        let table = self.set.table();
        tracing::debug!(routes = table.len(), "udp backend: publishing route table");
        self.routes.publish(table);
    }

    /// One reuseport socket per worker on `<iface address>:<Port>`, plus the send sockets.
    fn bind_sockets(&self, tun: Vec<crate::sys::tun::TunQueue>) -> anyhow::Result<Vec<QueueFds>> {
        let local = SocketAddrV4::new(self.settings.bind, self.settings.port);
        tun.into_iter()
            .enumerate()
            .map(|(i, tun)| {
                let rx = sockopt::bind_udp(local, true)
                    .with_context(|| format!("binding UDP socket {local} (worker {i})"))?;
                let tx = if i > 0 && self.opts.spread_source_ports {
                    let any = SocketAddrV4::new(self.settings.bind, 0);
                    Some(sockopt::bind_udp(any, false).with_context(|| {
                        format!("binding UDP send socket on {any} (worker {i})")
                    })?)
                } else {
                    None
                };
                Ok(QueueFds { tun, rx, tx })
            })
            .collect()
    }
}

impl Drop for Udp {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Backend for Udp {
    fn mtu(&self) -> u32 {
        self.settings.mtu
    }

    fn counters(&self) -> BackendCounters {
        BackendCounters {
            reconcile: None,
            datapath: Some(self.hub.clone()),
        }
    }

    async fn prepare(&mut self) -> anyhow::Result<BackendAttrs> {
        // Upstream's udp backend publishes only PublicIP: no BackendType, no BackendData.
        Ok(BackendAttrs::default())
    }

    async fn start(&mut self, own: &Lease) -> anyhow::Result<()> {
        let netlink = self
            .netlink
            .clone()
            .context("udp backend: no netlink handle to configure the TUN device with")?;
        let own_subnet = own.subnet().trunc();
        if let Some(running) = self.running.as_mut() {
            // Taken over from the previous image: the device is configured already; re-ensure
            // it (each step is idempotent) and follow the lease should it have moved.
            let was = running.link.addr;
            running.link.addr = own_subnet.network();
            let link = running.link.clone();
            self.set.set_own(own_subnet);
            self.publish();
            tun::configure(&netlink, &link).await?;
            if was != link.addr {
                tun::move_address(&netlink, &link, was).await?;
            }
            return Ok(());
        }
        self.set.set_own(own_subnet);
        self.publish();

        let io = select_io(self.io_choice())?;
        let offload = self.tun_offload();
        let spec = TunSpec {
            name: self.opts.tun_name.clone(),
            queues: self.settings.workers,
            offload,
        };
        let queues = tun::create(&spec).await?;
        let first = &queues[0];
        // Whether UDP flows also cross the TUN as super-packets (Linux 6.2+).
        let udp_offload = first.uso();
        let link = TunLink {
            index: first
                .if_index()
                .with_context(|| format!("reading the index of {}", spec.name))?,
            name: first.name().unwrap_or_else(|_| spec.name.clone()),
            mtu: self.settings.mtu,
            addr: own_subnet.network(),
            network: self.settings.network,
        };
        tun::configure(&netlink, &link).await?;
        let fds = self.bind_sockets(queues)?;
        let cfg = self.worker_config(io, offload);
        tracing::info!(
            device = %link.name,
            address = %link.addr,
            network = %link.network,
            mtu = link.mtu,
            port = self.settings.port,
            workers = self.settings.workers,
            %io,
            offload,
            udp_offload,
            strict_source = self.settings.strict_source,
            "udp backend running"
        );
        self.run_workers(fds, cfg, link)
    }

    /// Our subnet changed: the route set's own subnet (never routed, so a packet from a peer
    /// claiming a source in it is refused as spoofed) is the new one from the next table on,
    /// published as any change; then `flannel0` trades the old /32 for the new one. The
    /// workers need nothing else: they send and check sources by the table alone.
    async fn moved(&mut self, old: &Lease, new: &Lease) -> anyhow::Result<()> {
        let subnet = new.subnet().trunc();
        self.set.set_own(subnet);
        self.publish();
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        let netlink = self
            .netlink
            .clone()
            .context("udp backend: no netlink handle to move the TUN address with")?;
        let was = running.link.addr;
        running.link.addr = subnet.network();
        tun::move_address(&netlink, &running.link, was).await?;
        tracing::info!(
            device = %running.link.name,
            old = %old.subnet(),
            new = %subnet,
            "udp backend: moved to our new subnet"
        );
        Ok(())
    }

    async fn apply(&mut self, events: &[LeaseEvent]) {
        for ev in events {
            let (what, l) = match ev {
                LeaseEvent::Added(l) => ("subnet added", l),
                LeaseEvent::Removed(l) => ("subnet removed", l),
            };
            tracing::info!(subnet = %l.key.cidr(), public_ip = %l.attrs.public_ip, "{what}");
        }
        if self.set.apply(events) {
            self.publish();
        }
    }

    fn hands_over(&self) -> bool {
        true
    }

    fn hand_over(&mut self, own: &Lease, version: &str) -> anyhow::Result<HandOver<'_>> {
        self.hand_over_datapath(own, version)
    }

    fn take_back(&mut self) -> anyhow::Result<()> {
        self.take_back_datapath()
    }
}

fn settings(ctx: &BackendContext, opts: &UdpOptions) -> Result<Settings, UdpConfigError> {
    let backend = &ctx.config.backend;
    let port = match backend.option("Port") {
        None | Some(Value::Null) => UDP_DEFAULT_PORT,
        Some(v) => match v.as_u64() {
            Some(0) => UDP_DEFAULT_PORT, // Go's zero value means "default"
            Some(p) => u16::try_from(p).map_err(|_| UdpConfigError::Option {
                option: "Port",
                reason: format!("{p} is not a UDP port"),
            })?,
            None => {
                return Err(UdpConfigError::Option {
                    option: "Port",
                    reason: format!("must be an integer, not {v}"),
                })
            }
        },
    };
    let strict_source = match backend.option("StrictSource") {
        None | Some(Value::Null) => opts.strict_source,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(UdpConfigError::Option {
                option: "StrictSource",
                reason: format!("must be true or false, not {v}"),
            })
        }
    };
    let configured_workers = match backend.option("Workers") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(MAX_WORKERS)),
            _ => {
                return Err(UdpConfigError::Option {
                    option: "Workers",
                    reason: format!("must be a positive integer, not {v}"),
                })
            }
        },
    };
    let workers = opts
        .workers
        .or(configured_workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, MAX_WORKERS);
    let network = ctx
        .config
        .network_v4()
        .ok_or(UdpConfigError::NoIpv4Network)?;
    let subnet_len = ctx.config.ipv4.map_or(24, |r| r.subnet_len);
    Ok(Settings {
        port,
        bind: ctx.iface.iface_addr,
        mtu: ctx.iface.mtu.saturating_sub(UDP_OVERHEAD),
        network,
        subnet_len,
        strict_source,
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ExternalInterface;
    use crate::config::NetworkConfig;
    use crate::subnet::lease::{LeaseAttrs, SubnetKey};

    fn ctx(config: &str) -> BackendContext {
        BackendContext {
            config: NetworkConfig::parse(config).unwrap(),
            iface: ExternalInterface {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                iface_addr: Ipv4Addr::new(192, 0, 2, 1),
                iface_addr_v6: None,
                public_ip: Ipv4Addr::new(198, 51, 100, 1),
                public_ipv6: None,
            },
        }
    }

    fn udp(config: &str) -> Udp {
        Udp::new(&ctx(config), UdpOptions::default()).unwrap()
    }

    fn lease(subnet: &str, public_ip: [u8; 4]) -> Lease {
        Lease {
            key: SubnetKey {
                ipv4: subnet.parse().unwrap(),
                ipv6: None,
            },
            attrs: LeaseAttrs::with_public_ip(public_ip.into()),
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn defaults_match_upstream() {
        let u = udp(r#"{"Network":"10.5.0.0/16"}"#);
        assert_eq!(u.port(), 8285);
        assert_eq!(u.mtu(), 1472, "external MTU − 28");
        assert_eq!(
            u.settings.bind,
            Ipv4Addr::new(192, 0, 2, 1),
            "bound on the interface address, not the public IP"
        );
        assert!(u.settings.strict_source);
        assert!(u.workers() >= 1);
        assert_eq!(
            block_on(udp(r#"{"Network":"10.5.0.0/16"}"#).prepare()).unwrap(),
            BackendAttrs::default()
        );
    }

    #[test]
    fn options_are_read_case_insensitively() {
        let u = udp(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","port":9000,"strictsource":false,"WORKERS":3}}"#,
        );
        assert_eq!(
            (u.port(), u.settings.strict_source, u.workers()),
            (9000, false, 3)
        );
        let forced = Udp::new(
            &ctx(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Workers":3}}"#),
            UdpOptions {
                workers: Some(2),
                ..UdpOptions::default()
            },
        )
        .unwrap();
        assert_eq!(forced.workers(), 2, "the host flag wins over the config");
        assert_eq!(
            udp(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":0}}"#).port(),
            8285
        );
    }

    #[test]
    fn the_batch_flag_sets_three_settings() {
        let d = UdpOptions::default();
        assert_eq!(d.clone().with_batch_flag(None), d);
        let o = UdpOptions::default().with_batch_flag(Some(32));
        assert_eq!(
            (o.mmsg_batch, o.ring_depth, o.one_packet_per_syscall),
            (32, 32, false)
        );
        let one = Udp::new(
            &ctx(r#"{"Network":"10.5.0.0/16"}"#),
            UdpOptions::default().with_batch_flag(Some(1)),
        )
        .unwrap();
        assert!(one.opts.one_packet_per_syscall);
        assert_eq!(
            one.io_choice(),
            IoChoice::Mmsg,
            "one packet per syscall is mmsg"
        );
        assert!(!one.tun_offload(), "and has no offloads");
    }

    #[test]
    fn bad_options_are_errors() {
        for bad in [
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":70000}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":"8285"}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":-1}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","StrictSource":"yes"}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Workers":0}}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"udp"}}"#,
        ] {
            assert!(
                Udp::new(&ctx(bad), UdpOptions::default()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn apply_publishes_routes_for_other_hosts_only() {
        let mut u = udp(r#"{"Network":"10.5.0.0/16"}"#);
        // As the daemon does after start: our own lease is known.
        u.set.set_own("10.5.1.0/24".parse().unwrap());
        block_on(u.apply(&[
            LeaseEvent::Added(lease("10.5.1.0/24", [198, 51, 100, 1])),
            LeaseEvent::Added(lease("10.5.2.0/24", [198, 51, 100, 2])),
        ]));
        let t = u.route_table();
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.lookup(Ipv4Addr::new(10, 5, 2, 9)),
            Some(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 8285))
        );
        assert_eq!(t.lookup(Ipv4Addr::new(10, 5, 1, 9)), None);

        block_on(u.apply(&[LeaseEvent::Removed(lease("10.5.2.0/24", [198, 51, 100, 2]))]));
        assert!(u.route_table().is_empty());
        assert_eq!(u.stats(), CountersSnapshot::default());
        assert_eq!(u.io_kind(), None);
        u.stop(); // not started: a no-op
    }

    #[test]
    fn a_move_swaps_which_subnet_is_ours_in_the_published_table() {
        let mut u = udp(r#"{"Network":"10.5.0.0/16"}"#);
        u.set.set_own("10.5.1.0/24".parse().unwrap());
        // A stale lease for the subnet we are about to get.
        block_on(u.apply(&[LeaseEvent::Added(lease("10.5.9.0/24", [198, 51, 100, 9]))]));
        assert_eq!(u.route_table().len(), 1);
        let (old, new) = (
            lease("10.5.1.0/24", [192, 0, 2, 1]),
            lease("10.5.9.0/24", [192, 0, 2, 1]),
        );
        // Not started: nothing to move on the device, the table still moves.
        block_on(u.moved(&old, &new)).unwrap();
        assert!(
            u.route_table().is_empty(),
            "our new subnet is never a route"
        );
        // The old subnet's new holder is routed like any peer.
        block_on(u.apply(&[LeaseEvent::Added(lease("10.5.1.0/24", [192, 0, 2, 99]))]));
        let t = u.route_table();
        assert_eq!(
            t.lookup(Ipv4Addr::new(10, 5, 1, 9)),
            Some(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 8285))
        );
        assert_eq!(t.lookup(Ipv4Addr::new(10, 5, 9, 9)), None);
    }
}
