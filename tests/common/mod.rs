//! Shared test harness: capability checks (`require!`), a real etcd from the
//! Debian package, and real `flanneld` processes.
//!
//! Every resource a test makes carries a unique name or port and is removed in
//! `Drop`, so tests can run in parallel and clean up even when they fail.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Where `moto_server` is: `$MOTO_SERVER`, else the venv scripts/test.sh makes.
pub fn moto_server() -> Result<PathBuf, String> {
    match std::env::var_os("MOTO_SERVER") {
        Some(p) => existing(PathBuf::from(p), "set by MOTO_SERVER"),
        None => venv_bin("moto_server"),
    }
}

/// The Python of the venv scripts/test.sh makes (moto, prometheus-client).
pub fn venv_python() -> Result<PathBuf, String> {
    venv_bin("python3")
}

/// A program in the venv scripts/test.sh makes (`.venv/bin`).
fn venv_bin(name: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    existing(
        path,
        "scripts/test.sh installs moto[server] and prometheus-client into .venv",
    )
}

fn existing(path: PathBuf, hint: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} not found ({hint})", path.display()))
    }
}

/// The health server port of daemons in their own network namespace (one per namespace,
/// so one fixed port serves every host of a cluster).
pub const NETNS_HEALTHZ_PORT: u16 = 10253;

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

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1 (the kernel picks it; the race until use is small).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name unique to this process and call, short enough for interface names.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// TLS material for etcd: a CA, a server cert for 127.0.0.1, a client cert.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates everything with the `openssl` CLI in `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        let p = |n: &str| dir.join(n);
        let sh = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=flannel-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        std::fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, cn) in [("server", "127.0.0.1"), ("client", "flanneld")] {
            sh(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            sh(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        }
        TlsFiles {
            ca: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
        }
    }
}

/// A real etcd (Debian's `etcd-server`) on loopback with a temp data dir.
pub struct Etcd {
    pub endpoint: String,
    pub port: u16,
    peer_port: u16,
    /// Network namespace etcd runs in (`None`: the test's own).
    netns: Option<String>,
    host: String,
    /// Member name and `--initial-cluster` value (a single member by default).
    member: Option<(String, String)>,
    dir: tempfile::TempDir,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Etcd {
    /// Starts a plain-HTTP etcd and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::launch(None)
    }

