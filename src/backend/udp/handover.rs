//! The udp datapath's side of the hand-over: what the old image hands over on `SIGUSR2`,
//! and how the new image takes it over (the daemon's `handover` module carries it across the
//! `execve`).
//!
//! The old image ([`Udp::hand_over`]) stops its workers without losing a packet (each carries
//! out what it had read; what it had not stays queued in the TUN queues and socket buffers,
//! which are grown for the gap) and writes a versioned [`HandOverState`]: the config and
//! interface it ran with, our subnet, the peer table, the TUN device and each worker's fd
//! numbers. The new image ([`TakenOver::start`]) runs the datapath on the inherited fds with
//! that peer table *before* it contacts etcd, so packets wait only for `execve` and process
//! start; once the config and interface are known, [`TakenOver::claim`] keeps the datapath if
//! they are what it was built for.
//!
//! Every fd is checked before it is trusted: a TUN queue must be attached to the named
//! device, a socket must be a bound IPv4 datagram socket on our address and port, and their
//! number must match the workers configured. Any mismatch, or a different backend config,
//! closes them all and the daemon starts clean: a fresh device, the short outage of a plain
//! restart, the same lease.
//!
//! The state is JSON; its first field is a format version, and a reader refuses any other.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use anyhow::{bail, ensure, Context};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Udp, UdpOptions};
use crate::backend::{BackendContext, HandOver, HandedOver};
use crate::config::NetworkConfig;
use crate::datapath::select_io;
use crate::datapath::worker::{QueueFds, WorkerConfig};
use crate::exec::iface::ExternalInterface;
use crate::exec::tun::TunLink;
use crate::subnet::lease::Lease;
use crate::sys::sockopt::{grow_recv_buffer, take_inherited_udp};
use crate::sys::tun::TunQueue;

/// The version of [`HandOverState`]'s layout; a reader refuses any other and starts clean.
pub const STATE_FORMAT: u32 = 1;
/// Each handed-over socket's receive buffer while no worker reads: at 1 Gbit/s of
/// 1400-byte datagrams (truesize about 2.3 KB each) 64 MiB lasts well over 100 ms, far more
/// than an exec takes (10 to 50 ms measured). Forced past `rmem_max` (we run with
/// `CAP_NET_ADMIN`). The TUN side needs nothing more: each queue already holds
/// `exec::tun::TUN_TX_QUEUE_LEN` (4096) packets, 40 ms of 100k packets/s per queue, and it
/// carries only what local pods send; growing it here would mean a netlink round trip in
/// the middle of the gap.
const GAP_RECV_BUFFER: usize = 64 << 20;

/// What must be equal for the new image to keep the datapath: the network and the backend
/// section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    network: Ipv4Net,
    subnet_len: u8,
    backend: Map<String, Value>,
}

impl Fingerprint {
    fn of(config: &NetworkConfig) -> Option<Fingerprint> {
        Some(Fingerprint {
            network: config.network_v4()?,
            subnet_len: config.ipv4?.subnet_len,
            backend: config.backend.raw.clone(),
        })
    }

