//! Wiring: the start-up order of upstream flanneld, then one loop that keeps
//! the lease, feeds lease events to the backend and stops on a signal.
//!
//! Start-up: flags → etcd → network config → external interface → backend
//! `prepare` → lease → backend `start` → subnet.env → ready (`/readyz`,
//! `READY=1` to systemd) → watch. etcd going away later never stops the
//! daemon: the keeper retries renewals and the watcher re-lists on reconnect.

pub mod handover;
pub mod health;
pub mod metrics;
pub mod readiness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;

use crate::backend::aws_vpc::AwsVpc;
use crate::backend::extension::{self, ExecHooks, Extension};
use crate::backend::host_gw::HostGw;
use crate::backend::udp::handover::TakenOver;
use crate::backend::udp::{Udp, UdpOptions};
use crate::backend::vxlan::Vxlan;
use crate::backend::{alloc::Alloc, Backend, BackendContext, BackendKind};
use crate::cancel::{cancel_pair, CancelToken};
use crate::cli::Cli;
use crate::config::NetworkConfig;
use crate::exec::iface::{self, IfaceRequest};
use crate::exec::masq;
use crate::exec::netlink::Netlink;
use crate::subnet::clock::{Backoff, TokioClock};
use crate::subnet::env::SubnetEnv;
use crate::subnet::keeper::{self, Keeper, OwnAction, Reacquired};
use crate::subnet::lease::{HeldLease, LeaseAttrs, SubnetKey};
use crate::subnet::net::{first_host_v4, first_host_v6};
use crate::subnet::registry::{AcquireRequest, EtcdOptions, Registry, RegistryError};
use crate::subnet::watcher::{watch_leases, WatchMsg};
use metrics::Counters;

/// Runs the daemon until a signal; `Ok` means a clean exit (status 0).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    tracing::info!("CLI flags config: {}", cli.summary());
    // A new image takes over the handed-over datapath first, before anything else.
    let taken_over = take_over(&cli);
    let hand_over_signal = handover::HandOverSignal::new();
    let (stop_src, stop) = cancel_pair();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("received a stop signal; exiting cleanly (the lease stays in etcd)");
        stop_src.cancel();
    });

    let counters = Arc::new(Counters::default());
    if cli.healthz.healthz_port > 0 {
        let addr = SocketAddr::new(cli.healthz.healthz_ip, cli.healthz.healthz_port);
        health::serve(addr, counters.clone(), stop.clone())
            .await
            .with_context(|| format!("cannot listen on --healthz-ip/--healthz-port {addr}"))?;
    }

    // A config file is checked before etcd is even contacted: a typo fails fast.
    let file_config = match &cli.net_config_path {
        Some(path) => Some(read_config_file(path)?),
        None => None,
    };
    let Some(registry) = until_stopped(&stop, connect(&cli, &counters)).await else {
        return Ok(());
    };
    let config = match file_config {
        Some(c) => c,
        None => match until_stopped(&stop, load_config(&cli, &registry)).await {
            Some(c) => c?,
            None => return Ok(()),
        },
    };
    counters.set_backend(config.backend.kind.name());
    if config.ipv4.is_none() {
        bail!("invalid network config: EnableIPv4: IPv6-only networks are not supported by flannel-rs yet");
    }

    let req = IfaceRequest {
        ifaces: cli.iface.clone(),
        regexes: cli.iface_regex.clone(),
        can_reach: cli.iface_can_reach.parse().ok(),
        public_ip: cli.public_ip()?,
        public_ipv6: cli.public_ipv6()?,
        want_ipv6: config.ipv6.is_some(),
    };
    // One rtnetlink socket for the whole control plane: discovery, then the backend.
    let netlink = Netlink::connect().context("opening the netlink socket")?;
    let ext = iface::discover(&netlink, &req)
        .await
        .context("choosing the external interface")?;
    tracing::info!(
        iface = %ext.name, addr = %ext.iface_addr, public_ip = %ext.public_ip, mtu = ext.mtu,
        "using external interface"
    );

    let ctx = BackendContext {
        config: config.clone(),
        iface: ext,
    };
    let daemon = Daemon {
        cli: &cli,
        registry,
        counters,
        stop,
        netlink: netlink.clone(),
        hand_over_signal,
    };
    let taken_over = taken_over.and_then(|t| t.claim(&ctx));
    match config.backend.kind {
        BackendKind::Alloc => daemon.run_backend(Alloc::new(&ctx), &ctx).await,
        BackendKind::Udp => {
            let udp = match taken_over {
                Some(udp) => udp,
                None => Udp::new(&ctx, udp_options(&cli))?,
            };
            daemon.run_backend(udp.with_netlink(netlink), &ctx).await
        }
        BackendKind::Vxlan => daemon.run_backend(Vxlan::new(&ctx, netlink)?, &ctx).await,
        BackendKind::HostGw => daemon.run_backend(HostGw::new(&ctx, netlink)?, &ctx).await,
        BackendKind::AwsVpc => {
            let backend = AwsVpc::new(&ctx, daemon.stop.clone())?;
            daemon.run_backend(backend, &ctx).await
        }
        BackendKind::Extension => {
            // Upstream's extension publishes the interface address, whatever --public-ip says.
            let ctx = extension::context_for_extension(&ctx);
            daemon
                .run_backend(Extension::new(&ctx, ExecHooks)?, &ctx)
                .await
        }
    }
}

