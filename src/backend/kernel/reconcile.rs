//! Reconciliation: which kernel entries are flannel's ([`Ownership`]) and the
//! repairs that take the kernel from what it holds to what the leases ask for.
//! Pure: [`reconcile`] compares two states and proposes [`Repair`]s.

use std::fmt;

use super::model::{
    op_rank, Desired, FdbSpec, NeighSpec, Observed, ObservedFdb, ObservedRoute, Op, RouteKey,
};
use ipnet::IpNet;

/// Which kernel entries belong to flannel (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The flannel networks (`Network`, `IPv6Network`).
    pub networks: Vec<IpNet>,
    /// This host's own subnets: never touched.
    pub own_subnets: Vec<IpNet>,
    /// Flannel's own devices (vxlan): their neighbours and FDB entries, and
    /// routes through them, are flannel's.
    pub devices: Vec<u32>,
    /// Interfaces through which a gateway route into the network is
    /// flannel's (the external interface: host-gw and direct routes).
    pub gateway_oifs: Vec<u32>,
}

impl Ownership {
    /// Whether the route is one flannel installed (or should have).
    pub fn owns_route(&self, r: &ObservedRoute) -> bool {
        if r.proto_kernel {
            return false;
        }
        let in_network = self.networks.iter().any(|n| n.contains(&r.dst));
        let in_own = self
            .own_subnets
            .iter()
            .any(|n| n.contains(&r.dst) || r.dst.contains(n));
        if !in_network || in_own {
            return false;
        }
        let oif = r.oif.unwrap_or(0);
        self.devices.contains(&oif) || (r.gateway.is_some() && self.gateway_oifs.contains(&oif))
    }
}

/// Why reconciliation wants an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// A lease asks for it and the kernel does not have it.
    Missing,
    /// The kernel holds something else under the same key.
    Differs(String),
    /// The kernel holds it and no lease explains it.
    Unexplained,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Missing => write!(f, "missing"),
            Why::Differs(have) => write!(f, "kernel has {have}"),
            Why::Unexplained => write!(f, "no lease explains it"),
        }
    }
}

/// One repair that reconciliation proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub op: Op,
    pub why: Why,
}

/// Compares the kernel with what the leases ask for and proposes the repairs:
/// missing or different entries are replaced; with `remove_stale`, entries
/// that are flannel's (per `own`) but explained by no lease are deleted.
/// Replacements come first (neighbours, FDB, routes), deletions after
/// (routes, FDB, neighbours), so a repair never opens a gap.
///
/// `remove_stale` must stay false until the lease list is known to be
/// complete (the first watch snapshot), or a restart would tear down every
/// peer's entries before the leases arrive.
pub fn reconcile(
    desired: &Desired,
    observed: &Observed,
    own: &Ownership,
    remove_stale: bool,
) -> Vec<Repair> {
    let mut adds = neigh_replacements(desired, observed);
    let (fdb_adds, mut fdb_dels) = fdb_repairs(desired, observed, remove_stale);
    adds.extend(fdb_adds);
    adds.extend(route_replacements(desired, observed));
    adds.sort_by_key(|r| op_rank(&r.op));
    if remove_stale {
        adds.extend(stale_routes(desired, observed, own));
        fdb_dels.extend(stale_fdbs(desired, observed, own));
        adds.extend(fdb_dels);
        adds.extend(stale_neighs(desired, observed, own));
    }
    adds
}

/// Wanted neighbours the kernel lacks, or holds with another address or not permanent.
fn neigh_replacements(desired: &Desired, observed: &Observed) -> Vec<Repair> {
    let mut adds = Vec::new();
    for want in desired.neighs.values() {
        match observed
            .neighs
            .iter()
            .find(|n| n.ifindex == want.ifindex && n.ip == want.ip)
        {
            None => adds.push(Repair {
                op: Op::ReplaceNeigh(*want),
                why: Why::Missing,
            }),
            Some(n) if n.permanent && n.mac == Some(want.mac) => {}
            Some(n) => {
                let have = match n.mac {
                    Some(m) => format!(
                        "lladdr {m}{}",
                        if n.permanent {
                            " permanent"
                        } else {
                            " (not permanent)"
                        }
                    ),
                    None => "an incomplete entry".to_owned(),
                };
                adds.push(Repair {
                    op: Op::ReplaceNeigh(*want),
                    why: Why::Differs(have),
                });
            }
        }
    }
    adds
}

