//! The `extension` backend: the network is programmed by operator-supplied commands.
//!
//! Options (all strings, all optional): `PreStartupCommand`, `PostStartupCommand`,
//! `SubnetAddCommand`, `SubnetRemoveCommand`. Commands run through `sh -c` with the variables
//! in their environment (see [`crate::exec::hooks`]):
//!
//! | command | when | environment added | stdin |
//! | --- | --- | --- | --- |
//! | PreStartupCommand | before the lease is acquired | — | `"\n"` |
//! | PostStartupCommand | once the lease is held | `NETWORK`, `SUBNET`, `IPV6SUBNET`, `PUBLIC_IP`, `PUBLIC_IPV6` | `"\n"` |
//! | SubnetAddCommand | a remote `extension` lease appears or changes | `SUBNET`, `PUBLIC_IP` | its BackendData + `"\n"` |
//! | SubnetRemoveCommand | a remote `extension` lease goes away | `SUBNET`, `PUBLIC_IP` | its BackendData + `"\n"` |
//!
//! The pre-startup command's output (stdout and stderr, trimmed) is published as this host's
//! `BackendData`, a JSON string; without that command no `BackendData` is written. The lease's
//! `PublicIP` is the interface address even when `--public-ip` is given (upstream does the
//! same; the daemon builds our context that way). Values print as Go's `%s` does, so an absent
//! IPv6 subnet is `::/0` and an absent IPv6 address `<nil>`, byte for byte what hooks written
//! for upstream see.
//!
//! # Failures
//! A failing pre- or post-startup command stops the daemon (exit status 1), as upstream. A
//! failing add or remove command is logged with its exit status and output and never stops the
//! daemon. Upstream runs it once and forgets it; we retry it with backoff (5 s doubling to
//! 5 min) until it succeeds or a newer event for the same subnet replaces it, so a transient
//! failure (a device not up yet, a lock held) heals by itself. Hooks therefore should be
//! idempotent — upstream re-runs the add command on every renewal of a remote lease as well.
//!
//! Add/remove commands run one at a time, in event order, on their own task, so a slow command
//! never delays lease renewal; each is killed after [`SUBNET_HOOK_TIMEOUT`].
//!
//! # Host state owned by this module
//! None directly: whatever the commands do is theirs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Backend, BackendAttrs, BackendContext};
use crate::exec::hooks::{self, Hook, HookError, HookOutput};
use crate::subnet::lease::{Lease, LeaseEvent, RawJson, SubnetKey};

/// `BackendType` of extension leases.
pub const BACKEND_TYPE: &str = "extension";

/// An add or remove command taking longer than this is killed (and retried). Upstream has no
/// limit; one hung command would then block every later one forever.
pub const SUBNET_HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// First retry delay of a failed add/remove command; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The four commands, as configured (empty strings count as absent, as upstream's `len > 0`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionConfig {
    pub pre_startup: Option<String>,
    pub post_startup: Option<String>,
    pub subnet_add: Option<String>,
    pub subnet_remove: Option<String>,
}

impl ExtensionConfig {
    /// Reads the options from the `Backend` object (keys match case-insensitively).
    ///
    /// # Errors
    /// An option that is present but not a string (Go's `json.Unmarshal` rejects it too).
    pub fn from_backend(backend: &crate::config::BackendConfig) -> anyhow::Result<Self> {
        let get = |name: &str| -> anyhow::Result<Option<String>> {
            match backend.option(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => {
                    bail!("invalid network config: Backend.{name}: must be a string, got {other}")
                }
            }
        };
        Ok(ExtensionConfig {
            pre_startup: get("PreStartupCommand")?,
            post_startup: get("PostStartupCommand")?,
            subnet_add: get("SubnetAddCommand")?,
            subnet_remove: get("SubnetRemoveCommand")?,
        })
    }
}

/// Which per-subnet command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubnetHookKind {
    Add,
    Remove,
}

