//! The `aws-vpc` backend: no overlay at all. Every node's subnet is a route in the VPC's route
//! tables pointing at that node's network interface (ENI), so pod traffic crosses the VPC
//! natively, at full speed and MTU.
//!
//! Upstream removed this backend in v0.20; we keep v0.19.2's behaviour (see
//! `flannel-reference.md` §5.4) and improve it:
//!
//! 1. Instance id and region from the metadata service ([`imds`]; IMDSv2, v1 fallback).
//! 2. `DescribeInstances`: the ENI whose private addresses include our interface address.
//! 3. `ModifyNetworkInterfaceAttribute SourceDestCheck=false` on it (a failure is only a
//!    warning, as upstream: an operator may have done it already, without granting us the
//!    permission).
//! 4. Route tables: `RouteTableID` (a string or a list), else the table associated with the
//!    ENI's subnet, else the VPC's main table.
//! 5. Per table ([`plan`]): blackhole routes inside the Network are deleted, our subnet's route
//!    is created if missing and *replaced* (`ReplaceRoute`) if it points elsewhere — upstream
//!    deleted and re-created it, leaving the subnet unrouted in between.
//!
//! Other nodes' leases need nothing from us (each node installs its own route), so
//! [`Backend::apply`] ignores them, as upstream. The lease carries `PublicIP` only; the MTU is
//! the interface's.
//!
//! # Errors and retries
//! Configuration mistakes stop the daemon at start-up with exit status 1 and a message that
//! says what to fix: an empty `RouteTableID` list, a table that does not exist, no ENI with our
//! address, a table at its route limit (50 by default). Everything else — throttling, missing
//! IAM permissions, network trouble, a metadata service still starting — is logged with the
//! API's own code and message and retried with backoff (1 s doubling to 60 s) for as long as it
//! takes; the daemon never exits because of it. Once running, the tables are checked again
//! every [`RESYNC_INTERVAL`] and repaired (a route deleted by hand comes back); failures there
//! are logged and retried, never fatal.
//!
//! # Moving to another subnet
//! When the lease is lost and a *different* subnet is acquired while running
//! ([`Backend::moved`]), the route of the new subnet is created as at start and the old
//! subnet's route deleted from every table where it still points at our ENI (its new holder
//! may have replaced it already: then it is theirs and stays). Upstream had no such path: its
//! daemon exited and the restart routed the new subnet, leaving the old route behind.
//!
//! # Cloud state owned by this module
//! - the route for our subnet in each configured/discovered route table (kept on shutdown, so
//!   a restart does not interrupt pod traffic; upstream never deleted it either);
//! - blackhole routes inside the Network in those tables (deleted);
//! - the ENI's source/destination check (turned off, never back on).

pub mod ec2;
pub mod imds;
pub mod plan;
pub mod transport;
pub mod xml;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;

use self::ec2::{Ec2, Ec2Error};
use self::imds::{Imds, ImdsError};
use self::plan::{plan_former, plan_table, RouteOp};
use super::{Backend, BackendAttrs, BackendContext};
use crate::cancel::CancelToken;
use crate::config::BackendConfig;
use crate::subnet::lease::{Lease, LeaseEvent};

/// How often the route tables are checked once the backend runs.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// EC2 error codes that retrying cannot fix.
const FATAL_CODES: [&str; 4] = [
    "InvalidRouteTableID.NotFound",
    "InvalidRouteTableID.Malformed",
    "InvalidRouteTableId.Malformed",
    "RouteLimitExceeded",
];

/// The `Backend` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsVpcConfig {
    /// `RouteTableID`: the tables to program; `None` to discover the one for our subnet.
    pub route_tables: Option<Vec<String>>,
}

