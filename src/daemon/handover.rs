//! Hitless restarts and upgrades: on `SIGUSR2` the daemon hands its datapath over to a new
//! image of itself, in place.
//!
//! The vocabulary: the running image *hands over* ([`hand_over`]), the new one *takes over*
//! what was handed over ([`handed_over`], then the backend); a hand-over that fails is
//! *taken back* by the running image. The new image is started by re-executing the binary.
//!
//! On `SIGUSR2` the running image asks its backend for its hand-over state
//! ([`Backend::hand_over`]: the backend stops forwarding without closing anything and says
//! what to pass on), writes that state into a memfd, clears `FD_CLOEXEC` on exactly the memfd
//! and the backend's fds, and `execve`s the binary at the path it was started from
//! ([`init_process`] records it before anything can rename the file), with the same argv and
//! environment plus [`HANDOVER_ENV`]. The PID stays, so systemd's `MAINPID` stays valid
//! (`RELOADING=1` goes out before the exec, `READY=1` once the new image is up, as
//! sd_notify(3) says). The new image reads what it inherited ([`handed_over`]) and gives it
//! to the backend, which runs the datapath on it *before* etcd is contacted (the udp
//! backend's `handover` module says what it keeps and checks). `SIGUSR2` stays blocked across
//! the exec until the new image listens for it, so a second one cannot kill it while it
//! starts.
//!
//! # Why a memfd and a variable naming the fds
//! - The variable says where everything is, `memfd=<fd>;fds=<fd>,<fd>,…`, in a syntax that
//!   never changes: even a new image that cannot read the state knows which fds it inherited,
//!   and closes them before it starts clean, instead of leaking a TUN queue that would keep
//!   the old device's flags alive.
//! - The state itself sits in a memfd: no size limit as the environment has (thousands of
//!   peers), nothing on disk to clean up or to be read by a later, unrelated start, gone with
//!   the process.
//!
//! A hand-over that fails (the binary missing or not executable, `execve` refusing) leaves
//! the old image running: it checks the path before stopping anything, and if `execve`
//! itself fails the backend takes its fds back ([`Backend::take_back`]) and the failure is
//! logged.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{ensure, Context};

use crate::backend::{Backend, HandOver, HandedOver};
use crate::subnet::lease::Lease;
use crate::sys::fd::{block_signal, execve, memfd, set_cloexec, take_inherited};

/// The variable that tells a new image what it inherited (removed at start, so hooks and
/// other children never see it).
pub const HANDOVER_ENV: &str = "FLANNEL_RS_HANDOVER";
/// The largest state a new image reads (a /8 of /24s is 65536 peers, about 3 MiB).
const MAX_STATE: u64 = 16 << 20;

/// A build tag, part of [`version`]. Kept in a fixed-size, NUL-padded static so a built binary
/// can be given another tag without a rebuild (`tests/udp_restart.rs` makes an "upgrade"
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

/// In a new image: what the previous one handed over ([`HANDOVER_ENV`]), for the backend to
/// take over. `None` when nothing was handed over, or when it cannot be read (logged, the
/// inherited fds closed: the daemon then starts clean).
pub fn handed_over() -> Option<HandedOver> {
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
    // Owned from here on: every error path closes them all.
    let mut fds: Vec<(RawFd, OwnedFd)> = Vec::new();
    for n in numbers {
        match take_inherited(n) {
            Ok(fd) => fds.push((n, fd)),
            Err(e) => tracing::warn!("inherited fd {n}: {e}"),
        }
    }
    match read_state(take_inherited(memfd_no).map(File::from)) {
        Ok(state) => Some(HandedOver { state, fds }),
        Err(e) => {
            refused(&e);
            None
        }
    }
}

/// Logs why what was handed over is not taken over (its fds are closed by the caller).
pub fn refused(e: &anyhow::Error) {
    tracing::error!(
        "cannot take over the running datapath, closing the inherited fds and starting clean: {e:#}"
    );
}

fn read_state(memfd: std::io::Result<File>) -> anyhow::Result<Vec<u8>> {
    let mut memfd = memfd.context("the state memfd")?;
    memfd.rewind()?;
    let mut state = Vec::new();
    memfd
        .take(MAX_STATE)
        .read_to_end(&mut state)
        .context("reading the state")?;
    Ok(state)
}

/// On `SIGUSR2`: hands the backend's datapath over to a new image of the binary at the
/// recorded path, in place; `own` is our lease. Returns only if that failed, with the old
/// image still running (logged at error level). See the module doc.
pub fn hand_over<B: Backend>(backend: &mut B, own: &Lease) {
    if !backend.hands_over() {
        tracing::warn!("SIGUSR2: this backend does not hand its datapath over (udp does); ignored");
        return;
    }
    let exe = match check_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::error!("SIGUSR2: not re-executing: {e:#}; the running daemon carries on");
            return;
        }
    };
    tracing::info!(binary = %exe.display(), "SIGUSR2: re-executing in place, handing the datapath over");
    notify(&[sd_notify::NotifyState::Reloading], true);
    let err = match backend.hand_over(own, &version()) {
        Ok(handing) => match exec(&exe, &handing) {
            Ok(never) => match never {},
            Err(e) => e.context("re-exec failed"),
        },
        Err(e) => e.context("not re-executing"),
    };
    // Still here: the fds are ours again (close-on-exec restored by `exec`).
    match backend.take_back() {
        Ok(()) => tracing::error!(
            binary = %exe.display(),
            "SIGUSR2: {err:#}; the running daemon carries on"
        ),
        Err(e) => tracing::error!(
            binary = %exe.display(),
            "SIGUSR2: {err:#}, and the datapath could not restart: {e:#}"
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

/// Writes the state into a memfd, passes it and the fds on and `execve`s; returns only with
/// why it failed, the fds close-on-exec again.
fn exec(exe: &std::path::Path, handing: &HandOver<'_>) -> anyhow::Result<std::convert::Infallible> {
    let mut file = memfd("flanneld-handover").context("creating the state memfd")?;
    file.write_all(&handing.state)
        .context("writing the state")?;
    let numbers: Vec<RawFd> = handing.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != HANDOVER_ENV)
        .collect();
    env.push((
        HANDOVER_ENV.into(),
        format_env(file.as_raw_fd(), &numbers).into(),
    ));
    let argv: Vec<OsString> = std::env::args_os().collect();
    let inherit = |on: bool| -> std::io::Result<()> {
        for fd in handing.fds.iter().copied().chain([file.as_fd()]) {
            set_cloexec(fd, !on)?;
        }
        Ok(())
    };
    // Another SIGUSR2 while the next image starts stays pending (the mask survives execve)
    // until that image listens ([`HandOverSignal::new`]), rather than killing it.
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
pub struct HandOverSignal(Option<tokio::signal::unix::Signal>);

impl HandOverSignal {
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
                HandOverSignal(Some(s))
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGUSR2 (no hand-over): {e}");
                HandOverSignal(None)
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

impl std::fmt::Debug for HandOverSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandOverSignal")
    }
}

impl Default for HandOverSignal {
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
