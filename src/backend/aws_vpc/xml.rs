//! EC2 Query API responses (XML) to plain structs.
//!
//! Responses are small (one instance, a few route tables), so they are read into a tiny
//! element tree first and then picked apart by name. Names are matched on their local part,
//! so the `xmlns` EC2 puts on the root does not matter; unknown elements are ignored, as an
//! SDK would, so new fields in future API versions cannot break us. Nothing here panics on
//! malformed input: every problem is an `Err(String)` the client wraps with the action name.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Deeper nesting than any EC2 response has: input this deep is rejected, not recursed into.
const MAX_DEPTH: usize = 64;

/// One XML element: its local name, its text (trimmed) and its child elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the child called `name`, if present and not empty.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name)
            .map(|c| c.text.as_str())
            .filter(|t| !t.is_empty())
    }

    /// The `<item>` children of the child called `set` (EC2's list encoding).
    pub fn items<'a>(&'a self, set: &str) -> impl Iterator<Item = &'a Element> + 'a {
        self.child(set)
            .into_iter()
            .flat_map(|s| s.children.iter().filter(|c| c.name == "item"))
    }
}

/// Parses a whole document and returns its root element.
pub fn parse(text: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("malformed XML at byte {}: {e}", reader.buffer_position()))?;
        match ev {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("XML nested deeper than {MAX_DEPTH} elements"));
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                stack.push(Element {
                    name,
                    ..Default::default()
                });
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let el = Element {
                    name,
                    ..Default::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let Some(mut el) = stack.pop() else {
                    return Err("unbalanced closing tag".into());
                };
                el.text = el.text.trim().to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::Text(t) => {
                if let Some(el) = stack.last_mut() {
                    let s = t
                        .unescape()
                        .map_err(|e| format!("bad text in <{}>: {e}", el.name))?;
                    el.text.push_str(&s);
                }
            }
            Event::CData(t) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&String::from_utf8_lossy(&t.into_inner()));
                }
            }
            Event::Eof => return Err("document ended before its root element closed".into()),
            _ => {}
        }
    }
}

/// An error answer: `<Response><Errors><Error><Code>…</Code><Message>…</Message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

/// Reads an EC2 error document; `None` if `text` is not one.
pub fn api_error(text: &str) -> Option<ApiError> {
    let root = parse(text).ok()?;
    let err = root
        .child("Errors")
        .and_then(|e| e.child("Error"))
        .or_else(|| root.child("Error"))?;
    Some(ApiError {
        code: err.text_of("Code")?.to_owned(),
        message: err.text_of("Message").unwrap_or_default().to_owned(),
        request_id: root
            .text_of("RequestID")
            .or_else(|| root.text_of("RequestId"))
            .map(str::to_owned),
    })
}

/// A network interface of an instance, as `DescribeInstances` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    /// `None` when the response does not say.
    pub source_dest_check: Option<bool>,
    pub private_ips: Vec<String>,
}

/// An instance with its network interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub enis: Vec<Eni>,
}

/// The instances of a `DescribeInstancesResponse`.
pub fn instances(root: &Element) -> Vec<Instance> {
    let mut out = Vec::new();
    for res in root.items("reservationSet") {
        for inst in res.items("instancesSet") {
            let Some(id) = inst.text_of("instanceId") else {
                continue;
            };
            let enis = inst
                .items("networkInterfaceSet")
                .filter_map(|n| {
                    let mut private_ips: Vec<String> = n
                        .items("privateIpAddressesSet")
                        .filter_map(|a| a.text_of("privateIpAddress"))
                        .map(str::to_owned)
                        .collect();
                    if let Some(primary) = n.text_of("privateIpAddress") {
                        if !private_ips.iter().any(|p| p == primary) {
                            private_ips.insert(0, primary.to_owned());
                        }
                    }
                    Some(Eni {
                        id: n.text_of("networkInterfaceId")?.to_owned(),
                        subnet_id: n.text_of("subnetId").map(str::to_owned),
                        vpc_id: n.text_of("vpcId").map(str::to_owned),
                        source_dest_check: n.text_of("sourceDestCheck").and_then(parse_bool),
                        private_ips,
                    })
                })
                .collect();
            out.push(Instance {
                id: id.to_owned(),
                vpc_id: inst.text_of("vpcId").map(str::to_owned),
                subnet_id: inst.text_of("subnetId").map(str::to_owned),
                enis,
            });
        }
    }
    out
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// One route of a route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `destinationCidrBlock` (IPv4 routes only; IPv6 and prefix-list routes have none).
    pub destination: Option<String>,
    pub network_interface_id: Option<String>,
    /// Whatever else the route points to (`igw-…`, `i-…`, `nat-…`, `local`, …), for messages.
    pub other_target: Option<String>,
    /// `active` or `blackhole`.
    pub state: String,
}