impl AwsVpcConfig {
    /// Reads `RouteTableID` (case-insensitive): absent, `null` or `""` ⇒ discover (upstream
    /// treats `""` as unset too); a string ⇒ that table; a list of strings ⇒ those tables.
    ///
    /// # Errors
    /// An empty list, a list with a non-string or empty entry, or another JSON type.
    pub fn from_backend(backend: &BackendConfig) -> Result<Self, AwsVpcError> {
        let bad = |why: String| {
            AwsVpcError::Config(format!(
                "invalid network config: Backend.RouteTableID: {why}"
            ))
        };
        let route_tables = match backend.option("RouteTableID") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(vec![s.trim().to_owned()]),
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err(bad(
                        "the list is empty; name at least one route table, or remove the key to use the table of this instance's subnet".into(),
                    ));
                }
                let mut ids: Vec<String> = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) if !s.trim().is_empty() => {
                            if !ids.iter().any(|i| i == s.trim()) {
                                ids.push(s.trim().to_owned());
                            }
                        }
                        other => {
                            return Err(bad(format!(
                                "every entry must be a route table id (\"rtb-…\"), got {other}"
                            )))
                        }
                    }
                }
                Some(ids)
            }
            Some(other) => {
                return Err(bad(format!(
                    "must be a string or a list of strings, got {other}"
                )))
            }
        };
        Ok(AwsVpcConfig { route_tables })
    }
}

/// Why setting up or syncing the routes failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsVpcError {
    /// Something only the operator can fix; fatal at start-up.
    #[error("{0}")]
    Config(String),
    #[error("{what}")]
    Ec2 {
        what: String,
        // Boxed: keeps `Result<_, AwsVpcError>` small on the happy path.
        #[source]
        source: Box<Ec2Error>,
    },
    #[error("{what}")]
    Imds {
        what: String,
        #[source]
        source: Box<ImdsError>,
    },
    /// A state that may change by itself (an instance not visible to the API yet).
    #[error("{0}")]
    NotYet(String),
}

impl AwsVpcError {
    /// Whether retrying is pointless.
    pub fn is_fatal(&self) -> bool {
        match self {
            AwsVpcError::Config(_) => true,
            AwsVpcError::Imds { source, .. } => matches!(**source, ImdsError::Disabled),
            AwsVpcError::Ec2 { source, .. } => {
                source.code().is_some_and(|c| FATAL_CODES.contains(&c))
            }
            _ => false,
        }
    }
}

fn ec2_err(what: impl Into<String>) -> impl FnOnce(Ec2Error) -> AwsVpcError {
    let what = what.into();
    move |source| AwsVpcError::Ec2 {
        what,
        source: Box::new(source),
    }
}

fn imds_err(what: &'static str) -> impl FnOnce(ImdsError) -> AwsVpcError {
    move |source| AwsVpcError::Imds {
        what: what.to_owned(),
        source: Box::new(source),
    }
}

/// `error: cause: cause…` on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Everything needed to keep the routes right, found once at start-up.
#[derive(Debug)]
struct Target {
    ec2: Arc<Ec2>,
    eni: String,
    tables: Vec<String>,
    network: Ipv4Net,
    subnet: Ipv4Net,
    /// Subnets we held before a move whose routes may still point at our ENI; cleared once a
    /// pass over every table succeeded.
    former: Vec<Ipv4Net>,
    /// Source/destination check confirmed off (or turned off by us).
    src_dst_off: bool,
}

/// Finds the instance, its ENI and the route tables.
async fn discover(
    cfg: &AwsVpcConfig,
    iface_name: &str,
    iface_addr: Ipv4Addr,
    own: Ipv4Net,
    network: Ipv4Net,
) -> Result<Target, AwsVpcError> {
    let http = transport::client()
        .map_err(|e| AwsVpcError::Config(format!("building the TLS client: {e}")))?;
    let imds = Arc::new(Imds::from_env(http.clone()));
    let region = match ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    {
        Some(r) => r,
        None => imds.region().await.map_err(imds_err(
            "reading this instance's region from the metadata service",
        ))?,
    };
    let instance_id = imds.instance_id().await.map_err(imds_err(
        "reading this instance's id from the metadata service",
    ))?;
    let ec2 = Arc::new(Ec2::from_env(http, &region, imds.clone()));
    tracing::info!(
        instance = %instance_id, region = %region, ec2_endpoint = %ec2.endpoint(), metadata = %imds.endpoint(),
        credentials = ec2.credential_source(), "aws-vpc: found this instance"
    );

    let instance = ec2
        .describe_instance(&instance_id)
        .await
        .map_err(ec2_err(format!("looking up instance {instance_id}")))?
        .ok_or_else(|| {
            AwsVpcError::NotYet(format!(
                "instance {instance_id} is not (yet) known to EC2 in {region}"
            ))
        })?;
    let addr = iface_addr.to_string();
    let Some(eni) = instance.enis.iter().find(|e| e.private_ips.contains(&addr)) else {
        let have: Vec<String> = instance
            .enis
            .iter()
            .map(|e| format!("{} {:?}", e.id, e.private_ips))
            .collect();
        return Err(AwsVpcError::Config(format!(
            "no network interface of instance {instance_id} has the address {addr} of interface {iface_name}; \
             its interfaces: [{}]; choose the interface with --iface",
            have.join(", ")
        )));
    };
    tracing::info!(eni = %eni.id, address = %addr, "aws-vpc: found the network interface with our address");

    let tables = match &cfg.route_tables {
        Some(ids) => {
            // Fails with InvalidRouteTableID.NotFound naming the unknown ones.
            let found = ec2
                .route_tables_by_id(ids)
                .await
                .map_err(|e| unknown_tables(e, ids, &region))?;
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !found.iter().any(|t| &t.id == *id))
                .collect();
            if !missing.is_empty() {
                return Err(AwsVpcError::Config(format!(
                    "Backend.RouteTableID: route table(s) {missing:?} do not exist in region {region}"
                )));
            }
            ids.clone()
        }
        None => vec![detect_route_table(&ec2, eni).await?],
    };
    Ok(Target {
        ec2,
        eni: eni.id.clone(),
        tables,
        network,
        subnet: own,
        former: Vec::new(),
        src_dst_off: eni.source_dest_check == Some(false),
    })
}

