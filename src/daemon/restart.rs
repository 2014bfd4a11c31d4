//! Hitless restarts and upgrades of a udp node: `SIGUSR2` re-executes the daemon in place.
//!
//! On `SIGUSR2` the running image ([`reexec`]) stops its udp workers without losing a packet
//! (each carries out what it had read; what it had not stays queued in the TUN queues and
//! socket buffers, which are grown for the gap), writes a versioned [`State`] into a memfd,
//! clears `FD_CLOEXEC` on exactly the memfd, the TUN queues and the UDP sockets, and
//! `execve`s the binary at the path it was started from ([`init_process`] records it before
//! anything can rename the file), with the same argv and environment plus [`HANDOVER_ENV`].
//! The PID stays, so systemd's `MAINPID` stays valid (`RELOADING=1` goes out before the exec,
//! `READY=1` once the new image is up, as sd_notify(3) says). The new image ([`adopt`]) runs
//! the datapath on the inherited fds, with the handed-over peer table, *before* it contacts
//! etcd, so packets wait only for `execve` and process start; then the usual start-up keeps
//! the datapath if the config and interface are what it was built for ([`Adopted::claim`]),
//! and re-acquires the lease, which finds our own (same key, same value: the peers see no
//! change) and rewrites the same subnet.env. `SIGUSR2` stays blocked across the exec until
//! the new image listens for it, so a second one cannot kill it while it starts.
//!
//! # Why a memfd and a variable naming the fds
//! - The variable says where everything is, `memfd=<fd>;fds=<fd>,<fd>,…`, in a syntax that
//!   never changes: even a new image that cannot read the state knows which fds it inherited,
//!   and closes them before it starts clean, instead of leaking a TUN queue that would keep
//!   the old device's flags alive.
//! - The state itself is JSON in a memfd: no size limit as the environment has (thousands of
//!   peers), nothing on disk to clean up or to be read by a later, unrelated start, gone with
//!   the process. Its first field is a format version; a reader refuses any other, and the
//!   fingerprint of the backend config is compared with what etcd says once connected.
//! - Every fd is checked before it is trusted: a TUN queue must be attached to the named
//!   device, a socket must be a bound IPv4 datagram socket on our address and port, and their
//!   number must match the workers configured. Any mismatch, or a different backend config,
//!   closes them all and the daemon starts clean: a fresh device, the short outage of a
//!   plain restart, the same lease.
//!
//! A re-exec that fails (the binary missing or not executable, `execve` refusing) leaves the
//! old image running: it checks the path before stopping anything, and if `execve` itself
//! fails it restarts its workers on the same fds and logs why.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backend::udp::{Inherited, Udp};
use crate::backend::BackendContext;
use crate::cli::Cli;
use crate::config::NetworkConfig;
use crate::datapath::worker::QueueFds;
use crate::exec::iface::ExternalInterface;
use crate::exec::tun::TunLink;
use crate::subnet::lease::Lease;
use crate::sys::fd::{adopt_inherited, block_signal, execve, memfd, set_cloexec};
use crate::sys::sockopt::{adopt_udp, grow_recv_buffer};
use crate::sys::tun::TunQueue;

/// The variable that tells a new image what it inherited (removed at start, so hooks and
/// other children never see it).
pub const HANDOVER_ENV: &str = "FLANNEL_RS_HANDOVER";
/// The version of [`State`]'s layout; a reader refuses any other and starts clean.
pub const STATE_FORMAT: u32 = 1;
/// Each handed-over socket's receive buffer while no worker reads: at 1 Gbit/s of
/// 1400-byte datagrams (truesize about 2.3 KB each) 64 MiB lasts well over 100 ms, far more
/// than an exec takes (10 to 50 ms measured). Forced past `rmem_max` (we run with
/// `CAP_NET_ADMIN`). The TUN side needs nothing more: each queue already holds
/// `exec::tun::TUN_TX_QUEUE_LEN` (4096) packets, 40 ms of 100k packets/s per queue, and it
/// carries only what local pods send; growing it here would mean a netlink round trip in
/// the middle of the gap.
const GAP_RECV_BUFFER: usize = 64 << 20;
/// The largest state a new image reads (a /8 of /24s is 65536 peers, about 3 MiB).
const MAX_STATE: u64 = 16 << 20;

/// A build tag, part of [`version`]. Kept in a fixed-size, NUL-padded static so a built binary
/// can be given another tag without a rebuild (`tests/netns_restart.rs` makes an "upgrade"
/// that way: same code, another version string, another file).
#[used]
static BUILD_TAG: [u8; 48] =
    *b"FLANNEL_RS_BUILD_TAG=dev\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// This binary's version: the package version, the commit and the build tag, e.g.