/// Wanted FDB entries the kernel lacks or points elsewhere (replacements), and, with
/// `remove_stale`, the extra destinations of a wanted MAC (deletions).
fn fdb_repairs(
    desired: &Desired,
    observed: &Observed,
    remove_stale: bool,
) -> (Vec<Repair>, Vec<Repair>) {
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for want in desired.fdbs.values() {
        let same_mac: Vec<&ObservedFdb> = observed
            .fdbs
            .iter()
            .filter(|e| e.ifindex == want.ifindex && e.mac == want.mac && e.permanent)
            .collect();
        if !same_mac.iter().any(|e| e.dst == Some(want.dst)) {
            let why = match same_mac.first().and_then(|e| e.dst) {
                None => Why::Missing,
                Some(dst) => Why::Differs(format!("dst {dst}")),
            };
            adds.push(Repair {
                op: Op::ReplaceFdb(*want),
                why,
            });
        }
        if remove_stale {
            // Extra destinations for the same MAC would flood frames to hosts
            // that no longer own it. When the wanted destination is missing,
            // the replace above rewrites the first one, so that one stays.
            let rewritten = usize::from(!same_mac.iter().any(|e| e.dst == Some(want.dst)));
            for e in same_mac.iter().skip(rewritten) {
                if let Some(dst) = e.dst.filter(|d| *d != want.dst) {
                    dels.push(Repair {
                        op: Op::DeleteFdb(FdbSpec { dst, ..*want }),
                        why: Why::Unexplained,
                    });
                }
            }
        }
    }
    (adds, dels)
}

/// Wanted routes the kernel lacks, or holds through another gateway or device.
fn route_replacements(desired: &Desired, observed: &Observed) -> Vec<Repair> {
    let mut adds = Vec::new();
    for want in desired.routes.values() {
        let matches = |r: &&ObservedRoute| {
            r.dst == want.dst
                && r.priority == 0
                && r.gateway == Some(want.gateway)
                && r.oif == Some(want.oif)
                && r.onlink == want.onlink
        };
        if !observed.routes.iter().any(|r| matches(&r)) {
            let why = match observed
                .routes
                .iter()
                .find(|r| r.dst == want.dst && r.priority == 0)
            {
                None => Why::Missing,
                Some(r) => Why::Differs(describe_route(r)),
            };
            adds.push(Repair {
                op: Op::ReplaceRoute(*want),
                why,
            });
        }
    }
    adds
}

/// Flannel's routes that no lease explains.
fn stale_routes(desired: &Desired, observed: &Observed, own: &Ownership) -> Vec<Repair> {
    observed
        .routes
        .iter()
        .filter(|r| own.owns_route(r))
        // A route with the desired destination and metric 0 is rewritten by its
        // replacement; anything else that is ours goes.
        .filter(|r| !(desired.routes.contains_key(&r.dst) && r.priority == 0))
        .map(|r| Repair {
            op: Op::DeleteRoute(RouteKey {
                dst: r.dst,
                gateway: r.gateway,
                oif: r.oif,
                priority: r.priority,
            }),
            why: Why::Unexplained,
        })
        .collect()
}

/// FDB entries on flannel's devices for MACs no lease wants.
fn stale_fdbs(desired: &Desired, observed: &Observed, own: &Ownership) -> Vec<Repair> {
    observed
        .fdbs
        .iter()
        .filter(|e| own.devices.contains(&e.ifindex) && e.permanent)
        .filter(|e| !desired.fdbs.contains_key(&(e.ifindex, e.mac)))
        .filter_map(|e| {
            let dst = e.dst?;
            Some(Repair {
                op: Op::DeleteFdb(FdbSpec {
                    ifindex: e.ifindex,
                    mac: e.mac,
                    dst,
                }),
                why: Why::Unexplained,
            })
        })
        .collect()
}