impl Route {
    /// What the route points to, for log lines.
    pub fn target(&self) -> &str {
        self.network_interface_id
            .as_deref()
            .or(self.other_target.as_deref())
            .unwrap_or("nothing")
    }
}

/// A route table with its routes and associations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: Option<String>,
    pub routes: Vec<Route>,
    /// The VPC's main table.
    pub main: bool,
    /// Subnets explicitly associated with this table.
    pub subnet_ids: Vec<String>,
}

/// The route tables of a `DescribeRouteTablesResponse`, and its `nextToken`.
pub fn route_tables(root: &Element) -> (Vec<RouteTable>, Option<String>) {
    const TARGETS: [&str; 11] = [
        "instanceId",
        "gatewayId",
        "natGatewayId",
        "transitGatewayId",
        "vpcPeeringConnectionId",
        "localGatewayId",
        "carrierGatewayId",
        "egressOnlyInternetGatewayId",
        "coreNetworkArn",
        "destinationPrefixListId",
        "odbNetworkArn",
    ];
    let tables = root
        .items("routeTableSet")
        .filter_map(|t| {
            let routes = t
                .items("routeSet")
                .map(|r| Route {
                    destination: r.text_of("destinationCidrBlock").map(str::to_owned),
                    network_interface_id: r.text_of("networkInterfaceId").map(str::to_owned),
                    other_target: TARGETS.iter().find_map(|k| r.text_of(k)).map(str::to_owned),
                    state: r.text_of("state").unwrap_or("active").to_owned(),
                })
                .collect();
            let assocs: Vec<&Element> = t.items("associationSet").collect();
            Some(RouteTable {
                id: t.text_of("routeTableId")?.to_owned(),
                vpc_id: t.text_of("vpcId").map(str::to_owned),
                routes,
                main: assocs.iter().any(|a| a.text_of("main") == Some("true")),
                subnet_ids: assocs
                    .iter()
                    .filter_map(|a| a.text_of("subnetId"))
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect();
    (tables, root.text_of("nextToken").map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_with_code_message_and_request_id() {
        let text = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InvalidRouteTableID.NotFound</Code><Message>The routeTable ID 'rtb-1' does not exist</Message></Error></Errors><RequestID>abc-1</RequestID></Response>"#;
        let e = api_error(text).unwrap();
        assert_eq!(e.code, "InvalidRouteTableID.NotFound");
        assert_eq!(e.message, "The routeTable ID 'rtb-1' does not exist");
        assert_eq!(e.request_id.as_deref(), Some("abc-1"));
        assert_eq!(api_error("<html>502 Bad Gateway</html>"), None);
        assert_eq!(api_error("not xml"), None);
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        for text in [
            "",
            "<a>",
            "</a>",
            "<a><b></a>",
            "<a>&bogus;</a>",
            deep.as_str(),
            "<a/>trailing",
        ] {
            let _ = parse(text); // must return, whatever it returns
        }
        assert!(parse("<a>").is_err());
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn instances_list_enis_with_all_private_ips() {
        let text = r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <reservationSet><item><instancesSet><item>
    <instanceId>i-0abc</instanceId><vpcId>vpc-1</vpcId><subnetId>subnet-1</subnetId>
    <networkInterfaceSet><item>
      <networkInterfaceId>eni-1</networkInterfaceId><subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId>
      <sourceDestCheck>true</sourceDestCheck><privateIpAddress>10.0.0.5</privateIpAddress>
      <privateIpAddressesSet><item><privateIpAddress>10.0.0.5</privateIpAddress></item>
        <item><privateIpAddress>10.0.0.6</privateIpAddress></item></privateIpAddressesSet>
    </item><item><networkInterfaceId>eni-2</networkInterfaceId><privateIpAddress>10.0.1.5</privateIpAddress></item>
    </networkInterfaceSet>
  </item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let insts = instances(&parse(text).unwrap());
        assert_eq!(insts.len(), 1);
        assert_eq!(insts[0].id, "i-0abc");
        assert_eq!(insts[0].enis[0].private_ips, ["10.0.0.5", "10.0.0.6"]);
        assert_eq!(insts[0].enis[0].source_dest_check, Some(true));
        assert_eq!(insts[0].enis[1].private_ips, ["10.0.1.5"]);
        assert_eq!(insts[0].enis[1].source_dest_check, None);
    }
}