impl SubnetHookKind {
    fn option(self) -> &'static str {
        match self {
            SubnetHookKind::Add => "SubnetAddCommand",
            SubnetHookKind::Remove => "SubnetRemoveCommand",
        }
    }
}

/// One planned run of an add/remove command: pure data, so planning is testable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetHook {
    pub kind: SubnetHookKind,
    pub subnet: SubnetKey,
    pub command: String,
    pub vars: Vec<(&'static str, String)>,
    pub stdin: String,
}

/// What to do about one lease event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Run(SubnetHook),
    /// Nothing to run (no command configured for this kind of event).
    Nothing,
    /// The event is ignored; the reason is logged.
    Ignore(String),
}

/// Decides what an event about another host's lease runs (upstream's `handleSubnetEvents`).
pub fn plan_event(cfg: &ExtensionConfig, ev: &LeaseEvent) -> Plan {
    let (kind, lease) = match ev {
        LeaseEvent::Added(l) => (SubnetHookKind::Add, l),
        LeaseEvent::Removed(l) => (SubnetHookKind::Remove, l),
    };
    if lease.attrs.backend_type.as_deref() != Some(BACKEND_TYPE) {
        return Plan::Ignore(format!(
            "ignoring non-extension subnet {}: type={}",
            lease.subnet(),
            lease.attrs.backend_type.as_deref().unwrap_or("")
        ));
    }
    let command = match kind {
        SubnetHookKind::Add => &cfg.subnet_add,
        SubnetHookKind::Remove => &cfg.subnet_remove,
    };
    let Some(command) = command else {
        return Plan::Nothing;
    };
    let stdin = match decode_backend_data(lease.attrs.backend_data.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            return Plan::Ignore(format!(
                "subnet {}: failed to decode BackendData: {e}",
                lease.subnet()
            ))
        }
    };
    Plan::Run(SubnetHook {
        kind,
        subnet: lease.key,
        command: command.clone(),
        vars: vec![
            ("SUBNET", lease.subnet().to_string()),
            ("PUBLIC_IP", lease.attrs.public_ip.to_string()),
        ],
        stdin,
    })
}

/// A remote host's BackendData as its commands receive it: the decoded JSON string, or empty
/// when the lease has none.
fn decode_backend_data(data: Option<&RawJson>) -> Result<String, String> {
    match data {
        None => Ok(String::new()),
        Some(raw) => {
            serde_json::from_str::<String>(raw.get()).map_err(|e| format!("{e} in {}", raw.get()))
        }
    }
}

/// The post-startup command's variables, formatted as upstream's `fmt.Sprintf("%s")` does.
pub fn post_startup_vars(
    network: Option<Ipv4Net>,
    own: &Lease,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "NETWORK",
            network
                .map(|n| n.to_string())
                .unwrap_or_else(|| "0.0.0.0/0".into()),
        ),
        ("SUBNET", own.subnet().to_string()),
        (
            "IPV6SUBNET",
            own.key
                .ipv6
                .map(|n: Ipv6Net| n.to_string())
                .unwrap_or_else(|| "::/0".into()),
        ),
        ("PUBLIC_IP", public_ip.to_string()),
        (
            "PUBLIC_IPV6",
            public_ipv6
                .map(|a| a.to_string())
                .unwrap_or_else(|| "<nil>".into()),
        ),
    ]
}

/// Failed add/remove commands waiting for another try; at most one per subnet (the newest).
#[derive(Debug, Default)]
pub struct RetryQueue {
    pending: BTreeMap<SubnetKey, (SubnetHook, u32, Instant)>,
}

impl RetryQueue {
    /// Forgets any retry for `subnet`: a newer event decides what should happen to it.
    pub fn supersede(&mut self, subnet: &SubnetKey) {
        self.pending.remove(subnet);
    }

    /// Schedules `hook` after its `failures`-th failure; returns the delay chosen.
    pub fn failed(&mut self, hook: SubnetHook, failures: u32, now: Instant) -> Duration {
        let delay = retry_delay(failures);
        self.pending
            .insert(hook.subnet, (hook, failures, now + delay));
        delay
    }

