//! What one route table needs so that our subnet reaches this instance: pure planning from a
//! `DescribeRouteTables` answer to a list of [`RouteOp`]s.
//!
//! Upstream (v0.19.2) per table: delete every *blackhole* route whose destination lies inside
//! the flannel Network (routes left behind by terminated instances), then delete and re-create
//! the route for our subnet. We filter the table ourselves instead of asking EC2 to (`route.state`
//! filters; also moto answers those with HTTP 500), never touch a route that is already right,
//! and use `ReplaceRoute` when our subnet's route points elsewhere, so the subnet is never
//! without a route while we fix it.

use ipnet::Ipv4Net;

use super::xml::RouteTable;

/// One change to a route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// Remove a blackhole route inside the flannel network (`was` = its old target).
    DeleteBlackhole {
        table: String,
        cidr: Ipv4Net,
        was: String,
    },
    /// Add the route for our subnet to our ENI.
    Create {
        table: String,
        cidr: Ipv4Net,
        eni: String,
    },
    /// Point the existing route for our subnet at our ENI (`was` = its current target).
    Replace {
        table: String,
        cidr: Ipv4Net,
        eni: String,
        was: String,
    },
    /// Remove the route of a subnet we held before our lease moved; it still points at our ENI.
    DeleteFormer {
        table: String,
        cidr: Ipv4Net,
        eni: String,
    },
}

/// The operations that make `table` route `subnet` to `eni` and drop blackholes in `network`.
/// Blackhole deletions come first: they free room in a table near its route limit.
pub fn plan_table(
    table: &RouteTable,
    network: Ipv4Net,
    subnet: Ipv4Net,
    eni: &str,
) -> Vec<RouteOp> {
    let mut ops = Vec::new();
    let mut ours = None;
    for route in &table.routes {
        // IPv6 and prefix-list routes have no IPv4 destination; they are none of our business.
        let Some(cidr) = route
            .destination
            .as_deref()
            .and_then(|d| d.parse::<Ipv4Net>().ok())
        else {
            continue;
        };
        if cidr == subnet {
            ours = Some(route);
        } else if route.state == "blackhole" && network.contains(&cidr.network()) {
            ops.push(RouteOp::DeleteBlackhole {
                table: table.id.clone(),
                cidr,
                was: route.target().to_owned(),
            });
        }
    }
    match ours {
        None => ops.push(RouteOp::Create {
            table: table.id.clone(),
            cidr: subnet,
            eni: eni.to_owned(),
        }),
        Some(r) if r.network_interface_id.as_deref() == Some(eni) && r.state == "active" => {}
        Some(r) => ops.push(RouteOp::Replace {
            table: table.id.clone(),
            cidr: subnet,
            eni: eni.to_owned(),
            was: format!("{} ({})", r.target(), r.state),
        }),
    }
    ops
}

