//! iptables mode: per address family, `iptables-save` to look and one
//! `iptables-restore --noflush` to repair.

use std::collections::BTreeMap;

use super::rules::{
    chain_problem, iptables_is_recent, iptables_rules, observe_chain, parse_save, restore_input,
    teardown_input, ChainRules, Family, ObservedChain, RulesConfig, SavedTable,
};
use super::run;

/// iptables mode for one family.
#[derive(Debug)]
pub(super) struct IptFamily {
    pub(super) family: Family,
    random_fully: bool,
    wait: bool,
    /// Set when `iptables-save` shows our rules differently from how we
    /// write them: compare against what the kernel showed after our own
    /// apply instead (so a different iptables version cannot make us
    /// rewrite the rules every resync).
    seen_after_apply: Option<Vec<ObservedChain>>,
}

impl IptFamily {
    pub(super) fn new(family: Family, cfg: &RulesConfig) -> Result<IptFamily, String> {
        let version = run(family.iptables(), &["--version"], None)?;
        let recent = iptables_is_recent(&version);
        Ok(IptFamily {
            family,
            random_fully: recent && !cfg.random_fully_disabled,
            wait: recent,
            seen_after_apply: None,
        })
    }

    pub(super) fn save(&self) -> Result<BTreeMap<String, SavedTable>, String> {
        Ok(parse_save(&run(
            &format!("{}-save", self.family.iptables()),
            &[],
            None,
        )?))
    }

    pub(super) fn restore(&self, input: &str) -> Result<(), String> {
        let mut args = vec!["--noflush"];
        if self.wait {
            args.push("--wait=10");
        }
        run(
            &format!("{}-restore", self.family.iptables()),
            &args,
            Some(input),
        )
        .map(|_| ())
    }

    /// Checks and, when anything is off (or `force`), rewrites the rules; `true` when it
    /// wrote them.
    pub(super) fn ensure(
        &mut self,
        cfg: &RulesConfig,
        force: bool,
        first: bool,
    ) -> Result<bool, String> {
        let wanted = iptables_rules(cfg, self.family, self.random_fully);
        if wanted.is_empty() {
            return Ok(false);
        }
        let saved = self.save()?;
        let have: Vec<ObservedChain> = wanted.iter().map(|w| observe_chain(&saved, w)).collect();
        let problems: Vec<String> = match (&self.seen_after_apply, force) {
            (_, true) => vec!["rewriting".to_owned()],
            (Some(seen), false) => {
                if *seen == have {
                    Vec::new()
                } else {
                    vec!["the rules changed since they were applied".to_owned()]
                }
            }
            (None, false) => wanted
                .iter()
                .zip(&have)
                .filter_map(|(w, h)| chain_problem(h, w))
                .collect(),
        };
        if problems.is_empty() {
            return Ok(false);
        }
        if !first {
            tracing::info!(
                "Some {} rules are missing; deleting and recreating rules ({})",
                self.family.iptables(),
                problems.join("; ")
            );
        }
        let pairs: Vec<(&ChainRules, &ObservedChain)> = wanted.iter().zip(&have).collect();
        match self.restore(&restore_input(&pairs)) {
            Ok(()) => {}
            Err(e) if self.random_fully => {
                tracing::warn!(
                    "{e}; retrying without --random-fully (kernel or iptables without support)"
                );
                self.random_fully = false;
                let wanted = iptables_rules(cfg, self.family, false);
                let pairs: Vec<(&ChainRules, &ObservedChain)> = wanted.iter().zip(&have).collect();
                self.restore(&restore_input(&pairs))?;
            }
            Err(e) => return Err(e),
        }
        // Read back: if the kernel prints our rules differently from how we
        // render them, remember its version instead.
        let wanted = iptables_rules(cfg, self.family, self.random_fully);
        let saved = self.save()?;
        let after: Vec<ObservedChain> = wanted.iter().map(|w| observe_chain(&saved, w)).collect();
        let mismatch = wanted
            .iter()
            .zip(&after)
            .find_map(|(w, h)| chain_problem(h, w));
        self.seen_after_apply = match mismatch {
            None => None,
            Some(why) => {
                if self.seen_after_apply.is_none() {
                    tracing::warn!(
                        "{}-save shows flannel's rules differently than they were written ({why}); comparing against its output from now on",
                        self.family.iptables()
                    );
                }
                Some(after)
            }
        };
        Ok(true)
    }
}

/// Removes flannel's iptables chains and jumps (switching to nftables mode).
pub(super) fn teardown() {
    for family in [Family::V4, Family::V6] {
        let save = format!("{}-save", family.iptables());
        let Ok(text) = run(&save, &[], None) else {
            continue;
        };
        let input = teardown_input(&parse_save(&text));
        if input.is_empty() {
            continue;
        }
        match run(
            &format!("{}-restore", family.iptables()),
            &["--noflush"],
            Some(&input),
        ) {
            Ok(_) => tracing::info!(
                "removed flannel's {} chains (nftables mode)",
                family.iptables()
            ),
            Err(e) => tracing::warn!(
                "could not remove flannel's {} chains: {e}",
                family.iptables()
            ),
        }
    }
}