    /// When the earliest retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(_, _, due)| *due).min()
    }

    /// Removes and returns every retry due at `now`, with its failure count so far.
    pub fn take_due(&mut self, now: Instant) -> Vec<(SubnetHook, u32)> {
        let due: Vec<SubnetKey> = self
            .pending
            .iter()
            .filter(|(_, (_, _, at))| *at <= now)
            .map(|(k, _)| *k)
            .collect();
        due.iter()
            .filter_map(|k| self.pending.remove(k))
            .map(|(h, n, _)| (h, n))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// 5 s after the first failure, doubling, at most 5 min.
fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(10);
    (RETRY_FIRST * factor).min(RETRY_MAX)
}

/// How the backend runs its commands: [`ExecHooks`] in the daemon, a fake in unit tests.
pub trait HookRunner: Send + Sync + 'static {
    /// Runs `hook` and returns its output, or why it failed.
    fn run(
        &self,
        hook: &Hook<'_>,
    ) -> impl std::future::Future<Output = Result<HookOutput, HookError>> + Send;
}

/// The real commands, through `exec::hooks`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecHooks;

impl HookRunner for ExecHooks {
    async fn run(&self, hook: &Hook<'_>) -> Result<HookOutput, HookError> {
        hooks::run(hook).await
    }
}

/// The extension backend (generic over the command runner for tests).
#[derive(Debug)]
pub struct Extension<R: HookRunner> {
    runner: Arc<R>,
    cfg: Arc<ExtensionConfig>,
    mtu: u32,
    network: Option<Ipv4Net>,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
    events: Option<mpsc::UnboundedSender<Vec<LeaseEvent>>>,
}

impl<R: HookRunner> Extension<R> {
    /// Reads the commands from the config; `runner` runs them ([`ExecHooks`] in the daemon).
    ///
    /// # Errors
    /// A command option that is not a string.
    pub fn new(ctx: &BackendContext, runner: R) -> anyhow::Result<Self> {
        Ok(Extension {
            runner: Arc::new(runner),
            cfg: Arc::new(ExtensionConfig::from_backend(&ctx.config.backend)?),
            mtu: ctx.iface.mtu,
            network: ctx.config.network_v4(),
            // Upstream publishes and passes on the interface address, not --public-ip.
            public_ip: ctx.iface.iface_addr,
            public_ipv6: ctx.iface.iface_addr_v6,
            events: None,
        })
    }
}

impl<R: HookRunner> Extension<R> {
    /// Runs the `PostStartupCommand`, if any, with `own`'s variables.
    async fn post_startup(&self, own: &Lease) -> anyhow::Result<()> {
        match &self.cfg.post_startup {
            None => tracing::info!("No post startup command configured - skipping"),
            Some(command) => {
                let vars = post_startup_vars(self.network, own, self.public_ip, self.public_ipv6);
                let hook = Hook {
                    name: "PostStartupCommand",
                    command,
                    vars,
                    stdin: "",
                    timeout: None,
                };
                let out = self.runner.run(&hook).await?;
                tracing::info!(command = %command, output = %out.output, "ran PostStartupCommand");
            }
        }
        Ok(())
    }
}

impl<R: HookRunner> Backend for Extension<R> {
    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn prepare(&mut self) -> anyhow::Result<BackendAttrs> {
        let backend_data = match &self.cfg.pre_startup {
            None => {
                tracing::info!("No pre startup command configured - skipping");
                None
            }
            Some(command) => {
                let hook = Hook {
                    name: "PreStartupCommand",
                    command,
                    vars: Vec::new(),
                    stdin: "",
                    timeout: None,
                };
                let out = self.runner.run(&hook).await?;
                if out.truncated {
                    bail!(
                        "PreStartupCommand {command:?} printed more than {} bytes, too much for a lease's BackendData",
                        hooks::MAX_OUTPUT
                    );
                }
                tracing::info!(command = %command, output = %out.output, "ran PreStartupCommand");
                let json = serde_json::to_string(&out.output)
                    .context("encoding the PreStartupCommand output")?;
                Some(RawJson::new(&json).context("encoding the PreStartupCommand output")?)
            }
        };
        Ok(BackendAttrs {
            backend_type: Some(BACKEND_TYPE.to_owned()),
            backend_data,
            backend_v6_data: None,
        })
    }