/// Permanent neighbours on flannel's devices that no lease wants.
fn stale_neighs(desired: &Desired, observed: &Observed, own: &Ownership) -> Vec<Repair> {
    observed
        .neighs
        .iter()
        .filter(|n| own.devices.contains(&n.ifindex) && n.permanent)
        .filter(|n| !desired.neighs.contains_key(&(n.ifindex, n.ip)))
        .map(|n| Repair {
            op: Op::DeleteNeigh(NeighSpec {
                ifindex: n.ifindex,
                ip: n.ip,
                mac: n.mac.unwrap_or_default(),
            }),
            why: Why::Unexplained,
        })
        .collect()
}

fn describe_route(r: &ObservedRoute) -> String {
    let mut s = String::new();
    if let Some(gw) = r.gateway {
        s.push_str(&format!("via {gw} "));
    }
    match r.oif {
        Some(oif) => s.push_str(&format!("dev #{oif}")),
        None => s.push_str("no device"),
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kernel::fake;
    use crate::backend::kernel::fake::fixtures::*;
    use crate::backend::kernel::model::ObservedNeigh;

    const ETH: u32 = 2;

    fn own() -> Ownership {
        Ownership {
            networks: vec![net("10.5.0.0/16")],
            own_subnets: vec![net("10.5.1.0/24")],
            devices: vec![DEV],
            gateway_oifs: vec![ETH],
        }
    }

    fn observed_route(dst: &str, gw: Option<&str>, oif: u32, onlink: bool) -> ObservedRoute {
        ObservedRoute {
            dst: net(dst),
            gateway: gw.map(ip),
            oif: Some(oif),
            onlink,
            priority: 0,
            proto_kernel: false,
        }
    }

    #[test]
    fn a_kernel_matching_the_leases_needs_no_repair() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let mut k = fake::FakeHost::new();
        for op in d.replace_ops() {
            k.apply_now(&op);
        }
        let obs = Observed {
            routes: k.routes.clone(),
            neighs: k.neighs.clone(),
            fdbs: k.fdbs.clone(),
        };
        assert_eq!(reconcile(&d, &obs, &own(), true), vec![]);
    }

    #[test]
    fn missing_and_wrong_entries_are_replaced() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let obs = Observed {
            routes: vec![observed_route(
                "10.5.2.0/24",
                Some("192.0.2.99"),
                ETH,
                false,
            )],
            neighs: vec![ObservedNeigh {
                ifindex: DEV,
                ip: ip("10.5.2.0"),
                mac: None,
                permanent: false,
            }],
            fdbs: vec![],
        };
        let repairs = reconcile(&d, &obs, &own(), true);
        let ops: Vec<Op> = repairs.iter().map(|r| r.op).collect();
        assert_eq!(ops, d.replace_ops());
        assert!(matches!(repairs[0].why, Why::Differs(_)));
        assert_eq!(repairs[1].why, Why::Missing);
        assert_eq!(repairs[2].why, Why::Differs("via 192.0.2.99 dev #2".into()));
    }

    #[test]
    fn stale_entries_go_only_when_the_lease_list_is_complete() {
        let obs = Observed {
            routes: vec![
                observed_route("10.5.9.0/24", Some("10.5.9.0"), DEV, true),
                observed_route("10.5.8.0/24", Some("192.0.2.8"), ETH, false),
            ],
            neighs: vec![ObservedNeigh {
                ifindex: DEV,
                ip: ip("10.5.9.0"),
                mac: Some(MAC_B),
                permanent: true,
            }],
            fdbs: vec![ObservedFdb {
                ifindex: DEV,
                mac: MAC_B,
                dst: Some(ip("192.0.2.9")),
                permanent: true,
            }],
        };
        assert_eq!(reconcile(&Desired::default(), &obs, &own(), false), vec![]);
        let ops: Vec<String> = reconcile(&Desired::default(), &obs, &own(), true)
            .iter()
            .map(|r| r.op.to_string())
            .collect();
        assert_eq!(
            ops,
            vec![
                "route del 10.5.9.0/24 via 10.5.9.0 dev #7",
                "route del 10.5.8.0/24 via 192.0.2.8 dev #2",
                "fdb del 0a:09:09:09:09:09 dev #7 dst 192.0.2.9 self",
                "neigh del 10.5.9.0 dev #7",
            ]
        );
    }

    #[test]
    fn entries_that_are_not_flannels_are_left_alone() {
        let obs = Observed {
            routes: vec![
                // Own subnet (the pod bridge), connected routes, other networks, other devices.
                observed_route("10.5.1.0/24", None, 3, false),
                ObservedRoute {
                    proto_kernel: true,
                    ..observed_route("10.5.4.0/24", None, DEV, false)
                },
                observed_route("172.16.0.0/16", Some("192.0.2.254"), ETH, false),
                observed_route("10.5.6.0/24", None, ETH, false),
                observed_route("10.5.7.0/24", Some("192.0.2.7"), 3, false),
                observed_route("0.0.0.0/0", Some("192.0.2.254"), ETH, false),
            ],
            neighs: vec![ObservedNeigh {
                ifindex: DEV,
                ip: ip("10.5.3.0"),
                mac: Some(MAC_A),
                permanent: false,
            }],
            fdbs: vec![ObservedFdb {
                ifindex: DEV,
                mac: MAC_A,
                dst: Some(ip("192.0.2.3")),
                permanent: false,
            }],
        };
        assert_eq!(reconcile(&Desired::default(), &obs, &own(), true), vec![]);
    }

    #[test]
    fn extra_fdb_destinations_for_a_wanted_mac_are_removed() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let mut obs = Observed::default();
        for dst in ["192.0.2.77", "192.0.2.2"] {
            obs.fdbs.push(ObservedFdb {
                ifindex: DEV,
                mac: MAC_A,
                dst: Some(ip(dst)),
                permanent: true,
            });
        }
        let ops: Vec<String> = reconcile(&d, &obs, &own(), true)
            .into_iter()
            .filter(|r| matches!(r.op, Op::ReplaceFdb(_) | Op::DeleteFdb(_)))
            .map(|r| r.op.to_string())
            .collect();
        assert_eq!(
            ops,
            vec!["fdb del 0a:01:02:03:04:05 dev #7 dst 192.0.2.77 self"]
        );
    }

    #[test]
    fn a_route_with_another_metric_is_stale_even_for_a_wanted_destination() {
        let d = vxlan_peer("10.5.2.0/24", "192.0.2.2", MAC_A);
        let mut obs = Observed::default();
        obs.routes.push(ObservedRoute {
            priority: 100,
            ..observed_route("10.5.2.0/24", Some("10.5.2.0"), DEV, true)
        });
        let ops: Vec<String> = reconcile(&d, &obs, &own(), true)
            .iter()
            .filter(|r| matches!(r.op, Op::ReplaceRoute(_) | Op::DeleteRoute(_)))
            .map(|r| r.op.to_string())
            .collect();
        assert_eq!(
            ops,
            vec![
                "route replace 10.5.2.0/24 via 10.5.2.0 dev #7 onlink",
                "route del 10.5.2.0/24 via 10.5.2.0 dev #7 metric 100"
            ]
        );
    }

    #[test]
    fn ownership_needs_network_device_or_gateway() {
        let o = own();
        assert!(o.owns_route(&observed_route("10.5.2.0/24", Some("10.5.2.0"), DEV, true)));
        assert!(o.owns_route(&observed_route(
            "10.5.2.0/24",
            Some("192.0.2.2"),
            ETH,
            false
        )));
        assert!(!o.owns_route(&observed_route("10.5.2.0/24", None, ETH, false)));
        assert!(!o.owns_route(&observed_route("10.5.1.0/24", Some("10.5.1.0"), DEV, true)));
        assert!(!o.owns_route(&observed_route("10.0.0.0/8", Some("192.0.2.2"), ETH, false)));
    }
}