/// Turns "no such table" into a configuration error that names the setting.
fn unknown_tables(e: Ec2Error, ids: &[String], region: &str) -> AwsVpcError {
    match e.code() {
        Some(c) if FATAL_CODES.contains(&c) => AwsVpcError::Config(format!(
            "Backend.RouteTableID {ids:?}: not usable in region {region}: {e}"
        )),
        _ => AwsVpcError::Ec2 {
            what: format!("looking up route tables {ids:?}"),
            source: Box::new(e),
        },
    }
}

/// The table of the ENI's subnet, else the VPC's main table (upstream's `detectRouteTableID`).
async fn detect_route_table(ec2: &Ec2, eni: &xml::Eni) -> Result<String, AwsVpcError> {
    let (Some(subnet), Some(vpc)) = (eni.subnet_id.as_deref(), eni.vpc_id.as_deref()) else {
        return Err(AwsVpcError::NotYet(format!(
            "EC2 did not say which subnet and VPC {} is in",
            eni.id
        )));
    };
    let by_subnet = ec2
        .route_tables_filtered(&[("association.subnet-id", subnet)])
        .await
        .map_err(ec2_err(format!(
            "looking up the route table of subnet {subnet}"
        )))?;
    if let Some(t) = by_subnet.first() {
        tracing::info!(table = %t.id, subnet = %subnet, "aws-vpc: using the route table of our subnet");
        return Ok(t.id.clone());
    }
    let main = ec2
        .route_tables_filtered(&[("association.main", "true"), ("vpc-id", vpc)])
        .await
        .map_err(ec2_err(format!("looking up the main route table of {vpc}")))?;
    match main.first() {
        Some(t) => {
            tracing::info!(table = %t.id, vpc = %vpc, "aws-vpc: using the main route table of our VPC");
            Ok(t.id.clone())
        }
        None => Err(AwsVpcError::Config(format!(
            "no route table is associated with subnet {subnet} and VPC {vpc} has no main route table; set Backend.RouteTableID"
        ))),
    }
}

impl Target {
    /// One pass over everything; idempotent.
    async fn sync(&mut self) -> Result<(), AwsVpcError> {
        if !self.src_dst_off {
            match self.ec2.disable_source_dest_check(&self.eni).await {
                Ok(()) => {
                    tracing::info!(eni = %self.eni, "aws-vpc: turned off source/destination check");
                    self.src_dst_off = true;
                }
                // As upstream: only a warning (the operator may have turned it off already,
                // without granting us the permission). Tried again on the next pass.
                Err(e) => {
                    tracing::warn!(eni = %self.eni, "aws-vpc: could not turn off source/destination check: {}", chain(&e))
                }
            }
        }
        let tables = self
            .ec2
            .route_tables_by_id(&self.tables)
            .await
            .map_err(|e| unknown_tables(e, &self.tables, self.ec2.region()))?;
        for id in &self.tables {
            let Some(table) = tables.iter().find(|t| &t.id == id) else {
                return Err(AwsVpcError::Config(format!(
                    "route table {id} no longer exists"
                )));
            };
            // The new route first, then the former ones: the move never leaves us unrouted.
            let ops = plan_table(table, self.network, self.subnet, &self.eni)
                .into_iter()
                .chain(plan_former(table, &self.former, self.subnet, &self.eni));
            for op in ops {
                self.execute(&op).await?;
            }
        }
        self.former.clear();
        Ok(())
    }