/// After our lease moved: the routes in `table` of the subnets we held before (`former`) that
/// still point at our `eni`. A route someone else already took over (another ENI, replaced by
/// the subnet's new holder) is theirs and stays; `subnet`, ours again, is never deleted.
pub fn plan_former(
    table: &RouteTable,
    former: &[Ipv4Net],
    subnet: Ipv4Net,
    eni: &str,
) -> Vec<RouteOp> {
    table
        .routes
        .iter()
        .filter(|r| r.network_interface_id.as_deref() == Some(eni))
        .filter_map(|r| r.destination.as_deref()?.parse::<Ipv4Net>().ok())
        .filter(|cidr| *cidr != subnet && former.contains(cidr))
        .map(|cidr| RouteOp::DeleteFormer {
            table: table.id.clone(),
            cidr,
            eni: eni.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::aws_vpc::xml;

    /// A DescribeRouteTables answer recorded from moto, with two routes set to `blackhole` the
    /// way real EC2 reports them once their instance is terminated (moto never does that).
    const RECORDED: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<DescribeRouteTablesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><routeTableSet><item><associationSet/><routeTableId>rtb-129696e04d24cbd2d</routeTableId><routeSet><item><destinationCidrBlock>127.0.0.0/16</destinationCidrBlock><gatewayId>local</gatewayId><origin>CreateRouteTable</origin><state>active</state></item><item><destinationCidrBlock>0.0.0.0/0</destinationCidrBlock><gatewayId>igw-3ccce8ad7701d8311</gatewayId><origin>CreateRoute</origin><state>active</state></item><item><destinationCidrBlock>10.5.3.0/24</destinationCidrBlock><networkInterfaceId>eni-a90b5a7eb61bd8da9</networkInterfaceId><origin>CreateRoute</origin><state>active</state></item><item><destinationCidrBlock>10.5.9.0/24</destinationCidrBlock><instanceId>i-0dead</instanceId><instanceOwnerId>123456789012</instanceOwnerId><networkInterfaceId>eni-0dead</networkInterfaceId><origin>CreateRoute</origin><state>blackhole</state></item><item><destinationCidrBlock>192.168.0.0/24</destinationCidrBlock><networkInterfaceId>eni-0gone</networkInterfaceId><origin>CreateRoute</origin><state>blackhole</state></item><item><destinationIpv6CidrBlock>2001:db8::/64</destinationIpv6CidrBlock><networkInterfaceId>eni-0gone</networkInterfaceId><origin>CreateRoute</origin><state>blackhole</state></item></routeSet><tagSet/><vpcId>vpc-fa32a2548a610de41</vpcId><ownerId>123456789012</ownerId></item></routeTableSet><requestId>request-id</requestId></DescribeRouteTablesResponse>"#;

    fn table() -> RouteTable {
        let (mut tables, next) = xml::route_tables(&xml::parse(RECORDED).unwrap());
        assert_eq!(next, None);
        assert_eq!(tables.len(), 1);
        tables.remove(0)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn recorded_table_parses() {
        let t = table();
        assert_eq!(t.id, "rtb-129696e04d24cbd2d");
        assert_eq!(t.vpc_id.as_deref(), Some("vpc-fa32a2548a610de41"));
        assert!(!t.main);
        assert_eq!(t.routes.len(), 6);
        assert_eq!(t.routes[3].target(), "eni-0dead");
        assert_eq!(t.routes[1].target(), "igw-3ccce8ad7701d8311");
    }

    #[test]
    fn blackholes_inside_the_network_are_deleted_and_nothing_else() {
        // Our route (10.5.3.0/24 → eni-a90b…) is already right: only the blackhole inside
        // 10.5.0.0/16 goes; the one outside the network and the IPv6 one stay.
        let ops = plan_table(
            &table(),
            net("10.5.0.0/16"),
            net("10.5.3.0/24"),
            "eni-a90b5a7eb61bd8da9",
        );
        assert_eq!(
            ops,
            vec![RouteOp::DeleteBlackhole {
                table: "rtb-129696e04d24cbd2d".into(),
                cidr: net("10.5.9.0/24"),
                was: "eni-0dead".into()
            }]
        );
    }

    #[test]
    fn a_missing_route_is_created_after_the_cleanup() {
        let ops = plan_table(&table(), net("10.5.0.0/16"), net("10.5.4.0/24"), "eni-new");
        assert!(matches!(ops[0], RouteOp::DeleteBlackhole { .. }));
        assert_eq!(
            ops[1],
            RouteOp::Create {
                table: "rtb-129696e04d24cbd2d".into(),
                cidr: net("10.5.4.0/24"),
                eni: "eni-new".into()
            }
        );
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn a_route_pointing_elsewhere_or_blackholed_is_replaced_not_deleted() {
        let ops = plan_table(&table(), net("10.5.0.0/16"), net("10.5.3.0/24"), "eni-mine");
        assert_eq!(
            ops.last(),
            Some(&RouteOp::Replace {
                table: "rtb-129696e04d24cbd2d".into(),
                cidr: net("10.5.3.0/24"),
                eni: "eni-mine".into(),
                was: "eni-a90b5a7eb61bd8da9 (active)".into()
            })
        );
        // Our own subnet's blackhole route is replaced, never deleted first.
        let ops = plan_table(&table(), net("10.5.0.0/16"), net("10.5.9.0/24"), "eni-mine");
        assert_eq!(
            ops,
            vec![RouteOp::Replace {
                table: "rtb-129696e04d24cbd2d".into(),
                cidr: net("10.5.9.0/24"),
                eni: "eni-mine".into(),
                was: "eni-0dead (blackhole)".into()
            }]
        );
    }

    #[test]
    fn after_a_move_only_our_former_route_still_on_our_eni_goes() {
        // We held 10.5.3.0/24 on eni-a90b… and moved to 10.5.4.0/24.
        let eni = "eni-a90b5a7eb61bd8da9";
        let former = [net("10.5.3.0/24"), net("10.5.9.0/24")];
        assert_eq!(
            plan_former(&table(), &former, net("10.5.4.0/24"), eni),
            vec![RouteOp::DeleteFormer {
                table: "rtb-129696e04d24cbd2d".into(),
                cidr: net("10.5.3.0/24"),
                eni: eni.into()
            }],
            "10.5.9.0/24 points at another ENI: not ours to delete"
        );
        // Taken over by its new holder: left alone.
        assert!(plan_former(&table(), &former, net("10.5.4.0/24"), "eni-other").is_empty());
        // Moved back to it: it is ours again.
        assert!(plan_former(&table(), &former, net("10.5.3.0/24"), eni).is_empty());
    }

    #[test]
    fn a_table_in_order_needs_nothing() {
        let mut t = table();
        t.routes.retain(|r| r.state == "active");
        assert!(plan_table(
            &t,
            net("10.5.0.0/16"),
            net("10.5.3.0/24"),
            "eni-a90b5a7eb61bd8da9"
        )
        .is_empty());
    }
}