/// What the main loop needs besides the backend.
struct Daemon<'a> {
    cli: &'a Cli,
    registry: Registry,
    counters: Arc<Counters>,
    stop: CancelToken,
    netlink: Netlink,
    hand_over_signal: handover::HandOverSignal,
}

impl Daemon<'_> {
    /// `--ip-blackhole-route`: a blackhole route for our subnet (each family we lease),
    /// moved from `old` when the subnet changed. Upstream (main.go, once the backend holds
    /// the lease: `ip.AddBlackholeV4Route`/`AddBlackholeV6Route` in pkg/ip/iface.go) adds
    /// it once, keeps an existing one, and never removes it, not even on a clean stop: we
    /// match that, and on top re-ensure it at every renewal and move it with the subnet.
    /// Failures are logged, never fatal (as upstream logs them).
    async fn blackhole(&self, key: &SubnetKey, old: Option<&SubnetKey>) {
        if !self.cli.ip_blackhole_route {
            return;
        }
        let nets = |k: &SubnetKey| {
            std::iter::once(IpNet::V4(k.ipv4.trunc())).chain(k.ipv6.map(|v6| IpNet::V6(v6.trunc())))
        };
        for net in old.into_iter().flat_map(nets) {
            match self.netlink.delete_blackhole(net).await {
                Ok(()) => tracing::info!(%net, "removed the blackhole route of our old subnet"),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        for net in nets(key) {
            if let Err(e) = self.netlink.add_blackhole(net).await {
                tracing::warn!("{e}");
            }
        }
    }

    async fn run_backend<B: Backend>(
        mut self,
        mut backend: B,
        ctx: &BackendContext,
    ) -> anyhow::Result<()> {
        let acquire = self.lease_request(&mut backend, ctx).await?;
        let acquired = keeper::acquire(&self.registry, &TokioClock, &acquire);
        let Some(held) = until_stopped(&self.stop, acquired).await else {
            return Ok(());
        };
        let held = held.map_err(|e| anyhow!(e).context("acquiring a subnet lease"))?;
        tracing::info!(
            subnet = %held.lease.key.cidr(),
            public_ip = %held.lease.attrs.public_ip,
            "acquired lease"
        );
        let rules = self.go_live(&mut backend, ctx, &held).await?;

        let (own_tx, own_rx) = watch::channel(Some(held.lease.key));
        let (tx, mut rx) = mpsc::channel::<WatchMsg>(64);
        let watcher = tokio::spawn(watch_leases(
            self.registry.clone(),
            TokioClock,
            own_rx,
            tx,
            self.stop.clone(),
        ));

        let margin = Duration::from_secs(u64::from(self.cli.subnet_lease_renew_margin) * 60);
        let mut keeper = Keeper::new(self.registry.clone(), TokioClock, held, acquire, margin)
            .with_counters(self.counters.control.clone());
        loop {
            let lost = tokio::select! {
                _ = self.stop.cancelled() => break,
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.on_watch(msg, &mut backend, &mut keeper).await
                }
                _ = self.hand_over_signal.recv() => {
                    handover::hand_over(&mut backend, &keeper.held().lease);
                    false
                }
                _ = keeper.renewal_due() => {
                    let lost = keeper.renew().await;
                    if !lost {
                        // Re-ensured with every renewal: a deleted route comes back.
                        self.blackhole(&keeper.held().lease.key, None).await;
                    }
                    lost
                }
            };
            if lost {
                let again = self.reacquire(&mut keeper, &mut backend, ctx, rules.as_ref(), &own_tx);
                if !again.await? {
                    break;
                }
            }
        }
        watcher.abort();
        tracing::info!("Exiting cleanly...");
        Ok(())
    }

    /// What to ask etcd for: our addresses, what the backend publishes, the subnet we held
    /// before (from subnet.env).
    async fn lease_request<B: Backend>(
        &self,
        backend: &mut B,
        ctx: &BackendContext,
    ) -> anyhow::Result<AcquireRequest> {
        let battrs = backend.prepare().await.context("preparing the backend")?;
        let attrs = LeaseAttrs {
            public_ip: ctx.iface.public_ip,
            public_ipv6: ctx.iface.public_ipv6,
            backend_type: battrs.backend_type,
            backend_data: battrs.backend_data,
            backend_v6_data: battrs.backend_v6_data,
        };
        Ok(AcquireRequest {
            attrs,
            ipv4: ctx
                .config
                .ipv4
                .ok_or_else(|| anyhow!("IPv4 network missing"))?,
            ipv6: ctx.config.ipv6,
            preferred: previous_subnet(&self.cli.subnet_file),
        })
    }

    /// With the lease held: starts the backend and the masquerade rules, adds the blackhole
    /// route, writes subnet.env and says the node is ready. Returns the rules' handle
    /// (dropping it stops their resync).
    async fn go_live<B: Backend>(
        &self,
        backend: &mut B,
        ctx: &BackendContext,
        held: &HeldLease,
    ) -> anyhow::Result<Option<masq::RulesHandle>> {
        backend
            .start(&held.lease)
            .await
            .context("starting the backend")?;
        // --ip-masq and --iptables-forward-rules, before subnet.env (upstream's order).
        // Dropping `rules` stops its resync (and removes nftables tables, as upstream).
        let rules_cfg = masq_config(self.cli, &ctx.config, &held.lease.key);
        let rules = masq::start(rules_cfg, self.stop.clone()).await;
        self.counters.set_backend_counters(backend.counters());
        self.counters
            .set_rules(rules.as_ref().map(|r| r.stats().clone()));
        self.blackhole(&held.lease.key, None).await;
        self.write_subnet_env(&ctx.config, held, backend.mtu())?;
        self.counters.ready.set_ready();
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!("could not notify systemd: {e}");
        }
        Ok(rules)
    }

    /// One message of the lease watcher: other hosts' events to the backend, a re-list
    /// noted, a change of our own key judged. Returns whether our lease was lost.
    async fn on_watch<B: Backend>(
        &self,
        msg: WatchMsg,
        backend: &mut B,
        keeper: &mut Keeper<Registry, TokioClock>,
    ) -> bool {
        if !msg.events.is_empty() {
            backend.apply(&msg.events).await;
            self.counters.control.apply(&msg.events);
        }
        if msg.resync {
            backend.resynced().await;
            self.counters.control.resynced();
        }
        match msg.own {
            Some(change) => keeper.own_changed(&change).await == OwnAction::Lost,
            None => false,
        }
    }

    /// Our lease was lost: acquires one again. If it is another subnet, the backend, the
    /// blackhole route, subnet.env, the rules and the watcher move to it. `Ok(false)` when
    /// told to stop meanwhile.
    async fn reacquire<B: Backend>(
        &self,
        keeper: &mut Keeper<Registry, TokioClock>,
        backend: &mut B,
        ctx: &BackendContext,
        rules: Option<&masq::RulesHandle>,
        own_tx: &watch::Sender<Option<SubnetKey>>,
    ) -> anyhow::Result<bool> {
        let before = keeper.held().lease.clone();
        let Some(again) = until_stopped(&self.stop, keeper.reacquire()).await else {
            return Ok(false);
        };
        let again = again.map_err(|e| anyhow!(e).context("acquiring a subnet lease"))?;
        if let Reacquired::Moved { new, old } = again {
            // Before the watcher hears of `new`: the backend first stops calling
            // `old` its own, then learns of `old`'s new holder as of any other host.
            if let Err(e) = backend.moved(&before, &keeper.held().lease).await {
                tracing::error!(old = %old.cidr(), new = %new.cidr(), "moving the backend to our new subnet: {e:#}");
            }
            self.blackhole(&new, Some(&old)).await;
            self.write_subnet_env(&ctx.config, keeper.held(), backend.mtu())?;
            if let Some(r) = rules {
                r.update_lease(new);
            }
            let _ = own_tx.send(Some(new));
        }
        Ok(true)
    }

    fn write_subnet_env(
        &self,
        config: &NetworkConfig,
        held: &HeldLease,
        mtu: u32,
    ) -> anyhow::Result<()> {
        let env = SubnetEnv {
            network: config.network_v4(),
            subnet: Some(first_host_v4(held.lease.key.ipv4)),
            ipv6_network: config.network_v6(),
            ipv6_subnet: held.lease.key.ipv6.map(first_host_v6),
            mtu: Some(mtu),
            ipmasq: Some(self.cli.ip_masq),
            ..SubnetEnv::default()
        };
        env.write_atomic(&self.cli.subnet_file)
            .with_context(|| format!("writing {}", self.cli.subnet_file.display()))
    }
}

