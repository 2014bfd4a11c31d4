//! The `flannel` CNI binary as a runtime sees it, without root: CNI environment and
//! stdin in; stdout, exit status and files out. The delegate is a fake plugin (a shell
//! script in a temp `CNI_PATH`) that records the config and environment it was run
//! with and prints a canned result or error, so the exact delegate config, the state
//! file handling and the error pass-through can be checked byte for byte.
//!
//! Tier: pure (no root, no services).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::run_with_stdin;
use serde_json::{json, Value};

/// What the fake delegate prints for ADD; we must print it unchanged.
const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.1.17.2/24","gateway":"10.1.17.1","interface":0}],"routes":[{"dst":"10.1.0.0/16"}],"dns":{}}"#;

/// The fake delegate: records stdin, CNI env and its own name under `../rec/`, then
/// behaves as `FAKE_MODE` says (flannel passes its environment on to the delegate).
const FAKE_PLUGIN: &str = r#"#!/bin/sh
rec="$(dirname "$0")/../rec"
mkdir -p "$rec"
cat > "$rec/$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "$rec/$CNI_COMMAND.env"
basename "$0" > "$rec/$CNI_COMMAND.plugin"
case "${FAKE_MODE:-ok}" in
  fail) printf '%s' '{"cniVersion":"1.0.0","code":7,"msg":"fake failure","details":"from the fake"}'; exit 1 ;;
  garbage) echo 'this is not a result'; exit 0 ;;
esac
if [ "$CNI_COMMAND" = ADD ]; then printf '%s' "$FAKE_RESULT"; fi
echo "fake $CNI_COMMAND done" >&2
"#;

const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// A temp dir with `bin/` (fake `bridge` and `fake` plugins), `subnet.env`, `state/`
/// (the plugin's dataDir, not created up front) and `rec/` (what the fake recorded).
struct Fixture {
    dir: tempfile::TempDir,
}

