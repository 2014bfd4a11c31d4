//! [`Etcd`]: a real etcd (Debian's `etcd-server`) per test: plain, TLS, in a network
//! namespace, or a cluster of members; driven with `etcdctl`.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::tls::TlsFiles;
use super::util::{free_port, in_netns, wait_until};

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
