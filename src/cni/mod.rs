//! The `flannel` CNI meta-plugin: reads subnet.env (written by flanneld), builds a
//! config for a real plugin (the *delegate*, `bridge` by default) and runs it.
//!
//! Behaviour is upstream's `flannel-io/cni-plugin` (see `flannel-reference.md` §8) on
//! top of libcni's `skel` dispatcher:
//! - ADD: subnet.env + our config → delegate config ([`config::build_delegate`]), saved
//!   as `<dataDir>/<containerID>` ([`state`]), then the delegate's ADD; its result is ours.
//! - DEL: the saved config → the delegate's DEL, then the file is removed. No saved
//!   config means nothing to undo: success. A saved config that does not parse is
//!   logged and kept, and DEL succeeds (a pod teardown is never blocked by our state).
//! - CHECK: upstream does nothing and succeeds. We pass CHECK through to the delegate
//!   with the saved config (and the runtime's `prevResult`), so a broken pod network is
//!   reported; without a saved config there is nothing to compare with, and CHECK
//!   succeeds as upstream's does. Routes without `gw` in `prevResult` get the gateway the
//!   delegate installed them with, or the reference plugins' own CHECK would fail every
//!   healthy flannel pod ([`config::prev_result_for_check`]).
//! - GC, STATUS (spec 1.1.0): succeed without doing anything, as upstream's do.
//! - VERSION: spec versions 0.1.0 to 1.1.0.
//!
//! # Files owned by this module
//! `<dataDir>/<containerID>` (see [`state`]). Kernel state is the delegate's business.
//!
//! # Errors
//! Every failure is a [`CniError`]: printed as the spec's error JSON on stdout with exit
//! status 1 by the binary. Diagnostics (the delegate config with `"debug": true`, the delegate's stderr,
//! ignored problems) go to the `log` writer, which the binary points at stderr.

pub mod config;
pub mod delegate;
pub mod state;
pub mod types;

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use self::config::{FlannelEnv, NetConf};
use self::state::StateDir;
pub use self::types::{AddResult, CniEnv, CniError, Command, ContainerId, ErrorCode, VersionInfo};
use self::types::{SpecVersion, CURRENT_VERSION, IMPLICIT_VERSION, SUPPORTED_VERSIONS};
use crate::subnet::env::SubnetEnv;

/// One invocation after the checks every command shares.
struct Call<'a> {
    env: &'a CniEnv,
    /// Our config, decoded.
    conf: NetConf,
    log: &'a mut dyn Write,
}

/// Runs one CNI invocation: `env` is the CNI environment, `stdin` the config (ignored
/// for VERSION). Returns what to print on stdout on success.
///
/// # Errors
/// Any failure, ready for [`CniError::to_json`].
pub fn run(env: &CniEnv, stdin: &[u8], log: &mut dyn Write) -> Result<String, CniError> {
    let command = Command::parse(&env.command);
    let missing = env.missing(command);
    if !missing.is_empty() {
        return Err(CniError::MissingEnv(missing));
    }
    let command = command.ok_or_else(|| CniError::UnknownCommand(env.command.clone()))?;
    if command == Command::Version {
        return Ok(version_json());
    }
    let doc = decode_stdin(stdin)?;
    let id = if command.is_per_attachment() {
        types::validate_network_name(&config::string_field(&doc, "name")?)?;
        let id = ContainerId::new(&env.container_id)?;
        types::validate_ifname(&env.ifname)?;
        Some(id)
    } else {
        None
    };
    check_version(&doc, command)?;
    let call = Call {
        env,
        conf: NetConf::from_json(&doc)?,
        log,
    };
    match (command, id) {
        (Command::Add, Some(id)) => add(call, &id),
        (Command::Del, Some(id)) => del(call, &id).map(|()| String::new()),
        (Command::Check, Some(id)) => check(call, &id).map(|()| String::new()),
        // GC and STATUS: upstream's library defaults, which succeed doing nothing.
        _ => Ok(String::new()),
    }
}

/// The error JSON for `err`, stamped with the config's `cniVersion` when it is one we
/// speak (else our current version).
pub fn error_json(err: &CniError, stdin: &[u8]) -> String {
    let requested = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    err.to_json(requested.as_deref().unwrap_or(CURRENT_VERSION))
}

/// What the binary prints on stderr when run without `CNI_COMMAND` (skel's "about").
pub fn about() -> String {
    format!(
        "CNI flannel plugin (flannel-rs {})\nCNI protocol versions supported: {}\n",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED_VERSIONS.join(", ")
    )
}

