//! The effects of `flannelctl`: parse the command line, talk to etcd through the daemon's
//! own [`Registry`] or to the local daemon's health server, print, and exit with a status a
//! script can test. What is printed is decided in [`super::render`].

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, Parser};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::args::{status_addr, Command, ConfigCommand, Ctl, Output};
use super::render::{self, LeaseList};
use super::{CtlError, Exit};
use crate::cli::normalize_go_flags_for;
use crate::compat;
use crate::config::{ConfigError, NetworkConfig};
use crate::status::{NodeStatus, STATUS_PATH};
use crate::subnet::lease::{LeaseAttrs, SubnetKey};
use crate::subnet::registry::{AcquireRequest, Registry, RegistryError, StoredKey};

/// How long one etcd or HTTP conversation may take before the command gives up (exit 1):
/// an operator's tool must not hang on a dead endpoint.
const DEADLINE: Duration = Duration::from_secs(15);

/// What a command prints: one result, in both forms.
pub struct Printed {
    pub text: String,
    pub json: Value,
}

/// `flannelctl`'s whole run: arguments (`argv[0]` first) to exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let ctl = match Ctl::try_parse_from(normalize_go_flags_for(&Ctl::command(), args)) {
        Ok(ctl) => ctl,
        Err(e) => {
            // --help and --version print to stdout and succeed; real errors are usage errors.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(Exit::Usage as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            tokio::time::timeout(DEADLINE, execute(&ctl))
                .await
                .unwrap_or_else(|_| {
                    Err(CtlError::failed(format!(
                        "no answer within {DEADLINE:?} (is etcd at {} up?)",
                        ctl.etcd.etcd_endpoints
                    )))
                })
        }),
        Err(e) => Err(CtlError::failed(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    match result {
        Ok(printed) => {
            match ctl.output {
                Output::Table => print!("{}", printed.text),
                Output::Json => println!("{}", pretty(&printed.json)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if ctl.output == Output::Json {
                println!("{}", pretty(&render::error_json(&e)));
            }
            eprintln!("flannelctl: {}", e.message);
            ExitCode::from(e.exit as u8)
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn warn(message: impl std::fmt::Display) {
    eprintln!("flannelctl: warning: {message}");
}

/// Runs one command.
pub async fn execute(ctl: &Ctl) -> Result<Printed, CtlError> {
    match &ctl.command {
        Command::Leases => leases(&connect(ctl).await?).await,
        Command::Lease { subnet } => lease(&connect(ctl).await?, subnet).await,
        Command::Reserve {
            subnet,
            public_ip,
            public_ipv6,
        } => {
            let mut attrs = LeaseAttrs::with_public_ip(*public_ip);
            attrs.public_ipv6 = *public_ipv6;
            reserve(&connect(ctl).await?, subnet, attrs).await
        }
        Command::Unreserve { subnet } => unreserve(&connect(ctl).await?, subnet).await,
        Command::Config(ConfigCommand::Get) => {
            config_get(&connect(ctl).await?, &ctl.etcd.etcd_prefix).await
        }
        Command::Config(ConfigCommand::Check { file }) => {
            // Checked without etcd: a config can be checked before any cluster exists.
            let summary = render::config_summary(&validate(&read_input(file)?)?);
            Ok(Printed {
                text: format!("valid\n{}", render::config_text(&summary)),
                json: json!({ "valid": true, "summary": summary }),
            })
        }
        Command::Config(ConfigCommand::Set { file }) => {
            // Validated by the daemon's own parser before etcd is contacted: an invalid
            // config exits 4 and nothing is written.
            let text = read_input(file)?;
            let config = validate(&text).map_err(|e| {
                let mut e = CtlError::from(e);
                e.message.push_str(" (nothing was written)");
                e
            })?;
            let summary = render::config_summary(&config);
            let registry = connect(ctl).await?;
            registry.put_config(&text).await.map_err(etcd_failed)?;
            let key = compat::config_key(&ctl.etcd.etcd_prefix);
            Ok(Printed {
                text: format!(
                    "wrote the network config to {key}\n{}",
                    render::config_text(&summary)
                ),
                json: json!({ "written": key, "summary": summary }),
            })
        }
        Command::Status => status(ctl).await,
    }
}

/// What flanneld accepts: its own parser ([`NetworkConfig::parse`]), then the one check
/// `daemon::run` adds after it (same key, same words).
fn validate(text: &str) -> Result<NetworkConfig, ConfigError> {
    let config = NetworkConfig::parse(text)?;
    if config.ipv4.is_none() {
        return Err(ConfigError {
            key: "EnableIPv4".into(),
            reason: "IPv6-only networks are not supported by flannel-rs yet".into(),
        });
    }
    Ok(config)
}

fn etcd_failed(e: RegistryError) -> CtlError {
    CtlError::failed(e.to_string())
}

/// Connects as flanneld does ([`crate::cli::EtcdFlags::options`]) and checks etcd answers.
async fn connect(ctl: &Ctl) -> Result<Registry, CtlError> {
    let opts = ctl.etcd.options();
    if opts.endpoints.is_empty() {
        return Err(CtlError::new(
            Exit::Usage,
            "--etcd-endpoints: no endpoint given",
        ));
    }
    // As flanneld refuses it (Cli::validate): half a client identity is a mistake.
    if opts.certfile.is_some() != opts.keyfile.is_some() {
        return Err(CtlError::new(
            Exit::Usage,
            "--etcd-certfile and --etcd-keyfile must be given together",
        ));
    }
    let unreachable = |e: RegistryError| {
        CtlError::failed(format!(
            "cannot reach etcd at {}: {e}",
            ctl.etcd.etcd_endpoints
        ))
    };
    let registry = Registry::connect(&opts).await.map_err(unreachable)?;
    registry.ping().await.map_err(unreachable)?;
    Ok(registry)
}

/// The keys under `subnets/` that `wanted` keeps (by key name), with the time left on
/// their etcd leases.
async fn list(registry: &Registry, wanted: impl Fn(&str) -> bool) -> Result<LeaseList, CtlError> {
    let keys = registry.list_stored().await.map_err(etcd_failed)?;
    let mut with_ttl = Vec::with_capacity(keys.len());
    for key in keys.into_iter().filter(|k| wanted(&k.key)) {
        // One question per lease; a failure only blanks that cell (the listing matters more).
        let ttl = registry.time_left(key.etcd_lease).await.unwrap_or(None);
        with_ttl.push((key, ttl));
    }
    Ok(render::lease_list(with_ttl))
}

/// Says on stderr which keys flanneld cannot use (the table shows them too, but a script
/// reading `-o json` may not look at `malformed`).
fn warn_malformed(list: &LeaseList) {
    for bad in &list.malformed {
        warn(format_args!(
            "malformed lease key {}: {}",
            bad.key, bad.error
        ));
    }
}

async fn leases(registry: &Registry) -> Result<Printed, CtlError> {
    let list = list(registry, |_| true).await?;
    warn_malformed(&list);
    Ok(Printed {
        text: render::leases_text(&list),
        json: json!(list),
    })
}

async fn lease(registry: &Registry, subnet: &SubnetKey) -> Result<Printed, CtlError> {
    let list = list(registry, |key| render::names(subnet, key)).await?;
    if let Some(view) = list.leases.iter().find(|l| render::names(subnet, &l.key)) {
        return Ok(Printed {
            text: render::lease_text(view),
            json: json!(view),
        });
    }
    if let Some(bad) = list
        .malformed
        .iter()
        .find(|m| render::names(subnet, &m.key))
    {
        return Err(CtlError::failed(format!(
            "the lease key {} is malformed: {}",
            bad.key, bad.error
        )));
    }
    Err(CtlError::new(
        Exit::NotFound,
        format!("no lease or reservation for {}", subnet.ipv4),
    ))
}

async fn reserve(
    registry: &Registry,
    subnet: &SubnetKey,
    attrs: LeaseAttrs,
) -> Result<Printed, CtlError> {
    if subnet.ipv4.addr() != subnet.ipv4.network() {
        return Err(CtlError::new(
            Exit::Usage,
            format!(
                "{} is not a network address (did you mean {}?)",
                subnet.ipv4,
                subnet.ipv4.trunc()
            ),
        ));
    }
    check_against_config(registry, subnet, &attrs).await?;

    let current = registry.get_subnet(subnet).await.map_err(etcd_failed)?;
    let expect = match &current {
        None => None,
        // A live lease belongs to its daemon, which renews it: overwriting it in place
        // would be undone by that daemon (it restores a stray write over its key).
        Some(live) if live.etcd_lease != 0 => {
            let holder = render::lease_view(live, None)
                .map(|v| format!(" held by {}", v.public_ip))
                .unwrap_or_default();
            return Err(CtlError::failed(format!(
                "{} is a live lease{holder}, not free: reserve it once that lease is gone \
                 (its node stopped and the lease expired, or deleted with etcdctl)",
                subnet.ipv4
            )));
        }
        Some(reservation) => Some(reservation.mod_revision),
    };
    if !registry
        .put_reservation(subnet, &attrs, expect)
        .await
        .map_err(etcd_failed)?
    {
        return Err(CtlError::failed(format!(
            "{} changed while it was being reserved; look again with `flannelctl lease {}`",
            subnet.ipv4, subnet.ipv4
        )));
    }
    // flanneld takes the first lease in key order that carries its public IP: another one
    // could win over the reservation.
    if let Ok(list) = list(registry, |key| !render::names(subnet, key)).await {
        for other in list
            .leases
            .iter()
            .filter(|l| l.public_ip == attrs.public_ip.to_string())
        {
            warn(format_args!(
                "{} also holds {} ({}): a flanneld with that IP may take that one instead; \
                 unreserve or delete it",
                other.public_ip,
                other.subnet,
                if other.reservation {
                    "reservation"
                } else {
                    "lease"
                }
            ));
        }
    }
    let written = StoredKey {
        key: subnet.to_string(),
        value: attrs.to_json().into_bytes(),
        etcd_lease: 0,
        mod_revision: 0,
    };
    let view = render::lease_view(&written, None).ok();
    let action = if expect.is_some() {
        "updated"
    } else {
        "created"
    };
    Ok(Printed {
        text: format!(
            "reserved {} for {} ({action})\n",
            subnet.ipv4, attrs.public_ip
        ),
        json: json!({ "action": action, "lease": view }),
    })
}

/// Refuses a reservation the daemon would delete: acquisition drops a lease with its public
/// IP whose subnet does not fit the config. Without a readable config there is nothing to
/// check against: say so and go on (the config may well be written next).
async fn check_against_config(
    registry: &Registry,
    subnet: &SubnetKey,
    attrs: &LeaseAttrs,
) -> Result<(), CtlError> {
    let config = match registry.get_config().await.map_err(etcd_failed)? {
        None => {
            warn("no network config in etcd yet: the subnet is not checked against it");
            return Ok(());
        }
        Some(text) => match NetworkConfig::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                warn(format_args!(
                    "the config in etcd is invalid, the subnet is not checked against it: {e}"
                ));
                return Ok(());
            }
        },
    };
    let Some(ipv4) = config.ipv4 else {
        return Ok(());
    };
    let req = AcquireRequest {
        attrs: attrs.clone(),
        ipv4,
        ipv6: config.ipv6,
        preferred: None,
    };
    if req.accepts(subnet) {
        return Ok(());
    }
    let v4 = render::config_summary(&config).ipv4;
    let range = v4
        .map(|r| {
            format!(
                " (Network {}, SubnetLen {}, SubnetMin {}, SubnetMax {}{})",
                r.network,
                r.subnet_len,
                r.subnet_min,
                r.subnet_max,
                if config.ipv6.is_some() {
                    ", and IPv6 on: give the key's IPv6 part too"
                } else {
                    ""
                }
            )
        })
        .unwrap_or_default();
    Err(CtlError::new(
        Exit::Usage,
        format!(
            "{subnet} does not fit the network config{range}: flanneld would delete such a \
             reservation"
        ),
    ))
}

async fn unreserve(registry: &Registry, subnet: &SubnetKey) -> Result<Printed, CtlError> {
    let Some(stored) = registry.get_subnet(subnet).await.map_err(etcd_failed)? else {
        return Err(CtlError::new(
            Exit::NotFound,
            format!("no reservation for {subnet}"),
        ));
    };
    let view = render::lease_view(&stored, None).ok();
    if stored.etcd_lease != 0 {
        let holder = view
            .as_ref()
            .map(|v| format!(" held by {}", v.public_ip))
            .unwrap_or_default();
        return Err(CtlError::failed(format!(
            "refusing: {} is a live lease{holder}, not a reservation (it has a TTL; its \
             flanneld renews it, and it expires by itself once that node is gone)",
            subnet.ipv4
        )));
    }
    if !registry
        .delete_at(subnet, stored.mod_revision)
        .await
        .map_err(etcd_failed)?
    {
        return Err(CtlError::failed(format!(
            "{} changed while it was being removed; look again with `flannelctl lease {}`",
            subnet.ipv4, subnet.ipv4
        )));
    }
    Ok(Printed {
        text: format!("removed the reservation of {}\n", subnet.ipv4),
        json: json!({ "action": "deleted", "key": subnet.to_string(), "lease": view }),
    })
}

async fn config_get(registry: &Registry, prefix: &str) -> Result<Printed, CtlError> {
    let key = compat::config_key(prefix);
    let Some(text) = registry.get_config().await.map_err(etcd_failed)? else {
        return Err(CtlError::new(
            Exit::NotFound,
            format!("no network config at {key}"),
        ));
    };
    // A stored config that does not validate is still shown (that is when it is wanted).
    let (summary, error) = match validate(&text) {
        Ok(c) => (Some(render::config_summary(&c)), None),
        Err(e) => {
            warn(&e);
            (
                None,
                Some(json!({ "key": e.key, "message": e.to_string() })),
            )
        }
    };
    let mut shown = text.clone();
    if !shown.ends_with('\n') {
        shown.push('\n');
    }
    Ok(Printed {
        text: shown,
        json: json!({
            "key": key,
            "text": text,
            "config": serde_json::from_str::<Value>(&text).ok(),
            "valid": error.is_none(),
            "summary": summary,
            "error": error,
        }),
    })
}

/// A config file's text; `-` is standard input.
fn read_input(file: &Path) -> Result<String, CtlError> {
    let read = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(file)
    };
    read.map_err(|e| CtlError::failed(format!("reading {}: {e}", file.display())))
}

async fn status(ctl: &Ctl) -> Result<Printed, CtlError> {
    let addr = status_addr(&ctl.healthz)?;
    let unreachable = |why: String| {
        CtlError::failed(format!(
            "cannot ask the local flanneld at {addr} (its --healthz-ip/--healthz-port): {why}"
        ))
    };
    let uri: hyper::Uri = format!("http://{addr}{STATUS_PATH}")
        .parse()
        .map_err(|e| unreachable(format!("{e}")))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| unreachable("no answer within 5s".into()))?
        .map_err(|e| unreachable(format!("{e}")))?;
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?
        .to_bytes();
    if code == hyper::StatusCode::NOT_FOUND {
        return Err(unreachable(format!(
            "it has no {STATUS_PATH} (a flanneld older than this flannelctl?)"
        )));
    }
    if !code.is_success() {
        return Err(unreachable(format!("{STATUS_PATH} answered {code}")));
    }
    let node: NodeStatus = serde_json::from_slice(&body)
        .map_err(|e| unreachable(format!("{STATUS_PATH} is not a status document: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Printed {
        text: render::status_text(&node, now),
        json: json!(node),
    })
}