    /// Our lease moved to `subnet`: route it from now on, and the one we had before goes.
    fn move_to(&mut self, subnet: Ipv4Net) {
        if subnet == self.subnet {
            return;
        }
        self.former.retain(|f| *f != subnet);
        self.former.push(self.subnet);
        self.subnet = subnet;
    }

    async fn execute(&self, op: &RouteOp) -> Result<(), AwsVpcError> {
        let ec2 = &self.ec2;
        match op {
            RouteOp::DeleteBlackhole { table, cidr, was } => {
                match ec2.delete_route(table, *cidr).await {
                    Ok(()) => {
                        tracing::info!(table = %table, "aws-vpc: deleted blackhole route {cidr} (was {was})")
                    }
                    Err(e) if e.code() == Some("InvalidRoute.NotFound") => {}
                    Err(e) => {
                        return Err(ec2_err(format!(
                            "deleting blackhole route {cidr} from {table}"
                        ))(e))
                    }
                }
            }
            RouteOp::Create { table, cidr, eni } => match ec2.create_route(table, *cidr, eni).await
            {
                Ok(()) => tracing::info!(table = %table, "aws-vpc: added route {cidr} → {eni}"),
                // Someone added it since we looked: make it ours.
                Err(e) if e.code() == Some("RouteAlreadyExists") => ec2
                    .replace_route(table, *cidr, eni)
                    .await
                    .map_err(ec2_err(format!("replacing route {cidr} in {table}")))?,
                Err(e) => return Err(route_error(e, table, *cidr, eni)),
            },
            RouteOp::Replace {
                table,
                cidr,
                eni,
                was,
            } => match ec2.replace_route(table, *cidr, eni).await {
                Ok(()) => {
                    tracing::info!(table = %table, "aws-vpc: replaced route {cidr} → {eni} (was {was})")
                }
                // Deleted since we looked: create it instead.
                Err(e) if e.code() == Some("InvalidRoute.NotFound") => {
                    ec2.create_route(table, *cidr, eni)
                        .await
                        .map_err(|e| route_error(e, table, *cidr, eni))?;
                    tracing::info!(table = %table, "aws-vpc: added route {cidr} → {eni}");
                }
                Err(e) => {
                    return Err(ec2_err(format!(
                        "replacing route {cidr} in {table} (was {was})"
                    ))(e))
                }
            },
            RouteOp::DeleteFormer { table, cidr, eni } => {
                match ec2.delete_route(table, *cidr).await {
                    Ok(()) => tracing::info!(
                        table = %table,
                        "aws-vpc: deleted route {cidr} → {eni} of the subnet we held before"
                    ),
                    Err(e) if e.code() == Some("InvalidRoute.NotFound") => {}
                    Err(e) => {
                        return Err(ec2_err(format!(
                            "deleting route {cidr} → {eni} (our former subnet) from {table}"
                        ))(e))
                    }
                }
            }
        }
        Ok(())
    }
}

/// A failed `CreateRoute`; a full table becomes a configuration error naming the table.
fn route_error(e: Ec2Error, table: &str, cidr: Ipv4Net, eni: &str) -> AwsVpcError {
    if e.code() == Some("RouteLimitExceeded") {
        return AwsVpcError::Config(format!(
            "route table {table} is full, no room for {cidr} → {eni} ({e}). A VPC route table holds 50 routes \
             unless AWS raised your quota: list another table in Backend.RouteTableID for part of the nodes, \
             or request a higher \"Routes per route table\" quota"
        ));
    }
    AwsVpcError::Ec2 {
        what: format!("adding route {cidr} → {eni} to {table}"),
        source: Box::new(e),
    }
}

/// Exponential backoff, 1 s doubling to 60 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(BACKOFF_FIRST)
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
}