/// Our VERSION answer, one JSON line.
fn version_json() -> String {
    // Serializing two strings cannot fail; the fallback keeps this panic-free.
    serde_json::to_string(&VersionInfo::ours()).unwrap_or_default() + "\n"
}

/// Decodes stdin into the config object (skel's `validateConfig` decode step).
fn decode_stdin(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(other) => Err(CniError::BadConfigJson(format!(
            "expected a JSON object, found {other}"
        ))),
        Err(e) => Err(CniError::BadConfigJson(e.to_string())),
    }
}

/// Checks the config's `cniVersion`: the command must exist in it (CHECK ≥ 0.4.0, GC and
/// STATUS ≥ 1.1.0), and it must be one we speak.
fn check_version(doc: &Map<String, Value>, command: Command) -> Result<(), CniError> {
    let version = match config::field(doc, "cniVersion") {
        None | Some(Value::Null) => IMPLICIT_VERSION.to_owned(),
        Some(Value::String(s)) if s.is_empty() => IMPLICIT_VERSION.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(CniError::BadVersion(format!(
                "cniVersion must be a string, not {other}"
            )))
        }
    };
    if let Some(min) = command.min_version() {
        let parsed = SpecVersion::parse(&version).map_err(CniError::BadVersion)?;
        if parsed < SpecVersion::parse(min).map_err(CniError::BadVersion)? {
            return Err(CniError::CommandNotAllowed(command));
        }
    }
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::IncompatibleVersion(version));
    }
    Ok(())
}

/// Reads subnet.env; every way it can be unusable is a [`CniError::SubnetEnv`], which
/// tells the operator to look at flanneld.
fn load_flannel_env(path: &Path) -> Result<FlannelEnv, CniError> {
    let env = match SubnetEnv::read(path) {
        Ok(Some(env)) => env,
        Ok(None) => {
            return Err(CniError::SubnetEnv(format!(
                "open {}: no such file or directory",
                path.display()
            )));
        }
        // InvalidData errors already name the file and the line.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(CniError::SubnetEnv(e.to_string()))
        }
        Err(e) => return Err(CniError::SubnetEnv(format!("read {}: {e}", path.display()))),
    };
    FlannelEnv::from_subnet_env(&env, path)
}

/// ADD: build, save, delegate; the delegate's result is ours, byte for byte.
fn add(call: Call<'_>, id: &ContainerId) -> Result<String, CniError> {
    let flannel_env = load_flannel_env(&call.conf.subnet_file)?;
    let delegate = config::build_delegate(&call.conf, &flannel_env)?;
    let plugin = config::delegate_type(&delegate)
        .unwrap_or_default()
        .to_owned();
    let bytes = serde_json::to_vec(&delegate)
        .map_err(|e| CniError::BadNetConf(format!("cannot serialize the delegate config: {e}")))?;
    if call.conf.debug {
        let _ = writeln!(
            call.log,
            "flannel: delegate config for {}: {}",
            id.as_str(),
            String::from_utf8_lossy(&bytes)
        );
    }
    // Saved before the delegate runs, so the DEL that follows a failed ADD can undo
    // whatever the delegate did half-way.
    StateDir::new(&call.conf.data_dir).save(id, &bytes)?;
    let path = delegate::find_in_path(&plugin, &call.env.path, Command::Add)?;
    let out = delegate::exec(&path, Command::Add, &bytes, call.env, call.log)?;
    let bad = |reason: String| CniError::PluginResult {
        command: Command::Add,
        plugin: plugin.clone(),
        reason,
    };
    AddResult::parse(&out).map_err(|e| bad(e.to_string()))?;
    String::from_utf8(out).map_err(|e| bad(e.to_string()))
}

/// DEL: run the delegate's DEL with the saved config, then forget it.
fn del(call: Call<'_>, id: &ContainerId) -> Result<(), CniError> {
    let state = StateDir::new(&call.conf.data_dir);
    let Some(bytes) = state.load(id)? else {
        // Nothing saved: never added, or already deleted. The spec wants success.
        return Ok(());
    };
    let Some(conf) = parse_saved(call.log, &state, id, &bytes) else {
        // Upstream's choice: the interface stays until the node reboots, but a pod
        // teardown must not fail for it. The file is kept for a human to look at.
        return Ok(());
    };
    let plugin = config::delegate_type(&conf).unwrap_or_default().to_owned();
    let result = delegate::find_in_path(&plugin, &call.env.path, Command::Del)
        .and_then(|path| delegate::exec(&path, Command::Del, &bytes, call.env, call.log));
    // Removed even when the delegate failed, as upstream does: the runtime retries DEL
    // and a second one must then succeed rather than fail the same way forever.
    if let Err(e) = state.remove(id) {
        let _ = writeln!(
            call.log,
            "flannel: cannot remove {}: {e}",
            state.path(id).display()
        );
    }
    result.map(drop)
}