    async fn start(&mut self, own: &Lease) -> anyhow::Result<()> {
        self.post_startup(own).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_subnet_hooks(self.runner.clone(), self.cfg.clone(), rx));
        self.events = Some(tx);
        Ok(())
    }

    /// Our subnet changed: the `PostStartupCommand` runs again, exactly as at start (same
    /// variables, now of the new lease), so whatever it set up for our subnet can follow.
    /// Upstream has no such path (its flanneld exits when the lease is lost, and the restart
    /// runs the command with the new subnet); we do what that restart would. A failure is
    /// only logged here, not fatal as at start: the daemon is running, with its lease held.
    async fn moved(&mut self, old: &Lease, new: &Lease) -> anyhow::Result<()> {
        tracing::info!(old = %old.subnet(), new = %new.subnet(), "our subnet moved; running PostStartupCommand again");
        self.post_startup(new).await
    }

    async fn apply(&mut self, events: &[LeaseEvent]) {
        let sent = match &self.events {
            Some(tx) => tx.send(events.to_vec()).is_ok(),
            None => false,
        };
        if !sent {
            tracing::error!(
                "extension backend: the command runner is gone; {} lease events dropped",
                events.len()
            );
        }
    }
}

/// The task that runs add/remove commands in order and retries failed ones.
async fn run_subnet_hooks<R: HookRunner>(
    runner: Arc<R>,
    cfg: Arc<ExtensionConfig>,
    mut rx: mpsc::UnboundedReceiver<Vec<LeaseEvent>>,
) {
    let mut retries = RetryQueue::default();
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { return };
                for ev in &batch {
                    let lease = match ev { LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l };
                    match ev {
                        LeaseEvent::Added(l) => tracing::info!("Subnet added: {} via {}", l.subnet(), l.attrs.public_ip),
                        LeaseEvent::Removed(l) => tracing::info!("Subnet removed: {}", l.subnet()),
                    }
                    retries.supersede(&lease.key);
                    match plan_event(&cfg, ev) {
                        Plan::Run(hook) => {
                            if !run_subnet_hook(&*runner, &hook, 0).await {
                                let delay = retries.failed(hook, 1, Instant::now());
                                tracing::warn!(subnet = %lease.subnet(), "will retry in {delay:?}");
                            }
                        }
                        Plan::Nothing => {}
                        Plan::Ignore(why) => tracing::warn!("{why}"),
                    }
                }
            }
            _ = sleep_until_opt(retries.next_due()) => {
                for (hook, failures) in retries.take_due(Instant::now()) {
                    if !run_subnet_hook(&*runner, &hook, failures).await {
                        let delay = retries.failed(hook.clone(), failures + 1, Instant::now());
                        tracing::warn!(subnet = %hook.subnet.ipv4, "will retry in {delay:?}");
                    }
                }
            }
        }
    }
}

