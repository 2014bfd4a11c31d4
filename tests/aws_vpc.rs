//! The aws-vpc backend against a real EC2 API emulator: `moto` in server mode (PyPI
//! `moto[server]`, installed into `./.venv` by scripts/test.sh), one per test on a free
//! loopback port.
//!
//! The VPC, subnet, route tables and instances are made through moto's API with boto3 (from
//! the same venv), and checked the same way, independently of our own client. moto's own
//! metadata endpoint returns fixed values (instance `i-fake`) that match no instance it
//! creates, so each test serves the few metadata paths itself from a tiny HTTP server with the
//! real instance's values; every EC2 call goes to moto.
//!
//! The daemon runs with `--iface=lo`, so its interface address is 127.0.0.1: the instance is
//! created in a VPC `127.0.0.0/16` with that private address (moto accepts it), and the backend
//! finds the ENI by it just as it would find `10.0.1.23` on a real instance. No root needed.
//!
//! moto is required in CI (`FLANNEL_TEST_REQUIRE` containing `moto` or `all`); elsewhere a
//! missing moto is a visible SKIP.
//!
//! Tier: etcd (a real etcd and moto on loopback; no root).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const REGION: &str = "eu-west-1";
/// The only subnet the daemons can get (SubnetMin = SubnetMax), so a test can prepare its route.
const OUR_SUBNET: &str = "10.5.7.0/24";

/// Sets up and inspects moto's EC2 through boto3. Prints JSON.
const FIXTURE_PY: &str = r#"
import json, sys
import boto3
endpoint, region, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint,
                   aws_access_key_id="testing", aws_secret_access_key="testing")
out = {}
if cmd == "setup":
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    sub = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"]["SubnetId"]
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    def run(ip):
        i = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, SubnetId=sub, PrivateIpAddress=ip)["Instances"][0]
        return i["InstanceId"], i["NetworkInterfaces"][0]["NetworkInterfaceId"]
    inst, eni = run("127.0.0.1")
    other, other_eni = run("127.0.0.50")
    main = ec2.describe_route_tables(Filters=[{"Name": "association.main", "Values": ["true"]},
                                              {"Name": "vpc-id", "Values": [vpc]}])["RouteTables"][0]["RouteTableId"]
    a = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    b = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    out = dict(vpc=vpc, subnet=sub, instance=inst, eni=eni, other=other, other_eni=other_eni, main=main, a=a, b=b)
elif cmd == "routes":
    t = ec2.describe_route_tables(RouteTableIds=[args[0]])["RouteTables"][0]
    out = {r["DestinationCidrBlock"]: [r.get("NetworkInterfaceId") or r.get("GatewayId") or r.get("InstanceId"), r["State"]]
           for r in t["Routes"] if "DestinationCidrBlock" in r}
elif cmd == "srcdst":
    n = ec2.describe_network_interfaces(NetworkInterfaceIds=[args[0]])["NetworkInterfaces"][0]
    out = {"SourceDestCheck": n["SourceDestCheck"]}
elif cmd == "route-to-eni":
    ec2.create_route(RouteTableId=args[0], DestinationCidrBlock=args[1], NetworkInterfaceId=args[2])
elif cmd == "replace-to-eni":
    ec2.replace_route(RouteTableId=args[0], DestinationCidrBlock=args[1], NetworkInterfaceId=args[2])
elif cmd == "associate":
    ec2.associate_route_table(RouteTableId=args[0], SubnetId=args[1])
print(json.dumps(out))
"#;