    /// A config with exactly this network and backend section.
    fn config(&self) -> anyhow::Result<NetworkConfig> {
        let json = serde_json::json!({
            "Network": self.network.to_string(),
            "SubnetLen": self.subnet_len,
            "Backend": self.backend,
        });
        Ok(NetworkConfig::parse(&json.to_string())?)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IfaceState {
    name: String,
    index: u32,
    mtu: u32,
    iface_addr: Ipv4Addr,
    public_ip: Ipv4Addr,
}

impl IfaceState {
    fn of(i: &ExternalInterface) -> IfaceState {
        IfaceState {
            name: i.name.clone(),
            index: i.index,
            mtu: i.mtu,
            iface_addr: i.iface_addr,
            public_ip: i.public_ip,
        }
    }

    fn interface(&self) -> ExternalInterface {
        ExternalInterface {
            name: self.name.clone(),
            index: self.index,
            mtu: self.mtu,
            iface_addr: self.iface_addr,
            iface_addr_v6: None,
            public_ip: self.public_ip,
            public_ipv6: None,
        }
    }

    /// Why the interface `now` is not this one, if it is not.
    fn changed(&self, now: &ExternalInterface) -> Option<String> {
        let was = (
            self.name.as_str(),
            self.iface_addr,
            self.public_ip,
            self.mtu,
        );
        (was != (now.name.as_str(), now.iface_addr, now.public_ip, now.mtu)).then(|| {
            format!(
                "the external interface changed (was {} {} public {} mtu {}, is {} {} public {} mtu {})",
                self.name, self.iface_addr, self.public_ip, self.mtu,
                now.name, now.iface_addr, now.public_ip, now.mtu
            )
        })
    }
}

/// The TUN device as configured (the serialised [`TunLink`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TunState {
    name: String,
    index: u32,
    mtu: u32,
    addr: Ipv4Addr,
    network: Ipv4Net,
}

impl From<&TunLink> for TunState {
    fn from(l: &TunLink) -> TunState {
        TunState {
            name: l.name.clone(),
            index: l.index,
            mtu: l.mtu,
            addr: l.addr,
            network: l.network,
        }
    }
}

impl From<&TunState> for TunLink {
    fn from(t: &TunState) -> TunLink {
        TunLink {
            index: t.index,
            name: t.name.clone(),
            mtu: t.mtu,
            addr: t.addr,
            network: t.network,
        }
    }
}

/// One worker's fds, by number in the new image (the same as in the old).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct WorkerFdNumbers {
    tun: RawFd,
    rx: RawFd,
    tx: Option<RawFd>,
}

/// Everything the new image needs to run the datapath before it talks to etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HandOverState {
    /// [`STATE_FORMAT`] of the writer. First, so any reader finds it.
    format: u32,
    /// The version of the writer's binary (logged by the reader).
    binary: String,
    /// `CLOCK_MONOTONIC` when the workers stopped, in µs (the reader logs the gap).
    stopped_at_us: Option<i128>,
    fingerprint: Fingerprint,
    iface: IfaceState,
    subnet: Ipv4Net,
    subnet_v6: Option<Ipv6Net>,
    peers: Vec<(Ipv4Net, Ipv4Addr)>,
    tun: TunState,
    workers: Vec<WorkerFdNumbers>,
}

/// Reads and checks the state; `Err` says why it cannot be used.
fn parse_state(text: &[u8]) -> anyhow::Result<HandOverState> {
    // The format first, on its own: a later format may change everything else.
    let head: Value = serde_json::from_slice(text).context("the state is not JSON")?;
    let format = head.get("format").and_then(Value::as_u64);
    ensure!(
        format == Some(u64::from(STATE_FORMAT)),
        "state format {} (written by {}), this binary reads format {STATE_FORMAT}",
        format.map_or_else(|| "missing".to_owned(), |f| f.to_string()),
        head.get("binary")
            .and_then(Value::as_str)
            .unwrap_or("an unknown version")
    );
    let state: HandOverState = serde_json::from_value(head).context("reading the state")?;
    ensure!(!state.workers.is_empty(), "no worker fds in the state");
    Ok(state)
}

fn monotonic_us() -> Option<i128> {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(sd_notify::NotifyState::MonotonicUsec(us)) => Some(us),
        _ => None,
    }
}

/// A stopped datapath whose fds are still open, between [`Udp::hand_over`] and either the
/// `execve` or [`Udp::take_back`] when that failed.
#[derive(Debug)]
pub(super) struct HandingOver {
    /// Every worker's fds, in worker order.
    queues: Vec<QueueFds>,
    link: TunLink,
    cfg: WorkerConfig,
}