/// `0.1.0 (commit 1a2b3c4d5e6f, build dev)`.
pub fn version() -> String {
    // Read through `black_box`, so the compiler cannot fold the bytes it was built with.
    let raw: &[u8] = std::hint::black_box(&BUILD_TAG[..]);
    let tag = raw.split(|&b| b == b'=').nth(1).unwrap_or_default();
    let tag = tag.split(|&b| b == 0).next().unwrap_or_default();
    format!(
        "{} (commit {}, build {})",
        env!("CARGO_PKG_VERSION"),
        env!("FLANNEL_RS_COMMIT"),
        String::from_utf8_lossy(tag)
    )
}

static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
static INHERITED: OnceLock<Option<OsString>> = OnceLock::new();

/// Call first thing in `main`, while the process has one thread: records the path of the
/// running binary (a package manager may rename another file over it later; `/proc/self/exe`
/// then names the old, deleted inode, and the re-exec must run the new one) and takes
/// [`HANDOVER_ENV`] out of the environment.
pub fn init_process() {
    let _ = EXE.set(std::env::current_exe().ok());
    let inherited = std::env::var_os(HANDOVER_ENV);
    if inherited.is_some() {
        std::env::remove_var(HANDOVER_ENV);
    }
    let _ = INHERITED.set(inherited);
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TunState {
    name: String,
    index: u32,
    mtu: u32,
    addr: Ipv4Addr,
    network: Ipv4Net,
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
struct State {
    /// [`STATE_FORMAT`] of the writer. First, so any reader finds it.
    format: u32,
    /// [`version`] of the writer (logged by the reader).
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

/// The hand-over variable's value: `memfd=<fd>;fds=<fd>,<fd>,…` (`fds` lists every other fd
/// passed, so they can be closed even when the state is unreadable).
fn format_env(memfd: RawFd, fds: &[RawFd]) -> String {
    let list: Vec<String> = fds.iter().map(ToString::to_string).collect();
    format!("memfd={memfd};fds={}", list.join(","))
}

fn parse_env(value: &str) -> anyhow::Result<(RawFd, Vec<RawFd>)> {
    let num = |s: &str| -> anyhow::Result<RawFd> {
        let n: RawFd = s
            .parse()
            .with_context(|| format!("{s:?} is not an fd number"))?;
        ensure!(n > 2, "fd {n} is one of stdin, stdout and stderr");
        Ok(n)
    };
    let (memfd, fds) = value
        .split_once(';')
        .with_context(|| format!("{value:?}: expected memfd=<fd>;fds=<fd>,..."))?;
    let memfd = num(memfd.strip_prefix("memfd=").context("no memfd=")?)?;
    let fds = fds.strip_prefix("fds=").context("no fds=")?;
    let fds: Vec<RawFd> = if fds.is_empty() {
        Vec::new()
    } else {
        fds.split(',').map(num).collect::<anyhow::Result<_>>()?
    };
    let mut all = fds.clone();
    all.push(memfd);
    all.sort_unstable();
    all.dedup();
    ensure!(all.len() == fds.len() + 1, "an fd is named twice");
    Ok((memfd, fds))
}

/// Reads and checks the state; `Err` says why it cannot be used.
fn parse_state(text: &str) -> anyhow::Result<State> {
    // The format first, on its own: a later format may change everything else.
    let head: Value = serde_json::from_str(text).context("the state is not JSON")?;
    let format = head.get("format").and_then(Value::as_u64);
    ensure!(
        format == Some(u64::from(STATE_FORMAT)),
        "state format {} (written by {}), this binary reads format {STATE_FORMAT}",
        format.map_or_else(|| "missing".to_owned(), |f| f.to_string()),
        head.get("binary")
            .and_then(Value::as_str)
            .unwrap_or("an unknown version")
    );
    let state: State = serde_json::from_value(head).context("reading the state")?;
    ensure!(!state.workers.is_empty(), "no worker fds in the state");
    Ok(state)
}

fn monotonic_us() -> Option<i128> {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(sd_notify::NotifyState::MonotonicUsec(us)) => Some(us),
        _ => None,
    }
}

/// A datapath taken over from the previous image, running, not yet matched against the
/// config from etcd.
#[derive(Debug)]
pub struct Adopted {
    udp: Udp,
    state: State,
}

/// In a re-executed image: takes over what the previous one handed over ([`HANDOVER_ENV`])
/// and runs the datapath at once. `None` when nothing was handed over, or when it cannot be
/// used (logged, the inherited fds closed: the daemon then starts clean).
pub fn adopt(cli: &Cli) -> Option<Adopted> {
    tracing::info!("flanneld {}", version());
    let value = INHERITED.get().cloned().flatten()?;
    let Some(value) = value.to_str() else {
        tracing::error!("{HANDOVER_ENV} is not UTF-8; starting clean");
        return None;
    };
    let (memfd_no, numbers) = match parse_env(value) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot take over: {HANDOVER_ENV}={value:?}: {e:#}; starting clean");
            return None;
        }
    };
    // Owned from here on: every error path below closes them all.
    let mut fds: Vec<(RawFd, OwnedFd)> = Vec::new();
    for n in numbers {
        match adopt_inherited(n) {
            Ok(fd) => fds.push((n, fd)),
            Err(e) => tracing::warn!("inherited fd {n}: {e}"),
        }
    }
    let memfd = adopt_inherited(memfd_no).map(File::from);
    match take_over(cli, memfd, fds) {
        Ok(adopted) => Some(adopted),
        Err(e) => {
            tracing::error!(
                "cannot take over the running datapath, closing the inherited fds and starting clean: {e:#}"
            );
            None
        }
    }
}

fn take_over(
    cli: &Cli,
    memfd: std::io::Result<File>,
    mut fds: Vec<(RawFd, OwnedFd)>,
) -> anyhow::Result<Adopted> {
    let mut memfd = memfd.context("the state memfd")?;
    memfd.rewind()?;
    let mut text = String::new();
    memfd
        .take(MAX_STATE)
        .read_to_string(&mut text)
        .context("reading the state")?;
    let state = parse_state(&text)?;
    let mut take = |n: RawFd| -> anyhow::Result<OwnedFd> {
        let at = fds.iter().position(|(k, _)| *k == n).with_context(|| {
            format!("the state names fd {n}, which was not passed or is closed")
        })?;
        Ok(fds.swap_remove(at).1)
    };
    let mut queues = Vec::with_capacity(state.workers.len());
    for w in &state.workers {
        let tun = TunQueue::adopt(take(w.tun)?, &state.tun.name)?;
        let (rx, _) = adopt_udp(take(w.rx)?)?;
        let tx = match w.tx {
            Some(n) => Some(adopt_udp(take(n)?)?.0),
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
        iface: ExternalInterface {
            name: state.iface.name.clone(),
            index: state.iface.index,
            mtu: state.iface.mtu,
            iface_addr: state.iface.iface_addr,
            iface_addr_v6: None,
            public_ip: state.iface.public_ip,
            public_ipv6: None,
        },
    };
    let mut udp = Udp::new(&ctx, super::udp_options(cli))?;
    let t = &state.tun;
    udp.adopt(Inherited {
        own: state.subnet,
        peers: state.peers.clone(),
        link: TunLink {
            index: t.index,
            name: t.name.clone(),
            mtu: t.mtu,
            addr: t.addr,
            network: t.network,
        },
        queues,
    })?;
    let gap = state
        .stopped_at_us
        .zip(monotonic_us())
        .map(|(then, now)| format!("{:.1} ms", (now - then) as f64 / 1000.0));
    tracing::info!(
        from = %state.binary,
        to = %version(),
        subnet = %state.subnet,
        peers = state.peers.len(),
        datapath_gap = gap.as_deref().unwrap_or("unknown"),
        "took over the udp datapath from the previous image"
    );
    Ok(Adopted { udp, state })
}

impl Adopted {
    /// Once the config and interface are known: the datapath if they are what it was built
    /// for, else `None` (logged; dropping it closes the inherited fds and the device, and the
    /// caller starts clean).
    pub fn claim(self, ctx: &BackendContext) -> Option<Udp> {
        let s = &self.state;
        let i = &ctx.iface;
        let why = if Fingerprint::of(&ctx.config).as_ref() != Some(&s.fingerprint) {
            Some(format!(
                "the network config changed (was {}, is {})",
                serde_json::to_string(&s.fingerprint).unwrap_or_default(),
                Fingerprint::of(&ctx.config)
                    .and_then(|f| serde_json::to_string(&f).ok())
                    .unwrap_or_else(|| "not an IPv4 network".into())
            ))
        } else if (i.name.as_str(), i.iface_addr, i.public_ip, i.mtu)
            != (
                s.iface.name.as_str(),
                s.iface.iface_addr,
                s.iface.public_ip,
                s.iface.mtu,
            )
        {
            Some(format!(
                "the external interface changed (was {} {} public {} mtu {}, is {} {} public {} mtu {})",
                s.iface.name, s.iface.iface_addr, s.iface.public_ip, s.iface.mtu,
                i.name, i.iface_addr, i.public_ip, i.mtu
            ))
        } else {
            None
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

/// What [`reexec`] needs besides the datapath.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    pub config: &'a NetworkConfig,
    pub iface: &'a ExternalInterface,
    pub lease: &'a Lease,
}

/// On `SIGUSR2`: hands the udp datapath to a new image of the binary at the recorded path,
/// in place. Returns only if that failed, with the old image still running (logged at error
/// level). See the module doc.
pub fn reexec(udp: &mut Udp, now: Running<'_>) {
    let exe = match check_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::error!("SIGUSR2: not re-executing: {e:#}; the running daemon carries on");
            return;
        }
    };
    tracing::info!(binary = %exe.display(), "SIGUSR2: re-executing in place, handing the udp datapath over");
    notify(&[sd_notify::NotifyState::Reloading], true);
    let suspended = match udp.suspend() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("SIGUSR2: not re-executing: {e:#}");
            notify(&[sd_notify::NotifyState::Ready], false);
            return;
        }
    };
    let stopped_at_us = monotonic_us();
    let err = match hand_over(&exe, udp, &suspended, now, stopped_at_us) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // Still here: the fds are ours again (close-on-exec restored by `hand_over`).
    match udp.resume(suspended) {
        Ok(()) => tracing::error!(
            binary = %exe.display(),
            "SIGUSR2: re-exec failed, the running daemon carries on: {err:#}"
        ),
        Err(e) => tracing::error!(
            binary = %exe.display(),
            "SIGUSR2: re-exec failed ({err:#}) and the udp workers could not restart: {e:#}"
        ),
    }
    notify(&[sd_notify::NotifyState::Ready], false);
}