/// In a new image: runs the datapath the previous one handed over, if any. Only the udp
/// backend hands over, so what was handed over is the udp backend's.
fn take_over(cli: &Cli) -> Option<TakenOver> {
    let handed = handover::handed_over()?;
    TakenOver::start(handed, udp_options(cli), &handover::version())
        .map_err(|e| handover::refused(&e))
        .ok()
}

/// The udp backend's host options from the flags (a fresh start and a take-over build the
/// backend from the same ones).
fn udp_options(cli: &Cli) -> UdpOptions {
    UdpOptions {
        workers: cli.udp_workers,
        io: cli.udp_io,
        gso: cli.udp_gso,
        offload: cli.udp_offload,
        multishot: cli.udp_multishot,
        busy_poll: Duration::from_micros(cli.udp_busy_poll),
        per_peer_stats: cli.metrics_per_peer,
        ..UdpOptions::default()
    }
    .with_batch_flag(cli.udp_batch)
}

/// The masquerade and forward rules for this daemon's flags, config and lease.
fn masq_config(cli: &Cli, config: &NetworkConfig, own: &SubnetKey) -> masq::RulesConfig {
    masq::RulesConfig {
        ip_masq: cli.ip_masq,
        forward_rules: cli.iptables_forward_rules,
        random_fully_disabled: cli.ip_masq_fully_random_disable,
        nftables: config.enable_nftables,
        // Upstream sleeps `--iptables-resync` seconds; 0 would spin.
        resync: Duration::from_secs(u64::from(cli.iptables_resync.max(1))),
        network_v4: config.network_v4(),
        network_v6: config.network_v6(),
        subnet_v4: config.network_v4().map(|_| own.ipv4),
        subnet_v6: config.network_v6().and(own.ipv6),
    }
}

