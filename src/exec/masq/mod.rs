//! `--ip-masq` and `--iptables-forward-rules`: the masquerade and forward
//! rules upstream installs, with its chain names, matches and comments, and
//! a resync every `--iptables-resync` seconds that puts back what was
//! deleted.
//!
//! # Kernel state owned by this module
//! iptables mode (default), per address family in use:
//! - nat: chain `FLANNEL-POSTRTG`, jumped to from `POSTROUTING` (`--ip-masq`);
//! - filter: chain `FLANNEL-FWD`, jumped to from `FORWARD`
//!   (`--iptables-forward-rules`, on by default, even without `--ip-masq`).
//!
//! Kept on shutdown, as upstream does. nftables mode (`EnableNFTables`):
//! tables `ip flannel-ipv4` and `ip6 flannel-ipv6` with chains `postrtg` and
//! `forward`; deleted on shutdown, as upstream does. Each mode removes the
//! other mode's state at start.
//!
//! # How
//! One batch per resync: `iptables-save` (one per family) to look, and only
//! when something is off one `iptables-restore --noflush` (both tables, each
//! committed atomically) that re-declares the flannel chain (which flushes
//! it), deletes the existing jump and appends everything in upstream's
//! order. nftables: one `nft -f` transaction that adds the table and chains,
//! flushes the chains and adds the rules; the resync compares `nft list`
//! output with what it read right after its own apply. Never one process
//! per rule.
//!
//! # Deviations from upstream
//! - Stale rules from a previous subnet need no separate pass: the chain is
//!   flushed and rewritten.
//! - nftables mode also resyncs (upstream sets its rules once).
//! - Switching to nftables removes the iptables jumps and chains (upstream
//!   only empties `FLANNEL-POSTRTG`, and looks for `FLANNEL-FWD` in the nat
//!   table).

mod iptables;
mod nft;
mod rules;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::cancel::CancelToken;
use crate::subnet::lease::SubnetKey;
use iptables::IptFamily;
use nft::Nft;
pub use rules::*;

/// Runs `program args` with `input` on stdin; `Ok(stdout)` or an error
/// naming the program and its stderr.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // Errors show up in the exit status and stderr below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the other mode's state at start (upstream's traffic manager
/// clean-up).
fn clean_other_mode(nftables: bool) {
    if nftables {
        iptables::teardown();
    } else if let Err(e) = nft::teardown() {
        // No nft binary, or no nf_tables: nothing of ours can be there.
        tracing::debug!("no flannel nftables tables to remove: {e}");
    }
}

#[derive(Debug)]
enum Mode {
    Iptables(Vec<IptFamily>),
    Nft(Nft),
}

impl Mode {
    fn ensure(
        &mut self,
        cfg: &RulesConfig,
        force: bool,
        first: bool,
        last_error: &mut Option<String>,
        stats: &RulesStats,
    ) {
        let result = match self {
            Mode::Iptables(fams) => {
                let mut wrote = false;
                let errors: Vec<String> = fams
                    .iter_mut()
                    .filter_map(|f| match f.ensure(cfg, force, first) {
                        Ok(w) => {
                            wrote |= w;
                            None
                        }
                        Err(e) => Some(format!("{}: {e}", f.family.iptables())),
                    })
                    .collect();
                if errors.is_empty() {
                    Ok(wrote)
                } else {
                    Err(format!(
                        "Failed to ensure iptables rules: {}",
                        errors.join("; ")
                    ))
                }
            }
            Mode::Nft(n) => n
                .ensure(cfg, force, first)
                .map_err(|e| format!("nftables: couldn't set up flannel's rules: {e}")),
        };
        stats.resyncs.fetch_add(1, Ordering::Relaxed);
        // One line per change of state, not one per resync.
        match result {
            Ok(wrote) => {
                // The first write is the set-up; later ones put back what was changed.
                if wrote && !first {
                    stats.repairs.fetch_add(1, Ordering::Relaxed);
                }
                if last_error.take().is_some() {
                    tracing::info!("flannel's iptables/nftables rules are in place again");
                }
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                if last_error.as_ref() != Some(&e) {
                    tracing::error!("{e} (retrying every {:?})", cfg.resync);
                }
                *last_error = Some(e);
            }
        }
    }
}