/// CHECK: the delegate's CHECK with the saved config plus the runtime's `prevResult`
/// (which the delegate compares the container against), route gateways filled in as
/// [`config::prev_result_for_check`] explains.
fn check(call: Call<'_>, id: &ContainerId) -> Result<(), CniError> {
    let state = StateDir::new(&call.conf.data_dir);
    let Some(bytes) = state.load(id)? else {
        let _ = writeln!(
            call.log,
            "flannel: no saved delegate config for {}: nothing to check",
            id.as_str()
        );
        return Ok(());
    };
    let Some(mut conf) = parse_saved(call.log, &state, id, &bytes) else {
        return Ok(());
    };
    match &call.conf.prev_result {
        Some(prev) => conf.insert(
            "prevResult".into(),
            Value::Object(config::prev_result_for_check(prev)),
        ),
        None => conf.remove("prevResult"),
    };
    let plugin = config::delegate_type(&conf).unwrap_or_default().to_owned();
    let bytes = serde_json::to_vec(&conf)
        .map_err(|e| CniError::BadNetConf(format!("cannot serialize the delegate config: {e}")))?;
    let path = delegate::find_in_path(&plugin, &call.env.path, Command::Check)?;
    delegate::exec(&path, Command::Check, &bytes, call.env, call.log).map(drop)
}

/// A saved delegate config: a JSON object whose `type`, if present, is a string (what
/// upstream's decode into `types.NetConf` accepts).
fn saved_delegate(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) if !matches!(obj.get("type"), Some(t) if !t.is_string()) => Ok(obj),
        Ok(Value::Object(_)) => Err("\"type\" is not a string".into()),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// [`saved_delegate`] of the state saved for `id`; `None`, after logging why, when it