/// The subnet recorded in a previous subnet.env, in network form.
fn previous_subnet(path: &Path) -> Option<SubnetKey> {
    let env = match SubnetEnv::read(path) {
        Ok(env) => env?,
        Err(e) => {
            tracing::warn!("ignoring unreadable previous subnet file: {e}");
            return None;
        }
    };
    Some(SubnetKey {
        ipv4: env.subnet?.trunc(),
        ipv6: env.ipv6_subnet.map(|n| n.trunc()),
    })
}

/// Runs `fut` unless the daemon is told to stop first.
async fn until_stopped<T>(
    stop: &CancelToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        _ = stop.cancelled() => None,
    }
}

/// Connects to etcd, retrying with backoff until it answers (the registry's `EtcdHealth`
/// logs when the failures start and end).
async fn connect(cli: &Cli, counters: &Counters) -> Registry {
    let opts = EtcdOptions {
        health: counters.etcd.clone(),
        ..cli.etcd.options()
    };
    if opts.certfile.is_none() {
        tracing::warn!("connecting to etcd without a client certificate; use --etcd-certfile/--etcd-keyfile for mutual TLS");
    }
    let mut backoff = Backoff::new();
    loop {
        let attempt = async {
            let r = Registry::connect(&opts).await?;
            r.ping().await?;
            Ok::<_, RegistryError>(r)
        };
        match attempt.await {
            Ok(r) => {
                tracing::info!(endpoints = %cli.etcd.etcd_endpoints, "connected to etcd");
                return r;
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::debug!("etcd is not reachable yet, retrying in {d:?}: {e}");
                sleep(d).await;
            }
        }
    }
}

/// Reads and validates the `--net-config-path` file.
fn read_config_file(path: &Path) -> anyhow::Result<NetworkConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --net-config-path {}", path.display()))?;
    Ok(NetworkConfig::parse(&text)?)
}

/// Reads the network config from etcd, waiting while the key is missing. A
/// config that does not validate is final.
async fn load_config(cli: &Cli, registry: &Registry) -> anyhow::Result<NetworkConfig> {
    let mut backoff = Backoff::new();
    loop {
        match registry.get_config().await {
            Ok(Some(text)) => return Ok(NetworkConfig::parse(&text)?),
            Ok(None) => {
                let d = backoff.next_delay();
                tracing::warn!(
                    "flannel config not found in etcd at {}; waiting {d:?} (create it with `etcdctl put`)",
                    crate::compat::config_key(&cli.etcd.etcd_prefix)
                );
                sleep(d).await;
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!("reading the network config failed, retrying in {d:?}: {e}");
                sleep(d).await;
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