/// The running rules manager. Dropping it stops the resync; in nftables
/// mode it also deletes flannel's tables, as upstream does on exit.
#[derive(Debug)]
pub struct RulesHandle {
    task: tokio::task::JoinHandle<()>,
    lease: watch::Sender<SubnetKey>,
    nftables: bool,
    stats: Arc<RulesStats>,
}

/// How the rule checks fare, for `/metrics`.
#[derive(Debug, Default)]
pub struct RulesStats {
    /// Checks of the rules (set-up, every `--iptables-resync`, lease moves).
    pub resyncs: AtomicU64,
    /// Checks that found the rules changed or missing and wrote them again.
    pub repairs: AtomicU64,
    /// Checks that could not read or write the rules.
    pub failures: AtomicU64,
}

impl RulesHandle {
    /// The rule-check counters.
    pub fn stats(&self) -> &Arc<RulesStats> {
        &self.stats
    }

    /// Rewrites the masquerade rules for a new lease (after the subnet moved).
    pub fn update_lease(&self, key: SubnetKey) {
        let _ = self.lease.send(key);
    }
}

impl Drop for RulesHandle {
    fn drop(&mut self) {
        self.task.abort();
        if self.nftables {
            tracing::info!("Cleaning-up flannel tables...");
            if let Err(e) = nft::teardown() {
                tracing::error!("nftables: error while cleaning-up: {e}");
            }
        }
    }
}

/// Installs the rules now (before subnet.env is written, as upstream does)
/// and keeps them in place every `cfg.resync` until `stop`. `None` when
/// neither `--ip-masq` nor forward rules are asked for.
pub async fn start(cfg: RulesConfig, stop: CancelToken) -> Option<RulesHandle> {
    if !cfg.wants_anything() {
        return None;
    }
    let own = SubnetKey {
        ipv4: cfg.subnet_v4.unwrap_or_default(),
        ipv6: cfg.subnet_v6,
    };
    let (tx, mut rx) = watch::channel(own);
    let nftables = cfg.nftables;
    let setup_cfg = cfg.clone();
    let stats = Arc::new(RulesStats::default());
    let (setup_stats, task_stats) = (stats.clone(), stats.clone());
    let mode = tokio::task::spawn_blocking(move || {
        let cfg = setup_cfg;
        clean_other_mode(cfg.nftables);
        let mut mode = if cfg.nftables {
            tracing::info!("Starting flannel in nftables mode...");
            Mode::Nft(Nft::new(&cfg))
        } else {
            let mut fams = Vec::new();
            let want_v6 = cfg.network_v6.is_some();
            for family in [Family::V4, Family::V6]
                .into_iter()
                .filter(|f| *f == Family::V4 || want_v6)
            {
                match IptFamily::new(family, &cfg) {
                    Ok(f) => fams.push(f),
                    Err(e) => tracing::error!(
                        "Failed to setup IPTables. {} binary was not found: {e}",
                        family.iptables()
                    ),
                }
            }
            Mode::Iptables(fams)
        };
        if cfg.ip_masq {
            tracing::info!("Setting up masking rules");
        }
        if cfg.forward_rules {
            tracing::info!("Changing default FORWARD chain policy to ACCEPT");
        }
        let mut last_error = None;
        mode.ensure(&cfg, false, true, &mut last_error, &setup_stats);
        (mode, last_error)
    })
    .await;
    let (mut mode, mut last_error) = match mode {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("setting up iptables/nftables rules failed: {e}");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        let mut cfg = cfg;
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(cfg.resync) => false,
                changed = rx.changed() => {
                    if changed.is_err() { return; }
                    let key = *rx.borrow_and_update();
                    cfg.subnet_v4 = cfg.network_v4.map(|_| key.ipv4);
                    cfg.subnet_v6 = cfg.network_v6.and(key.ipv6);
                    true
                }
            };
            let c = cfg.clone();
            let stats = task_stats.clone();
            (mode, last_error) = match tokio::task::spawn_blocking(move || {
                mode.ensure(&c, force, false, &mut last_error, &stats);
                (mode, last_error)
            })
            .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!("iptables resync task failed: {e}");
                    return;
                }
            };
        }
    });
    Some(RulesHandle {
        task,
        lease: tx,
        nftables,
        stats,
    })
}