/// A moto server on a free loopback port; killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
    python: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start(bin: &std::path::Path) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("moto.err")).unwrap())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto {
            child,
            endpoint,
            python: bin.with_file_name("python"),
            log,
            _dir: dir,
        };
        let up = wait_until(secs(30), || {
            http_get(&format!("127.0.0.1:{port}"), "/moto-api/").map(|_| ())
        });
        assert!(
            up.is_some(),
            "moto did not start; log:\n{}",
            std::fs::read_to_string(&moto.log).unwrap_or_default()
        );
        moto
    }

    /// Runs a fixture command; returns its JSON answer.
    fn py(&self, cmd: &str, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.python)
            .args(["-c", FIXTURE_PY, &self.endpoint, REGION, cmd])
            .args(args)
            .output()
            .expect("run the venv's python");
        assert!(
            out.status.success(),
            "fixture {cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `destination → [target, state]` of one route table.
    fn routes(&self, table: &str) -> serde_json::Value {
        self.py("routes", &[table])
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `setup` created.
struct Vpc(serde_json::Value);

impl Vpc {
    fn get(&self, k: &str) -> String {
        self.0[k]
            .as_str()
            .unwrap_or_else(|| panic!("fixture has no {k}: {}", self.0))
            .to_owned()
    }
}

/// The few metadata paths the backend reads, served with the moto instance's values.
struct FakeImds {
    addr: String,
    /// `"PUT /latest/api/token token=-"`-style lines, one per request.
    requests: Arc<Mutex<Vec<String>>>,
    /// While false every request gets 503 (a metadata service still starting).
    up: Arc<AtomicBool>,
}

const TOKEN: &str = "test-token-123";

impl FakeImds {
    /// `v2`: hand out session tokens (and insist on them); otherwise answer the token request
    /// with 404, as an IMDSv1-only service does.
    fn start(instance_id: &str, v2: bool) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let up = Arc::new(AtomicBool::new(true));
        let (reqs, up2, id) = (requests.clone(), up.clone(), instance_id.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut head = Vec::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let Some(first) = head.first() else { continue };
                let mut parts = first.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                );
                let token = head
                    .iter()
                    .find_map(|h| {
                        h.to_ascii_lowercase()
                            .strip_prefix("x-aws-ec2-metadata-token:")
                            .map(|v| v.trim().to_owned())
                    })
                    .unwrap_or_else(|| "-".into());
                reqs.lock()
                    .unwrap()
                    .push(format!("{method} {path} token={token}"));
                let (status, body) = if !up2.load(Ordering::SeqCst) {
                    (503, String::new())
                } else if method == "PUT" && path == "/latest/api/token" {
                    if v2 {
                        (200, TOKEN.to_owned())
                    } else {
                        (404, String::new())
                    }
                } else if v2 && token != TOKEN {
                    (401, String::new())
                } else {
                    match path.as_str() {
                        "/latest/meta-data/instance-id" => (200, id.clone()),
                        "/latest/meta-data/placement/region" => (200, REGION.to_owned()),
                        "/latest/meta-data/iam/security-credentials/" => (200, "flannel-node\n".to_owned()),
                        "/latest/meta-data/iam/security-credentials/flannel-node" => (
                            200,
                            r#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAROLE","SecretAccessKey":"role-secret","Token":"role-token","Expiration":"2099-01-01T00:00:00Z"}"#.to_owned(),
                        ),
                        _ => (404, String::new()),
                    }
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeImds { addr, requests, up }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn net_config(backend_extra: &str) -> String {
    format!(
        r#"{{"Network":"10.5.0.0/16","SubnetMin":"10.5.7.0","SubnetMax":"10.5.7.0","Backend":{{"Type":"aws-vpc"{backend_extra}}}}}"#
    )
}

/// flanneld with the aws-vpc backend pointed at `moto` and `imds`.
fn daemon(etcd: &Etcd, moto: &Moto, imds: &FakeImds, env_creds: bool) -> Flanneld {
    let args = [
        format!("--etcd-endpoints={}", etcd.endpoint),
        "--iface=lo".into(),
        "--public-ip=127.0.0.9".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let imds_url = format!("http://{}", imds.addr);
    let (key, secret) = if env_creds {
        ("testing", "testing")
    } else {
        ("", "")
    };
    Flanneld::spawn(
        &args,
        &[
            ("AWS_ENDPOINT_URL_EC2", &moto.endpoint),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_url),
            ("AWS_ACCESS_KEY_ID", key),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_SESSION_TOKEN", ""),
            // Region from the metadata service, whatever the test runner's environment says.
            ("AWS_REGION", ""),
            ("AWS_DEFAULT_REGION", ""),
        ],
    )
}

/// A moto server with the fixture's VPC set up; `None` (after a SKIP) without moto.
fn moto_with_vpc() -> Option<(Moto, Vpc)> {
    if let Err(why) = probe(Cap::Moto) {
        skip_or_fail(Cap::Moto, &why);
        return None;
    }
    let moto = Moto::start(&moto_server().ok()?);
    let vpc = Vpc(moto.py("setup", &[]));
    Some((moto, vpc))
}

/// Asserts that `table` routes our subnet to `eni` (else shows the table and `d`'s log).
fn assert_ours(moto: &Moto, table: &str, eni: &str, d: &Flanneld) {
    assert!(
        moto.routes(table)[OUR_SUBNET] == serde_json::json!([eni, "active"]),
        "{table}: {}\nlog:\n{}",
        moto.routes(table),
        d.log()
    );
}

#[test]
fn listed_tables_get_our_route_and_a_route_pointing_elsewhere_is_replaced() {
    require!(Cap::Etcd);
    let Some((moto, vpc)) = moto_with_vpc() else {
        return;
    };
    let (a, b, eni) = (vpc.get("a"), vpc.get("b"), vpc.get("eni"));
    // Table b already routes our subnet to another instance (a previous holder of the subnet).
    moto.py("route-to-eni", &[&b, OUR_SUBNET, &vpc.get("other_eni")]);
    assert_eq!(moto.py("srcdst", &[&eni])["SourceDestCheck"], true);

    let imds = FakeImds::start(&vpc.get("instance"), true);
    let etcd = Etcd::start();
    etcd.put_config(&net_config(&format!(r#","RouteTableID":["{a}","{b}"]"#)));
    let mut d = daemon(&etcd, &moto, &imds, true);
    assert_eq!(d.wait_subnet(secs(60)), "10.5.7.1/24");

    // subnet.env is written only once the tables are right.
    for t in [&a, &b] {
        assert_ours(&moto, t, &eni, &d);
    }
    assert!(
        d.log().contains(&format!(
            "replaced route {OUR_SUBNET} → {eni} (was {} (active))",
            vpc.get("other_eni")
        )),
        "{}",
        d.log()
    );
    assert_eq!(
        moto.py("srcdst", &[&eni])["SourceDestCheck"],
        false,
        "source/dest check off"
    );
    // The main table was not touched.
    assert!(moto.routes(&vpc.get("main")).get(OUR_SUBNET).is_none());
    // Lease: PublicIP only (here --public-ip); MTU = lo's.
    let v = etcd.must(&[
        "get",
        "/coreos.com/network/subnets/10.5.7.0-24",
        "--print-value-only",
    ]);
    assert_eq!(v.trim(), r#"{"PublicIP":"127.0.0.9","PublicIPv6":null}"#);
    assert!(std::fs::read_to_string(&d.subnet_file)
        .unwrap()
        .contains("FLANNEL_MTU=65536"));
    // IMDSv2: a token first, then every read carries it.
    let reqs = imds.requests();
    assert_eq!(reqs[0], "PUT /latest/api/token token=-", "{reqs:?}");
    assert!(
        reqs[1..]
            .iter()
            .all(|r| r.ends_with(&format!("token={TOKEN}"))),
        "{reqs:?}"
    );
    assert!(d.try_exit().is_none());
}

#[test]
fn a_single_table_id_works_with_imdsv1_and_instance_role_credentials() {
    require!(Cap::Etcd);
    let Some((moto, vpc)) = moto_with_vpc() else {
        return;
    };
    let (a, eni) = (vpc.get("a"), vpc.get("eni"));
    let imds = FakeImds::start(&vpc.get("instance"), false);
    let etcd = Etcd::start();
    etcd.put_config(&net_config(&format!(r#","RouteTableID":"{a}""#)));
    let mut d = daemon(&etcd, &moto, &imds, false);
    d.wait_subnet(secs(60));
    assert_ours(&moto, &a, &eni, &d);
    let reqs = imds.requests();
    assert!(
        reqs.contains(
            &"GET /latest/meta-data/iam/security-credentials/flannel-node token=-".to_owned()
        ),
        "{reqs:?}"
    );
    assert!(d.log().contains("instance role"), "{}", d.log());
}

#[test]
fn without_route_table_id_the_main_table_then_the_subnets_own_table_is_used() {
    require!(Cap::Etcd);
    let Some((moto, vpc)) = moto_with_vpc() else {
        return;
    };
    let (main, a, eni) = (vpc.get("main"), vpc.get("a"), vpc.get("eni"));
    let imds = FakeImds::start(&vpc.get("instance"), true);
    let etcd = Etcd::start();
    etcd.put_config(&net_config(""));

    // The subnet has no table of its own: the VPC's main table is used.
    let mut d = daemon(&etcd, &moto, &imds, true);
    d.wait_subnet(secs(60));
    assert_ours(&moto, &main, &eni, &d);
    assert!(moto.routes(&a).get(OUR_SUBNET).is_none());

    // Once the subnet is associated with table a, a restarted daemon uses that one.
    moto.py("associate", &[&a, &vpc.get("subnet")]);
    std::fs::remove_file(&d.subnet_file).unwrap();
    d.restart();
    d.wait_subnet(secs(60));
    assert_ours(&moto, &a, &eni, &d);
    assert!(
        d.log()
            .contains(&format!("using the route table of our subnet table={a}")),
        "{}",
        d.log()
    );
}

#[test]
fn bad_route_table_config_is_a_clear_error() {
    require!(Cap::Etcd);
    let Some((moto, vpc)) = moto_with_vpc() else {
        return;
    };
    let imds = FakeImds::start(&vpc.get("instance"), true);
    for (extra, says) in [
        (
            r#","RouteTableID":[]"#.to_owned(),
            vec!["Backend.RouteTableID", "the list is empty"],
        ),
        (
            format!(
                r#","RouteTableID":["{}","rtb-0doesnotexist"]"#,
                vpc.get("a")
            ),
            vec![
                "Backend.RouteTableID",
                "rtb-0doesnotexist",
                "InvalidRouteTableID.NotFound",
            ],
        ),
    ] {
        let etcd = Etcd::start();
        etcd.put_config(&net_config(&extra));
        let mut d = daemon(&etcd, &moto, &imds, true);
        let status = d
            .wait_exit(secs(60))
            .unwrap_or_else(|| panic!("{extra}: still running; log:\n{}", d.log()));
        assert_eq!(status.code(), Some(1), "{extra}; log:\n{}", d.log());
        let log = d.log();
        for s in says {
            assert!(log.contains(s), "{extra}: no {s:?} in:\n{log}");
        }
    }
}

#[test]
fn a_metadata_outage_is_retried_not_fatal() {
    require!(Cap::Etcd);
    let Some((moto, vpc)) = moto_with_vpc() else {
        return;
    };
    let (a, eni) = (vpc.get("a"), vpc.get("eni"));
    let imds = FakeImds::start(&vpc.get("instance"), true);
    imds.up.store(false, Ordering::SeqCst);
    let etcd = Etcd::start();
    etcd.put_config(&net_config(&format!(r#","RouteTableID":"{a}""#)));
    let mut d = daemon(&etcd, &moto, &imds, true);
    wait_until(secs(20), || d.log().contains("HTTP 503").then_some(()))
        .unwrap_or_else(|| panic!("no retry logged:\n{}", d.log()));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        d.try_exit().is_none(),
        "must not exit on a transient error:\n{}",
        d.log()
    );
    assert!(
        !d.subnet_file.exists(),
        "not ready before the routes are in"
    );
    imds.up.store(true, Ordering::SeqCst);
    d.wait_subnet(secs(60));
    assert_ours(&moto, &a, &eni, &d);
}

/// The lease is lost while the daemon runs and its subnet taken by another host; the
/// daemon moves to the only other subnet, and so does its route: created in every table, the
/// old one deleted where it still points at our ENI (table a) and left where the subnet's new
/// holder already took it over (table b).
#[test]
fn a_moved_subnet_moves_its_route_and_leaves_the_new_holders_alone() {
    require!(Cap::Etcd);
    let Some((moto, vpc)) = moto_with_vpc() else {
        return;
    };
    let (a, b, eni, other_eni) = (
        vpc.get("a"),
        vpc.get("b"),
        vpc.get("eni"),
        vpc.get("other_eni"),
    );
    let imds = FakeImds::start(&vpc.get("instance"), true);
    let etcd = Etcd::start();
    // Two subnets: whichever the daemon gets first, the other is where it moves.
    etcd.put_config(&format!(
        r#"{{"Network":"10.5.0.0/16","SubnetMin":"10.5.7.0","SubnetMax":"10.5.8.0","Backend":{{"Type":"aws-vpc","RouteTableID":["{a}","{b}"]}}}}"#
    ));
    let mut d = daemon(&etcd, &moto, &imds, true);
    let first = d.wait_subnet(secs(60));
    let net = |s: &str| {
        let n: ipnet::Ipv4Net = s.parse().unwrap();
        n.trunc().to_string()
    };
    let old = net(&first);
    for t in [&a, &b] {
        assert_eq!(
            moto.routes(t)[&old],
            serde_json::json!([eni, "active"]),
            "{}",
            d.log()
        );
    }

    // Paused: our lease goes, another host takes the subnet and already points table b at
    // its own ENI.
    let key = format!("/coreos.com/network/subnets/{}", old.replace('/', "-"));
    let other = r#"{"PublicIP":"127.0.0.50","PublicIPv6":null}"#;
    let moved = d.lose_subnet(&etcd, &key, other, &first, || {
        moto.py("replace-to-eni", &[&b, &old, &other_eni]);
    });
    let new = net(&moved);
    assert_ne!(new, old);
    for t in [&a, &b] {
        assert_eq!(
            moto.routes(t)[&new],
            serde_json::json!([eni, "active"]),
            "{t}: {}",
            d.log()
        );
    }
    assert!(
        moto.routes(&a).get(&old).is_none(),
        "our old route stays in {a}: {}\n{}",
        moto.routes(&a),
        d.log()
    );
    assert_eq!(
        moto.routes(&b)[&old],
        serde_json::json!([other_eni, "active"]),
        "the new holder's route is not ours to delete: {}",
        d.log()
    );
    assert!(d.try_exit().is_none(), "{}", d.log());
}