    /// Starts etcd inside network namespace `netns`, listening on `ip`.
    pub fn start_in(netns: &str, ip: &str) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Etcd {
            endpoint: format!("http://{ip}:2379"),
            port: 2379,
            peer_port: 2380,
            netns: Some(netns.to_owned()),
            host: ip.to_owned(),
            member: None,
            log: dir.path().join("etcd.log"),
            dir,
            tls: None,
            child: None,
        };
        etcd.spawn();
        etcd
    }

    /// Starts an etcd that requires client certificates signed by `tls.ca`.
    pub fn start_tls(tls: &TlsFiles) -> Etcd {
        Etcd::launch(Some((
            tls.server_cert.clone(),
            tls.server_key.clone(),
            tls.ca.clone(),
        )))
    }

    fn launch(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            port,
            peer_port: free_port(),
            netns: None,
            host: "127.0.0.1".into(),
            member: None,
            log: dir.path().join("etcd.log"),
            dir,
            tls,
            child: None,
        };
        etcd.spawn();
        etcd
    }

    /// Starts an `n`-member etcd cluster on loopback (all members at once: none
    /// is healthy before a quorum is up) and waits until every member answers.
    pub fn start_cluster(n: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, peer_port))| {
                let dir = tempfile::tempdir().unwrap();
                Etcd {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    port,
                    peer_port,
                    netns: None,
                    host: "127.0.0.1".into(),
                    member: Some((format!("m{i}"), initial.clone())),
                    log: dir.path().join("etcd.log"),
                    dir,
                    tls: None,
                    child: None,
                }
            })
            .collect();
        for m in &mut members {
            m.spawn_process();
        }
        for m in &members {
            m.wait_healthy();
        }
        members
    }

    fn spawn(&mut self) {
        self.spawn_process();
        self.wait_healthy();
    }

    fn spawn_process(&mut self) {
        let (name, initial_cluster) = self.member.clone().unwrap_or_else(|| {
            (
                "test".into(),
                format!("test=http://{}:{}", self.host, self.peer_port),
            )
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = in_netns(self.netns.as_deref(), "etcd");
        cmd.arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&self.endpoint)
            .arg("--advertise-client-urls")
            .arg(&self.endpoint)
            .arg("--listen-peer-urls")
            .arg(format!("http://{}:{}", self.host, self.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}:{}", self.host, self.peer_port))
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .env("ETCD_UNSUPPORTED_ARCH", "")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((cert, key, ca)) = &self.tls {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca);
            cmd.arg("--client-cert-auth");
        }
        self.child = Some(cmd.spawn().expect("start etcd"));
    }

    fn wait_healthy(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            self.ctl(&["endpoint", "health"]).ok().map(|_| ())
        });
        assert!(
            ok.is_some(),
            "etcd did not become healthy; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `etcdctl` (API v3) against this etcd; `Ok(stdout)` on success.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = in_netns(self.netns.as_deref(), "etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint)
            .arg("--command-timeout=5s");
        if let Some((_, _, ca)) = &self.tls {
            let dir = ca.parent().unwrap();
            cmd.arg("--cacert").arg(ca);
            cmd.arg("--cert")
                .arg(dir.join("client.crt"))
                .arg("--key")
                .arg(dir.join("client.key"));
        }
        let out = cmd.args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like [`Etcd::ctl`] but panics on failure.
    pub fn must(&self, args: &[&str]) -> String {
        self.ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// Writes the network config under the default prefix.
    pub fn put_config(&self, json: &str) {
        self.must(&["put", "/coreos.com/network/config", json]);
    }

    /// `key → value` of every lease under the default prefix.
    pub fn leases(&self) -> Vec<(String, String)> {
        let out = self.must(&["get", "--prefix", "/coreos.com/network/subnets/"]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect()
    }

    /// Stops etcd (SIGKILL) keeping its data dir.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same port and data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `flanneld` child process with its own subnet file and log.
pub struct Flanneld {
    pub child: Option<Child>,
    /// Network namespace the daemon runs in (`None`: the test's own).
    pub netns: Option<String>,
    pub subnet_file: PathBuf,
    pub healthz_port: u16,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// The binary run (the tests' build unless [`Flanneld::spawn_bin_in`] names another).
    bin: PathBuf,
}

/// The `flanneld` binary cargo built for these tests.
pub fn flanneld_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flanneld")
}

impl Flanneld {
    /// Starts `flanneld` with `args` plus a private subnet file and a health port.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Flanneld {
        Flanneld::spawn_in(None, args, envs)
    }

    /// Starts `flanneld` inside network namespace `netns` (health server off:
    /// the test cannot reach it there; readiness is the subnet file).
    pub fn spawn_in(netns: Option<&str>, args: &[&str], envs: &[(&str, &str)]) -> Flanneld {
        Flanneld::spawn_bin_in(Path::new(flanneld_bin()), netns, args, envs)
    }

    /// As [`Flanneld::spawn_in`], running the binary at `bin` (a copy a test may replace).
    pub fn spawn_bin_in(
        bin: &Path,
        netns: Option<&str>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Flanneld {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Flanneld {
            child: None,
            netns: netns.map(str::to_owned),
            subnet_file: dir.path().join("subnet.env"),
            healthz_port: if netns.is_some() {
                NETNS_HEALTHZ_PORT
            } else {
                free_port()
            },
            log: Arc::new(Mutex::new(String::new())),
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bin: bin.to_owned(),
        };
        f.start();
        f
    }

    fn start(&mut self) {
        let bin = self.bin.to_string_lossy().into_owned();
        let mut cmd = in_netns(self.netns.as_deref(), &bin);
        cmd.args(&self.args)
            .arg(format!("--subnet-file={}", self.subnet_file.display()))
            .arg("--healthz-ip=127.0.0.1")
            .arg(format!("--healthz-port={}", self.healthz_port))
            .env_remove("NOTIFY_SOCKET")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.netns.is_none() {
            // In the test's own namespace: never touch the machine's iptables (upstream's
            // default installs FORWARD rules).
            cmd.arg("--iptables-forward-rules=false");
        }
        let mut child = cmd.spawn().expect("start flanneld");
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.child = Some(child);
    }

    /// The process ID (it stays the same across a `SIGUSR2` re-exec).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for subnet.env and returns its `FLANNEL_SUBNET` value.
    pub fn wait_subnet(&mut self, timeout: Duration) -> String {
        let file = self.subnet_file.clone();
        let got = wait_until(timeout, || {
            let text = std::fs::read_to_string(&file).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET=").map(str::to_owned))
        });
        match got {
            Some(s) => s,
            None => panic!(
                "flanneld wrote no subnet.env within {timeout:?} (exit: {:?}); log:\n{}",
                self.try_exit(),
                self.log()
            ),
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.try_exit())
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, …) to the process.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Takes this daemon's subnet away as a real loss would: with the daemon paused, its
    /// `key` is deleted and created anew with `value` (another host's), and `meanwhile` runs;
    /// then it resumes. Returns the new subnet once subnet.env names one other than `from`.
    pub fn lose_subnet(
        &self,
        etcd: &Etcd,
        key: &str,
        value: &str,
        from: &str,
        meanwhile: impl FnOnce(),
    ) -> String {
        self.signal("STOP");
        let taken = etcd
            .ctl(&["del", key])
            .and_then(|_| etcd.ctl(&["put", key, value]));
        meanwhile();
        self.signal("CONT");
        taken.unwrap();
        let file = self.subnet_file.clone();
        wait_until(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&file).ok()?;
            let s = text
                .lines()
                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?
                .to_owned();
            (s != from).then_some(s)
        })
        .unwrap_or_else(|| panic!("no new subnet after {from}:\n{}", self.log()))
    }

    /// Kills (SIGKILL) and starts the daemon again with the same arguments and files.
    pub fn restart(&mut self) {
        self.kill();
        self.log.lock().unwrap().clear();
        self.start();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET path` on the health server: (status code, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("127.0.0.1:{}", self.healthz_port), path)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Flanneld {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A command that runs `program` inside `netns` (via `ip netns exec`, which
/// execs it: the child's PID is the program's own) or here when `None`.
pub fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `cmd` with `stdin` as its standard input and captures its output. A
/// program that exits before reading its input (a CNI `VERSION`) is no error.
pub fn run_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let _ = pipe.write_all(stdin.as_bytes());
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// A minimal HTTP/1.0 GET (enough for the health endpoints).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

pub mod cluster;
pub mod kernel;

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