/// Runs one add/remove command and logs the result; `true` on success.
async fn run_subnet_hook<R: HookRunner>(
    runner: &R,
    hook: &SubnetHook,
    failures_before: u32,
) -> bool {
    let run = Hook {
        name: hook.kind.option(),
        command: &hook.command,
        vars: hook.vars.clone(),
        stdin: &hook.stdin,
        timeout: Some(SUBNET_HOOK_TIMEOUT),
    };
    match runner.run(&run).await {
        Ok(out) => {
            tracing::info!(
                subnet = %hook.subnet.ipv4, command = %hook.command, output = %out.output, attempt = failures_before + 1,
                "ran {}", run.name
            );
            true
        }
        Err(e) => {
            tracing::error!(subnet = %hook.subnet.ipv4, attempt = failures_before + 1, "{:#}", anyhow::Error::new(e));
            false
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The context the extension backend runs with: upstream publishes the interface address
/// as `PublicIP` (and `PublicIPv6`) whatever `--public-ip` says, so the daemon's dispatch
/// passes this instead of its own context.
pub fn context_for_extension(ctx: &BackendContext) -> BackendContext {
    let mut ctx = ctx.clone();
    if ctx.iface.public_ip != ctx.iface.iface_addr {
        tracing::warn!(
            "the extension backend publishes the interface address {} as PublicIP, not --public-ip {} (as upstream does)",
            ctx.iface.iface_addr,
            ctx.iface.public_ip
        );
    }
    ctx.iface.public_ip = ctx.iface.iface_addr;
    ctx.iface.public_ipv6 = ctx.iface.iface_addr_v6;
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::LeaseAttrs;

    fn config_from_json(json: &str) -> anyhow::Result<ExtensionConfig> {
        let nc = crate::config::NetworkConfig::parse(json)?;
        ExtensionConfig::from_backend(&nc.backend)
    }

    fn lease(subnet: &str, ip: &str, ty: Option<&str>, data: Option<&str>) -> Lease {
        let net: Ipv4Net = subnet.parse().unwrap();
        Lease {
            key: SubnetKey {
                ipv4: net,
                ipv6: None,
            },
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: ty.map(str::to_owned),
                backend_data: data.map(|d| RawJson::new(d).unwrap()),
                backend_v6_data: None,
            },
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn cfg() -> ExtensionConfig {
        config_from_json(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"extension","subnetaddcommand":"add $SUBNET","SubnetRemoveCommand":"rm $SUBNET","PreStartupCommand":""}}"#,
        )
        .unwrap()
    }

    #[test]
    fn options_match_case_insensitively_and_empty_means_absent() {
        let c = cfg();
        assert_eq!(c.subnet_add.as_deref(), Some("add $SUBNET"));
        assert_eq!(c.pre_startup, None);
        let err = config_from_json(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"extension","SubnetAddCommand":7}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("Backend.SubnetAddCommand: must be a string"),
            "{err}"
        );
    }

    #[test]
    fn add_and_remove_get_subnet_public_ip_and_decoded_backend_data() {
        let l = lease(
            "10.5.7.0/24",
            "192.0.2.3",
            Some("extension"),
            Some(r#""key=abc\n2""#),
        );
        let Plan::Run(h) = plan_event(&cfg(), &LeaseEvent::Added(l.clone())) else {
            panic!()
        };
        assert_eq!(h.kind, SubnetHookKind::Add);
        assert_eq!(h.command, "add $SUBNET");
        assert_eq!(
            h.vars,
            vec![
                ("SUBNET", "10.5.7.0/24".to_owned()),
                ("PUBLIC_IP", "192.0.2.3".to_owned())
            ]
        );
        assert_eq!(h.stdin, "key=abc\n2");
        let Plan::Run(h) = plan_event(&cfg(), &LeaseEvent::Removed(l)) else {
            panic!()
        };
        assert_eq!(
            (h.kind, h.command.as_str()),
            (SubnetHookKind::Remove, "rm $SUBNET")
        );
    }

    #[test]
    fn other_backends_and_undecodable_data_are_ignored() {
        for l in [
            lease("10.5.7.0/24", "192.0.2.3", None, None),
            lease(
                "10.5.7.0/24",
                "192.0.2.3",
                Some("vxlan"),
                Some(r#"{"VNI":1}"#),
            ),
            lease(
                "10.5.7.0/24",
                "192.0.2.3",
                Some("extension"),
                Some(r#"{"not":"a string"}"#),
            ),
        ] {
            assert!(matches!(
                plan_event(&cfg(), &LeaseEvent::Added(l)),
                Plan::Ignore(_)
            ));
        }
        // No data at all is an empty stdin line.
        let Plan::Run(h) = plan_event(
            &cfg(),
            &LeaseEvent::Added(lease("10.5.7.0/24", "192.0.2.3", Some("extension"), None)),
        ) else {
            panic!()
        };
        assert_eq!(h.stdin, "");
        let none = ExtensionConfig::default();
        let l = lease("10.5.7.0/24", "192.0.2.3", Some("extension"), None);
        assert_eq!(plan_event(&none, &LeaseEvent::Removed(l)), Plan::Nothing);
    }

    #[test]
    fn post_startup_vars_print_like_go() {
        let own = lease("10.5.3.0/24", "192.0.2.1", Some("extension"), None);
        let vars = post_startup_vars(
            Some("10.5.0.0/16".parse().unwrap()),
            &own,
            "192.0.2.1".parse().unwrap(),
            None,
        );
        assert_eq!(
            vars,
            vec![
                ("NETWORK", "10.5.0.0/16".to_owned()),
                ("SUBNET", "10.5.3.0/24".to_owned()),
                ("IPV6SUBNET", "::/0".to_owned()),
                ("PUBLIC_IP", "192.0.2.1".to_owned()),
                ("PUBLIC_IPV6", "<nil>".to_owned()),
            ]
        );
    }

    #[test]
    fn failed_hooks_back_off_and_newer_events_replace_them() {
        let l = lease("10.5.7.0/24", "192.0.2.3", Some("extension"), None);
        let Plan::Run(h) = plan_event(&cfg(), &LeaseEvent::Added(l.clone())) else {
            panic!()
        };
        let t0 = Instant::now();
        let mut q = RetryQueue::default();
        assert_eq!(q.failed(h.clone(), 1, t0), Duration::from_secs(5));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(5)));
        assert!(q.take_due(t0 + Duration::from_secs(4)).is_empty());
        let due = q.take_due(t0 + Duration::from_secs(5));
        assert_eq!(due, vec![(h.clone(), 1)]);
        assert!(q.is_empty());
        assert_eq!(q.failed(h.clone(), 2, t0), Duration::from_secs(10));
        q.supersede(&l.key);
        assert!(q.is_empty() && q.next_due().is_none());
        assert_eq!(retry_delay(7), Duration::from_secs(300));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(300));
    }

    /// One recorded run: (option, command, vars, stdin).
    type Run = (String, String, Vec<(&'static str, String)>, String);

    /// Runs nothing: records each command and answers from a script.
    #[derive(Debug, Default)]
    struct FakeHooks {
        /// (option, command, vars, stdin) of every run, in order.
        log: std::sync::Mutex<Vec<Run>>,
        /// How many runs of `SubnetAddCommand` fail before one succeeds.
        add_failures: std::sync::Mutex<u32>,
    }

    impl HookRunner for Arc<FakeHooks> {
        async fn run(&self, hook: &Hook<'_>) -> Result<HookOutput, HookError> {
            self.log.lock().unwrap().push((
                hook.name.to_owned(),
                hook.command.to_owned(),
                hook.vars.clone(),
                hook.stdin.to_owned(),
            ));
            let mut left = self.add_failures.lock().unwrap();
            if hook.name == "SubnetAddCommand" && *left > 0 {
                *left -= 1;
                return Err(HookError::TimedOut {
                    name: hook.name,
                    command: hook.command.to_owned(),
                    after: SUBNET_HOOK_TIMEOUT,
                    output: String::new(),
                });
            }
            Ok(HookOutput {
                output: format!("out of {}", hook.command),
                truncated: false,
            })
        }
    }

    fn ctx(backend: &str) -> BackendContext {
        BackendContext {
            config: crate::config::NetworkConfig::parse(&format!(
                r#"{{"Network":"10.5.0.0/16","Backend":{backend}}}"#
            ))
            .unwrap(),
            iface: crate::backend::ExternalInterface {
                name: "eth0".into(),
                index: 2,
                mtu: 1500,
                iface_addr: "192.0.2.1".parse().unwrap(),
                iface_addr_v6: None,
                public_ip: "192.0.2.1".parse().unwrap(),
                public_ipv6: None,
            },
        }
    }

    #[tokio::test]
    async fn pre_startup_output_is_published_and_post_startup_gets_the_lease() {
        let hooks = Arc::new(FakeHooks::default());
        let c =
            ctx(r#"{"Type":"extension","PreStartupCommand":"pre","PostStartupCommand":"post"}"#);
        let mut ext = Extension::new(&c, hooks.clone()).unwrap();
        let attrs = ext.prepare().await.unwrap();
        assert_eq!(attrs.backend_type.as_deref(), Some("extension"));
        assert_eq!(
            attrs.backend_data.as_ref().map(RawJson::get),
            Some(r#""out of pre""#)
        );
        let own = lease("10.5.3.0/24", "192.0.2.1", Some("extension"), None);
        ext.start(&own).await.unwrap();
        let log = hooks.log.lock().unwrap().clone();
        assert_eq!(log.len(), 2);
        assert_eq!(
            (log[0].0.as_str(), log[0].1.as_str()),
            ("PreStartupCommand", "pre")
        );
        assert_eq!(
            (log[1].0.as_str(), log[1].1.as_str()),
            ("PostStartupCommand", "post")
        );
        assert!(log[1].2.contains(&("SUBNET", "10.5.3.0/24".to_owned())));
    }

    #[tokio::test]
    async fn a_move_runs_post_startup_again_with_the_new_subnet() {
        let hooks = Arc::new(FakeHooks::default());
        let c = ctx(r#"{"Type":"extension","PostStartupCommand":"post"}"#);
        let mut ext = Extension::new(&c, hooks.clone()).unwrap();
        ext.prepare().await.unwrap();
        let old = lease("10.5.3.0/24", "192.0.2.1", Some("extension"), None);
        let new = lease("10.5.8.0/24", "192.0.2.1", Some("extension"), None);
        ext.start(&old).await.unwrap();
        ext.moved(&old, &new).await.unwrap();
        let log = hooks.log.lock().unwrap().clone();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(
            (log[1].0.as_str(), log[1].1.as_str(), log[1].3.as_str()),
            ("PostStartupCommand", "post", "")
        );
        // The same variables a start with the new lease gets.
        let want = post_startup_vars(
            c.config.network_v4(),
            &new,
            c.iface.iface_addr,
            c.iface.iface_addr_v6,
        );
        assert_eq!(log[1].2, want);
        assert!(log[1].2.contains(&("SUBNET", "10.5.8.0/24".to_owned())));
    }

    /// Real time (no paused clock in this build): about six seconds.
    #[tokio::test]
    async fn a_failed_add_command_is_retried_after_the_backoff() {
        let hooks = Arc::new(FakeHooks::default());
        *hooks.add_failures.lock().unwrap() = 1;
        let c = ctx(r#"{"Type":"extension","SubnetAddCommand":"add"}"#);
        let mut ext = Extension::new(&c, hooks.clone()).unwrap();
        ext.prepare().await.unwrap();
        let own = lease("10.5.3.0/24", "192.0.2.1", Some("extension"), None);
        ext.start(&own).await.unwrap();
        let peer = lease(
            "10.5.7.0/24",
            "192.0.2.3",
            Some("extension"),
            Some(r#""data""#),
        );
        ext.apply(&[LeaseEvent::Added(peer)]).await;
        let adds = || {
            hooks
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.0 == "SubnetAddCommand")
                .cloned()
                .collect::<Vec<_>>()
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(adds().len(), 1, "the first attempt runs at once");
        tokio::time::sleep(RETRY_FIRST).await;
        let runs = adds();
        assert_eq!(runs.len(), 2, "one retry after {RETRY_FIRST:?}");
        assert_eq!(runs[1].3, "data");
        assert!(runs[1].2.contains(&("SUBNET", "10.5.7.0/24".to_owned())));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(adds().len(), 2, "a success is not retried");
    }
}