/// does not parse.
fn parse_saved(
    log: &mut dyn Write,
    state: &StateDir,
    id: &ContainerId,
    bytes: &[u8],
) -> Option<Map<String, Value>> {
    match saved_delegate(bytes) {
        Ok(conf) => Some(conf),
        Err(reason) => {
            let _ = writeln!(
                log,
                "flannel: failed to parse netconf {}: {reason}",
                state.path(id).display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            args: String::new(),
            path: "/nonexistent".into(),
        }
    }

    fn run_str(env: &CniEnv, stdin: &str) -> Result<String, CniError> {
        run(env, stdin.as_bytes(), &mut Vec::new())
    }

    #[test]
    fn version_lists_every_supported_version() {
        let out: VersionInfo =
            serde_json::from_str(&run_str(&env("VERSION"), "").unwrap()).unwrap();
        assert_eq!(out.cni_version, "1.1.0");
        assert_eq!(
            out.supported_versions,
            ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        );
    }

    /// Each row: command, stdin, expected code and message (skel's checks, in order).
    #[test]
    fn shared_checks_fail_with_spec_codes() {
        let rows = [
            ("ADD", "{", 6, "error unmarshall network config: "),
            (
                "ADD",
                "[1]",
                6,
                "error unmarshall network config: expected a JSON object",
            ),
            (
                "ADD",
                r#"{"cniVersion":"1.0.0"}"#,
                7,
                "missing network name",
            ),
            (
                "ADD",
                r#"{"name":"a b"}"#,
                7,
                "invalid characters found in network name",
            ),
            (
                "ADD",
                r#"{"name":"n","cniVersion":"9.9.9"}"#,
                1,
                "incompatible CNI versions",
            ),
            (
                "ADD",
                r#"{"name":"n","cniVersion":1}"#,
                6,
                "decoding version from network config",
            ),
            (
                "CHECK",
                r#"{"name":"n","cniVersion":"0.3.1"}"#,
                1,
                "config version does not allow CHECK",
            ),
            (
                "CHECK",
                r#"{"name":"n"}"#,
                1,
                "config version does not allow CHECK",
            ),
            (
                "GC",
                r#"{"name":"n","cniVersion":"1.0.0"}"#,
                1,
                "config version does not allow GC",
            ),
            (
                "STATUS",
                r#"{"name":"n","cniVersion":"0.4.0"}"#,
                1,
                "config version does not allow STATUS",
            ),
            ("BOGUS", "{}", 4, "unknown CNI_COMMAND: BOGUS"),
        ];
        for (cmd, stdin, code, msg) in rows {
            let err = run_str(&env(cmd), stdin).unwrap_err();
            assert_eq!(err.code(), ErrorCode(code), "{cmd} {stdin}: {err}");
            assert!(err.to_string().starts_with(msg), "{cmd} {stdin}: {err}");
        }
    }

    #[test]
    fn env_checks_come_first() {
        let err = run_str(
            &CniEnv {
                ifname: "eth0".into(),
                ..env("ADD")
            }
            .without_netns_and_path(),
            "{",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "required env variables [CNI_NETNS,CNI_PATH] missing"
        );
        let bad_id = CniEnv {
            container_id: "../../etc/passwd".into(),
            ..env("DEL")
        };
        assert_eq!(
            run_str(&bad_id, r#"{"name":"n"}"#).unwrap_err().code(),
            ErrorCode::INVALID_ENVIRONMENT
        );
        let bad_if = CniEnv {
            ifname: "a/b".into(),
            ..env("ADD")
        };
        assert_eq!(
            run_str(&bad_if, r#"{"name":"n"}"#).unwrap_err().code(),
            ErrorCode::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn gc_and_status_succeed_silently_from_1_1_0() {
        let gc = CniEnv {
            container_id: String::new(),
            ifname: String::new(),
            netns: String::new(),
            ..env("GC")
        };
        assert_eq!(
            run_str(&gc, r#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap(),
            ""
        );
        let status = CniEnv {
            command: "STATUS".into(),
            ..gc
        };
        assert_eq!(
            run_str(&status, r#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap(),
            ""
        );
    }

    #[test]
    fn missing_subnet_env_says_check_flanneld() {
        let dir = tempfile::tempdir().unwrap();
        let conf = serde_json::json!({"name": "n", "cniVersion": "1.0.0",
            "subnetFile": dir.path().join("subnet.env"), "dataDir": dir.path().join("state")});
        let err = run_str(&env("ADD"), &conf.to_string()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TRY_AGAIN_LATER);
        assert_eq!(
            err.to_string(),
            format!(
                "failed to load flannel 'subnet.env' file: open {}: no such file or directory. \
                 Check the flannel pod log for this node.",
                dir.path().join("subnet.env").display()
            )
        );
        assert!(err.details().contains("flanneld"));
        assert!(
            !dir.path().join("state").exists(),
            "nothing saved when ADD fails early"
        );
    }

    #[test]
    fn unparsable_subnet_env_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("subnet.env");
        std::fs::write(&file, "FLANNEL_MTU=big\n").unwrap();
        let conf = serde_json::json!({"name": "n", "subnetFile": file, "dataDir": dir.path()});
        let err = run_str(&env("ADD"), &conf.to_string()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TRY_AGAIN_LATER);
        assert!(err.to_string().contains("line 1: FLANNEL_MTU"), "{err}");
    }

    #[test]
    fn del_without_state_succeeds_and_bad_state_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let conf = serde_json::json!({"name": "n", "dataDir": dir.path()}).to_string();
        assert_eq!(run_str(&env("DEL"), &conf).unwrap(), "");
        std::fs::write(dir.path().join("c1"), "garbage").unwrap();
        let mut log = Vec::new();
        assert_eq!(run(&env("DEL"), conf.as_bytes(), &mut log).unwrap(), "");
        assert!(String::from_utf8_lossy(&log).contains("failed to parse netconf"));
        assert!(
            dir.path().join("c1").exists(),
            "unparsable state is kept, as upstream does"
        );
    }

    #[test]
    fn error_json_uses_the_requested_version_when_supported() {
        let e = CniError::MissingNetworkName;
        let v = |stdin: &str| -> String {
            let json: Value = serde_json::from_str(&error_json(&e, stdin.as_bytes())).unwrap();
            json["cniVersion"].as_str().unwrap().to_owned()
        };
        assert_eq!(v(r#"{"cniVersion":"0.3.1"}"#), "0.3.1");
        assert_eq!(v(r#"{"cniVersion":"7.0.0"}"#), "1.1.0");
        assert_eq!(v("not json"), "1.1.0");
    }

    #[test]
    fn saved_delegate_accepts_what_upstream_decodes() {
        assert!(saved_delegate(br#"{"type":"bridge"}"#).is_ok());
        assert!(saved_delegate(br#"{}"#).is_ok());
        assert!(saved_delegate(br#"{"type":1}"#).is_err());
        assert!(saved_delegate(b"[]").is_err());
        assert!(saved_delegate(b"{").is_err());
    }

    impl CniEnv {
        fn without_netns_and_path(mut self) -> Self {
            self.netns.clear();
            self.path.clear();
            self
        }
    }
}