/// Sleeps `d`; `false` if the daemon was told to stop meanwhile.
async fn sleep_unless_stopped(d: Duration, stop: &CancelToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// After a failed start-up step: a fatal error is returned, ready to end start-up;
/// any other is logged and waited out with the next `backoff` delay. `Ok(false)` if
/// the daemon was told to stop meanwhile, `Ok(true)` to try again.
async fn wait_to_retry(
    e: AwsVpcError,
    backoff: &mut Backoff,
    stop: &CancelToken,
) -> anyhow::Result<bool> {
    if e.is_fatal() {
        return Err(anyhow::Error::new(e).context("aws-vpc backend"));
    }
    let d = backoff.next();
    tracing::warn!("aws-vpc: {}; retrying in {d:?}", chain(&e));
    Ok(sleep_unless_stopped(d, stop).await)
}

/// The aws-vpc backend.
#[derive(Debug)]
pub struct AwsVpc {
    cfg: AwsVpcConfig,
    mtu: u32,
    iface_name: String,
    iface_addr: Ipv4Addr,
    network: Option<Ipv4Net>,
    stop: CancelToken,
    /// What the resync task keeps right, once started.
    target: Option<Arc<tokio::sync::Mutex<Target>>>,
}

impl AwsVpc {
    /// Reads the options; `stop` ends retries and the resync task when the daemon stops.
    ///
    /// # Errors
    /// A malformed `RouteTableID`.
    pub fn new(ctx: &BackendContext, stop: CancelToken) -> Result<Self, AwsVpcError> {
        Ok(AwsVpc {
            cfg: AwsVpcConfig::from_backend(&ctx.config.backend)?,
            mtu: ctx.iface.mtu,
            iface_name: ctx.iface.name.clone(),
            iface_addr: ctx.iface.iface_addr,
            network: ctx.config.network_v4(),
            stop,
            target: None,
        })
    }
}

impl Backend for AwsVpc {
    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn prepare(&mut self) -> anyhow::Result<BackendAttrs> {
        // PublicIP only, as upstream.
        Ok(BackendAttrs::default())
    }

    /// Returns once the tables are right, or with the first configuration error. A stop
    /// signal while retrying returns `Ok` so the daemon exits 0, as after any stop signal.
    async fn start(&mut self, own: &Lease) -> anyhow::Result<()> {
        let network = self
            .network
            .ok_or_else(|| anyhow::anyhow!("aws-vpc needs an IPv4 Network"))?;
        let mut backoff = Backoff::new();
        let mut target = loop {
            match discover(
                &self.cfg,
                &self.iface_name,
                self.iface_addr,
                own.subnet(),
                network,
            )
            .await
            {
                Ok(t) => break t,
                Err(e) => {
                    if !wait_to_retry(e, &mut backoff, &self.stop).await? {
                        return Ok(());
                    }
                }
            }
        };
        tracing::info!(tables = ?target.tables, subnet = %own.subnet(), eni = %target.eni, "aws-vpc: programming route tables");
        let mut backoff = Backoff::new();
        while let Err(e) = target.sync().await {
            if !wait_to_retry(e, &mut backoff, &self.stop).await? {
                return Ok(());
            }
        }
        tracing::info!(subnet = %own.subnet(), "aws-vpc: route tables are up to date");
        let target = Arc::new(tokio::sync::Mutex::new(target));
        tokio::spawn(keep_in_sync(target.clone(), self.stop.clone()));
        self.target = Some(target);
        Ok(())
    }

    /// The new subnet's route is created (or replaced) as at start, then the old subnet's
    /// deleted where it still points at our ENI. A failure is returned for the daemon to log;
    /// the resync task keeps trying (the old subnet stays on its list until a pass succeeds).
    async fn moved(&mut self, old: &Lease, new: &Lease) -> anyhow::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let mut target = target.lock().await;
        target.move_to(new.subnet());
        tracing::info!(old = %old.subnet(), new = %new.subnet(), eni = %target.eni, "aws-vpc: moving our route to the new subnet");
        target.sync().await.map_err(|e| {
            anyhow::anyhow!(
                "aws-vpc: {}; retrying every resync until it succeeds",
                chain(&e)
            )
        })
    }

    async fn apply(&mut self, events: &[LeaseEvent]) {
        // Each node routes its own subnet; other nodes' leases need nothing here.
        tracing::debug!(
            "aws-vpc: ignoring {} lease events about other hosts",
            events.len()
        );
    }
}