/// One run of the binary.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a CNI error with `code` and returns its JSON.
    fn error(&self, code: u64) -> Value {
        assert_eq!(
            self.code,
            Some(1),
            "errors exit 1; stdout {} stderr {}",
            self.stdout,
            self.stderr
        );
        let json = self.json();
        assert_eq!(json["code"], code, "{json}");
        assert!(
            json["msg"].is_string() && json["cniVersion"].is_string(),
            "{json}"
        );
        json
    }

    fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "stdout {} stderr {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Fixture {
    fn new() -> Self {
        let fx = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(fx.bin()).unwrap();
        for name in ["bridge", "fake"] {
            let path = fx.bin().join(name);
            fs::write(&path, FAKE_PLUGIN).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(fx.subnet_file(), SUBNET_ENV).unwrap();
        fx
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn state_file(&self, id: &str) -> PathBuf {
        self.data_dir().join(id)
    }

    /// Our config: `name`, `type`, `cniVersion` 1.0.0, our files, plus `extra`'s keys.
    fn conf(&self, extra: Value) -> String {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
        });
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        conf.to_string()
    }

    /// What the fake recorded for `command` (`stdin`, `env` or `plugin`), if it ran.
    fn recorded(&self, command: &str, what: &str) -> Option<String> {
        fs::read_to_string(
            self.dir
                .path()
                .join("rec")
                .join(format!("{command}.{what}")),
        )
        .ok()
    }

    fn forget_recordings(&self) {
        let _ = fs::remove_dir_all(self.dir.path().join("rec"));
    }

    /// Runs the binary for `command` on container `c1` with `conf` on stdin. `env`
    /// adds or (with an empty value) removes variables.
    fn run(&self, command: &str, conf: &str, env: &[(&str, &str)]) -> Out {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flannel"));
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
            "FAKE_MODE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", "/var/run/netns/x")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p")
            .env("CNI_PATH", self.bin())
            .env("FAKE_RESULT", RESULT);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = run_with_stdin(cmd, conf);
        Out {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn version_reports_every_supported_spec_version() {
    let fx = Fixture::new();
    let out = fx.run("VERSION", "", &[]);
    out.ok();
    assert_eq!(
        out.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn without_a_command_it_describes_itself_on_stderr() {
    let fx = Fixture::new();
    let out = fx.run("", "", &[]);
    out.ok();
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains(
            "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_environment_and_input_give_spec_error_json() {
    let fx = Fixture::new();
    let conf = fx.conf(json!({"cniVersion": "0.4.0"}));
    let json = fx
        .run("ADD", &conf, &[("CNI_NETNS", ""), ("CNI_PATH", "")])
        .error(4);
    assert_eq!(
        json["msg"],
        "required env variables [CNI_NETNS,CNI_PATH] missing"
    );
    assert_eq!(
        json["cniVersion"], "0.4.0",
        "errors speak the config's version"
    );
    fx.run("FROB", &conf, &[]).error(4);
    fx.run("ADD", "{not json", &[]).error(6);
    fx.run("ADD", &fx.conf(json!({"name": null})), &[]).error(7);
    let json = fx
        .run("ADD", &fx.conf(json!({"cniVersion": "2.0.0"})), &[])
        .error(1);
    assert_eq!(json["msg"], "incompatible CNI versions");
    let json = fx
        .run("DEL", &conf, &[("CNI_CONTAINERID", "../../etc")])
        .error(4);
    assert_eq!(
        (json["msg"].as_str(), json["details"].as_str()),
        (Some("invalid characters in containerID"), Some("../../etc"))
    );
    fx.run("ADD", &conf, &[("CNI_IFNAME", "much-too-long-name")])
        .error(4);
    assert!(
        fx.recorded("ADD", "stdin").is_none() && !fx.data_dir().exists(),
        "nothing ran, nothing saved"
    );
}

#[test]
fn add_runs_upstreams_delegate_config_and_returns_its_result_verbatim() {
    let fx = Fixture::new();
    let conf = fx.conf(json!({
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        "ipam": {"dataDir": "/tmp/ipam"},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    }));
    let out = fx.run("ADD", &conf, &[]);
    out.ok();
    assert_eq!(
        out.stdout, RESULT,
        "the delegate's result is ours, byte for byte"
    );
    let sent = fx.recorded("ADD", "stdin").expect("delegate ran");
    let want = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "hairpinMode": true,
        "isDefaultGateway": true,
        "isGateway": true,
        "ipMasq": false,
        "mtu": 1450,
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "ipam": {
            "type": "host-local",
            "dataDir": "/tmp/ipam",
            "ranges": [[{"subnet": "10.1.17.0/24"}]],
            "routes": [{"dst": "10.1.0.0/16"}],
        },
    });
    assert_eq!(serde_json::from_str::<Value>(&sent).unwrap(), want);
    let env = fx.recorded("ADD", "env").unwrap();
    let want_env = format!(
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=p\nCNI_COMMAND=ADD\nCNI_CONTAINERID=c1\nCNI_IFNAME=eth0\n\
         CNI_NETNS=/var/run/netns/x\nCNI_PATH={}\n",
        fx.bin().display()
    );
    assert_eq!(env, want_env);
    // The state file holds exactly what the delegate got, privately.
    assert_eq!(fs::read_to_string(fx.state_file("c1")).unwrap(), sent);
    assert_eq!(
        (mode(&fx.data_dir()), mode(&fx.state_file("c1"))),
        (0o700, 0o600)
    );
    // Silent about the delegate config, as upstream is; the delegate's own stderr passes.
    assert!(
        !out.stderr.contains("delegate config") && out.stderr.contains("fake ADD done"),
        "{}",
        out.stderr
    );
    // `"debug": true` logs it.
    let debug = fx.conf(json!({"debug": true}));
    let out = fx.run("ADD", &debug, &[("CNI_CONTAINERID", "c2")]);
    out.ok();
    assert!(
        out.stderr.contains("flannel: delegate config for c2: {"),
        "{}",
        out.stderr
    );
    fx.run("ADD", &fx.conf(json!({"debug": "yes"})), &[])
        .error(6);
}

/// Container ids up to the file-name limit are accepted, as upstream accepts them; their
/// state file round-trips through DEL.
#[test]
fn the_longest_container_ids_are_accepted() {
    let fx = Fixture::new();
    let conf = fx.conf(json!({}));
    for len in [245, 255] {
        let id = "a".repeat(len);
        fx.run("ADD", &conf, &[("CNI_CONTAINERID", &id)]).ok();
        assert!(fx.state_file(&id).exists(), "state file of an id of {len}");
        fx.run("DEL", &conf, &[("CNI_CONTAINERID", &id)]).ok();
        assert!(!fx.state_file(&id).exists());
    }
}

#[test]
fn add_without_subnet_env_says_flanneld_may_not_be_running() {
    let fx = Fixture::new();
    fs::remove_file(fx.subnet_file()).unwrap();
    let json = fx.run("ADD", &fx.conf(json!({})), &[]).error(11);
    let msg = json["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("failed to load flannel 'subnet.env' file: open "),
        "{msg}"
    );
    assert!(
        msg.ends_with(
            "subnet.env: no such file or directory. Check the flannel pod log for this node."
        ),
        "{msg}"
    );
    assert!(
        json["details"].as_str().unwrap().contains("flanneld"),
        "{json}"
    );
    assert!(fx.recorded("ADD", "stdin").is_none() && !fx.state_file("c1").exists());

    fs::write(
        fx.subnet_file(),
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n",
    )
    .unwrap();
    let json = fx.run("ADD", &fx.conf(json!({})), &[]).error(11);
    assert!(
        json["msg"]
            .as_str()
            .unwrap()
            .contains("is missing FLANNEL_MTU, FLANNEL_IPMASQ"),
        "{json}"
    );
}

#[test]
fn add_refuses_delegate_keys_flannel_owns() {
    let fx = Fixture::new();
    let rows = [
        (
            json!({"name": "x"}),
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        ),
        (
            json!({"ipam": {}}),
            "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
        ),
        (
            json!({"type": ["bridge"]}),
            "'delegate' dictionary, if present, must have (string) 'type' field",
        ),
    ];
    for (delegate, msg) in rows {
        let json = fx
            .run("ADD", &fx.conf(json!({ "delegate": delegate })), &[])
            .error(7);
        assert_eq!(json["msg"], msg);
    }
    assert!(fx.recorded("ADD", "stdin").is_none() && !fx.state_file("c1").exists());
}

#[test]
fn add_passes_the_delegates_error_through_and_keeps_state_for_del() {
    let fx = Fixture::new();
    let json = fx
        .run("ADD", &fx.conf(json!({})), &[("FAKE_MODE", "fail")])
        .error(7);
    assert_eq!(
        (json["msg"].as_str(), json["details"].as_str()),
        (Some("fake failure"), Some("from the fake"))
    );
    assert!(
        fx.state_file("c1").exists(),
        "saved before the delegate ran, so DEL can clean up"
    );
    fx.run("DEL", &fx.conf(json!({})), &[]).ok();
    assert!(!fx.state_file("c1").exists());

    let json = fx
        .run("ADD", &fx.conf(json!({})), &[("FAKE_MODE", "garbage")])
        .error(999);
    assert!(
        json["msg"]
            .as_str()
            .unwrap()
            .contains("bridge returned an unusable result"),
        "{json}"
    );
}

#[test]
fn delegate_is_searched_in_every_cni_path_dir() {
    let fx = Fixture::new();
    let path = format!("/nonexistent-cni-dir:{}", fx.bin().display());
    let conf = fx.conf(json!({"delegate": {"type": "fake", "master": "eth9"}}));
    fx.run("ADD", &conf, &[("CNI_PATH", &path)]).ok();
    assert_eq!(fx.recorded("ADD", "plugin").as_deref(), Some("fake\n"));
    let sent: Value = serde_json::from_str(&fx.recorded("ADD", "stdin").unwrap()).unwrap();
    assert_eq!(
        (sent["type"].as_str(), sent.get("isGateway")),
        (Some("fake"), None),
        "no isGateway for non-bridge"
    );

    let json = fx
        .run(
            "ADD",
            &fx.conf(json!({"delegate": {"type": "ipvlan"}})),
            &[("CNI_PATH", &path)],
        )
        .error(999);
    assert_eq!(
        json["msg"],
        format!("failed to delegate add: failed to find plugin \"ipvlan\" in path [/nonexistent-cni-dir {}]", fx.bin().display())
    );
    let json = fx
        .run(
            "ADD",
            &fx.conf(json!({"delegate": {"type": "../bin/fake"}})),
            &[],
        )
        .error(7);
    assert_eq!(
        json["msg"],
        "failed to delegate add: invalid plugin name: ../bin/fake"
    );
}

#[test]
fn del_runs_the_saved_config_then_forgets_it_and_is_idempotent() {
    let fx = Fixture::new();
    fx.run("ADD", &fx.conf(json!({})), &[]).ok();
    let saved = fs::read_to_string(fx.state_file("c1")).unwrap();
    // DEL must not depend on subnet.env or on our config still saying the same thing.
    fs::remove_file(fx.subnet_file()).unwrap();
    let conf = fx.conf(json!({"delegate": {"type": "fake"}}));
    let out = fx.run("DEL", &conf, &[("CNI_NETNS", "")]);
    out.ok();
    assert_eq!(out.stdout, "");
    assert_eq!(fx.recorded("DEL", "stdin").as_deref(), Some(saved.as_str()));
    assert_eq!(fx.recorded("DEL", "plugin").as_deref(), Some("bridge\n"));
    let env = fx.recorded("DEL", "env").unwrap();
    assert!(
        env.contains("CNI_COMMAND=DEL\n") && !env.contains("CNI_NETNS"),
        "{env}"
    );
    assert!(!fx.state_file("c1").exists());

    fx.forget_recordings();
    fx.run("DEL", &conf, &[]).ok();
    assert!(
        fx.recorded("DEL", "stdin").is_none(),
        "nothing saved: nothing to delegate"
    );
}

#[test]
fn del_removes_state_even_when_the_delegate_fails() {
    let fx = Fixture::new();
    fx.run("ADD", &fx.conf(json!({})), &[]).ok();
    let json = fx
        .run("DEL", &fx.conf(json!({})), &[("FAKE_MODE", "fail")])
        .error(7);
    assert_eq!(json["msg"], "fake failure");
    assert!(
        !fx.state_file("c1").exists(),
        "upstream removes it; the retried DEL then succeeds"
    );
    fx.run("DEL", &fx.conf(json!({})), &[("FAKE_MODE", "fail")])
        .ok();
}

#[test]
fn del_with_unparsable_state_succeeds_and_keeps_the_file() {
    let fx = Fixture::new();
    fs::create_dir(fx.data_dir()).unwrap();
    fs::write(fx.state_file("c1"), "{truncated").unwrap();
    let out = fx.run("DEL", &fx.conf(json!({})), &[]);
    out.ok();
    assert!(
        out.stderr.contains("failed to parse netconf"),
        "{}",
        out.stderr
    );
    assert!(fx.state_file("c1").exists());
    assert!(fx.recorded("DEL", "stdin").is_none());
}

#[test]
fn check_passes_through_with_the_runtimes_prev_result() {
    let fx = Fixture::new();
    fx.run("ADD", &fx.conf(json!({})), &[]).ok();
    let mut saved: Value =
        serde_json::from_str(&fs::read_to_string(fx.state_file("c1")).unwrap()).unwrap();
    let prev: Value = serde_json::from_str(RESULT).unwrap();
    let conf = fx.conf(json!({ "prevResult": prev.clone() }));
    let out = fx.run("CHECK", &conf, &[]);
    out.ok();
    assert_eq!(out.stdout, "");
    // Passed through, except that the route without `gw` now names the gateway the
    // delegate routes it via (the reference plugins' CHECK looks for exactly that).
    let mut want_prev = prev;
    want_prev["routes"][0]["gw"] = json!("10.1.17.1");
    saved["prevResult"] = want_prev;
    assert_eq!(
        serde_json::from_str::<Value>(&fx.recorded("CHECK", "stdin").unwrap()).unwrap(),
        saved
    );
    assert!(fx
        .recorded("CHECK", "env")
        .unwrap()
        .contains("CNI_COMMAND=CHECK\n"));

    let json = fx.run("CHECK", &conf, &[("FAKE_MODE", "fail")]).error(7);
    assert_eq!(json["msg"], "fake failure");
    assert!(
        fx.state_file("c1").exists(),
        "CHECK never touches the state"
    );

    fx.run("CHECK", &fx.conf(json!({"cniVersion": "0.3.1"})), &[])
        .error(1);
    fx.run("DEL", &conf, &[]).ok();
    fx.forget_recordings();
    fx.run("CHECK", &conf, &[]).ok();
    assert!(
        fx.recorded("CHECK", "stdin").is_none(),
        "without saved state CHECK is upstream's no-op"
    );
}

#[test]
fn gc_and_status_succeed_for_1_1_0_configs_only() {
    let fx = Fixture::new();
    let v11 = fx.conf(json!({"cniVersion": "1.1.0"}));
    let none = [
        ("CNI_CONTAINERID", ""),
        ("CNI_NETNS", ""),
        ("CNI_IFNAME", ""),
    ];
    for command in ["GC", "STATUS"] {
        let out = fx.run(command, &v11, &none);
        out.ok();
        assert_eq!(out.stdout, "");
        let json = fx.run(command, &fx.conf(json!({})), &none).error(1);
        assert_eq!(
            json["msg"],
            format!("config version does not allow {command}")
        );
    }
}