/// The recorded binary path, if a regular, executable file is there now.
fn check_exe() -> anyhow::Result<PathBuf> {
    let exe = EXE
        .get()
        .cloned()
        .flatten()
        .context("the path of the running binary was not recorded at start-up")?;
    let meta =
        std::fs::metadata(&exe).with_context(|| format!("no binary at {}", exe.display()))?;
    ensure!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "{} is not an executable file",
        exe.display()
    );
    Ok(exe)
}

/// Writes the state, passes the fds on and `execve`s; returns only with why it failed, the
/// fds close-on-exec again.
fn hand_over(
    exe: &std::path::Path,
    udp: &Udp,
    s: &crate::backend::udp::Suspended,
    now: Running<'_>,
    stopped_at_us: Option<i128>,
) -> anyhow::Result<std::convert::Infallible> {
    if s.queues.len() != udp.workers() {
        bail!(
            "only {} of {} udp workers returned their fds (a worker had failed)",
            s.queues.len(),
            udp.workers()
        );
    }
    for q in &s.queues {
        if let Err(e) = grow_recv_buffer(&q.rx, GAP_RECV_BUFFER) {
            tracing::warn!("growing a socket's receive buffer for the re-exec: {e}");
        }
    }
    let fingerprint = Fingerprint::of(now.config).context("the config has no IPv4 network")?;
    let state = State {
        format: STATE_FORMAT,
        binary: version(),
        stopped_at_us,
        fingerprint,
        iface: IfaceState {
            name: now.iface.name.clone(),
            index: now.iface.index,
            mtu: now.iface.mtu,
            iface_addr: now.iface.iface_addr,
            public_ip: now.iface.public_ip,
        },
        subnet: now.lease.subnet().trunc(),
        subnet_v6: now.lease.key.ipv6,
        peers: udp.peers(),
        tun: TunState {
            name: s.link.name.clone(),
            index: s.link.index,
            mtu: s.link.mtu,
            addr: s.link.addr,
            network: s.link.network,
        },
        workers: s
            .queues
            .iter()
            .map(|q| WorkerFdNumbers {
                tun: q.tun.raw(),
                rx: q.rx.as_raw_fd(),
                tx: q.tx.as_ref().map(AsRawFd::as_raw_fd),
            })
            .collect(),
    };
    let mut file = memfd("flanneld-handover").context("creating the state memfd")?;
    file.write_all(&serde_json::to_vec(&state)?)
        .context("writing the state")?;
    let mut passed: Vec<std::os::fd::BorrowedFd<'_>> = Vec::new();
    for q in &s.queues {
        passed.push(q.tun.as_fd());
        passed.push(q.rx.as_fd());
        passed.extend(q.tx.as_ref().map(AsFd::as_fd));
    }
    let numbers: Vec<RawFd> = passed.iter().map(AsRawFd::as_raw_fd).collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != HANDOVER_ENV)
        .collect();
    env.push((
        HANDOVER_ENV.into(),
        format_env(file.as_raw_fd(), &numbers).into(),
    ));
    let argv: Vec<OsString> = std::env::args_os().collect();
    let inherit = |on: bool| -> std::io::Result<()> {
        for fd in passed.iter().copied().chain([file.as_fd()]) {
            set_cloexec(fd, !on)?;
        }
        Ok(())
    };
    // Another SIGUSR2 while the next image starts stays pending (the mask survives execve)
    // until that image listens ([`ReloadSignal::new`]), rather than killing it.
    if let Err(e) = block_signal(libc::SIGUSR2, true) {
        tracing::warn!("blocking SIGUSR2 across the exec: {e}");
    }
    let err = match inherit(true) {
        Ok(()) => anyhow::Error::new(execve(exe, &argv, &env))
            .context(format!("execve {}", exe.display())),
        Err(e) => anyhow::Error::new(e).context("clearing close-on-exec"),
    };
    let _ = block_signal(libc::SIGUSR2, false);
    if let Err(e) = inherit(false) {
        tracing::warn!("restoring close-on-exec: {e}");
    }
    Err(err)
}