/// Re-checks the tables every [`RESYNC_INTERVAL`]; failures are logged and retried, never fatal.
async fn keep_in_sync(target: Arc<tokio::sync::Mutex<Target>>, stop: CancelToken) {
    let mut backoff = Backoff::new();
    let mut wait = RESYNC_INTERVAL;
    while sleep_unless_stopped(wait, &stop).await {
        let result = target.lock().await.sync().await;
        match result {
            Ok(()) => {
                backoff = Backoff::new();
                wait = RESYNC_INTERVAL;
            }
            Err(e) => {
                wait = if e.is_fatal() {
                    BACKOFF_MAX
                } else {
                    backoff.next()
                };
                tracing::error!(
                    "aws-vpc: keeping routes in sync: {}; retrying in {wait:?}",
                    chain(&e)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(backend: &str) -> Result<AwsVpcConfig, AwsVpcError> {
        let json = format!(r#"{{"Network":"10.5.0.0/16","Backend":{backend}}}"#);
        let nc = crate::config::NetworkConfig::parse(&json).unwrap();
        AwsVpcConfig::from_backend(&nc.backend)
    }

    #[test]
    fn route_table_id_is_a_string_a_list_or_absent() {
        assert_eq!(cfg(r#"{"Type":"aws-vpc"}"#).unwrap().route_tables, None);
        assert_eq!(
            cfg(r#"{"Type":"aws-vpc","RouteTableID":""}"#)
                .unwrap()
                .route_tables,
            None
        );
        assert_eq!(
            cfg(r#"{"Type":"aws-vpc","routetableid":"rtb-1"}"#)
                .unwrap()
                .route_tables,
            Some(vec!["rtb-1".into()])
        );
        assert_eq!(
            cfg(r#"{"Type":"aws-vpc","RouteTableID":["rtb-1","rtb-2","rtb-1"]}"#)
                .unwrap()
                .route_tables,
            Some(vec!["rtb-1".into(), "rtb-2".into()])
        );
    }

    #[test]
    fn bad_route_table_ids_are_clear_fatal_errors() {
        for (backend, says) in [
            (
                r#"{"Type":"aws-vpc","RouteTableID":[]}"#,
                "the list is empty",
            ),
            (
                r#"{"Type":"aws-vpc","RouteTableID":["rtb-1",""]}"#,
                "every entry must be a route table id",
            ),
            (
                r#"{"Type":"aws-vpc","RouteTableID":["rtb-1",2]}"#,
                "every entry must be a route table id",
            ),
            (
                r#"{"Type":"aws-vpc","RouteTableID":{"a":1}}"#,
                "must be a string or a list of strings",
            ),
        ] {
            let e = cfg(backend).unwrap_err();
            assert!(e.is_fatal());
            let msg = e.to_string();
            assert!(
                msg.contains("Backend.RouteTableID") && msg.contains(says),
                "{backend}: {msg}"
            );
        }
    }

    fn api(code: &str) -> Ec2Error {
        Ec2Error::Api {
            action: "CreateRoute",
            status: 400,
            code: code.into(),
            message: "msg".into(),
        }
    }

    #[test]
    fn a_full_table_is_named_and_fatal_throttling_is_not() {
        let e = route_error(
            api("RouteLimitExceeded"),
            "rtb-full",
            "10.5.3.0/24".parse().unwrap(),
            "eni-1",
        );
        assert!(e.is_fatal());
        let msg = e.to_string();
        assert!(
            msg.contains("route table rtb-full is full") && msg.contains("RouteLimitExceeded: msg"),
            "{msg}"
        );
        for code in [
            "RequestLimitExceeded",
            "Throttling",
            "UnauthorizedOperation",
            "InternalError",
        ] {
            let e = route_error(api(code), "rtb-1", "10.5.3.0/24".parse().unwrap(), "eni-1");
            assert!(!e.is_fatal(), "{code}");
            assert!(
                chain(&e).contains(&format!("CreateRoute: {code}: msg")),
                "{}",
                chain(&e)
            );
        }
        let e = unknown_tables(
            api("InvalidRouteTableID.NotFound"),
            &["rtb-x".into()],
            "us-east-1",
        );
        assert!(
            e.is_fatal() && e.to_string().contains("Backend.RouteTableID [\"rtb-x\"]"),
            "{e}"
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let mut b = Backoff::new();
        let seq: Vec<u64> = (0..9).map(|_| b.next().as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
