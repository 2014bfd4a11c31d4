//! nftables mode: one `nft -f` transaction per apply; the resync compares
//! `nft list` output with what it read right after its own apply.

use super::rules::{nft_batch, RulesConfig, NFT_LIST, NFT_TEARDOWN};
use super::run;

/// nftables mode.
#[derive(Debug)]
pub(super) struct Nft {
    fully_random: bool,
    /// `nft list` of our tables right after our last apply.
    seen_after_apply: Option<String>,
}

impl Nft {
    pub(super) fn new(cfg: &RulesConfig) -> Nft {
        let mut fully_random = !cfg.random_fully_disabled;
        if let Err(e) = run("nft", &["--version"], None) {
            tracing::error!("EnableNFTables is set but nft cannot run: {e}");
        } else if fully_random && cfg.ip_masq {
            // Upstream's dry run: does this kernel take `fully-random`?
            if let Err(e) = run("nft", &["-c", "-f", "-"], Some(&nft_batch(cfg, true))) {
                tracing::info!("nftables: masquerade fully-random is not accepted here ({e}); masquerading without it");
                fully_random = false;
            }
        }
        Nft {
            fully_random,
            seen_after_apply: None,
        }
    }

    pub(super) fn ensure(
        &mut self,
        cfg: &RulesConfig,
        force: bool,
        first: bool,
    ) -> Result<bool, String> {
        let listed = run("nft", &["-f", "-"], Some(NFT_LIST)).ok();
        if !force && listed.is_some() && listed == self.seen_after_apply {
            return Ok(false);
        }
        if !first && !force {
            tracing::info!(
                "Some nftables rules are missing or changed; recreating flannel's tables"
            );
        }
        run(
            "nft",
            &["-f", "-"],
            Some(&nft_batch(cfg, self.fully_random)),
        )?;
        self.seen_after_apply = run("nft", &["-f", "-"], Some(NFT_LIST)).ok();
        Ok(true)
    }
}

/// Deletes flannel's tables, whether or not they exist.
pub(super) fn teardown() -> Result<(), String> {
    run("nft", &["-f", "-"], Some(NFT_TEARDOWN)).map(|_| ())
}