impl Udp {
    /// Stops the workers without closing anything (see `Workers::stop_keeping_fds`) and returns the
    /// state and fds the next image takes over; `version` is this binary's. Every packet the
    /// workers had read is carried out, and what arrives from now on waits in the kernel's
    /// queues. The TUN device stays persistent.
    ///
    /// # Errors
    /// The datapath is not running, or a worker had failed (the others run again then).
    pub(super) fn hand_over_datapath(
        &mut self,
        own: &Lease,
        version: &str,
    ) -> anyhow::Result<HandOver<'_>> {
        ensure!(self.handing_over.is_none(), "a hand-over is under way");
        let mut running = self
            .running
            .take()
            .context("the udp datapath is not running")?;
        let queues: Vec<QueueFds> = running
            .workers
            .stop_keeping_fds()
            .into_iter()
            .flatten()
            .collect();
        let stopped_at_us = monotonic_us();
        // Kept from here on, so that whatever fails below, `take_back` finds the fds.
        let paused = self.handing_over.insert(HandingOver {
            queues,
            link: running.link,
            cfg: running.cfg,
        });
        if paused.queues.len() != self.settings.workers {
            bail!(
                "only {} of {} udp workers returned their fds (a worker had failed)",
                paused.queues.len(),
                self.settings.workers
            );
        }
        for q in &paused.queues {
            if let Err(e) = grow_recv_buffer(&q.rx, GAP_RECV_BUFFER) {
                tracing::warn!("growing a socket's receive buffer for the hand-over: {e}");
            }
        }
        let state = HandOverState {
            format: STATE_FORMAT,
            binary: version.to_owned(),
            stopped_at_us,
            fingerprint: Fingerprint::of(&self.ctx.config)
                .context("the config has no IPv4 network")?,
            iface: IfaceState::of(&self.ctx.iface),
            subnet: own.subnet().trunc(),
            subnet_v6: own.key.ipv6,
            peers: self.set.peers().collect(),
            tun: TunState::from(&paused.link),
            workers: paused
                .queues
                .iter()
                .map(|q| WorkerFdNumbers {
                    tun: q.tun.raw(),
                    rx: q.rx.as_raw_fd(),
                    tx: q.tx.as_ref().map(AsRawFd::as_raw_fd),
                })
                .collect(),
        };
        let state = serde_json::to_vec(&state)?;
        let mut fds = Vec::new();
        for q in &paused.queues {
            fds.push(q.tun.as_fd());
            fds.push(q.rx.as_fd());
            fds.extend(q.tx.as_ref().map(AsFd::as_fd));
        }
        Ok(HandOver { state, fds })
    }

    /// The hand-over fell through (it failed, or the `execve` did): the workers run again on
    /// the same fds. Nothing to do when no hand-over is under way.
    ///
    /// # Errors
    /// The workers cannot be spawned (their fds are closed then).
    pub(super) fn take_back_datapath(&mut self) -> anyhow::Result<()> {
        let Some(p) = self.handing_over.take() else {
            return Ok(());
        };
        ensure!(self.running.is_none(), "udp backend already running");
        self.run_workers(p.queues, p.cfg, p.link)
            .context("restarting the udp workers")
    }

    /// Runs the datapath on queues and sockets another image of this daemon opened, routing
    /// `peers` at once: no device is created, no socket bound, nothing configured.
    /// [`Backend::start`](crate::backend::Backend::start) later finds it running and only
    /// re-ensures the device's configuration.
    ///
    /// # Errors
    /// The fds do not fit this backend's settings (queue count, virtio-net headers, bound
    /// address), or the workers cannot be spawned; the fds are closed then.
    fn run_taken_over(
        &mut self,
        own: Ipv4Net,
        peers: &[(Ipv4Net, Ipv4Addr)],
        link: TunLink,
        queues: Vec<QueueFds>,
    ) -> anyhow::Result<()> {
        ensure!(self.running.is_none(), "udp backend already started");
        ensure!(
            queues.len() == self.settings.workers,
            "{} queues handed over, {} workers configured",
            queues.len(),
            self.settings.workers
        );
        let offload = self.check_inherited(&queues)?;
        self.set.set_own(own);
        for &(subnet, ip) in peers {
            self.set.insert_peer(subnet, ip);
        }
        self.publish();
        let io = select_io(self.io_choice())?;
        let cfg = self.worker_config(io, offload);
        tracing::info!(
            device = %link.name,
            address = %link.addr,
            workers = self.settings.workers,
            routes = self.set.len(),
            %io,
            offload,
            "udp backend running on the handed-over queues and sockets"
        );
        self.run_workers(queues, cfg, link)
    }

    /// Checks the inherited queues and sockets against this backend's settings and makes
    /// them blocking (the workers' mode); returns whether the queues carry virtio-net headers.
    fn check_inherited(&self, queues: &[QueueFds]) -> anyhow::Result<bool> {
        let local = SocketAddrV4::new(self.settings.bind, self.settings.port);
        let mut vnet = None;
        for (i, q) in queues.iter().enumerate() {
            let bound = q.rx.local_addr().context("reading a socket's address")?;
            ensure!(
                bound == SocketAddr::V4(local),
                "worker {i}'s socket is bound to {bound}, not {local}"
            );
            let has = q.tun.vnet_hdr().context("reading the TUN queue's flags")?;
            ensure!(
                *vnet.get_or_insert(has) == has,
                "TUN queues differ in virtio-net headers"
            );
            for fd in [Some(&q.rx), q.tx.as_ref()].into_iter().flatten() {
                fd.set_nonblocking(false)?;
            }
            q.tun.set_nonblocking(false)?;
        }
        let offload = vnet.unwrap_or(false);
        ensure!(
            offload == self.tun_offload(),
            "the TUN queues have virtio-net headers {}, this daemon wants them {}",
            if offload { "on" } else { "off" },
            if offload { "off" } else { "on" }
        );
        Ok(offload)
    }
}

