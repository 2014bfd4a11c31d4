//! The etcd v3 registry: network config, lease acquisition, renewal, listing
//! and watching, with upstream's key layout and values.
//!
//! Where upstream is wrong, this does better (flannel-reference.md §1, §9):
//! a lost creation race is retried with another subnet; renewal only
//! overwrites a key that is still ours (compare-and-swap on `mod_revision`);
//! a reservation (a key without an etcd lease) stays permanent when reused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use ipnet::IpNet;
use rand::seq::IndexedRandom;

use super::counters::EtcdHealth;
use super::lease::{HeldLease, Lease, LeaseAttrs, SubnetKey};
use super::net::{SubnetRange, MAX_CANDIDATES};
use super::reduce::{parse_kv, RawEvent};
use crate::compat;

/// How to reach etcd (from the `--etcd-*` flags).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Where the registry records how its requests fare (shared with `/metrics`).
    pub health: Arc<EtcdHealth>,
}

/// A key under the subnets prefix as etcd stores it, unparsed (a tool shows even a
/// malformed value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: String,
    pub value: Vec<u8>,
    /// The etcd lease the key is attached to; 0 for none (a reservation).
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// Registry failures, each with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("etcd: {op}: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd TLS setup: {0}")]
    Tls(String),
    #[error("out of subnets: all {0} subnets between SubnetMin and SubnetMax are leased")]
    OutOfSubnets(u128),
    #[error("gave up acquiring a subnet after {0} attempts lost to other hosts")]
    TooManyConflicts(u32),
}

fn etcd_err(op: &'static str) -> impl FnOnce(etcd_client::Error) -> RegistryError {
    move |source| RegistryError::Etcd { op, source }
}

/// What this host asks for when acquiring a lease.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub attrs: LeaseAttrs,
    pub ipv4: SubnetRange,
    pub ipv6: Option<SubnetRange>,
    /// A subnet to prefer when free: the one in the previous subnet.env, or
    /// the one just lost.
    pub preferred: Option<SubnetKey>,
}

impl AcquireRequest {
    /// Whether acquiring would keep a lease on `key` rather than delete it (the reuse check
    /// of step 1 in [`Registry::acquire`]): `flannelctl reserve` asks this before it writes.
    pub fn accepts(&self, key: &SubnetKey) -> bool {
        compatible_key(key, self)
    }
}

/// Result of a renewal attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Renewed(HeldLease),
    /// The key is gone or another host overwrote it.
    Lost,
}

/// A connected registry.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
    ttl: Duration,
    /// How often a request that found its endpoint unavailable is sent again.
    attempts: usize,
    health: Arc<EtcdHealth>,
}

/// gRPC status code `UNAVAILABLE`.
const GRPC_UNAVAILABLE: i32 = 14;

/// Whether etcd (or the way to it) was unavailable for this request. The client balances
/// requests over every endpoint, including ones that are down, so such a request is simply
/// sent again: another endpoint gets its turn. (A retried create or rewrite is safe: both are
/// conditional transactions.)
fn is_unavailable(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == GRPC_UNAVAILABLE)
}

/// Upper bound on acquisition rounds lost to other hosts' concurrent creations.
const MAX_ACQUIRE_ATTEMPTS: u32 = 64;