/// Tells systemd (if it started us); with `monotonic`, `MONOTONIC_USEC` too, as
/// `RELOADING=1` wants for `Type=notify-reload`.
fn notify(states: &[sd_notify::NotifyState], monotonic: bool) {
    let mut all: Vec<sd_notify::NotifyState> = states.to_vec();
    if monotonic {
        if let Ok(m) = sd_notify::NotifyState::monotonic_usec_now() {
            all.push(m);
        }
    }
    if let Err(e) = sd_notify::notify(&all) {
        tracing::warn!("could not notify systemd: {e}");
    }
}

/// The `SIGUSR2` stream, registered at start-up so that the signal never falls to its
/// default action (terminate) once the daemon runs.
pub struct ReloadSignal(Option<tokio::signal::unix::Signal>);

impl ReloadSignal {
    /// Registers the handler, then unblocks `SIGUSR2` on the calling thread (the one that
    /// runs the daemon's main future, the first after an exec): a previous image blocked it
    /// across the `execve`, and one sent meanwhile is delivered now.
    pub fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::user_defined2()) {
            Ok(s) => {
                if let Err(e) = block_signal(libc::SIGUSR2, false) {
                    tracing::warn!("unblocking SIGUSR2: {e}");
                }
                ReloadSignal(Some(s))
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGUSR2 (no re-exec): {e}");
                ReloadSignal(None)
            }
        }
    }

    /// Resolves on the next `SIGUSR2` (never, if it could not be registered).
    pub async fn recv(&mut self) {
        match self.0.as_mut() {
            Some(s) => {
                if s.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl std::fmt::Debug for ReloadSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadSignal")
    }
}

impl Default for ReloadSignal {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_value_round_trips_and_bad_ones_are_errors() {
        let v = format_env(7, &[8, 9, 10]);
        assert_eq!(v, "memfd=7;fds=8,9,10");
        assert_eq!(parse_env(&v).unwrap(), (7, vec![8, 9, 10]));
        assert_eq!(parse_env("memfd=5;fds=").unwrap(), (5, vec![]));
        for bad in [
            "",
            "memfd=7",
            "memfd=x;fds=8",
            "memfd=7;fds=8,,9",
            "memfd=7;fds=8,8",
            "memfd=7;fds=7",
            "memfd=1;fds=8",
            "memfd=-4;fds=8",
            "fds=8;memfd=7",
        ] {
            assert!(parse_env(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn state() -> State {
        State {
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
        assert_eq!(parse_state(&text).unwrap(), s);

        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["format"] = Value::from(2);
        let e = parse_state(&v.to_string()).unwrap_err().to_string();
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
            assert!(parse_state(bad).is_err(), "{bad:?} accepted");
        }
        let mut none = s.clone();
        none.workers.clear();
        assert!(parse_state(&serde_json::to_string(&none).unwrap()).is_err());
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
    fn the_version_carries_the_build_tag() {
        assert_eq!(
            version(),
            format!(
                "{} (commit {}, build dev)",
                env!("CARGO_PKG_VERSION"),
                env!("FLANNEL_RS_COMMIT")
            )
        );
    }
}
