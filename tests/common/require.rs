//! Capability probing: what a test needs from the machine ([`Cap`]), whether it has it
//! ([`probe`], cached per process), and what happens when it does not ([`require!`]: skip
//! with a `SKIP` line, or fail when `FLANNEL_TEST_REQUIRE` demands the capability).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::venv::{moto_server, venv_python};

/// A capability a test may need from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cap {
    Root,
    Netns,
    Tun,
    Veth,
    Vxlan,
    Etcd,
    CniPlugins,
    Iptables,
    Nft,
    Iperf3,
    /// io_uring with every opcode the udp worker uses (not disabled by
    /// `kernel.io_uring_disabled` or a seccomp filter).
    IoUring,
    /// `moto_server`, the EC2 API emulator (scripts/test.sh installs it into `.venv`).
    Moto,
    /// Python's `prometheus_client` text-format parser, in the same venv.
    PromParser,
    /// UDP segmentation offload on TUN devices (`TUN_F_USO4`, Linux 6.2).
    TunUso,
}

/// `Ok(())` if this machine can run tests needing `cap`, else why not.
pub fn probe(cap: Cap) -> Result<(), String> {
    type Probed = Vec<(Cap, Result<(), String>)>;
    static CACHE: OnceLock<Mutex<Probed>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    if let Some((_, r)) = cache.lock().unwrap().iter().find(|(c, _)| *c == cap) {
        return r.clone();
    }
    let result = match cap {
        Cap::Root => {
            if nix_is_root() {
                Ok(())
            } else {
                Err("not running as root".into())
            }
        }
        Cap::Netns => run_ok("unshare", &["-n", "true"]),
        Cap::Tun => {
            if Path::new("/dev/net/tun").exists() {
                Ok(())
            } else {
                Err("/dev/net/tun is missing".into())
            }
        }
        Cap::Veth => run_ok(
            "unshare",
            &[
                "-n", "ip", "link", "add", "t0", "type", "veth", "peer", "name", "t1",
            ],
        ),
        Cap::Vxlan => run_ok(
            "unshare",
            &[
                "-n", "ip", "link", "add", "vx0", "type", "vxlan", "id", "1", "dstport", "8472",
            ],
        ),
        Cap::Etcd => run_ok("etcd", &["--version"]).and_then(|_| run_ok("etcdctl", &["version"])),
        Cap::CniPlugins => {
            if Path::new(&format!("{CNI_PLUGIN_DIR}/bridge")).exists() {
                Ok(())
            } else {
                Err(format!(
                    "{CNI_PLUGIN_DIR}/bridge is missing (apt install containernetworking-plugins)"
                ))
            }
        }
        Cap::Iptables => run_ok("iptables", &["--version"]),
        Cap::Nft => run_ok("nft", &["--version"]),
        Cap::Iperf3 => run_ok("iperf3", &["--version"]),
        Cap::IoUring => flannel_rs::sys::uring::probe(),
        Cap::TunUso => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let mut v = release
                .split(['.', '-'])
                .map(|x| x.parse::<u32>().unwrap_or(0));
            let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
            if (major, minor) >= (6, 2) {
                Ok(())
            } else {
                Err(format!(
                    "kernel {} has no TUN_F_USO4 (6.2+)",
                    release.trim()
                ))
            }
        }
        Cap::Moto => moto_server().map(|_| ()),
        Cap::PromParser => venv_python().and_then(|py| {
            run_ok(
                py.to_str().unwrap_or("python3"),
                &["-c", "import prometheus_client"],
            )
        }),
    };
    cache.lock().unwrap().push((cap, result.clone()));
    result
}

/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn run_ok(cmd: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("`{cmd}` cannot run: {e}")),
    }
}

/// Skips the test (printing `SKIP <test>: …`) when a capability is missing,
/// unless `FLANNEL_TEST_REQUIRE` lists it (or says `all`): then it fails.
#[macro_export]
macro_rules! require {
    ($($cap:expr),+ $(,)?) => {
        $( if let Err(why) = $crate::common::probe($cap) {
            $crate::common::skip_or_fail($cap, &why);
            return;
        } )+
    };
}

/// [`require!`] for a udp netns cluster: root, namespaces, veth, TUN, etcd and io_uring (the
/// udp datapath's default I/O path), plus whatever else the test names.
#[macro_export]
macro_rules! require_udp_cluster {
    ($($extra:expr),* $(,)?) => {
        $crate::require!(
            $crate::common::Cap::Root,
            $crate::common::Cap::Netns,
            $crate::common::Cap::Veth,
            $crate::common::Cap::Tun,
            $crate::common::Cap::Etcd,
            $crate::common::Cap::IoUring
            $(, $extra)*
        )
    };
}

/// [`require!`] for a netns cluster on a backend without devices of its own (alloc, host-gw,
/// extension): root, namespaces, veth and etcd, plus whatever else the test names.
#[macro_export]
macro_rules! require_cluster {
    ($($extra:expr),* $(,)?) => {
        $crate::require!(
            $crate::common::Cap::Root,
            $crate::common::Cap::Netns,
            $crate::common::Cap::Veth,
            $crate::common::Cap::Etcd
            $(, $extra)*
        )
    };
}

/// [`require!`] for a vxlan netns cluster: root, namespaces, veth, VXLAN devices and etcd,
/// plus whatever else the test names.
#[macro_export]
macro_rules! require_vxlan_cluster {
    ($($extra:expr),* $(,)?) => {
        $crate::require!(
            $crate::common::Cap::Root,
            $crate::common::Cap::Netns,
            $crate::common::Cap::Veth,
            $crate::common::Cap::Vxlan,
            $crate::common::Cap::Etcd
            $(, $extra)*
        )
    };
}

pub fn skip_or_fail(cap: Cap, why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let wanted = std::env::var("FLANNEL_TEST_REQUIRE").unwrap_or_default();
    let required = wanted
        .split(',')
        .any(|w| w.trim() == "all" || w.trim().eq_ignore_ascii_case(&format!("{cap:?}")));
    assert!(
        !required,
        "{test}: required capability {cap:?} missing: {why}"
    );
    eprintln!("SKIP {test}: needs {cap:?}: {why}");
}