/// A datapath taken over from the previous image, running, not yet matched against the
/// config from etcd.
#[derive(Debug)]
pub struct TakenOver {
    udp: Udp,
    state: HandOverState,
}

impl TakenOver {
    /// Takes over what the previous image handed over and runs the datapath at once, with
    /// the host options `opts`; `version` is this binary's (logged beside the writer's).
    ///
    /// # Errors
    /// The state cannot be read, or an fd is missing, of the wrong kind, or does not fit;
    /// every inherited fd is closed then.
    pub fn start(handed: HandedOver, opts: UdpOptions, version: &str) -> anyhow::Result<TakenOver> {
        let HandedOver { state, mut fds } = handed;
        let state = parse_state(&state)?;
        let mut take = |n: RawFd| -> anyhow::Result<OwnedFd> {
            let at = fds.iter().position(|(k, _)| *k == n).with_context(|| {
                format!("the state names fd {n}, which was not passed or is closed")
            })?;
            Ok(fds.swap_remove(at).1)
        };
        let mut queues = Vec::with_capacity(state.workers.len());
        for w in &state.workers {
            let tun = TunQueue::take_inherited(take(w.tun)?, &state.tun.name)?;
            let (rx, _) = take_inherited_udp(take(w.rx)?)?;
            let tx = match w.tx {
                Some(n) => Some(take_inherited_udp(take(n)?)?.0),
                None => None,
            };
            queues.push(QueueFds { tun, rx, tx });
        }
        ensure!(
            fds.is_empty(),
            "fds {:?} were passed but the state does not say what they are",
            fds.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        let ctx = BackendContext {
            config: state.fingerprint.config()?,
            iface: state.iface.interface(),
        };
        let mut udp = Udp::new(&ctx, opts)?;
        udp.run_taken_over(state.subnet, &state.peers, (&state.tun).into(), queues)?;
        let gap = state
            .stopped_at_us
            .zip(monotonic_us())
            .map(|(then, now)| format!("{:.1} ms", (now - then) as f64 / 1000.0));
        tracing::info!(
            from = %state.binary,
            to = %version,
            subnet = %state.subnet,
            peers = state.peers.len(),
            datapath_gap = gap.as_deref().unwrap_or("unknown"),
            "took over the udp datapath from the previous image"
        );
        Ok(TakenOver { udp, state })
    }

    /// Once the config and interface are known: the datapath if they are what it was built
    /// for, else `None` (logged; dropping it closes the inherited fds and the device, and the
    /// caller starts clean).
    pub fn claim(self, ctx: &BackendContext) -> Option<Udp> {
        let s = &self.state;
        let now = Fingerprint::of(&ctx.config);
        let why = if now.as_ref() != Some(&s.fingerprint) {
            Some(format!(
                "the network config changed (was {}, is {})",
                serde_json::to_string(&s.fingerprint).unwrap_or_default(),
                now.and_then(|f| serde_json::to_string(&f).ok())
                    .unwrap_or_else(|| "not an IPv4 network".into())
            ))
        } else {
            s.iface.changed(&ctx.iface)
        };
        match why {
            None => Some(self.udp),
            Some(why) => {
                tracing::warn!(
                    "not keeping the handed-over udp datapath: {why}; restarting it clean"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> HandOverState {
        HandOverState {
            format: STATE_FORMAT,
            binary: "0.1.0 (build dev)".into(),
            stopped_at_us: Some(1),
            fingerprint: Fingerprint {
                network: "10.5.0.0/16".parse().unwrap(),
                subnet_len: 24,
                backend: serde_json::from_str(r#"{"Type":"udp"}"#).unwrap(),
            },
            iface: IfaceState {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                iface_addr: Ipv4Addr::new(192, 0, 2, 1),
                public_ip: Ipv4Addr::new(192, 0, 2, 1),
            },
            subnet: "10.5.3.0/24".parse().unwrap(),
            subnet_v6: None,
            peers: vec![("10.5.4.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 2))],
            tun: TunState {
                name: "flannel0".into(),
                index: 5,
                mtu: 1472,
                addr: Ipv4Addr::new(10, 5, 3, 0),
                network: "10.5.0.0/16".parse().unwrap(),
            },
            workers: vec![WorkerFdNumbers {
                tun: 10,
                rx: 11,
                tx: None,
            }],
        }
    }

    #[test]
    fn the_state_round_trips_and_other_formats_are_refused() {
        let s = state();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(parse_state(text.as_bytes()).unwrap(), s);

        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["format"] = Value::from(2);
        let e = parse_state(v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("state format 2") && e.contains("reads format 1"),
            "{e}"
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"format":1}"#,
            "null",
            r#"{"format":"1"}"#,
        ] {
            assert!(parse_state(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        let mut none = s.clone();
        none.workers.clear();
        assert!(parse_state(&serde_json::to_vec(&none).unwrap()).is_err());
    }

    #[test]
    fn the_fingerprint_rebuilds_its_config_and_notices_changes() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":8285}}"#,
        )
        .unwrap();
        let f = Fingerprint::of(&cfg).unwrap();
        assert_eq!(Fingerprint::of(&f.config().unwrap()), Some(f.clone()));
        let other = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":8285,"Workers":1}}"#,
        )
        .unwrap();
        assert_ne!(Fingerprint::of(&other), Some(f));
    }

    #[test]
    fn the_interface_state_round_trips_and_notices_changes() {
        let s = state().iface;
        let i = s.interface();
        assert_eq!(IfaceState::of(&i), s);
        assert_eq!(s.changed(&i), None);
        let moved = ExternalInterface { mtu: 9000, ..i };
        assert!(s.changed(&moved).unwrap().contains("mtu 1500"));
    }
}