impl Registry {
    /// Connects to etcd. Fails fast when no endpoint answers; callers retry.
    pub async fn connect(opts: &EtcdOptions) -> Result<Registry, RegistryError> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_auto_token_refresh(true);
        if let (Some(user), Some(pass)) = (&opts.username, &opts.password) {
            co = co.with_user(user.clone(), pass.clone());
        }
        let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
        if https || opts.cafile.is_some() || opts.certfile.is_some() {
            co = co.with_tls(tls_options(opts)?);
        }
        let client = match Client::connect(&opts.endpoints, Some(co)).await {
            Ok(c) => c,
            Err(e) => {
                opts.health.failed("connect", &e);
                return Err(etcd_err("connect")(e));
            }
        };
        let attempts = 3 * opts.endpoints.len().max(1);
        Ok(Registry {
            client,
            prefix: opts.prefix.clone(),
            ttl: lease_ttl(),
            attempts,
            health: opts.health.clone(),
        })
    }

    /// Runs one etcd request, sending it again while it meets an unavailable endpoint.
    async fn call<T, F, Fut>(&self, op: &'static str, mut request: F) -> Result<T, RegistryError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 1;
        loop {
            match request(self.client.clone()).await {
                Ok(v) => {
                    self.health.ok();
                    return Ok(v);
                }
                Err(e) if is_unavailable(&e) && attempt < self.attempts => attempt += 1,
                Err(e) => {
                    self.health.failed(op, &e);
                    return Err(etcd_err(op)(e));
                }
            }
        }
    }

    /// How this registry's requests fare.
    pub fn health(&self) -> &Arc<EtcdHealth> {
        &self.health
    }

    /// The TTL leases are granted with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A cheap request that succeeds only when etcd answers.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let key = compat::config_key(&self.prefix);
        self.call("get config", |mut c| {
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .await
        .map(|_| ())
    }

    /// The network config text, or `None` while the key does not exist.
    pub async fn get_config(&self) -> Result<Option<String>, RegistryError> {
        let key = compat::config_key(&self.prefix);
        let resp = self
            .call("get config", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every key under the subnets prefix, and the revision of the listing.
    pub async fn list_raw(&self) -> Result<(Vec<RawEvent>, i64), RegistryError> {
        let prefix = compat::subnets_prefix(&self.prefix);
        let resp = self
            .call("list leases", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let raw = resp
            .kvs()
            .iter()
            .map(|kv| RawEvent::Put {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                etcd_lease: kv.lease(),
                mod_revision: kv.mod_revision(),
                create_revision: kv.create_revision(),
            })
            .collect();
        Ok((raw, revision))
    }

    /// Every key under the subnets prefix, unparsed, in key order (for operators' tools).
    pub async fn list_stored(&self) -> Result<Vec<StoredKey>, RegistryError> {
        let (raw, _) = self.list_raw().await?;
        Ok(raw
            .into_iter()
            .filter_map(|ev| match ev {
                RawEvent::Put {
                    key,
                    value,
                    etcd_lease,
                    mod_revision,
                    ..
                } => Some(StoredKey {
                    key,
                    value,
                    etcd_lease,
                    mod_revision,
                }),
                RawEvent::Delete { .. } => None,
            })
            .collect())
    }

    /// Valid leases, plus every occupied subnet key (malformed values still
    /// occupy their key: a create on it would fail).
    async fn list(&self) -> Result<(Vec<Lease>, Vec<SubnetKey>), RegistryError> {
        let (raw, _) = self.list_raw().await?;
        let mut leases = Vec::new();
        let mut occupied = Vec::new();
        for ev in raw {
            let RawEvent::Put {
                key,
                value,
                etcd_lease,
                mod_revision,
                ..
            } = ev
            else {
                continue;
            };
            if let Ok(k) = SubnetKey::parse(&key) {
                occupied.push(k);
            }
            match parse_kv(&key, &value, etcd_lease, mod_revision) {
                Ok(Some(l)) => leases.push(l),
                Ok(None) => {}
                Err(e) => tracing::debug!("ignoring malformed lease while acquiring: {e}"),
            }
        }
        Ok((leases, occupied))
    }

    fn key_of(&self, k: &SubnetKey) -> String {
        format!("{}{k}", compat::subnets_prefix(&self.prefix))
    }

    /// Acquires a subnet for this host (upstream's order: a lease already
    /// carrying our PublicIP, then the preferred subnet, then a random one of
    /// the lowest free subnets), creating it atomically and retrying with a
    /// fresh listing whenever another host wins a race.
    pub async fn acquire(&self, req: &AcquireRequest) -> Result<HeldLease, RegistryError> {
        for attempt in 0..MAX_ACQUIRE_ATTEMPTS {
            if attempt > 0 {
                let jitter = rand::random_range(10..60 * u64::from(attempt.min(10)));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            let (leases, occupied) = self.list().await?;

            // 1. A lease that already has our public IP.
            if let Some(mine) = leases
                .iter()
                .find(|l| l.attrs.public_ip == req.attrs.public_ip)
            {
                if compatible(mine, req) {
                    match self.take_over(mine, req).await? {
                        Some(held) => return Ok(held),
                        None => continue,
                    }
                }
                tracing::info!(subnet = %mine.key.cidr(), "deleting our old lease: it does not fit the current config");
                self.delete_if_unchanged(mine).await?;
                continue;
            }

            // 2. The preferred subnet, when free and still valid.
            let candidate = match req
                .preferred
                .filter(|p| !occupied.iter().any(|o| keys_overlap(o, p)) && compatible_key(p, req))
            {
                Some(p) => p,
                // 3. A random one of the lowest free subnets.
                None => pick_free(req, &occupied)?,
            };
            match self.create(candidate, &req.attrs).await? {
                Some(held) => return Ok(held),
                None => {
                    tracing::info!(subnet = %candidate.cidr(), "another host took the subnet first; retrying");
                    continue;
                }
            }
        }
        Err(RegistryError::TooManyConflicts(MAX_ACQUIRE_ATTEMPTS))
    }

    /// Creates `key` only if it does not exist, attached to a fresh etcd lease.
    /// `Ok(None)` when it already exists.
    async fn create(
        &self,
        key: SubnetKey,
        attrs: &LeaseAttrs,
    ) -> Result<Option<HeldLease>, RegistryError> {
        let grant = self.grant().await?;
        let k = self.key_of(&key);
        let value = attrs.to_json();
        let txn = Txn::new()
            .when([Compare::version(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k,
                value,
                Some(PutOptions::new().with_lease(grant.id())),
            )]);
        let resp = match self.txn("create lease", txn).await {
            Ok(r) => r,
            Err(e) => {
                self.revoke(grant.id()).await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            self.revoke(grant.id()).await;
            return Ok(None);
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let lease = Lease {
            key,
            attrs: attrs.clone(),
            etcd_lease: grant.id(),
            mod_revision: rev,
        };
        Ok(Some(HeldLease {
            lease,
            ttl: Some(self.ttl),
            // Created by this very transaction.
            create_revision: rev,
        }))
    }

    /// Rewrites an existing lease with our attributes, if nobody changed it
    /// since it was read. A reservation stays without TTL.
    async fn take_over(
        &self,
        old: &Lease,
        req: &AcquireRequest,
    ) -> Result<Option<HeldLease>, RegistryError> {
        self.rewrite(old, &req.attrs).await
    }

    /// Compare-and-swap rewrite of `old` (by `mod_revision`) with `attrs`.
    async fn rewrite(
        &self,
        old: &Lease,
        attrs: &LeaseAttrs,
    ) -> Result<Option<HeldLease>, RegistryError> {
        let k = self.key_of(&old.key);
        let (put_opts, grant_id, ttl) = if old.is_reservation() {
            (None, 0, None)
        } else {
            let g = self.grant().await?;
            (
                Some(PutOptions::new().with_lease(g.id())),
                g.id(),
                Some(self.ttl),
            )
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                old.mod_revision,
            )])
            // The get reads back the key's create revision (a put keeps it).
            .and_then([
                TxnOp::put(k.clone(), attrs.to_json(), put_opts),
                TxnOp::get(k, None),
            ]);
        let resp = match self.txn("rewrite lease", txn).await {
            Ok(r) => r,
            Err(e) => {
                self.revoke(grant_id).await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            self.revoke(grant_id).await;
            return Ok(None);
        }
        // The previous etcd lease now holds no key; free it early (best effort).
        if old.etcd_lease != grant_id {
            self.revoke(old.etcd_lease).await;
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let create_revision = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(0);
        let lease = Lease {
            key: old.key,
            attrs: attrs.clone(),
            etcd_lease: grant_id,
            mod_revision: rev,
        };
        Ok(Some(HeldLease {
            lease,
            ttl,
            create_revision,
        }))
    }

    async fn delete_if_unchanged(&self, old: &Lease) -> Result<(), RegistryError> {
        self.delete_at(&old.key, old.mod_revision).await.map(|_| ())
    }

    /// Deletes `key` only if it is still at `mod_revision` (compare-and-swap: what the
    /// caller judged is what goes). `Ok(false)` when it changed or vanished meanwhile.
    pub async fn delete_at(
        &self,
        key: &SubnetKey,
        mod_revision: i64,
    ) -> Result<bool, RegistryError> {
        let k = self.key_of(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::delete(k, None)]);
        self.txn("delete lease", txn).await.map(|r| r.succeeded())
    }

    /// One lease key as stored (`None` when absent), for operators' tools.
    pub async fn get_subnet(&self, key: &SubnetKey) -> Result<Option<StoredKey>, RegistryError> {
        let k = self.key_of(key);
        let resp = self
            .call("get lease", |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| StoredKey {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            etcd_lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        }))
    }

    /// Writes a reservation: `key` with `attrs` as upstream's lease JSON and no etcd lease
    /// attached, so it never expires (flannel-reference.md §1.6). `expect` is the
    /// `mod_revision` of the key being replaced, or `None` to create it only where it does
    /// not exist. `Ok(false)` when the key is not as expected (someone wrote it meanwhile).
    pub async fn put_reservation(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        expect: Option<i64>,
    ) -> Result<bool, RegistryError> {
        let k = self.key_of(key);
        let guard = match expect {
            None => Compare::version(k.clone(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(k.clone(), CompareOp::Equal, rev),
        };
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(k, attrs.to_json(), None)]);
        self.txn("put reservation", txn)
            .await
            .map(|r| r.succeeded())
    }

    /// Time left on an etcd lease (0 means none: `None`); `None` also once it expired.
    pub async fn time_left(&self, etcd_lease: i64) -> Result<Option<Duration>, RegistryError> {
        if etcd_lease == 0 {
            return Ok(None);
        }
        let resp = self
            .call("lease time-to-live", |mut c| async move {
                c.lease_time_to_live(etcd_lease, None).await
            })
            .await?;
        // etcd answers -1 for a lease that expired or never existed.
        Ok(u64::try_from(resp.ttl()).ok().map(Duration::from_secs))
    }

    /// Writes the network config text as given (callers validate it first).
    pub async fn put_config(&self, text: &str) -> Result<(), RegistryError> {
        let key = compat::config_key(&self.prefix);
        self.call("put config", |mut c| {
            let (key, text) = (key.clone(), text.to_owned());
            async move { c.put(key, text, None).await }
        })
        .await
        .map(|_| ())
    }

    /// Renews our lease: a fresh TTL and our attributes, but only if the key is
    /// still exactly as we last wrote it (so two hosts never fight over a subnet).
    pub async fn renew(&self, held: &HeldLease) -> Result<Renewal, RegistryError> {
        match self.rewrite(&held.lease, &held.lease.attrs).await? {
            Some(h) => Ok(Renewal::Renewed(h)),
            None => Ok(Renewal::Lost),
        }
    }

    /// Writes our value back over a stray write to our live key (`theirs_revision` is the
    /// stray write's mod revision: compare-and-swap, so a newer write wins the race and is
    /// judged in its turn). `Ok(None)` when the key changed again meanwhile.
    pub async fn restore(
        &self,
        held: &HeldLease,
        theirs_revision: i64,
    ) -> Result<Option<HeldLease>, RegistryError> {
        let over = Lease {
            mod_revision: theirs_revision,
            ..held.lease.clone()
        };
        self.rewrite(&over, &held.lease.attrs).await
    }

    /// Opens a watch on every lease key, starting at `revision`.
    pub async fn watch_from(&self, revision: i64) -> Result<WatchStream, RegistryError> {
        let prefix = compat::subnets_prefix(&self.prefix);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        self.call("watch leases", |mut c| {
            let (prefix, opts) = (prefix.clone(), opts.clone());
            async move { c.watch(prefix, Some(opts)).await }
        })
        .await
    }

    /// Deletes a lease key (used by tests and operators' tools).
    pub async fn delete(&self, key: &SubnetKey) -> Result<(), RegistryError> {
        let k = self.key_of(key);
        self.call("delete lease", |mut c| {
            let k = k.clone();
            async move { c.delete(k, None).await }
        })
        .await
        .map(|_| ())
    }

    /// Grants a fresh etcd lease with our TTL.
    async fn grant(&self) -> Result<etcd_client::LeaseGrantResponse, RegistryError> {
        let ttl = self.ttl.as_secs() as i64;
        self.call("grant lease", |mut c| async move {
            c.lease_grant(ttl, None).await
        })
        .await
    }

    /// Runs a transaction (all ours are conditional, so sending one again is safe).
    async fn txn(
        &self,
        op: &'static str,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, RegistryError> {
        self.call(op, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Revokes an etcd lease, best effort (0 means none); a leftover expires by itself.
    async fn revoke(&self, id: i64) {
        if id != 0 {
            let _ = self
                .call(
                    "revoke lease",
                    |mut c| async move { c.lease_revoke(id).await },
                )
                .await;
        }
    }
}

/// Converts etcd watch events to the reducer's input.
pub fn raw_events(resp: &etcd_client::WatchResponse) -> Vec<RawEvent> {
    resp.events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?;
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            Some(match ev.event_type() {
                EventType::Put => RawEvent::Put {
                    key,
                    value: kv.value().to_vec(),
                    etcd_lease: kv.lease(),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                },
                EventType::Delete => RawEvent::Delete {
                    key,
                    mod_revision: kv.mod_revision(),
                },
            })
        })
        .collect()
}

/// The TTL to grant: upstream's 24 h, or the test override.
fn lease_ttl() -> Duration {
    std::env::var(compat::ENV_TEST_LEASE_TTL)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(compat::SUBNET_TTL)
}

fn tls_options(opts: &EtcdOptions) -> Result<TlsOptions, RegistryError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| RegistryError::Tls(format!("{}: {e}", p.display())))
    };
    let mut tls = TlsOptions::new();
    match &opts.cafile {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => {
            return Err(RegistryError::Tls(
                "https endpoints or client certificates need --etcd-cafile to verify the server"
                    .into(),
            ))
        }
    }
    if let (Some(cert), Some(key)) = (&opts.certfile, &opts.keyfile) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

fn keys_overlap(a: &SubnetKey, b: &SubnetKey) -> bool {
    let v4 = super::net::overlaps(IpNet::V4(a.ipv4), IpNet::V4(b.ipv4));
    let v6 = match (a.ipv6, b.ipv6) {
        (Some(x), Some(y)) => super::net::overlaps(IpNet::V6(x), IpNet::V6(y)),
        _ => false,
    };
    v4 || v6
}

/// Whether an existing lease's subnets fit the current config (upstream's
/// reuse check: v4 inside the range; v6 inside its range, or absent when IPv6
/// is off).
fn compatible(lease: &Lease, req: &AcquireRequest) -> bool {
    compatible_key(&lease.key, req)
}

fn compatible_key(key: &SubnetKey, req: &AcquireRequest) -> bool {
    let v4_ok = req.ipv4.allows(IpNet::V4(key.ipv4));
    let v6_ok = match (&req.ipv6, key.ipv6) {
        (Some(range), Some(v6)) => range.allows(IpNet::V6(v6)),
        (None, None) => true,
        _ => false,
    };
    v4_ok && v6_ok
}

/// Picks at random among the lowest free subnets (upstream picks among 100).
fn pick_free(req: &AcquireRequest, occupied: &[SubnetKey]) -> Result<SubnetKey, RegistryError> {
    let taken4: Vec<IpNet> = occupied.iter().map(|k| IpNet::V4(k.ipv4)).collect();
    let free4 = req.ipv4.free_subnets(&taken4, MAX_CANDIDATES);
    let mut rng = rand::rng();
    let ipv4 = match free4.choose(&mut rng) {
        Some(IpNet::V4(n)) => *n,
        _ => return Err(RegistryError::OutOfSubnets(req.ipv4.len())),
    };
    let ipv6 = match &req.ipv6 {
        None => None,
        Some(range) => {
            let taken6: Vec<IpNet> = occupied
                .iter()
                .filter_map(|k| k.ipv6.map(IpNet::V6))
                .collect();
            match range.free_subnets(&taken6, MAX_CANDIDATES).choose(&mut rng) {
                Some(IpNet::V6(n)) => Some(*n),
                _ => return Err(RegistryError::OutOfSubnets(range.len())),
            }
        }
    };
    Ok(SubnetKey { ipv4, ipv6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(net: &str, len: u8, min: &str, max: &str) -> SubnetRange {
        SubnetRange {
            network: net.parse().unwrap(),
            subnet_len: len,
            min: min.parse().unwrap(),
            max: max.parse().unwrap(),
        }
    }

    fn req() -> AcquireRequest {
        AcquireRequest {
            attrs: LeaseAttrs::with_public_ip("192.0.2.1".parse().unwrap()),
            ipv4: range("10.5.0.0/16", 24, "10.5.1.0", "10.5.3.0"),
            ipv6: None,
            preferred: None,
        }
    }

    fn key(s: &str) -> SubnetKey {
        SubnetKey::parse(s).unwrap()
    }

    #[test]
    fn pick_free_avoids_occupied_keys_and_reports_exhaustion() {
        let occupied = [key("10.5.1.0-24"), key("10.5.3.0-24")];
        for _ in 0..20 {
            assert_eq!(pick_free(&req(), &occupied).unwrap(), key("10.5.2.0-24"));
        }
        let all = [key("10.5.1.0-24"), key("10.5.2.0-24"), key("10.5.3.0-24")];
        let e = pick_free(&req(), &all).unwrap_err();
        assert!(matches!(e, RegistryError::OutOfSubnets(3)), "{e}");
        assert!(e.to_string().contains("out of subnets"));
    }

    #[test]
    fn compatibility_follows_the_config() {
        assert!(compatible_key(&key("10.5.2.0-24"), &req()));
        assert!(
            !compatible_key(&key("10.5.9.0-24"), &req()),
            "above SubnetMax"
        );
        assert!(!compatible_key(&key("10.5.2.0-25"), &req()), "other length");
        assert!(
            !compatible_key(&key("10.5.2.0-24&fd00:0:0:1::-64"), &req()),
            "v6 part with IPv6 off"
        );
        let mut dual = req();
        dual.ipv6 = Some(range("fd00::/56", 64, "fd00:0:0:1::", "fd00:0:0:ff::"));
        assert!(compatible_key(&key("10.5.2.0-24&fd00:0:0:1::-64"), &dual));
        assert!(
            !compatible_key(&key("10.5.2.0-24"), &dual),
            "missing v6 part"
        );
        let k = pick_free(&dual, &[key("10.5.1.0-24&fd00:0:0:1::-64")]).unwrap();
        assert!(k.ipv6.is_some() && k.ipv6 != key("10.5.1.0-24&fd00:0:0:1::-64").ipv6);
    }

    #[test]
    fn overlap_covers_either_family() {
        assert!(keys_overlap(&key("10.5.1.0-24"), &key("10.5.0.0-16")));
        assert!(!keys_overlap(&key("10.5.1.0-24"), &key("10.5.2.0-24")));
        assert!(keys_overlap(
            &key("10.5.1.0-24&fd00::-64"),
            &key("10.5.2.0-24&fd00::-64")
        ));
    }
}
