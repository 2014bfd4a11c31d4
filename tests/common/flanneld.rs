//! [`Flanneld`]: a real `flanneld` child process with its own subnet file, health port and
//! captured log; started, signalled, restarted and killed by the tests.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::etcd::Etcd;
use super::util::{free_port, http_get, in_netns, wait_until};

/// The health server port of daemons in their own network namespace (one per namespace,
/// so one fixed port serves every host of a cluster).
pub const NETNS_HEALTHZ_PORT: u16 = 10253;

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
